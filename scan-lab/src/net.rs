//! Network namespaces and veth pairs, cleaned up on drop (also after a panic).
use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const NS_PREFIX: &str = "scanlab-";
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// One lab: the root-side veth end `host_if` (where the sensor attaches) and the
/// scanner namespace `namespace` holding the other end.
pub struct Lab {
    pub namespace: String,
    pub host_if: String,
    pub peer_if: String,
    pub host_v4: Ipv4Addr,
    pub peer_v4: Ipv4Addr,
    /// Not assigned in a quiet lab ([`Lab::create_quiet`]), which has no IPv6.
    pub host_v6: Ipv6Addr,
    pub peer_v6: Ipv6Addr,
    /// Locally administered MAC addresses of the two ends, e.g. for raw frames.
    pub host_mac: String,
    pub peer_mac: String,
    pub host_ifindex: u32,
}

pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this needs root: {why}. Run it as root (CI does); it is not skipped");
    }
    Ok(())
}

/// Scratch directories (pins under /sys/fs/bpf, files under the temporary
/// directory) are named `scan-lab-<tag>-<pid>`.
pub(crate) const PIN_PREFIX: &str = "scan-lab-";

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    std::path::Path::new("/proc").join(pid.to_string()).exists()
}

fn dead(pid: &str) -> bool {
    pid.parse().is_ok_and(|pid| !pid_alive(pid))
}

/// Deletes labs (namespaces with their veth pairs, scratch directories) left by
/// processes that are gone, such as a killed test run.
pub fn remove_stale_labs() {
    remove_stale_labs_report();
}

/// [`remove_stale_labs`], returning what it removed.
pub fn remove_stale_labs_report() -> Vec<String> {
    let mut removed = Vec::new();
    // Scratch places (`Scratch`): pin directories and temporary directories.
    for parent in [
        std::path::PathBuf::from("/sys/fs/bpf"),
        std::env::temp_dir(),
    ] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PIN_PREFIX) else {
                continue;
            };
            let pid = rest
                .split('-')
                .find(|part| part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty());
            if pid.is_some_and(dead) && std::fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(entry.path().display().to_string());
            }
        }
    }
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return removed;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        // The peer end lives in the namespace: deleting it deletes the pair.
        if dead(pid) && ip(&["netns", "del", name]).is_ok() {
            removed.push(format!("netns {name}"));
        }
    }
    removed
}

fn subnet_in_use(octet: u8) -> bool {
    Command::new("ip")
        .args(["-o", "addr", "show", "to", &format!("198.18.{octet}.0/24")])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(true)
}

impl Lab {
    pub fn create() -> Result<Self> {
        Self::create_with(false)
    }

    /// A lab whose pair carries only what is sent on purpose: IPv6 is off on both
    /// ends and the neighbours are static, so there are no router or neighbour
    /// solicitations and no ARP. For exact packet counts (benchmarks).
    pub fn create_quiet() -> Result<Self> {
        Self::create_with(true)
    }

    fn create_with(quiet: bool) -> Result<Self> {
        require_root("the lab creates network namespaces and veth pairs")?;
        remove_stale_labs();
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let namespace = format!("{NS_PREFIX}{pid}-{n}");
        let host_if = format!("scl{}-{n}h", pid % 100_000);
        let peer_if = format!("scl{}-{n}p", pid % 100_000);
        let start = ((pid as usize * 7 + n as usize) % 200) as u8;
        let octet = (0..200u8)
            .map(|i| 10 + (start + i) % 200)
            .find(|&o| !subnet_in_use(o))
            .context("no free 198.18.x.0/24 subnet for the lab")?;
        let mac = |end: u8| {
            let p = pid.to_be_bytes();
            format!(
                "02:{:02x}:{:02x}:{:02x}:{:02x}:{end:02x}",
                p[1], p[2], p[3], n as u8
            )
        };
        let mut lab = Self {
            namespace,
            host_if,
            peer_if,
            host_v4: Ipv4Addr::new(198, 18, octet, 1),
            peer_v4: Ipv4Addr::new(198, 18, octet, 2),
            host_v6: format!("2001:db8:5ca:{octet:x}::1").parse()?,
            peer_v6: format!("2001:db8:5ca:{octet:x}::2").parse()?,
            host_mac: mac(1),
            peer_mac: mac(2),
            host_ifindex: 0,
        };
        // From here on, Drop removes whatever was made.
        lab.build(quiet)
            .with_context(|| format!("building lab {}", lab.namespace))?;
        Ok(lab)
    }

    fn build(&mut self, quiet: bool) -> Result<()> {
        let ns = &self.namespace;
        ip(&["netns", "add", ns])?;
        if quiet {
            // Before the peer arrives, so that it never starts IPv6.
            ip(&[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])?;
        }
        self.add_pair(quiet)
    }

