//! What a scan-bench run that was killed before its guards ran leaves behind,
//! recognised by its pid in the name, and its removal. Lab namespaces, veth
//! pairs and bpffs pins (under `scan-lab-bench-<pid>`) are scan-lab's.
use std::{fs, process::Command};

use crate::proc;

pub const NFT_PREFIX: &str = "sbench_";
/// Scratch directories under the temporary directory.
pub const SCRATCH_PREFIX: &str = "scan-bench-";

fn dead_owner(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    match digits.parse::<u32>() {
        Ok(pid) => pid != std::process::id() && !scan_lab::net::pid_alive(pid),
        Err(_) => false,
    }
}

/// Removes labs, bpffs pins, nftables tables and scratch directories of dead
/// runs. Returns what was removed.
pub fn remove_leftovers() -> Vec<String> {
    let mut removed = scan_lab::net::remove_stale_labs_report();
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in tables.lines() {
        // "table netdev sbench_123"
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [_, family, name] = words[..]
            && dead_owner(name, NFT_PREFIX)
        {
            proc::run_quiet(Command::new("nft").args(["delete", "table", family, name]));
            removed.push(format!("nftables table {family} {name}"));
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
