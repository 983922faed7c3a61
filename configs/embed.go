// Package configs holds mendmq's configuration files. default.yaml is embedded
// in the binary: it is the bottom layer of every configuration (DESIGN §6) and
// what `make run` serves with. reference.yaml documents every key.
package configs

import _ "embed"

// Default is the embedded default configuration (configs/default.yaml).
//
//go:embed default.yaml
var Default []byte

// Reference is the annotated reference configuration (configs/reference.yaml).
//
//go:embed reference.yaml
var Reference []byte
