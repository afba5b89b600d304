package brokertest

import "time"

// ReturnsWithin runs f, a call that may block forever (opening a named
// pipe), in a goroutine and returns its error, failing the test if it has
// not returned within a minute: a guard against hanging, not a measure of
// speed.
func ReturnsWithin(t TB, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		t.Fatal(what + " did not return within a minute: blocked reading a named pipe")
		return nil
	}
}
