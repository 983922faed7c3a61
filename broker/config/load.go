package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"

	"github.com/mendmq/mendmq/configs"
)

// EnvPrefix starts every environment variable that overrides a key.
const EnvPrefix = "MENDMQ_"

// ClientEnv are the MENDMQ_ variables of `mendmq ctl` (the admin URL and
// credentials). They are not configuration keys and Load skips them, so a
// container can set them for its health check without breaking serve.
var ClientEnv = []string{"MENDMQ_ADMIN", "MENDMQ_ADMIN_TOKEN_FILE", "MENDMQ_ADMIN_CA_FILE", "MENDMQ_ADMIN_CERT_FILE", "MENDMQ_ADMIN_KEY_FILE"}

func withoutClientEnv(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(ClientEnv, name) {
			out = append(out, kv)
		}
	}
	return out
}

// Sources names the layers above the embedded defaults.
type Sources struct {
	// File is the --config path ("" for none). .toml is parsed as TOML,
	// anything else as YAML.
	File string
	// Environ is the process environment (os.Environ()); nil for none.
	Environ []string
	// Sets are --set key=value overrides, applied last.
	Sets []string
}

// Load builds a Config from the embedded defaults and the given sources,
// decoding strictly and validating. The returned error names the key at
// fault (and the layer it came from) for every problem found.
func Load(src Sources) (Config, error) {
	k := koanf.New(".")
	if err := k.Load(rawbytes.Provider(configs.Default), yaml.Parser()); err != nil {
		return Config{}, fmt.Errorf("load embedded configs/default.yaml: %w", err)
	}
	var layers []string
	if src.File != "" {
		b, err := os.ReadFile(src.File)
		if err != nil {
			return Config{}, fmt.Errorf("read --config: %w", err)
		}
		var p koanf.Parser = yaml.Parser()
		if strings.EqualFold(filepath.Ext(src.File), ".toml") {
			p = toml.Parser()
		}
		// Decode the file on its own first so that an error names the file
		// and so that its keys can be checked before they are merged.
		fk := koanf.New(".")
		if err := fk.Load(rawbytes.Provider(b), p); err != nil {
			return Config{}, fmt.Errorf("parse %s: %w", src.File, err)
		}
		if err := strictDecode(fk, &Config{}); err != nil {
			return Config{}, fmt.Errorf("in %s: %w", src.File, err)
		}
		if err := k.Merge(fk); err != nil {
			return Config{}, fmt.Errorf("merge %s: %w", src.File, err)
		}
		layers = append(layers, src.File)
	}
	if src.Environ != nil {
		ek := koanf.New(".")
		err := ek.Load(env.Provider(".", env.Opt{
			Prefix:      EnvPrefix,
			EnvironFunc: func() []string { return withoutClientEnv(src.Environ) },
			TransformFunc: func(key, v string) (string, any) {
				key = strings.ToLower(strings.TrimPrefix(key, EnvPrefix))
				return strings.ReplaceAll(key, "__", "."), v
			},
		}), nil)
		if err != nil {
			return Config{}, fmt.Errorf("read %s* environment: %w", EnvPrefix, err)
		}
		if err := strictDecode(ek, &Config{}); err != nil {
			return Config{}, fmt.Errorf("in environment (%s*, '__' separates levels): %w", EnvPrefix, err)
		}
		if err := k.Merge(ek); err != nil {
			return Config{}, fmt.Errorf("merge environment: %w", err)
		}
	}
	if len(src.Sets) > 0 {
		m := map[string]any{}
		for _, s := range src.Sets {
			key, v, ok := strings.Cut(s, "=")
			if !ok || key == "" {
				return Config{}, fmt.Errorf("--set %q: want key=value, e.g. --set mqtt.max_packet_size=65536", s)
			}
			m[key] = v
		}
		sk := koanf.New(".")
		if err := sk.Load(confmap.Provider(m, "."), nil); err != nil {
			return Config{}, fmt.Errorf("read --set: %w", err)
		}
		if err := strictDecode(sk, &Config{}); err != nil {
			return Config{}, fmt.Errorf("in --set: %w", err)
		}
		if err := k.Merge(sk); err != nil {
			return Config{}, fmt.Errorf("merge --set: %w", err)
		}
	}
	cfg := Config{}
	if err := strictDecode(k, &cfg); err != nil {
		return Config{}, err
	}
	if src.File != "" {
		// Module paths in the file are relative to the file.
		if abs, err := filepath.Abs(src.File); err == nil {
			cfg.Plugins.BaseDir = filepath.Dir(abs)
		}
	}
	if err := cfg.Validate(); err != nil {
		where := "configuration"
		if len(layers) > 0 {
			where = strings.Join(layers, ", ")
		}
		return Config{}, fmt.Errorf("invalid %s:\n%w", where, err)
	}
	return cfg, nil
}

// strictDecode unmarshals k into out, refusing unknown keys and values that
// do not convert to the field's type. Strings convert where the text is
// unambiguous ("8080" to an int, "true" to a bool, "10s" to a duration,
// "a,b" to a list) because environment variables and --set carry text.
func strictDecode(k *koanf.Koanf, out any) error {
	var md mapstructure.Metadata
	dc := &mapstructure.DecoderConfig{
		TagName:          "koanf",
		ErrorUnused:      true,
		WeaklyTypedInput: true,
		Metadata:         &md,
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			rejectNonScalarToString,
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		),
	}
	if err := k.UnmarshalWithConf("", out, koanf.UnmarshalConf{Tag: "koanf", DecoderConfig: dc}); err != nil {
		return cleanDecodeError(err)
	}
	return nil
}

// rejectNonScalarToString stops mapstructure's weak typing from turning a
// list or map into a string field ("[a b]"): that is a type error.
func rejectNonScalarToString(from, to reflect.Type, data any) (any, error) {
	if to.Kind() == reflect.String && (from.Kind() == reflect.Slice || from.Kind() == reflect.Map) {
		return nil, fmt.Errorf("expected a string, got a %s", from.Kind())
	}
	return data, nil
}

// cleanDecodeError rewrites mapstructure's messages so each line starts
// with the dotted key.
func cleanDecodeError(err error) error {
	var de *mapstructure.DecodeError
	var lines []string
	if errors.As(err, &de) {
		lines = append(lines, de.Error())
	} else {
		lines = append(lines, err.Error())
	}
	msg := strings.Join(lines, "\n")
	msg = strings.ReplaceAll(msg, "has invalid keys:", "unknown key(s):")
	return errors.New(msg)
}
