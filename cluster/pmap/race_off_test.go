//go:build !race

package pmap

const raceEnabled = false
