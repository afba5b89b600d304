package broker

// CheckBlocked is Service.checkBlocked, the exchange's block check, for
// the external tests.
var CheckBlocked = (*Service).checkBlocked

// LateDecisionHeld reports whether s still holds an in-memory entry for
// revocation id's late decision (Service.lateDecisions).
func LateDecisionHeld(s *Service, id string) bool { return s.lateDecisionOf(id) != nil }
