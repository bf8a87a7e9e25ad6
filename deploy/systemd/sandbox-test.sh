#!/usr/bin/env bash
# Run the shipped unit under a real systemd, with the real agent, in throwaway namespaces.
#
#   sudo deploy/systemd/sandbox-test.sh [AGENT_BINARY]     (default: target/{release,debug}/scan-agent)
#
# Not part of deploy/check.sh (that one is static): this needs root, BPF and a kernel
# with XDP on veth. Meant for a lab VM or CI runner, not for a production router.
#
# How: a private pid/mount/net/uts/ipc/cgroup namespace whose PID 1 is systemd itself
# (/usr/lib/systemd/systemd, container mode), with only stub targets as units. Every write
# goes to tmpfs, to an overlay of /etc, to a private bpffs instance, to a private netns
# (a veth pair v0/v1) or to a child cgroup that is removed at the end. The kit is
# installed as deploy/README.md says (sysusers.d, tmpfiles.d, unit, config), plus one
# test-only drop-in that sends the agent's output to a file (there is no journald).
#
# Checks, each printed as one line, then "N passed, M failed":
#   1. the unit as shipped starts; the agent runs as a non-root user with exactly
#      CAP_BPF CAP_NET_ADMIN CAP_PERFMON, no_new_privs and a seccomp filter; sees / and
#      /sys/fs/bpf read-only and /sys/fs/bpf/scan-agent and /var/lib/scan-agent read-write;
#   1b. the process listening on the metrics port is the agent's worker, not MainPID,
#      and every thread of it has CapEff, CapPrm and CapAmb zero (and no_new_privs);
#   2. it attaches to v0, and 100 SYNs sent to port 445 from v1 are counted exactly;
#   3. `systemctl stop` ends it with exit status 0 and a state file is written;
#   4. after `systemctl start` again the kernel count (pinned maps) is still 100;
#   and negative controls, each a copy of the kit with one line changed, which must FAIL:
#   5. ReadWritePaths=/sys/fs/bpf instead of the pin directory (ProtectKernelTunables wins);
#   6. without CAP_PERFMON (the verifier refuses the program);
#   7. without the tmpfiles.d line that lets non-root users traverse /sys/fs/bpf;
#   8. without SystemCallFilter=capset (the worker cannot drop its capabilities).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

# ---------------------------------------------------------------------------
# PID 1 side: prepare a minimal system view, then become systemd.
# ---------------------------------------------------------------------------
if [[ ${1:-} == --pid1 ]]; then
  set -e
  W=$2
  mount -t proc proc /proc
  mount -t tmpfs -o mode=755 tmpfs /run
  mkdir -p /run/sdtest && mount --bind "$W" /run/sdtest
  mount -t tmpfs tmpfs /tmp
  mount -t tmpfs tmpfs /var/tmp
  mount -t tmpfs -o mode=755 tmpfs /var/lib
  mkdir -p /run/ovl && mount -t tmpfs tmpfs /run/ovl && mkdir /run/ovl/u /run/ovl/w
  mount -t overlay overlay -o lowerdir=/etc,upperdir=/run/ovl/u,workdir=/run/ovl/w /etc
  rm -rf /etc/systemd/system/*
  mount -t tmpfs -o mode=755 tmpfs /usr/lib/systemd/system
  mount -t tmpfs -o mode=755 tmpfs /usr/lib/systemd/system-generators
  mount -t tmpfs -o mode=755 tmpfs /usr/local/bin
  install -m 0755 /run/sdtest/scan-agent /usr/local/bin/scan-agent
  for t in sysinit basic shutdown network-online multi-user sdtest; do
    printf '[Unit]\nDescription=%s (test stub)\n' "$t" >/usr/lib/systemd/system/$t.target
  done
  mount -t sysfs sysfs /sys                       # sysfs of this network namespace
  mount -t cgroup2 cgroup2 /sys/fs/cgroup         # the child cgroup, as root of the cgroup ns
  mount -t bpf -o mode=700 bpf /sys/fs/bpf        # as systemd mounts it at boot
  ip link set lo up
  ip link add v0 type veth peer name v1
  ip link set v0 up && ip link set v1 up
  systemd-sysusers /run/sdtest/kit/scan-agent.sysusers.conf
  systemd-tmpfiles --create /run/sdtest/kit/scan-agent.tmpfiles.conf
  install -D -m 0644 /run/sdtest/kit/scan-agent.toml /etc/scan-agent/scan-agent.toml
  sed -i 's/^iface = .*/iface = ["v0"]/; s/^warmup = .*/warmup = "10s"/' /etc/scan-agent/scan-agent.toml
  install -m 0644 /run/sdtest/kit/scan-agent.service /etc/systemd/system/scan-agent.service
  mkdir -p /etc/systemd/system/scan-agent.service.d
  printf '[Service]\nStandardOutput=append:/run/sdtest/agent.log\nStandardError=inherit\nRestart=no\n' \
    >/etc/systemd/system/scan-agent.service.d/test-output.conf
  exec env container=scan-agent-sandbox-test /usr/lib/systemd/systemd \
    --unit=sdtest.target --log-target=console --show-status=0
