//! Least privilege as `/proc` shows it: which processes hold the socket listening on a
//! port, and which capabilities each of a process's threads holds (the process tree and
//! its memory are in [`crate::procs`]).
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The inodes of the TCP sockets (IPv4 and IPv6) listening on `port`, from
/// `/proc/net/tcp` and `/proc/net/tcp6` of this network namespace.
pub fn listening_inodes(port: u16) -> Result<Vec<u64>> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).with_context(|| format!("reading {table}"))?;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // 0A: TCP_LISTEN.
            if local_port == Some(port) && *state == "0A" {
                inodes.push(inode.parse().context("inode in /proc/net/tcp")?);
            }
        }
    }
    Ok(inodes)
}

/// Every process holding a socket that listens on `port` (scanning `/proc/*/fd`).
pub fn pids_listening_on(port: u16) -> Result<Vec<u32>> {
    let inodes = listening_inodes(port)?;
    if inodes.is_empty() {
        bail!("nothing listens on port {port}");
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that exits meanwhile has no fd directory any more: skipped.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| wanted.iter().any(|w| Path::new(w) == target))
        });
        if holds {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// One thread's capability sets, from its `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadCaps {
    pub tid: u32,
    pub name: String,
    pub effective: u64,
    pub permitted: u64,
    pub ambient: u64,
    pub inheritable: u64,
    pub bounding: u64,
    pub no_new_privs: bool,
}

/// The capabilities of every thread of `pid` (`/proc/<pid>/task/*/status`).
pub fn thread_caps(pid: u32) -> Result<Vec<ThreadCaps>> {
    let mut threads = Vec::new();
    let dir = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status"))?;
        let field = |name: &str| -> Result<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .with_context(|| format!("no {name} in {}/status", entry.path().display()))
        };
        let hex = |name: &str| -> Result<u64> {
            u64::from_str_radix(field(name)?, 16).with_context(|| format!("{name} is not hex"))
        };
        threads.push(ThreadCaps {
            tid,
            name: field("Name")?.to_string(),
            effective: hex("CapEff")?,
            permitted: hex("CapPrm")?,
            ambient: hex("CapAmb")?,
            inheritable: hex("CapInh")?,
            bounding: hex("CapBnd")?,
            no_new_privs: field("NoNewPrivs")? == "1",
        });
    }
    if threads.is_empty() {
        bail!("{dir} lists no thread");
    }
    Ok(threads)
}
