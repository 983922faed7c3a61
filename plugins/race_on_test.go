//go:build race

package plugins

// raceEnabled: the race detector instruments the wazero compiler too, which
// makes compiling a Go module ~7× slower; timing tests skip themselves.
const raceEnabled = true