fi

# ---------------------------------------------------------------------------
# Host side.
# ---------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || { echo "sandbox-test: needs root (namespaces, BPF, a nested systemd)"; exit 1; }
for tool in unshare nsenter ip systemd-sysusers systemd-tmpfiles curl python3; do
  command -v "$tool" >/dev/null || { echo "sandbox-test: '$tool' not found"; exit 1; }
done
[[ -x /usr/lib/systemd/systemd ]] || { echo "sandbox-test: /usr/lib/systemd/systemd not found"; exit 1; }
agent=${1:-}
if [[ -z $agent ]]; then
  for c in "$repo/target/release/scan-agent" "$repo/target/debug/scan-agent"; do
    [[ -x $c ]] && { agent=$c; break; }
  done
fi
[[ -n $agent && -x $agent ]] || { echo "sandbox-test: no agent binary (build it, or pass its path)"; exit 1; }
if [[ -d /sys/fs/cgroup/unified ]]; then cgroot=/sys/fs/cgroup/unified; else cgroot=/sys/fs/cgroup; fi
[[ $(stat -f -c %T "$cgroot") == cgroup2fs ]] || { echo "sandbox-test: no cgroup2 hierarchy at $cgroot"; exit 1; }

passed=0 failed=0
result() { # result OK|FAIL text
  if [[ $1 == OK ]]; then passed=$((passed + 1)); echo "ok   $2"; else failed=$((failed + 1)); echo "FAIL $2"; fi
}

