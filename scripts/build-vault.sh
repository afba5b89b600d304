#!/usr/bin/env bash
# Builds the Vault server used by `keytrail dev` and the e2e tests from the Go
# module proxy, through the separate tools module in e2e/vaultserver (so
# Vault's dependencies stay out of keytrail's go.mod), into bin/vault.
# Skips the build when bin/vault is newer than the tools module's go.sum.
# The flags below are part of the Go build cache key: keep them identical
# everywhere (e2e/harness uses the same) so later builds only relink.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/bin/vault"
sum="$root/e2e/vaultserver/go.sum"
if [ -x "$out" ] && [ "$out" -nt "$sum" ]; then
  echo "build-vault: $out is up to date"
  exit 0
fi
mkdir -p "$root/bin"
echo "build-vault: building Vault server into $out (first time: 10-20 min on 2 cores; later: about a minute)..." >&2
start=$(date +%s)
(cd "$root/e2e/vaultserver" && go build -trimpath -ldflags='-s -w' -o "$out.tmp" github.com/hashicorp/vault)
mv "$out.tmp" "$out"
echo "build-vault: done in $(( $(date +%s) - start ))s" >&2
