//! What the figures were measured on.
use std::fs;

use serde_json::{Value, json};

pub struct Machine {
    pub cpu_model: String,
    pub online_cpus: usize,
    pub possible_cpus: usize,
    pub kernel: String,
    pub memory_mib: u64,
    pub clang: String,
    pub trafgen: String,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "not found".into())
}

impl Machine {
    pub fn probe(clang: &str) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let online_cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let possible_cpus = aya::util::nr_cpus().unwrap_or(0);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let memory_mib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        Self {
            cpu_model,
            online_cpus,
            possible_cpus,
            kernel,
            memory_mib,
            clang: first_line(clang, &["--version"]),
            trafgen: first_line("trafgen", &["--version"]),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cpu_model": self.cpu_model,
            "online_cpus": self.online_cpus,
            "possible_cpus": self.possible_cpus,
            "kernel": self.kernel,
            "memory_mib": self.memory_mib,
            "clang": self.clang,
            "trafgen": self.trafgen,
        })
    }
}
