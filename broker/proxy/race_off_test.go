//go:build !race

package proxy_test

// raceAllocs: see race_on_test.go.
const raceAllocs = 0
