//go:build race

package proxy_test

// raceAllocs is what the race detector adds to a proxied request's
// allocations beyond the direct request's (its build keeps fewer values on
// the stack): TestProxyRequestAllocs allows for it.
const raceAllocs = 8
