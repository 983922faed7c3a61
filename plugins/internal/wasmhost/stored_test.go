package wasmhost

import (
	"context"
	"strings"
	"testing"
)

// importModule assembles a wasm module that only imports function mod.name
// with params i32 parameters and results i32 results: enough for Compile
// to check imports, which it does before exports.
func importModule(mod, name string, params, results int) []byte {
	vec := func(b ...[]byte) []byte { // a vector of n items (n < 128)
		out := []byte{byte(len(b))}
		for _, x := range b {
			out = append(out, x...)
		}
		return out
	}
	str := func(s string) []byte { return append([]byte{byte(len(s))}, s...) }
	section := func(id byte, body []byte) []byte { return append([]byte{id, byte(len(body))}, body...) }
	i32s := func(n int) []byte {
		out := []byte{byte(n)}
		for range n {
			out = append(out, 0x7f)
		}
		return out
	}
	functype := append(append([]byte{0x60}, i32s(params)...), i32s(results)...)
	imp := append(append(str(mod), str(name)...), 0x00, 0x00) // func, type 0
	bin := []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}
	bin = append(bin, section(1, vec(functype))...)
	return append(bin, section(2, vec(imp))...)
}

// TestImportChecks: the stored-entry import is accepted only under its
// name and signature; any other function of the mendmq module, or of any
// other module, is refused naming it.
func TestImportChecks(t *testing.T) {
	for _, tc := range []struct {
		name, mod, fn   string
		params, results int
		want            string // "" = the import check passes (exports fail next)
	}{
		{"stored_entry_v1", HostModule, ImportStoredEntry, 4, 1, ""},
		{"unknown mendmq function", HostModule, "stored_entry_v2", 4, 1, "module imports mendmq.stored_entry_v2: the host provides mendmq.stored_entry_v1 only"},
		{"wrong signature", HostModule, ImportStoredEntry, 3, 1, "imports mendmq.stored_entry_v1 as (i32, i32, i32) -> (i32), want (i32, i32, i32, i32) -> (i32)"},
		{"no result", HostModule, ImportStoredEntry, 4, 0, "want (i32, i32, i32, i32) -> (i32)"},
		{"another module", "env", "read_file", 1, 1, "module imports env.read_file: only wasi_snapshot_preview1 functions and mendmq.stored_entry_v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Compile(context.Background(), importModule(tc.mod, tc.fn, tc.params, tc.results), opts())
			if m != nil {
				_ = m.Close(context.Background())
				t.Fatal("a module with no exports compiled")
			}
			if tc.want == "" {
				if err == nil || !strings.Contains(err.Error(), `does not export function "mendmq_abi_version"`) {
					t.Fatalf("error %v: want the import accepted and the exports refused", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestStoredOnlyForImporters: a module without the import gets no host
// module and no instance in its call context; one with it gets both.
func TestStoredOnlyForImporters(t *testing.T) {
	plain := compile(t, repoFile(t, "examples/policies/c/latestupdate/latestupdate.wasm"), opts())
	if plain.UsesStored() {
		t.Fatal("latestupdate.wasm reported as importing the stored-entry function")
	}
	if in := instantiate(t, plain); in.ctx.Value(instanceKey{}) != nil || in.usesStored {
		t.Fatal("an instance of a module without the import carries the stored-entry state")
	}
	probe := compile(t, repoFile(t, "plugins/testdata/stored/probe.wasm"), opts())
	if !probe.UsesStored() {
		t.Fatal("probe.wasm not reported as importing the stored-entry function")
	}
	if in := instantiate(t, probe); in.ctx.Value(instanceKey{}) != in {
		t.Fatal("the probe's call context does not lead to its instance")
	}
}