    /// Deletes the veth pair and creates it again under the same names and addresses (a
    /// new ifindex), as a PPP or VLAN interface that goes and comes back.
    pub fn recreate_pair(&mut self) -> Result<()> {
        ip(&["link", "del", &self.host_if])?;
        self.add_pair(false)
    }

    fn add_pair(&mut self, quiet: bool) -> Result<()> {
        let (ns, host_if, peer_if) = (&self.namespace, &self.host_if, &self.peer_if);
        let in_ns = |args: &[&str]| {
            let mut full = vec!["-n", ns];
            full.extend_from_slice(args);
            ip(&full)
        };
        // The peer end is created in the namespace: deleting the namespace (on
        // drop, or as a stale leftover) always deletes the pair.
        ip(&[
            "link",
            "add",
            host_if,
            "address",
            &self.host_mac,
            "type",
            "veth",
            "peer",
            "name",
            peer_if,
            "address",
            &self.peer_mac,
            "netns",
            ns,
        ])?;
        let (host_v4, peer_v4) = (
            format!("{}/24", self.host_v4),
            format!("{}/24", self.peer_v4),
        );
        ip(&["addr", "add", &host_v4, "dev", host_if])?;
        in_ns(&["addr", "add", &peer_v4, "dev", peer_if])?;
        if quiet {
            std::fs::write(
                format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"),
                "1",
            )
            .context("disabling IPv6 on the host end")?;
            let (host, peer) = (self.host_v4.to_string(), self.peer_v4.to_string());
            // Static neighbours: no ARP either.
            ip(&[
                "neigh",
                "replace",
                &peer,
                "lladdr",
                &self.peer_mac,
                "dev",
                host_if,
                "nud",
                "permanent",
            ])?;
            in_ns(&[
                "neigh",
                "replace",
                &host,
                "lladdr",
                &self.host_mac,
                "dev",
                peer_if,
                "nud",
                "permanent",
            ])?;
        } else {
            let (host_v6, peer_v6) = (
                format!("{}/64", self.host_v6),
                format!("{}/64", self.peer_v6),
            );
            ip(&["addr", "add", &host_v6, "dev", host_if, "nodad"])?;
            in_ns(&["addr", "add", &peer_v6, "dev", peer_if, "nodad"])?;
        }
        ip(&["link", "set", host_if, "up"])?;
        in_ns(&["link", "set", peer_if, "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        // No default route in the namespace: nothing can leave the lab.
        self.host_ifindex = std::fs::read_to_string(format!("/sys/class/net/{host_if}/ifindex"))?
            .trim()
            .parse()?;
        Ok(())
    }

    /// Packets received by the host end (veth counts what its peer sent).
    pub fn host_rx_packets(&self) -> Result<u64> {
        let path = format!("/sys/class/net/{}/statistics/rx_packets", self.host_if);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .parse()?)
    }

    /// Runs `f` on a thread that has joined the lab's namespace.
    pub fn in_namespace<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let path = format!("/run/netns/{}", self.namespace);
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only; the fd is valid for the call.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!("setns: {}", io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("lab thread panicked"))?
    }

    /// Opens `count` TCP connections from the namespace to `port` on the host
    /// end: exactly one SYN each, since the host answers at once (RST when nothing
    /// listens, SYN-ACK when something does). Returns the SYNs sent.
    pub fn syns(&self, ipv6: bool, port: u16, count: u32) -> Result<u32> {
        let addr: IpAddr = if ipv6 {
            self.host_v6.into()
        } else {
            self.host_v4.into()
        };
        self.in_namespace(move || send_syns(SocketAddr::new(addr, port), count, None))?
    }

    /// Like [`Lab::syns`] but spread evenly at `rate` per second.
    pub fn syns_at_rate(&self, port: u16, count: u32, rate: f64) -> Result<u32> {
        let addr = SocketAddr::new(self.host_v4.into(), port);
        self.in_namespace(move || send_syns(addr, count, Some(rate)))?
    }

