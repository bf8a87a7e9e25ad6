#!/usr/bin/env bash
# Derive a test-scale copy of the alerting rules: every `for:` duration becomes DURATION
# (default 10s); nothing else changes. Used by the alerting end-to-end test, which cannot
# wait 15 minutes for a surge to fire.
#
#   deploy/prometheus/test-scale.sh IN OUT [DURATION]
#   deploy/prometheus/test-scale.sh deploy/prometheus/scan-agent.rules.yml /tmp/rules.yml 10s
#
# After writing OUT it verifies its own work and exits non-zero if:
#   - IN has no `for:` line, or OUT has not the same number of lines as IN;
#   - any line other than a `for:` line differs between IN and OUT;
#   - any `for:` line of OUT is not exactly `<indent>for: DURATION`;
#   - `promtool check rules OUT` fails (skipped with a note if promtool is missing).
# Thresholds, expressions, labels and annotations are therefore identical to production.
set -euo pipefail

usage() { echo "usage: $0 IN OUT [DURATION]   (DURATION like 10s, 1m; default 10s)" >&2; exit 2; }
[[ $# -ge 2 && $# -le 3 ]] || usage
in=$1 out=$2 dur=${3:-10s}
[[ -r $in ]] || { echo "test-scale: cannot read $in" >&2; exit 1; }
[[ $dur =~ ^([0-9]+(ms|s|m|h|d|w|y))+$ ]] || { echo "test-scale: '$dur' is not a Prometheus duration" >&2; exit 2; }
[[ $(realpath -m -- "$in") != $(realpath -m -- "$out") ]] || { echo "test-scale: IN and OUT must differ" >&2; exit 2; }

# A `for:` line: only indentation, `for:`, one duration, optional trailing spaces.
for_re='^([[:space:]]*)for:[[:space:]]*[0-9][0-9smhdwy]*[[:space:]]*$'

sed -E "s/${for_re}/\\1for: ${dur}/" -- "$in" >"$out"

# --- self-check -----------------------------------------------------------------
n_for=$(grep -cE "$for_re" -- "$in" || true)
[[ $n_for -gt 0 ]] || { echo "test-scale: no 'for:' line found in $in" >&2; exit 1; }
[[ $(wc -l <"$in") -eq $(wc -l <"$out") ]] || { echo "test-scale: line count changed" >&2; exit 1; }

bad=$(paste -d '\n' -- "$in" "$out" | awk -v re="$for_re" -v dur="$dur" '
  NR % 2 == 1 { a = $0; next }
  {
    b = $0; n = NR / 2
    if (a ~ re) {
      if (b !~ ("^[[:space:]]*for: " dur "$")) print "line " n ": for: line not rewritten to " dur ": " b
    } else if (a != b) {
      print "line " n ": changed but is not a for: line: " a
    }
  }')
if [[ -n $bad ]]; then
  echo "test-scale: transform check failed:" >&2
  echo "$bad" >&2
  exit 1
fi
# A `for:` line the pattern did not recognise (e.g. with a trailing comment) stays at
# production value: refuse it rather than produce a half-scaled file.
left=$(grep -nE '^[[:space:]]*for:' -- "$out" | grep -vE ":[[:space:]]*for: ${dur}\$" || true)
if [[ -n $left ]]; then
  echo "test-scale: 'for:' lines not in the form '<indent>for: <duration>' (not rewritten):" >&2
  echo "$left" >&2
  exit 1
fi
changed=$(diff -- "$in" "$out" | grep -c '^>' || true)

if command -v promtool >/dev/null; then
  promtool check rules "$out" >/dev/null || { echo "test-scale: promtool check rules $out failed" >&2; exit 1; }
  checked="promtool check rules OK"
else
  checked="promtool not found, rule syntax not checked"
fi
echo "test-scale: wrote $out: $n_for for: lines set to $dur ($changed changed), nothing else differs; $checked"
