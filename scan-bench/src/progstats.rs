//! The kernel's own run-time statistics of an attached XDP program
//! (BPF_ENABLE_STATS): time spent in the program and runs, as the kernel counts
//! them in the real receive path. Enabled only while a measurement holds the fd,
//! because the two clock reads per run it adds would weigh on the CPU figures.
use std::{os::fd::OwnedFd, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::sys::{Stats, enable_stats};

/// Run-time statistics switched on until dropped.
pub struct StatsOn {
    _fd: OwnedFd,
}

pub fn enable() -> Result<StatsOn> {
    Ok(StatsOn {
        _fd: enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?,
    })
}

/// The id of the XDP program attached to `interface` (any mode).
pub fn attached_program(interface: &str) -> Result<u32> {
    scan_lab::net::xdp_prog_id(interface)?
        .with_context(|| format!("no XDP program attached to {interface}"))
}

/// (time in the program, runs) of program `id` so far.
pub fn run_stats(id: u32) -> Result<(Duration, u64)> {
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if info.id() == id {
            return Ok((info.run_time(), info.run_count()));
        }
    }
    bail!("program {id} is not loaded")
}
