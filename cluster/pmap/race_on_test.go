//go:build race

package pmap

// raceEnabled: the race detector changes what allocates; allocation
// counts are checked without it.
const raceEnabled = true
