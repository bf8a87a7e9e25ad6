#!/usr/bin/env bash
# Install, upgrade, remove and purge the Debian package under a real (throwaway) systemd.
#
#   sudo deploy/debian/package-test.sh OLD.deb NEW.deb     (NEW: the same package, higher version)
#
# Needs root, BPF and XDP on veth; meant for a lab VM or CI runner (cargo xtask test runs it).
#
# Isolation, as deploy/systemd/sandbox-test.sh: a private pid/mount/net/uts/ipc/cgroup
# namespace whose PID 1 is systemd. What dpkg writes goes to tmpfs: /etc, /usr and /var are
# overlays (the host's directories as read-only lower layers, a tmpfs upper layer), /run and
# /tmp are tmpfs, bpffs is a private instance, the network is a private namespace (a veth
# pair v0/v1 and a default route to v0 that leads nowhere else). The host's dpkg database
# and files are never touched; the script checks that at the end.
#
# Checks, each printed as one line, then "N passed, M failed":
#   1. dpkg -i installs it and the postinst starts the service from the installed files
#      (unit in /usr/lib/systemd/system, /usr/bin/scan-agent, the conffile), as the
#      sysusers.d user, attached to v0 (the default route's interface);
#   2. 100 SYNs to 445 are counted exactly (JSON API);
#   3. upgrade in place with keep_attached = true while 10000 SYNs are sent: the service
#      restarts on the new version and every SYN is counted;
#   3b. negative control: the same restart (a reinstall) without keep_attached misses SYNs;
#   4. dpkg -r with keep_attached = true: service gone, program still attached, pins and
#      state kept;
#   5. reinstall, keep_attached = false, dpkg -r: detached, pins and state kept;
#   6. dpkg -P: nothing attached, no pins, no state, no config;
#   7. the host has no trace of the package.
set -uo pipefail
shopt -s extglob

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ---------------------------------------------------------------------------
# PID 1 side.
# ---------------------------------------------------------------------------
if [[ ${1:-} == --pid1 ]]; then
  set -e
  W=$2
  mount -t proc proc /proc
  mount -t tmpfs -o mode=755 tmpfs /run
  mkdir -p /run/sdtest && mount --bind "$W" /run/sdtest
  mount -t tmpfs tmpfs /tmp
  mkdir -p /run/ovl
  mount -t tmpfs tmpfs /run/ovl
  for d in etc usr var; do
    mkdir -p /run/ovl/$d/u /run/ovl/$d/w
    mount -t overlay overlay -o lowerdir=/$d,upperdir=/run/ovl/$d/u,workdir=/run/ovl/$d/w /$d
  done
  mount -t tmpfs tmpfs /var/tmp
  # A build host or container often forbids service starts in package scripts
  # (policy-rc.d exiting 101); a router does not: drop it in the sandbox only.
  rm -f /usr/sbin/policy-rc.d
  # Only stub targets as units: hide the host's (whiteouts in the overlays).
  find /etc/systemd/system /usr/lib/systemd/system /usr/lib/systemd/system-generators \
    -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  for t in sysinit basic shutdown network-online multi-user sdtest; do
    printf '[Unit]\nDescription=%s (test stub)\n' "$t" >/usr/lib/systemd/system/$t.target
  done
  mount -t sysfs sysfs /sys
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
  mount -t bpf -o mode=700 bpf /sys/fs/bpf
  ip link set lo up
  ip link add v0 type veth peer name v1
  ip link set v0 up && ip link set v1 up
  ip route add default dev v0
  exec env container=scan-agent-package-test /usr/lib/systemd/systemd \
    --unit=sdtest.target --log-target=console --show-status=0
fi

# ---------------------------------------------------------------------------
# Host side.
# ---------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || { echo "package-test: needs root (namespaces, BPF, a nested systemd)"; exit 1; }
for tool in unshare nsenter ip dpkg curl python3 bpftool; do
  command -v "$tool" >/dev/null || { echo "package-test: '$tool' not found"; exit 1; }