    /// Adds addresses to the host end (`host`) and to the namespace's end (`peer`), each
    /// in the lab's own subnets (the caller's duty), IPv6 without duplicate detection.
    /// They go with the pair when the lab is dropped.
    pub fn add_addresses(&self, host: &[IpAddr], peer: &[IpAddr]) -> Result<()> {
        let batch = |dev: &str, addresses: &[IpAddr]| -> String {
            addresses
                .iter()
                .map(|a| match a {
                    IpAddr::V4(a) => format!("addr add {a}/24 dev {dev}\n"),
                    IpAddr::V6(a) => format!("addr add {a}/64 dev {dev} nodad\n"),
                })
                .collect()
        };
        for (namespace, dev, addresses) in [
            (None, &self.host_if, host),
            (Some(&self.namespace), &self.peer_if, peer),
        ] {
            if addresses.is_empty() {
                continue;
            }
            let mut cmd = Command::new("ip");
            if let Some(ns) = namespace {
                cmd.args(["-n", ns]);
            }
            let mut child = cmd
                .args(["-batch", "-"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("running ip -batch (iproute2)")?;
            let mut stdin = child.stdin.take().context("ip -batch stdin")?;
            io::Write::write_all(&mut stdin, batch(dev, addresses).as_bytes())?;
            drop(stdin);
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "ip -batch on {dev}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// One SYN per `(source, target)` pair to `port`, at `rate` per second, from the
    /// namespace: a non-blocking connect from a socket bound to `source` (an address of
    /// the namespace, see [`Lab::add_addresses`]), closed at once so the SYN is never
    /// retransmitted. Returns the SYNs sent.
    pub fn syns_from(&self, pairs: Vec<(IpAddr, IpAddr)>, port: u16, rate: f64) -> Result<u32> {
        self.in_namespace(move || {
            let started = Instant::now();
            let mut sent = 0;
            for (i, (source, target)) in pairs.into_iter().enumerate() {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                one_syn(source, SocketAddr::new(target, port))?;
                sent += 1;
            }
            Ok(sent)
        })?
    }

    /// A listener on the host end (root namespace) that accepts and closes.
    pub fn listen(&self, port: u16) -> Result<TcpListener> {
        let listener = TcpListener::bind((self.host_v4, port))
            .with_context(|| format!("listening on {}:{port}", self.host_v4))?;
        let accept = listener.try_clone()?;
        std::thread::spawn(move || {
            for stream in accept.incoming() {
                drop(stream);
            }
        });
        Ok(listener)
    }
}

/// `sockaddr_storage` and its length for `addr`.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Sends one SYN from `source` to `target` (see [`Lab::syns_from`]).
fn one_syn(source: IpAddr, target: SocketAddr) -> Result<()> {
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is closed below on every path.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        bail!("socket: {}", io::Error::last_os_error());
    }
    let result = (|| {
        let (local, local_len) = sockaddr(SocketAddr::new(source, 0));
        // SAFETY: a valid sockaddr of the given length.
        if unsafe { libc::bind(fd, (&raw const local).cast(), local_len) } != 0 {
            bail!("bind {source}: {}", io::Error::last_os_error());
        }
        let (remote, remote_len) = sockaddr(target);
        // SAFETY: as above.
        let rc = unsafe { libc::connect(fd, (&raw const remote).cast(), remote_len) };
        let error = io::Error::last_os_error();
        if rc != 0 && error.raw_os_error() != Some(libc::EINPROGRESS) {
            bail!("connect {source} -> {target}: {error}");
        }
        Ok(())
    })();
    // SAFETY: closes the fd opened above.
    unsafe { libc::close(fd) };
    result
}

/// Bounded: at most `count` connections, each with a 2 s timeout.
fn send_syns(addr: SocketAddr, count: u32, rate: Option<f64>) -> Result<u32> {
    let started = Instant::now();
    let mut sent = 0;
    for i in 0..count {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(f64::from(i) / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => bail!("connect to {addr}: {e} (after {sent} SYNs)"),
        }
        sent += 1;
    }
    // Hold the pace to the end of the period, so back-to-back calls keep `rate`.
    if let Some(rate) = rate {
        let end = started + Duration::from_secs_f64(f64::from(count) / rate);
        if let Some(wait) = end.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(sent)
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting the namespace destroys the peer end, and with it the pair.
        let _ = ip(&["netns", "del", &self.namespace]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// The id of the program on `interface`'s XDP hook (any mode), `None` when the hook is
/// free: the kernel's view, through rtnetlink.
pub fn xdp_prog_id(interface: &str) -> Result<Option<u32>> {
    let index = scan_agent::sensor::ifindex(interface)?;
    Ok(scan_agent::xdp_hook::query(index)
        .with_context(|| format!("reading the XDP hook of {interface}"))?
        .map(|holder| holder.prog_id))
}

/// Whether an XDP program is on `interface` (false when there is no such interface).
pub fn xdp_attached(interface: &str) -> bool {
    xdp_prog_id(interface).is_ok_and(|id| id.is_some())
}

/// Polls every 5 ms until an XDP program is on `interface`: how long that took, or an
/// error after `limit`.
pub fn wait_xdp_attached(
    interface: &str,
    limit: std::time::Duration,
) -> anyhow::Result<std::time::Duration> {
    let started = std::time::Instant::now();
    while !xdp_attached(interface) {
        if started.elapsed() >= limit {
            anyhow::bail!("no XDP program on {interface} within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(started.elapsed())
}
