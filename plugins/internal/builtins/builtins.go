// Package builtins embeds the built-in merge-policy modules, built from
// examples/policies/<name> by plugins/build-policies.sh and checked in
// gzip-compressed (the seven Go modules are ~1.9 MB each, ~0.55 MB
// compressed) so a clean clone builds and tests without a wasm toolchain.
// SHA256SUMS records the digest of each uncompressed module and GOVERSION the
// toolchain that produced them; plugins' tests rebuild one and compare.
package builtins

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
)

//go:embed *.wasm.gz SHA256SUMS GOVERSION
var files embed.FS

// Names lists the built-in policies, sorted.
func Names() []string {
	names := make([]string, 0, len(sums))
	for n := range sums {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Has reports whether name is a built-in policy.
func Has(name string) bool {
	_, ok := sums[name]
	return ok
}

// SHA256 returns the hex digest of the uncompressed module name.
func SHA256(name string) string { return sums[name] }

// GoVersion is the Go toolchain that built the embedded modules.
func GoVersion() string {
	b, _ := files.ReadFile("GOVERSION")
	return strings.TrimSpace(string(b))
}

// Module returns the uncompressed module name, verified against
// SHA256SUMS.
func Module(name string) ([]byte, error) {
	want, ok := sums[name]
	if !ok {
		return nil, fmt.Errorf("no built-in policy %q", name)
	}
	gz, err := files.ReadFile(name + ".wasm.gz")
	if err != nil {
		return nil, fmt.Errorf("read embedded %s.wasm.gz: %w", name, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, fmt.Errorf("decompress %s.wasm.gz: %w", name, err)
	}
	bin, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("decompress %s.wasm.gz: %w", name, err)
	}
	sum := sha256.Sum256(bin)
	if got := hex.EncodeToString(sum[:]); got != want {
		return nil, fmt.Errorf("embedded %s.wasm has sha256 %s, SHA256SUMS says %s: rebuild with plugins/build-policies.sh builtins", name, got, want)
	}
	return bin, nil
}

// sums maps policy name to the sha256 of its uncompressed module.
var sums = func() map[string]string {
	b, err := files.ReadFile("SHA256SUMS")
	if err != nil {
		panic("builtins: SHA256SUMS not embedded: " + err.Error())
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		sum, file, ok := strings.Cut(sc.Text(), "  ")
		if !ok || !strings.HasSuffix(file, ".wasm") {
			panic("builtins: malformed SHA256SUMS line " + sc.Text())
		}
		m[strings.TrimSuffix(file, ".wasm")] = sum
	}
	return m
}()
