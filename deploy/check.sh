#!/usr/bin/env bash
# Every static check of the deploy kit. Prints one line per check and, last,
# "N passed, M failed"; exits 1 if any check failed. Run from anywhere:
#   bash deploy/check.sh
# Needs: promtool (Debian package prometheus), amtool (prometheus-alertmanager),
# systemd-analyze, systemd-sysusers, systemd-tmpfiles (systemd), python3 >= 3.11.
# A missing tool fails its checks (with the reason); nothing is skipped silently.
# The dynamic test of the systemd unit (root, BPF) is deploy/systemd/sandbox-test.sh.
set -euo pipefail

deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$deploy")
cd "$repo"
tmp=$(mktemp -d)
logs=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0 failed=0 n=0
# check NAME FUNCTION [ARGS...]: runs FUNCTION, prints one line.
check() {
  local name=$1 out summary log rc
  shift
  n=$((n + 1))
  log=$logs/$(printf '%02d' "$n").log
  # A subshell outside any `if`, so that `set -e` really applies inside the check.
  set +e
  (set -e; "$@") >"$log" 2>&1
  rc=$?
  set -e
  out=$(<"$log")
  if [[ $rc -eq 0 ]]; then
    passed=$((passed + 1))
    summary=$(grep -v '^\s*$' <<<"$out" | tail -1 | sed 's/^\s*//' | cut -c1-160 || true)
    printf 'ok   %-52s %s\n' "$name" "${summary:+($summary)}"
  else
    failed=$((failed + 1))
    # the first line that says what is wrong, else the last line
    summary=$( (grep -m1 -A1 -E 'FAIL|WARNING|[Ee]rror|[Uu]nknown|stale|not found|differ|above|missing' <<<"$out" ||
                grep -v '^\s*$' <<<"$out" | tail -1) | sed 's/^\s*//' | tr '\n' ' ' | cut -c1-200 || true)
    printf 'FAIL %-52s %s [full output: %s]\n' "$name" "${summary:-exit status $rc}" "$log"
  fi
}
need() { for t in "$@"; do command -v "$t" >/dev/null || { echo "$t not found (install it)"; return 1; }; done; }
py() { python3 -B "$@"; }

# --- scripts --------------------------------------------------------------------------
shell_syntax() {
  local f
  for f in deploy/check.sh deploy/prometheus/test-scale.sh deploy/systemd/sandbox-test.sh deploy/debian/package-test.sh; do
    bash -n "$f" || return 1
  done
  for f in deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm; do
    sh -n "$f" || return 1
  done
  echo "bash -n: 4 scripts; sh -n: 3 maintainer scripts"
}

