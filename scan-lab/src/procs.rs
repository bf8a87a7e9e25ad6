//! Memory and descriptors of a process and its descendants, from /proc: the agent may
//! run as more than one process (a privileged attacher and an unprivileged worker), and
//! what it costs is their sum.
use std::fs;

use anyhow::{Context, Result};

/// One process of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub pid: u32,
    /// The command line after the program name (e.g. `run --iface ...`), shortened: tells
    /// the processes of one binary apart.
    pub role: String,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak resident set over the process's life), KiB.
    pub hwm_kib: u64,
    /// Of `rss_kib`: anonymous memory (heap, stacks), KiB (RssAnon).
    pub anon_kib: u64,
    /// Proportional set size, KiB: each resident page divided by the number of processes
    /// mapping it, so the sum over processes counts a shared page (the binary's text, a
    /// BPF map mapped by two processes) once.
    pub pss_kib: u64,
    /// Of `rss_kib`: BPF maps mapped into the process (`anon_inode:bpf-map`), KiB: kernel
    /// memory that exists whether or not it is mapped, counted in VmRSS once touched.
    pub bpf_maps_kib: u64,
    /// Open file descriptors.
    pub fds: usize,
}

/// `pid` and every descendant (children found through each process's parent id), `pid`
/// first, then by pid. A process that exits while being read is left out.
pub fn tree(pid: u32) -> Result<Vec<Usage>> {
    let mut parents = Vec::new();
    for entry in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(parent) = parent_of(child) {
            parents.push((child, parent));
        }
    }
    let mut members = vec![pid];
    let mut at = 0;
    while at < members.len() {
        let parent = members[at];
        let mut children: Vec<u32> = parents
            .iter()
            .filter(|&&(_, p)| p == parent)
            .map(|&(c, _)| c)
            .collect();
        children.sort_unstable();
        members.extend(children);
        at += 1;
    }
    let mut out = vec![usage(pid)?];
    out.extend(members[1..].iter().filter_map(|&p| usage(p).ok()));
    Ok(out)
}

/// The sum of VmRSS over [`tree`], KiB, and the sum of open descriptors.
pub fn total(tree: &[Usage]) -> (u64, usize) {
    (
        tree.iter().map(|u| u.rss_kib).sum(),
        tree.iter().map(|u| u.fds).sum(),
    )
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses).
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// One process's figures.
pub fn usage(pid: u32) -> Result<Usage> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .skip(1)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut role = args.join(" ");
    if role.len() > 40 {
        let mut cut = 40;
        while !role.is_char_boundary(cut) {
            cut -= 1;
        }
        role.truncate(cut);
        role.push_str("...");
    }
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let pss_kib = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|rollup| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let mut in_map = false;
    let mut bpf_maps_kib = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header line: `start-end perms offset dev inode [name]`.
            in_map = line.ends_with("anon_inode:bpf-map");
        } else if in_map && let Some(rss) = line.strip_prefix("Rss:") {
            bpf_maps_kib += rss
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Usage {
        pid,
        role,
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
        pss_kib,
        bpf_maps_kib,
        fds: fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("reading /proc/{pid}/fd"))?
            .count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_found_and_counted() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let me = std::process::id();
        // Until the child has exec'd `sleep` (before that it is a copy of this process).
        let started = std::time::Instant::now();
        while !fs::read(format!("/proc/{}/cmdline", child.id()))
            .unwrap_or_default()
            .starts_with(b"sleep\0")
        {
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let found = tree(me).unwrap();
        assert_eq!(found[0].pid, me);
        let sleeper = found
            .iter()
            .find(|u| u.pid == child.id())
            .expect("the child is in the tree");
        assert_eq!(sleeper.role, "30");
        assert!(sleeper.rss_kib > 0 && sleeper.hwm_kib >= sleeper.rss_kib);
        assert!(sleeper.anon_kib > 0 && sleeper.anon_kib < sleeper.rss_kib);
        assert!(sleeper.pss_kib > 0 && sleeper.pss_kib <= sleeper.rss_kib);
        assert_eq!(sleeper.bpf_maps_kib, 0);
        let (rss, fds) = total(&found);
        assert!(rss >= found[0].rss_kib + sleeper.rss_kib);
        assert!(fds >= 3);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(tree(me).unwrap().iter().all(|u| u.pid != child.id()));
    }
}
