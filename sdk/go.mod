module github.com/mendmq/mendmq/sdk

// go 1.24: the first toolchain with //go:wasmexport and
// -buildmode=c-shared for wasip1, which the module's exports need
// (exports_wasip1.go); see gomod_test.go.
go 1.24
