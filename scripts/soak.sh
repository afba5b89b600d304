#!/usr/bin/env bash
# Soak test (not run in CI): one keytrail broker over a real Vault dev server
# and a real Redis under a mixed load of exchanges, proxied calls and
# revocations, printing the broker's resident memory and goroutine count at
# each sample. Memory or goroutines that keep growing between samples is a
# leak; any failure count other than zero is a bug.
#
#   scripts/soak.sh                         # 30 minutes, a sample every 30s
#   DURATION=5m SAMPLE=10s scripts/soak.sh  # shorter
#
# KEYTRAIL_E2E_PPROF=1 gives the broker a pprof listener (its address is
# logged at the start), e.g. for a heap profile during a reconciliation.
#
# Needs redis-server on PATH and bin/vault (scripts/build-vault.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export KEYTRAIL_SOAK_DURATION="${DURATION:-30m}"
export KEYTRAIL_SOAK_SAMPLE="${SAMPLE:-30s}"
exec go test ./e2e -run '^$' -bench '^BenchmarkSoak$' -benchtime 1x -timeout 3h -v