W= CG= UNSHARE= PID1=
boot() { # boot KITDIR: start a nested systemd with that kit; sets W, CG, PID1
  W=$(mktemp -d /tmp/scan-agent-sandbox.XXXXXX)
  mkdir "$W/kit" && cp "$1"/scan-agent.* "$W/kit/" && cp "$agent" "$W/scan-agent"
  printf '%s\n' "$syn_py" >"$W/syn.py"
  CG=$cgroot/scan-agent-sandbox-${W##*.}
  mkdir "$CG"
  ( echo "$BASHPID" >"$CG/cgroup.procs"
    exec unshare --pid --fork --mount --net --uts --ipc --cgroup --propagation private \
      "$here/sandbox-test.sh" --pid1 "$W" ) >"$W/pid1.log" 2>&1 &
  UNSHARE=$!
  PID1=
  for _ in $(seq 100); do PID1=$(pgrep -P "$UNSHARE" || true); [[ -n $PID1 ]] && break; sleep 0.1; done
  local state=
  for _ in $(seq 150); do
    state=$(ns systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && return 0
    sleep 0.2
  done
  echo "sandbox-test: nested systemd did not come up (state '$state'); its log:"; tail -20 "$W/pid1.log"
  return 1
}
ns() { nsenter -t "$PID1" -m -p -n -u -i -C -- "$@"; }
shutdown_sandbox() {
  [[ -n $PID1 ]] && kill -KILL "$PID1" 2>/dev/null
  [[ -n $UNSHARE ]] && wait "$UNSHARE" 2>/dev/null
  [[ -n $CG && -d $CG ]] && find "$CG" -depth -type d -exec rmdir {} + 2>/dev/null
  [[ -n $W ]] && rm -rf "$W"
  W= CG= UNSHARE= PID1=
}
trap shutdown_sandbox EXIT

syn_py=$(cat <<'EOF'
# Send N TCP SYNs to PORT as raw Ethernet frames out of IFACE, addressed to DST_MAC.
import socket, struct, sys
iface, dst_mac, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack(f"!{len(b)//2}H", b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
src, dst = socket.inet_aton("198.18.0.2"), socket.inet_aton("198.18.0.1")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((iface, 0))
for i in range(n):
    tcp = struct.pack("!HHIIBBHHH", 40000 + i, port, i, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s.send(bytes.fromhex(dst_mac.replace(":", "")) + b"\x02\x00\x00\x00\x00\x02\x08\x00" + ip + tcp)
EOF
)

wait_active() { # wait_active: until the unit is active and /metrics answers (or 10 s)
  for _ in $(seq 50); do
    [[ $(ns systemctl is-active scan-agent 2>/dev/null) == active ]] &&
      ns curl -sf -o /dev/null http://127.0.0.1:9745/metrics && return 0
    sleep 0.2
  done
  return 1
}
metric() { ns curl -sf http://127.0.0.1:9745/metrics | awk -v m="$1" '$1 == m {print $2}'; }
agent_log() { sed 's/^/       | /' "$W/agent.log" 2>/dev/null | tail -"${1:-6}" | cut -c1-240; }

# --- the unit as shipped -------------------------------------------------------------
echo "sandbox-test: agent $agent, kit $here, systemd $(/usr/lib/systemd/systemd --version | head -1 | cut -d' ' -f2)"
if boot "$here"; then
  ns systemctl start scan-agent
  if wait_active; then
    pid=$(ns systemctl show -p MainPID --value scan-agent)
    st=$(ns cat "/proc/$pid/status")
    uid=$(awk '/^Uid:/ {print $2}' <<<"$st")
    capeff=$(awk '/^CapEff:/ {print $2}' <<<"$st") capbnd=$(awk '/^CapBnd:/ {print $2}' <<<"$st")
    nnp=$(awk '/^NoNewPrivs:/ {print $2}' <<<"$st") seccomp=$(awk '/^Seccomp:/ {print $2}' <<<"$st")
    mi=$(ns cat "/proc/$pid/mountinfo")
    opt() { awk -v p="$1" '$5 == p {o = $6} END {print substr(o, 1, 2)}' <<<"$mi"; } # last mount wins
    want=000000c000001000 # CAP_NET_ADMIN(12) | CAP_PERFMON(38) | CAP_BPF(39)
    if [[ $uid != 0 && $capeff == "$want" && $capbnd == "$want" && $nnp == 1 && $seccomp == 2 &&
          $(opt /) == ro && $(opt /sys/fs/bpf) == ro && $(opt /sys/fs/bpf/scan-agent) == rw &&
          $(opt /var/lib/scan-agent) == rw ]]; then
      result OK "shipped unit: running as uid $uid, caps $capeff only, no_new_privs, seccomp; / and /sys/fs/bpf ro, pin dir and state dir rw"
    else
      result FAIL "shipped unit: sandbox not as expected: uid=$uid CapEff=$capeff CapBnd=$capbnd NoNewPrivs=$nnp Seccomp=$seccomp /=$(opt /) /sys/fs/bpf=$(opt /sys/fs/bpf) pin=$(opt /sys/fs/bpf/scan-agent) state=$(opt /var/lib/scan-agent)"
    fi
    # The worker: MainPID's child; it alone holds the socket listening on 9745 (0x2611).
    worker=$(ns cat "/proc/$pid/task/$pid/children" | awk '{print $1}')
    inode=$(ns awk '$4 == "0A" && $2 ~ /:2611$/ {print $10}' /proc/net/tcp /proc/net/tcp6 | head -1)
    holders=
    for p in $pid $worker; do
      ns ls -l "/proc/$p/fd" 2>/dev/null | grep -q "socket:\[$inode\]" && holders="$holders $p"
    done
    held= threads=0
    for t in $(ns ls "/proc/$worker/task" 2>/dev/null); do
      threads=$((threads + 1))
      held="$held$(ns awk '/^(CapEff|CapPrm|CapAmb):/ && $2 != "0000000000000000" {printf " %s%s", $1, $2}
                           /^NoNewPrivs:/ && $2 != "1" {printf " NoNewPrivs:0"}' "/proc/$worker/task/$t/status")"
    done
    if [[ -n $worker && -n $inode && $holders == " $worker" && $threads -ge 3 && -z $held ]]; then
      result OK "shipped unit: the listener on 9745 is the worker (pid $worker, not MainPID $pid); its $threads threads have CapEff, CapPrm, CapAmb 0"
    else
      result FAIL "shipped unit: worker '$worker', listening socket inode '$inode' held by '$holders', $threads threads, capabilities held:${held:- none}"
    fi
    mac=$(ns ip -o link show v0 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
    ns python3 /run/sdtest/syn.py v1 "$mac" 445 100
    # /metrics shows the last poll (every 5 s): wait up to three polls for the count.
    for _ in $(seq 30); do
      [[ $(metric 'scan_syn_packets_total{port="445"}') == 100 ]] && break
      sleep 0.5
    done
    attached=$(metric 'scan_agent_attached{hook="xdp",interface="v0",mode="native"}')
    syns=$(metric 'scan_syn_packets_total{port="445"}')
    if [[ $attached == 1 && $syns == 100 ]]; then
      result OK "shipped unit: attached to v0 (native), 100 SYNs to port 445 counted exactly"
    else
      result FAIL "shipped unit: attached=${attached:-none} scan_syn_packets_total{port=\"445\"}=${syns:-none} (want 1 and 100)"
    fi
    sleep 2
    ns systemctl stop scan-agent
    status=$(ns systemctl show -p ExecMainStatus --value scan-agent)
    if [[ $status == 0 ]] && ns test -s /var/lib/scan-agent/state.bin; then
      result OK "shipped unit: systemctl stop -> exit status 0, state file /var/lib/scan-agent/state.bin written"
    else
      result FAIL "shipped unit: systemctl stop -> exit status $status (want 0), state file $(ns test -s /var/lib/scan-agent/state.bin && echo present || echo missing)"
      agent_log 3
    fi
    ns systemctl start scan-agent
    if wait_active && [[ $(metric 'scan_syn_packets_total{port="445"}') == 100 ]]; then
      result OK "shipped unit: after a restart the pinned kernel count is still 100"
    else
      result FAIL "shipped unit: after a restart scan_syn_packets_total{port=\"445\"} is $(metric 'scan_syn_packets_total{port="445"}') (want 100)"
      agent_log
    fi
    ns systemctl stop scan-agent
  else
    result FAIL "shipped unit: scan-agent did not become active"
    agent_log 12
  fi
fi
shutdown_sandbox

# --- negative controls: each must fail to start ------------------------------------
negative() { # negative NAME SED_FILE SED_EXPR
  local kit
  kit=$(mktemp -d /tmp/scan-agent-kit.XXXXXX)
  cp "$here"/scan-agent.* "$kit/"
  sed -i "$3" "$kit/$2"
  if cmp -s "$here/$2" "$kit/$2"; then result FAIL "negative control '$1': the edit did not apply"; rm -rf "$kit"; return; fi
  if boot "$kit"; then
    ns systemctl start scan-agent
    sleep 3
    if [[ $(ns systemctl show -p ExecMainStatus --value scan-agent) != 0 &&
          $(ns systemctl is-active scan-agent) != active ]]; then
      result OK "negative control '$1' fails as expected:"
      grep -iE '^error|prohibited' "$W/agent.log" | head -2 | sed 's/^/       | /' | cut -c1-240
    else
      result FAIL "negative control '$1' did not fail: that line of the kit may be unnecessary"
    fi
  fi
  shutdown_sandbox
  rm -rf "$kit"
}
negative "ReadWritePaths=/sys/fs/bpf" scan-agent.service 's|^ReadWritePaths=/sys/fs/bpf/scan-agent$|ReadWritePaths=/sys/fs/bpf|'
negative "no CAP_PERFMON" scan-agent.service 's|CAP_BPF CAP_NET_ADMIN CAP_PERFMON|CAP_BPF CAP_NET_ADMIN|g'
negative "bpffs root left 0700" scan-agent.tmpfiles.conf '/^z \/sys\/fs\/bpf /d'
negative "no SystemCallFilter=capset" scan-agent.service '/^SystemCallFilter=capset$/d'

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
