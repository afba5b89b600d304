#!/usr/bin/env bash
# Runs every Go fuzz target in the repository (func FuzzXxx in a _test.go
# file) for a chosen time each. The seed corpora already run in CI as
# ordinary tests (go test runs each Fuzz* target over its seeds); this script
# is for actually fuzzing, locally or in a scheduled job.
#
#   scripts/fuzz.sh                 # every target, 30s each
#   FUZZTIME=5m scripts/fuzz.sh     # every target, 5 minutes each
#   scripts/fuzz.sh -list           # list the targets and exit
#   scripts/fuzz.sh FuzzParse       # only targets whose name matches (grep -E)
#
# A failing input is written by go test to the package's
# testdata/fuzz/<Target>/ directory; commit it so it becomes a seed.
# Exit status: 0 when every target ran clean, 1 when one or more failed, or
# when no target matches the filter (a typo must not fuzz nothing, green).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

fuzztime="${FUZZTIME:-30s}"
filter="${1:-.}"

# "dir target" pairs, one per line, sorted; e2e/vaultserver is vendored code.
targets=$(grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+' . \
  | grep -v '^./e2e/vaultserver/' \
  | sed -E 's#^(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+)$#\1 \2#' \
  | sort -u)

if [ "$filter" = "-list" ]; then
  echo "$targets"
  exit 0
fi

# grep exits 2 on a malformed pattern, which the loop below would take for
# "no match".
rc=0
grep -Eq -- "$filter" </dev/null 2>/dev/null || rc=$?
if [ "$rc" -gt 1 ]; then
  echo "fuzz: bad filter $filter (an extended regular expression, as grep -E takes)" >&2
  exit 1
fi

failed=()
ran=0
while read -r dir name; do
  [ -n "$name" ] || continue
  echo "$name" | grep -Eq -- "$filter" || continue
  ran=$((ran + 1))
  echo "fuzz: $dir $name ($fuzztime)" >&2
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$dir"; then
    failed+=("$dir $name")
  fi
done <<< "$targets"

echo "fuzz: ran $ran target(s), ${#failed[@]} failed" >&2
if [ "$ran" -eq 0 ]; then
  echo "fuzz: no fuzz target matches $filter (scripts/fuzz.sh -list lists them)" >&2
  exit 1
fi
if [ ${#failed[@]} -gt 0 ]; then
  printf 'fuzz: FAILED %s\n' "${failed[@]}" >&2
  exit 1
fi
