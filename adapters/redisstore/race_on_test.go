//go:build race

package redisstore

// raceSlack is what an allocation count may vary by under the race
// detector, which drops sync.Pool items at random (encoding/json's encoder
// state among them), so that two AllocsPerRun averages of the same call
// can differ by one.
const raceSlack = 1
