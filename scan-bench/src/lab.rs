//! A network namespace joined to the root namespace by a veth pair, with
//! addresses in 198.18.0.0/15 and no route out; removed on drop (also on error
//! or panic). Names carry our pid, so leftovers of a killed run are recognised.
use std::{fs, net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{Context as _, Result};

use crate::proc;

const NS_PREFIX: &str = "sbench-";
const LINK_PREFIX: &str = "sbr";
const PEER_PREFIX: &str = "sbn";
pub const NFT_PREFIX: &str = "sbench_";
pub const BPFFS_PREFIX: &str = "scan-bench-";
/// Scratch directories under the temporary directory.
pub const SCRATCH_PREFIX: &str = "scan-bench-";

pub struct Lab {
    pub ns: String,
    /// Root-namespace end (the sensor's interface).
    pub root_if: String,
    /// Namespace end (the traffic generator's interface).
    pub ns_if: String,
    pub root_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    pub root_mac: String,
    pub ns_mac: String,
    pub root_ifindex: u32,
}

fn ip(args: &[&str]) -> Result<()> {
    proc::run(Command::new("ip").args(args), Duration::from_secs(10))?;
    Ok(())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<()> {
    proc::run(
        Command::new("ip").args(["netns", "exec", ns]).args(args),
        Duration::from_secs(10),
    )?;
    Ok(())
}

impl Lab {
    /// `tag` (one lowercase letter) tells apart the labs of one run.
    pub fn create(tag: char) -> Result<Self> {
        let pid = std::process::id();
        // A /30 per (pid, tag) in 198.19.0.0/16, so concurrent runs do not clash.
        let slot = (pid.wrapping_mul(4).wrapping_add(tag as u32 % 4)) % 16_384;
        let base = u32::from(Ipv4Addr::new(198, 19, 0, 0)) + slot * 4;
        let mac = |end: u8| {
            let p = pid.to_be_bytes();
            format!(
                "02:5b:{:02x}:{:02x}:{:02x}:{end:02x}",
                p[2], p[3], tag as u8
            )
        };
        let mut lab = Self {
            ns: format!("{NS_PREFIX}{pid}-{tag}"),
            root_if: format!("{LINK_PREFIX}{pid}{tag}"),
            ns_if: format!("{PEER_PREFIX}{pid}{tag}"),
            root_ip: Ipv4Addr::from(base + 2),
            ns_ip: Ipv4Addr::from(base + 1),
            root_mac: mac(2),
            ns_mac: mac(1),
            root_ifindex: 0,
        };
        // From here on, dropping `lab` removes whatever was made.
        lab.build()
            .with_context(|| format!("creating the lab namespace {}", lab.ns))?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let (ns, root_if, ns_if) = (&self.ns, &self.root_if, &self.ns_if);
        ip(&["netns", "add", ns])?;
        // No IPv6 in the namespace: no router/neighbour solicitations in the counts.
        in_ns(
            ns,
            &[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        ip(&[
            "link",
            "add",
            root_if,
            "address",
            &self.root_mac,
            "type",
            "veth",
            "peer",
            "name",
            ns_if,
            "address",
            &self.ns_mac,
            "netns",
            ns,
        ])?;
        fs::write(
            format!("/proc/sys/net/ipv6/conf/{root_if}/disable_ipv6"),
            "1",
        )
        .context("disabling IPv6 on the root end")?;
        let root_cidr = format!("{}/30", self.root_ip);
        let ns_cidr = format!("{}/30", self.ns_ip);
        ip(&["addr", "add", &root_cidr, "dev", root_if])?;
        ip(&["-n", ns, "addr", "add", &ns_cidr, "dev", ns_if])?;
        // Static neighbours: no ARP in the counts either.
        let (root_ip, ns_ip) = (self.root_ip.to_string(), self.ns_ip.to_string());
        ip(&[
            "neigh",
            "replace",
            &ns_ip,
            "lladdr",
            &self.ns_mac,
            "dev",
            root_if,
            "nud",
            "permanent",
        ])?;
        ip(&[
            "-n",
            ns,
            "neigh",
            "replace",
            &root_ip,
            "lladdr",
            &self.root_mac,
            "dev",
            ns_if,
            "nud",
            "permanent",
        ])?;
        ip(&["link", "set", root_if, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", ns_if, "up"])?;
        self.root_ifindex = fs::read_to_string(format!("/sys/class/net/{root_if}/ifindex"))?
            .trim()
            .parse()?;
        Ok(())
    }

    /// Packets received by the root end (veth counts what its peer sent).
    pub fn root_rx_packets(&self) -> Result<u64> {
        let path = format!("/sys/class/net/{}/statistics/rx_packets", self.root_if);
        Ok(fs::read_to_string(&path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .parse()?)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting one end of a veth deletes both.
        proc::run_quiet(Command::new("ip").args(["link", "del", &self.root_if]));
        proc::run_quiet(Command::new("ip").args(["netns", "del", &self.ns]));
    }
}

fn dead_owner(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    match digits.parse::<u32>() {
        Ok(pid) => pid != std::process::id() && !proc::pid_alive(pid),
        Err(_) => false,
    }
}

/// Removes namespaces, links, nftables tables and bpffs directories left by a
/// scan-bench run that was killed before its guards ran (its pid is gone).
/// Returns what was removed.
pub fn remove_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let text = |cmd: &mut Command| {
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for line in text(Command::new("ip").args(["netns", "list"])).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if dead_owner(name, NS_PREFIX) {
            proc::run_quiet(Command::new("ip").args(["netns", "del", name]));
            removed.push(format!("netns {name}"));
        }
    }
    for line in text(Command::new("ip").args(["-o", "link", "show"])).lines() {
        // "12: sbr123f@if11: <...>"
        let name = line.split(':').nth(1).unwrap_or("").trim();
        let name = name.split('@').next().unwrap_or("");
        if dead_owner(name, LINK_PREFIX) {
            proc::run_quiet(Command::new("ip").args(["link", "del", name]));
            removed.push(format!("link {name}"));
        }
    }
    for line in text(Command::new("nft").args(["list", "tables"])).lines() {
        // "table netdev sbench_123"
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [_, family, name] = words[..]
            && dead_owner(name, NFT_PREFIX)
        {
            proc::run_quiet(Command::new("nft").args(["delete", "table", family, name]));
            removed.push(format!("nftables table {family} {name}"));
        }
    }
    if let Ok(dir) = fs::read_dir("/sys/fs/bpf") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead_owner(&name, BPFFS_PREFIX) {
                crate::agent::remove_pin_dir(&entry.path());
                removed.push(format!("bpffs {}", entry.path().display()));
            }
        }
    }
    if let Ok(dir) = fs::read_dir(std::env::temp_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead_owner(&name, SCRATCH_PREFIX) && entry.path().is_dir() {
                let _ = fs::remove_dir_all(entry.path());
                removed.push(format!("scratch directory {}", entry.path().display()));
            }
        }
    }
    removed
}
