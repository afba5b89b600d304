#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this): installs what the
# tests need (redis-server, PostgreSQL, Chromium for the HTML report), builds the Vault server (cached),
# then go vet, a macOS build of the binary, and go test -race over every
# package, e2e included.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)   # renders the HTML report in a test
if [ ${#need[@]} -gt 0 ]; then
  echo "test: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts a system redis on :6379 when installed; the tests start their
# own on free ports and do not use it.

bash scripts/build-vault.sh
export KEYTRAIL_VAULT_BIN="$root/bin/vault"

echo "test: gofmt" >&2
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './e2e/vaultserver/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:" >&2; echo "$unformatted" >&2; exit 1
fi
echo "test: go vet ./..." >&2
go vet ./...
# The README says the binary builds for macOS too (no Windows: flock).
echo "test: GOOS=darwin go build ./cmd/keytrail" >&2
GOOS=darwin go build -o /dev/null ./cmd/keytrail
echo "test: go test -race ./..." >&2
go test -race -count=1 -timeout 40m "$@" ./...
