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

// DropKeptRecords forgets the revocation records c keeps to write back
// should the Store lose them (RevocationCache.revs), for the tests that
// measure what they cost.
func DropKeptRecords(c *RevocationCache) {
	c.recMu.Lock()
	defer c.recMu.Unlock()
	c.revs = map[string]revEntry{}
}

// KeptRecords is how many revocation records c keeps to write back.
func KeptRecords(c *RevocationCache) int {
	c.recMu.Lock()
	defer c.recMu.Unlock()
	return len(c.revs)
}

// DamageKeptRecord replaces the encoding of the revocation record id that
// c keeps to write back with one that does not decode (its first 9
// bytes: the creation time and the form byte, no fields), for the tests
// of what the write-back does with it. It reports whether c kept id.
func DamageKeptRecord(c *RevocationCache, id string) bool {
	c.recMu.Lock()
	defer c.recMu.Unlock()
	e, ok := c.revs[id]
	if ok {
		e.r = e.r[:9]
		c.revs[id] = e
	}
	return ok
}

// SetHeardCap sets the bounds on what notices alone keep (maxHeard and
// maxHeardBlocks), for the tests of what happens past them.
func SetHeardCap(c *RevocationCache, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.heardCap = n
	c.blockCap = n
}

// HeardIDs is how many ids of c's revoked set only notices named
// (RevocationCache.heardIDs).
func HeardIDs(c *RevocationCache) int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.heardIDs)
}

// LostBlocks is how many blocks c keeps as lost from the Store
// (RevocationCache.lostBlocks).
func LostBlocks(c *RevocationCache) int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.lostBlocks)
}