done
old_deb=${1:-} new_deb=${2:-}
[[ -f $old_deb && -f $new_deb ]] || { echo "usage: $0 OLD.deb NEW.deb"; exit 1; }
old_version=$(dpkg-deb -f "$old_deb" Version) new_version=$(dpkg-deb -f "$new_deb" Version)
dpkg --compare-versions "$new_version" gt "$old_version" ||
  { echo "package-test: $new_deb ($new_version) is not newer than $old_deb ($old_version)"; exit 1; }
if [[ -d /sys/fs/cgroup/unified ]]; then cgroot=/sys/fs/cgroup/unified; else cgroot=/sys/fs/cgroup; fi
host_status_before=$(md5sum /var/lib/dpkg/status)

passed=0 failed=0
result() {
  if [[ $1 == OK ]]; then passed=$((passed + 1)); echo "ok   $2"; else failed=$((failed + 1)); echo "FAIL $2"; fi
}

W=$(mktemp -d /tmp/scan-agent-package.XXXXXX)
CG=$cgroot/scan-agent-package-${W##*.} UNSHARE= PID1=
cleanup() {
  [[ -n $PID1 ]] && kill -KILL "$PID1" 2>/dev/null
  [[ -n $UNSHARE ]] && wait "$UNSHARE" 2>/dev/null
  [[ -d $CG ]] && find "$CG" -depth -type d -exec rmdir {} + 2>/dev/null
  [[ -n ${PACKAGE_TEST_KEEP:-} ]] && echo "package-test: kept $W" || rm -rf "$W"
}
trap cleanup EXIT
cp "$old_deb" "$W/old.deb" && cp "$new_deb" "$W/new.deb"
mkdir "$CG"
( echo "$BASHPID" >"$CG/cgroup.procs"
  exec unshare --pid --fork --mount --net --uts --ipc --cgroup --propagation private \
    "$here/package-test.sh" --pid1 "$W" ) >"$W/pid1.log" 2>&1 &
UNSHARE=$!
for _ in $(seq 100); do PID1=$(pgrep -P "$UNSHARE" || true); [[ -n $PID1 ]] && break; sleep 0.1; done
ns() { nsenter -t "$PID1" -m -p -n -u -i -C -- "$@"; }
state=
for _ in $(seq 150); do
  state=$(ns systemctl is-system-running 2>/dev/null || true)
  [[ $state == running || $state == degraded ]] && break
  sleep 0.2
done
[[ $state == running || $state == degraded ]] ||
  { echo "package-test: nested systemd did not come up ('$state')"; tail -20 "$W/pid1.log"; exit 1; }

cat >"$W/syn.py" <<'PY'
# Send N TCP SYNs to PORT as raw Ethernet frames out of IFACE, at RATE per second.
import socket, struct, sys, time
iface, dst_mac, port, n, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack(f"!{len(b)//2}H", b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
src, dst = socket.inet_aton("198.18.0.2"), socket.inet_aton("198.18.0.1")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((iface, 0))
start = time.monotonic()
for i in range(n):
    delay = start + i / rate - time.monotonic()
    if delay > 0: time.sleep(delay)
    tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, port, i, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xffff, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s.send(bytes.fromhex(dst_mac.replace(":", "")) + b"\x02\x00\x00\x00\x00\x02\x08\x00" + ip + tcp)
PY
mac=$(ns ip -o link show v0 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
syns() { ns python3 /run/sdtest/syn.py v1 "$mac" 445 "$1" "${2:-2000}"; }
api() { ns curl -sf "http://127.0.0.1:9745/api/v1/ports/445" | python3 -c 'import json,sys; print(json.load(sys.stdin)["syn_total"])'; }
wait_active() {
  for _ in $(seq 75); do
    [[ $(ns systemctl is-active scan-agent 2>/dev/null) == active ]] && api >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}
xdp_id() { ns ip -d -o link show v0 | grep -o 'prog/xdp id [0-9]*' | awk '{print $3}'; }
conf() { ns sed -i "s/^keep_attached = .*/keep_attached = $1/" /etc/scan-agent/scan-agent.toml; }
# The API shows the last poll (every `interval`): wait (up to 12 s) until the count is
# WANT; prints the last count either way.
count_is() {
  local n=
  for _ in $(seq 60); do
    n=$(api 2>/dev/null)
    [[ $n == "$1" ]] && break
    sleep 0.2
  done
  echo "$n"
}
# A count after SYNs stopped: two polls later (interval 1s once the test has set it).
settled() { sleep 2.5; api; }
dpkg_ns() { # dpkg_ns ARGS: dpkg in the sandbox, output kept for failures
  ns env DEBIAN_FRONTEND=noninteractive dpkg --force-confold "$@" >>"$W/dpkg.log" 2>&1
}
show_log() { tail -"${1:-8}" "$W/dpkg.log" "$W/agent.log" 2>/dev/null | sed 's/^/       | /'; }
# There is no journald here: a runtime drop-in (in /run, not one of the package's files)
# sends the agent's output to a file.
ns mkdir -p /run/systemd/system/scan-agent.service.d
ns sh -c 'printf "[Service]\nStandardOutput=append:/run/sdtest/agent.log\nStandardError=inherit\n" \
  >/run/systemd/system/scan-agent.service.d/test-output.conf'

echo "package-test: $old_version -> $new_version, systemd $(/usr/lib/systemd/systemd --version | head -1 | cut -d' ' -f2)"

# 1-2. Install: the postinst starts the service.
t0=$(date +%s.%N)
if dpkg_ns -i /run/sdtest/old.deb && wait_active; then
  pid=$(ns systemctl show -p MainPID --value scan-agent)
  exe=$(ns readlink "/proc/$pid/exe") user=$(ns stat -c %U "/proc/$pid")
  frag=$(ns systemctl show -p FragmentPath --value scan-agent)
  if [[ $exe == /usr/bin/scan-agent && $user == scan-agent && $frag == ?(/usr)/lib/systemd/system/scan-agent.service &&
        -n $(xdp_id) ]] && ns dpkg-query -W -f '${Conffiles}' scan-agent | grep -q /etc/scan-agent/scan-agent.toml; then
    result OK "dpkg -i $old_version ($(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")s): service started from $frag, $exe as $user, attached to v0 (xdp id $(xdp_id)), config is a conffile"
  else
    result FAIL "dpkg -i: exe=$exe user=$user unit=$frag xdp=$(xdp_id)"
  fi
  syns 100
  n=$(count_is 100)
  if [[ $n == 100 ]]; then result OK "100 SYNs to 445 counted exactly"; else result FAIL "445: $n SYNs counted (want 100)"; fi
else
  result FAIL "dpkg -i $old_version or the service start failed"; show_log 20
  exit 1
fi

# 3. Upgrade in place with keep_attached while SYNs flow (polls every second from here).
conf true
ns sed -i 's/^interval = .*/interval = "1s"/' /etc/scan-agent/scan-agent.toml
ns systemctl restart scan-agent && wait_active
old_pid=$(ns systemctl show -p MainPID --value scan-agent)
syns 10000 500 &
sender=$!
sleep 1
t0=$(date +%s.%N)
dpkg_ns -i /run/sdtest/new.deb; rc=$?
upgrade_s=$(echo "$(date +%s.%N) - $t0" | bc)
sender_running=no; kill -0 "$sender" 2>/dev/null && sender_running=yes
wait "$sender"
wait_active
n=$(count_is 10100) new_pid=$(ns systemctl show -p MainPID --value scan-agent)
version=$(ns dpkg-query -W -f '${Version}' scan-agent)
if [[ $rc == 0 && $version == "$new_version" && $new_pid != "$old_pid" && $sender_running == yes && $n == 10100 ]]; then
  result OK "upgrade to $new_version in $(printf '%.1f' "$upgrade_s")s with keep_attached while 10000 SYNs were sent (20 s at 500/s): agent restarted (pid $old_pid -> $new_pid) before the sending ended, 10100 counted, none missed"
else
  result FAIL "upgrade: dpkg rc=$rc version=$version pid $old_pid -> $new_pid sender still running at the end=$sender_running count=$n (want 10100)"
  show_log
fi

# 3b. Negative control: the same in-place restart by dpkg (a reinstall) without
# keep_attached misses the SYNs sent while no program is attached.
conf false
ns systemctl restart scan-agent && wait_active
before=$(api)
syns 10000 500 &
sender=$!
sleep 1
dpkg_ns -i /run/sdtest/new.deb; rc=$?
sender_running=no; kill -0 "$sender" 2>/dev/null && sender_running=yes
wait "$sender"
wait_active
n=$(settled)
missed=$((before + 10000 - n))
if [[ $rc == 0 && $sender_running == yes && $missed -gt 0 ]]; then
  result OK "negative control: the same restart with keep_attached = false missed $missed of 10000 SYNs"
else
  result FAIL "negative control: reinstall without keep_attached: rc=$rc sender still running=$sender_running missed=$missed (want > 0)"
fi
conf true
ns systemctl restart scan-agent && wait_active
base=$(settled)

# 4. Remove with keep_attached: the program stays attached, pins and state stay.
id=$(xdp_id)
dpkg_ns -r scan-agent
if [[ $(ns systemctl is-active scan-agent) != active && -n $(xdp_id) && $(xdp_id) == "$id" ]] &&
   ns test -d /sys/fs/bpf/scan-agent && ns test -s /var/lib/scan-agent/state.bin && ! ns test -e /usr/bin/scan-agent; then
  result OK "dpkg -r with keep_attached = true: service and binary gone, program still attached (xdp id $id), pins and state kept"
else
  result FAIL "dpkg -r (keep_attached): active=$(ns systemctl is-active scan-agent) xdp=$(xdp_id) pins=$(ns ls /sys/fs/bpf/scan-agent | tr '\n' ' ')"
  show_log
fi

# 5. Reinstall (adopts the kept program), keep_attached = false, remove: detached.
dpkg_ns -i /run/sdtest/new.deb && wait_active
syns 10
n=$(( $(count_is $((base + 10))) - base ))
conf false
ns systemctl restart scan-agent && wait_active
dpkg_ns -r scan-agent
if [[ $n == 10 && -z $(xdp_id) ]] && ns test -d /sys/fs/bpf/scan-agent && ns test -s /var/lib/scan-agent/state.bin; then
  result OK "reinstall adopted the kept program (counts kept, 10 new SYNs counted); dpkg -r with keep_attached = false: detached, pins and state kept"
else
  result FAIL "reinstall/remove: new SYNs counted=$n (want 10, counts kept) xdp=$(xdp_id) pins=$(ns ls /sys/fs/bpf/scan-agent 2>&1 | tr '\n' ' ')"
  show_log
fi

# 6. Purge after a keep_attached remove: nothing attached, pinned or stored is left.
dpkg_ns -i /run/sdtest/new.deb && wait_active
conf true
ns systemctl restart scan-agent && wait_active
id=$(xdp_id)
dpkg_ns -P scan-agent
if [[ -z $(xdp_id) ]] && ! ns test -e /sys/fs/bpf/scan-agent && ! ns test -e /var/lib/scan-agent &&
   ! ns test -e /etc/scan-agent/scan-agent.toml && ! ns bpftool prog show id "$id" >/dev/null 2>&1 &&
   ! ns dpkg-query -W scan-agent >/dev/null 2>&1; then
  result OK "dpkg -P (after a keep_attached run): program $id gone, no pins, no state, no config"
else
  result FAIL "dpkg -P: xdp=$(xdp_id) pins=$(ns ls /sys/fs/bpf 2>&1 | tr '\n' ' ') state=$(ns ls /var/lib/scan-agent 2>&1) prog $id $(ns bpftool prog show id "$id" >/dev/null 2>&1 && echo 'still loaded')"
  show_log
fi

# 7. The host never saw any of it.
if [[ $(md5sum /var/lib/dpkg/status) == "$host_status_before" ]] && ! dpkg-query -W scan-agent >/dev/null 2>&1 &&
   [[ ! -e /usr/bin/scan-agent && ! -e /etc/scan-agent && ! -e /usr/lib/systemd/system/scan-agent.service ]]; then
  result OK "host untouched: dpkg database unchanged, no scan-agent files"
else
  result FAIL "the host was modified"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
