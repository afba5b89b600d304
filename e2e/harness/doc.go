// Package harness starts the real services keytrail's tests run against
// (vault server -dev, redis-server, PostgreSQL, the keytrail binary) on free
// loopback ports, and stops them when the test ends. A service that cannot be
// started fails the test loudly: nothing here ever skips.
package harness
