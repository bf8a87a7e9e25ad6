//! CPU time and memory as the kernel accounts them: /proc/stat (softirq and irq
//! time of every CPU), getrusage and schedstat (a process's own time), VmRSS.
use std::{fs, io};

use anyhow::{Context as _, Result, bail};

/// System-wide CPU times from the first line of /proc/stat, in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemTimes {
    pub irq: u64,
    pub softirq: u64,
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

pub fn system_times() -> Result<SystemTimes> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().context("/proc/stat is empty")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    if fields.len() < 7 {
        bail!("/proc/stat first line has {} fields: {line}", fields.len());
    }
    let ns = 1_000_000_000 / clock_ticks_per_second();
    // user nice system idle iowait irq softirq steal ...
    Ok(SystemTimes {
        irq: fields[5] * ns,
        softirq: fields[6] * ns,
    })
}

impl SystemTimes {
    /// Softirq + hardirq time between `self` and `later`.
    pub fn irq_ns_until(&self, later: &SystemTimes) -> u64 {
        (later.softirq + later.irq).saturating_sub(self.softirq + self.irq)
    }
}

/// User + system time of this process (all threads), from getrusage.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID, scheduler precision).
pub fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime writes into the zeroed struct we pass.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of process `pid` in ns: the sum of its threads' schedstat run times
/// (scheduler precision), or utime + stime from /proc/PID/stat (tick precision)
/// when schedstat is missing.
pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    match schedstat_ns(pid) {
        Ok(ns) => Ok(ns),
        Err(_) => stat_cpu_ns(pid),
    }
}

fn schedstat_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between listing and reading.
        let Ok(text) = fs::read_to_string(path) else {
            continue;
        };
        let run: u64 = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("bad schedstat"))?;
        total += run;
    }
    Ok(total)
}

fn stat_cpu_ns(pid: u32) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces, hence rsplit on ')').
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((get(11) + get(12)) * (1_000_000_000 / clock_ticks_per_second()))
}