# --- Prometheus rules -----------------------------------------------------------------
rules_syntax() {
  need promtool || return 1
  promtool check rules deploy/prometheus/scan-agent.rules.yml | grep -o 'SUCCESS: .*'
}
rules_names() { need python3 && py deploy/kitcheck.py rules deploy/prometheus/scan-agent.rules.yml; }
background_current() {
  need python3 || return 1
  py deploy/prometheus/tests/gen_background.py "$tmp/background_test.yml"
  cmp "$tmp/background_test.yml" deploy/prometheus/tests/background_test.yml ||
    { echo "background_test.yml is stale: run python3 deploy/prometheus/tests/gen_background.py"; return 1; }
  echo "regenerated file is identical"
}
rules_unit_tests() {
  need promtool || return 1
  promtool test rules deploy/prometheus/tests/*.yml
  echo "$(ls deploy/prometheus/tests/*.yml | wc -l) test files"
}

# --- test-scale transform ---------------------------------------------------------------
scaled=$tmp/scaled/scan-agent.rules.test-scale.yml
scale_transform() {
  need python3 || return 1
  mkdir -p "$tmp/scaled"
  bash deploy/prometheus/test-scale.sh deploy/prometheus/scan-agent.rules.yml "$scaled" 10s >/dev/null
  py deploy/kitcheck.py scaled deploy/prometheus/scan-agent.rules.yml "$scaled" 10s
}
scale_unit_test() {
  need promtool || return 1
  [[ -s $scaled ]] || { echo "no scaled rules (previous check failed)"; return 1; }
  cp deploy/prometheus/scaled-tests/scaled_test.yml "$tmp/scaled/"
  promtool test rules "$tmp/scaled/scaled_test.yml"
  # and the same test must fail against the production durations
  mkdir -p "$tmp/unscaled"
  cp deploy/prometheus/scaled-tests/scaled_test.yml "$tmp/unscaled/"
  cp deploy/prometheus/scan-agent.rules.yml "$tmp/unscaled/scan-agent.rules.test-scale.yml"
  if promtool test rules "$tmp/unscaled/scaled_test.yml" >/dev/null 2>&1; then
    echo "scaled test also passes with production for: durations: it proves nothing"; return 1
  fi
  echo "fires within 10s when scaled; does not with production durations"
}
scale_refuses() {
  sed 's/^\(\s*\)for: 15m$/\1for: 15m  # a comment/' deploy/prometheus/scan-agent.rules.yml >"$tmp/commented.yml"
  if bash deploy/prometheus/test-scale.sh "$tmp/commented.yml" "$tmp/commented.out.yml" 10s >/dev/null 2>&1; then
    echo "test-scale.sh accepted a for: line it cannot rewrite"; return 1
  fi
  echo "refuses a for: line with a trailing comment"
}

# --- Prometheus and Alertmanager configuration -------------------------------------------
prom_config() {
  need promtool || return 1
  promtool check config deploy/prometheus/prometheus.yml >/dev/null
  echo "valid, with its rule file scan-agent.rules.yml"
}
prom_config_fleet() {
  need promtool || return 1
  mkdir -p "$tmp/prom/targets"
  cp deploy/prometheus/prometheus.yml deploy/prometheus/scan-agent.rules.yml "$tmp/prom/"
  cp deploy/prometheus/targets/routers.yml.example "$tmp/prom/targets/routers.yml"
  promtool check config "$tmp/prom/prometheus.yml" >/dev/null
  echo "with targets/routers.yml.example as a file_sd file: valid"
}
prom_config_federation() {
  need promtool || return 1
  promtool check config deploy/prometheus/federation.yml >/dev/null
  echo "valid, with its rule file scan-agent.rules.yml"
}
prom_config_remote_write() {
  need promtool || return 1
  promtool check config --agent deploy/prometheus/fleet/agent-mode.yml >/dev/null
  promtool check config deploy/prometheus/fleet/central.yml >/dev/null
  echo "agent-mode.yml valid in agent mode; central.yml valid with the rule file"
}
am_config() {
  need amtool || return 1
  amtool check-config deploy/alertmanager/alertmanager.yml >/dev/null
  echo "valid"
}
am_routes() {
  need amtool || return 1
  route() { # route WANT LABELS...
    local want=$1 got
    shift
    got=$(amtool config routes test --config.file=deploy/alertmanager/alertmanager.yml "$@" 2>/dev/null | head -1)
    [[ $got == "$want" ]] || { echo "routing error: {$*} goes to '$got', want '$want'"; return 1; }
  }
  route pager alertname=PortScanSurgeCritical severity=critical port=445 instance=r1
  route tickets alertname=PortScanSurge severity=warning port=445 instance=r1
  route tickets alertname=ScanAgentDown severity=warning instance=r1
  route default alertname=Other
  echo "critical->pager, warning->tickets, other->default"
}

# --- Grafana ---------------------------------------------------------------------------------
dashboard() {
  need python3 && py deploy/kitcheck.py dashboard deploy/grafana/scan-agent-dashboard.json "$tmp/dashboard-promql.yml"
}
dashboard_promql() {
  need promtool || return 1
  [[ -s $tmp/dashboard-promql.yml ]] || { echo "no expressions extracted (previous check failed)"; return 1; }
  promtool check rules "$tmp/dashboard-promql.yml" >/dev/null
  echo "$(grep -c 'record:' "$tmp/dashboard-promql.yml") expressions parse (Grafana variables substituted)"
}

# --- systemd ---------------------------------------------------------------------------------
unit=deploy/systemd/scan-agent.service
toml_config() { need python3 && py deploy/kitcheck.py toml deploy/systemd/scan-agent.toml scan-agent/src/config.rs; }
sysusers_tmpfiles() {
  need systemd-sysusers systemd-tmpfiles || return 1
  local root=$tmp/root
  mkdir -p "$root/etc" "$root/sys/fs/bpf"
  systemd-sysusers --root="$root" "$repo/deploy/systemd/scan-agent.sysusers.conf" 2>&1 | grep -v '^Creating ' || true
  grep -q '^scan-agent:' "$root/etc/passwd" || { echo "sysusers did not create scan-agent"; return 1; }
  local out
  out=$(systemd-tmpfiles --root="$root" --create "$repo/deploy/systemd/scan-agent.tmpfiles.conf" 2>&1) ||
    { echo "$out"; return 1; }
  [[ -z $out ]] || { echo "$out"; return 1; }
  local uid got
  uid=$(awk -F: '$1 == "scan-agent" {print $3}' "$root/etc/passwd")
  got="$(stat -c '%a %u' "$root/sys/fs/bpf") / $(stat -c '%a %u' "$root/sys/fs/bpf/scan-agent")"
  [[ $got == "711 0 / 700 $uid" ]] || { echo "modes/owners: $got, want '711 0 / 700 $uid'"; return 1; }
  echo "user created; /sys/fs/bpf 0711 root, /sys/fs/bpf/scan-agent 0700 scan-agent"
}
unit_consistency() {
  local pin caps rw tmpd
  pin=$(sed -n 's/^pin_path = "\(.*\)"/\1/p' deploy/systemd/scan-agent.toml)
  rw=$(sed -n 's/^ReadWritePaths=//p' "$unit")
  tmpd=$(awk '$1 == "d" {print $2}' deploy/systemd/scan-agent.tmpfiles.conf)
  [[ -n $pin && $rw == "$pin" && $tmpd == "$pin" ]] ||
    { echo "pin path differs: toml '$pin', ReadWritePaths '$rw', tmpfiles '$tmpd'"; return 1; }
  for key in CapabilityBoundingSet AmbientCapabilities; do
    caps=$(sed -n "s/^$key=//p" "$unit")
    [[ $caps == "CAP_BPF CAP_NET_ADMIN CAP_PERFMON" ]] || { echo "$key=$caps"; return 1; }
  done
  grep -q '^ExecStart=/usr/local/bin/scan-agent run --config /etc/scan-agent/scan-agent.toml$' "$unit" ||
    { echo "ExecStart is not the documented command"; return 1; }
  grep -q '^ProtectKernelTunables=yes$' "$unit" || { echo "ProtectKernelTunables=yes missing"; return 1; }
  echo "pin path $pin in toml, ReadWritePaths and tmpfiles.d; caps CAP_BPF CAP_NET_ADMIN CAP_PERFMON"
}
# systemd-analyze verify insists that ExecStart= exists; check a copy whose only change
# is ExecStart=/bin/true. It must print nothing (it warns about bad keys but exits 0).
unit_verify() {
  need systemd-analyze || return 1
  mkdir -p "$tmp/unit"
  sed 's|^ExecStart=/usr/local/bin/scan-agent |ExecStart=/bin/true |' "$unit" >"$tmp/unit/scan-agent.service"
  local d
  d=$(diff "$unit" "$tmp/unit/scan-agent.service" | grep -c '^>' || true)
  [[ $d -eq 1 ]] || { echo "stand-in copy differs in $d lines, want 1 (ExecStart)"; return 1; }
  local out
  out=$(systemd-analyze verify "$tmp/unit/scan-agent.service" 2>&1) || { echo "$out"; return 1; }
  [[ -z $out ]] || { echo "$out"; return 1; }
  echo "clean (copy with ExecStart=/bin/true)"
}
unit_security() {
  need systemd-analyze || return 1
  [[ -s $tmp/unit/scan-agent.service ]] || { echo "no stand-in unit (previous check failed)"; return 1; }
  local out score
  out=$(systemd-analyze security --offline=yes "$tmp/unit/scan-agent.service" 2>&1) ||
    { echo "systemd-analyze security --offline=yes failed (needs systemd >= 250): $(tail -1 <<<"$out")"; return 1; }
  score=$(sed -n 's/.*Overall exposure level for scan-agent.service: \([0-9.]*\).*/\1/p' <<<"$out")
  [[ -n $score ]] || { echo "no exposure level in the output"; return 1; }
  awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }' ||
    { echo "exposure $score is above 2.5: a hardening line was lost?"; return 1; }
  echo "exposure level $score (offline analysis; at most 2.5 allowed)"
}

check "shell syntax"                                   shell_syntax
check "promtool check rules"                           rules_syntax
check "rules name only agent metrics (and up)"         rules_names
check "background test file is up to date"            background_current
check "promtool test rules prometheus/tests/*.yml"     rules_unit_tests
check "test-scale: only for: lines change"             scale_transform
check "test-scale: scaled rules fire in seconds"       scale_unit_test
check "test-scale: refuses lines it cannot rewrite"    scale_refuses
check "promtool check config prometheus.yml"           prom_config
check "promtool check config (fleet file_sd example)"  prom_config_fleet
check "promtool check config federation.yml"           prom_config_federation
check "promtool check config fleet/ (remote-write)"    prom_config_remote_write
check "amtool check-config"                            am_config
check "alertmanager routes by severity"                am_routes
check "dashboard JSON and metric names"                dashboard
check "dashboard PromQL parses"                        dashboard_promql
check "example scan-agent.toml"                        toml_config
check "sysusers.d and tmpfiles.d apply"                sysusers_tmpfiles
check "unit, config and tmpfiles.d agree"              unit_consistency
check "systemd-analyze verify"                         unit_verify
check "systemd-analyze security --offline"             unit_security

[[ $failed -eq 0 ]] && rm -rf "$logs"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
