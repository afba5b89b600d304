#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this): installs what the
# tests need (redis-server, PostgreSQL, Chromium for the HTML report, gcc for
# the race detector), builds the Vault server (cached), then gofmt, go vet, a
# macOS build of the binary, and go test -race over every package, e2e
# included. Re-running it installs and builds nothing new.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

die() { echo "test: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "go not found on PATH: install Go 1.26 (https://go.dev/dl/)"

# missing sets need to the Debian packages of what is not installed.
missing() {
  need=()
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  # e2e/harness looks for postgres on PATH, then in Debian's directory.
  command -v postgres >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
  command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
  # renders the HTML report in a test (which takes either name)
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
  # go test -race needs cgo: a C compiler and the C library's headers
  command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
}
missing
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 ||
    die "missing ${need[*]} (Debian package names), and no apt-get to install them: install them yourself and re-run"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "installing ${need[*]} needs root: re-run as root, or install sudo"
    sudo=(sudo)
  fi
  echo "test: installing ${need[*]}" >&2
  "${sudo[@]}" apt-get update -qq || die "apt-get update failed (output above)"
  # env, not a prefix assignment: sudo would drop DEBIAN_FRONTEND.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
    die "apt-get install ${need[*]} failed (output above)"
  missing
  [ ${#need[@]} -eq 0 ] || die "still missing after apt-get install: ${need[*]}"
fi
# Debian starts a system redis on :6379 when installed; the tests start their
# own on free ports and do not use it.

bash scripts/build-vault.sh
export KEYTRAIL_VAULT_BIN="$root/bin/vault"

echo "test: gofmt" >&2
files=()
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.go')
fi
if [ ${#files[@]} -eq 0 ]; then # not a git checkout
  mapfile -t files < <(find . -name '*.go' -not -path './e2e/vaultserver/*' -not -path './.*')
fi
# gofmt with no files would read stdin, and wait.
[ ${#files[@]} -gt 0 ] || die "no Go files found in $root"
unformatted=$(gofmt -l "${files[@]}")
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
