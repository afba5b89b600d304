#!/usr/bin/env bash
# Builds the Vault server used by `keytrail dev` and the e2e tests from the Go
# module proxy, through the separate tools module in e2e/vaultserver (so
# Vault's dependencies stay out of keytrail's go.mod), into bin/vault.
# Skips the build when bin/vault is newer than the tools module's go.sum.
# The flags below are part of the Go build cache key: keep them identical
# everywhere (adapters/vault/devserver.BuildVault, used by `keytrail dev` and
# e2e/harness, runs the same command) so later builds only relink. It takes
# the same lock (bin/.vault-build.lock) so that it never builds at the same
# time, into the same bin/vault.tmp, as a `keytrail dev` or a test binary.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/bin/vault"
sum="$root/e2e/vaultserver/go.sum"
if [ ! -f "$sum" ]; then
  echo "build-vault: $sum is missing: run this from a keytrail checkout" >&2
  exit 1
fi
fresh() { [ -x "$out" ] && [ -s "$out" ] && [ "$out" -nt "$sum" ]; }
if fresh; then
  echo "build-vault: $out is up to date"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-vault: go not found on PATH: install Go 1.26 (https://go.dev/dl/)" >&2
  exit 1
fi
mkdir -p "$root/bin"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$root/bin/.vault-build.lock"
  if ! flock -n 9; then
    echo "build-vault: waiting for another Vault build ($root/bin/.vault-build.lock)..." >&2
    flock 9
  fi
  # Another process may have built it while we waited.
  if fresh; then
    echo "build-vault: $out is up to date (built by another process)"
    exit 0
  fi
fi
echo "build-vault: building Vault server into $out (first time: 10-20 min on 2 cores; later: about a minute)..." >&2
start=$(date +%s)
rm -f "$out.tmp"
if ! (cd "$root/e2e/vaultserver" && go build -trimpath -ldflags='-s -w' -o "$out.tmp" github.com/hashicorp/vault); then
  rm -f "$out.tmp"
  echo "build-vault: building Vault failed (output above); the first build downloads modules through the Go module proxy (GOPROXY)" >&2
  exit 1
fi
mv "$out.tmp" "$out"
echo "build-vault: done in $(( $(date +%s) - start ))s" >&2
