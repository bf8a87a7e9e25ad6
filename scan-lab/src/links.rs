//! Other link kinds and other programs for the lab tests: raw frames written onto a
//! veth from the lab namespace (AF_PACKET), a TUN device (an L3 link) fed with IP
//! packets, and small foreign BPF programs (built with clang) that share the hooks.
use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::net::{Lab, ip};

static NEXT_TUN: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Writes `frames` onto the peer end from inside the namespace with an
    /// AF_PACKET socket, as a driver would deliver them to the host end: exact
    /// frames (PPPoE, VLAN, anything), no retransmissions. Returns the frames sent.
    pub fn inject(&self, frames: Vec<Vec<u8>>) -> Result<usize> {
        let peer_if = self.peer_if.clone();
        self.in_namespace(move || send_raw(&peer_if, &frames))?
    }

    /// Sets the MTU of both ends (e.g. jumbo frames), before anything is attached.
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        ip(&["link", "set", &self.host_if, "mtu", &mtu])?;
        ip(&[
            "-n",
            &self.namespace,
            "link",
            "set",
            &self.peer_if,
            "mtu",
            &mtu,
        ])
    }

    /// The MAC addresses (host, peer) as bytes, for raw frames.
    pub fn macs(&self) -> Result<([u8; 6], [u8; 6])> {
        Ok((parse_mac(&self.host_mac)?, parse_mac(&self.peer_mac)?))
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("not a MAC address: {text}");
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {text}"))?;
    }
    Ok(mac)
}

fn send_raw(interface: &str, frames: &[Vec<u8>]) -> Result<usize> {
    let name = CString::new(interface)?;
    // SAFETY: plain calls with valid arguments; the fd is closed below.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            bail!("no interface {interface} in the lab namespace");
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let mut sent = 0;
        for frame in frames {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let n = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            if n != frame.len() as isize {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                bail!("sending a {}-byte frame: {e}", frame.len());
            }
            sent += 1;
        }
        libc::close(fd);
        Ok(sent)
    }
}

/// A TUN device (IFF_TUN, no packet information) in the root namespace, up, with
/// no address: packets written to it arrive on its ingress (where the sensor
/// hooks) and then find no local address and no route, so nothing goes anywhere.
/// Not persistent: the kernel deletes it when its fd closes (on drop, or when the
/// test process dies), so nothing is left behind.
pub struct Tun {
    pub name: String,
    file: File,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

impl Tun {
    pub fn create() -> Result<Self> {
        crate::net::require_root("the lab creates a TUN device")?;
        let pid = std::process::id();
        let n = NEXT_TUN.fetch_add(1, Ordering::Relaxed);
        let name = format!("sclt{}-{n}", pid % 100_000);
        let tun = Self::open(&name)?;
        ip(&["link", "set", &name, "up"])?;
        Ok(tun)
    }

    fn open(name: &str) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        // struct ifreq: 16 bytes of name, then the flags.
        let mut ifreq = [0u8; 40];
        ifreq[..name.len()].copy_from_slice(name.as_bytes());
        ifreq[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes the ifreq buffer, which is large enough.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) } != 0 {
            bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        }
        Ok(Self {
            name: name.to_string(),
            file,
        })
    }

    /// Writes IP packets into the device: each arrives on its ingress.
    pub fn write(&mut self, packets: &[Vec<u8>]) -> Result<usize> {
        for packet in packets {
            self.file
                .write_all(packet)
                .with_context(|| format!("writing a packet into {}", self.name))?;
        }
        Ok(packets.len())
    }
}

/// Builds `<name>.c` from `scan-lab/bpf/` or the benchmark's `bench/` with clang
/// (`$SCAN_BENCH_CLANG`, else clang-22) into `out_dir`; returns the object's path.
pub fn build_bpf(name: &str, out_dir: &Path) -> Result<PathBuf> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = format!("{name}.c");
    let source = [crate_dir.join("bpf"), crate_dir.join("../bench")]
        .into_iter()
        .map(|dir| dir.join(&file))
        .find(|path| path.exists())
        .with_context(|| format!("no {file} in scan-lab/bpf or bench"))?;
    let object = out_dir.join(format!("{name}.o"));
    let clang = std::env::var("SCAN_BENCH_CLANG").unwrap_or_else(|_| "clang-22".into());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-c"])
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .status()
        .with_context(|| format!("running {clang} (`cargo xtask setup` installs clang-22)"))?;
    if !status.success() {
        bail!("{clang} failed on {}", source.display());
    }
    Ok(object)
}
