//go:build !race

package redisstore

// raceSlack: without the race detector allocation counts are exact.
const raceSlack = 0
