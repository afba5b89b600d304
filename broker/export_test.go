package broker

// CheckBlocked is Service.checkBlocked, the exchange's block check, for
// the external tests.
var CheckBlocked = (*Service).checkBlocked

// LateDecisionHeld reports whether s still holds an in-memory entry for
// revocation id's late decision (Service.lateDecisions).
func LateDecisionHeld(s *Service, id string) bool { return s.lateDecisionOf(id) != nil }

// LiftedUnblocks is how many unblock notices c remembers as having lifted
// a block (RevocationCache.lifted).
func LiftedUnblocks(c *RevocationCache) int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.lifted)
}
