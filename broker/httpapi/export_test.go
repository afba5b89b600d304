package httpapi

import "time"

// ReadyCacheFor is readyCacheFor, for tests.
const ReadyCacheFor = readyCacheFor

// SetReadyClock sets the clock /readyz's cached answer ages by.
func (s *Server) SetReadyClock(now func() time.Time) { s.readyNow = now }
