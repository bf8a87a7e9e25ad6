//! Part 4a: the real agent binary on a lab veth. RSS once it has seen SYNs on
//! all 65,536 ports, its CPU over a window at the default interval while every
//! port keeps receiving SYNs, its memory and poll time over a window in which every port
//! keeps receiving SYNs *and* clients scrape every endpoint (against the idle agent of the
//! same run), the time to scrape /metrics over HTTP, and HTTP pressure:
//! scrapes while 1,000 idle connections are held open, and whether 200 scrapes/s delay
//! the polls (the gaps between poll timestamps, against the same without load).
//! Memory is the sum over the agent's processes (it may run as more than one).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use scan_lab::{
    Agent, Lab, Scratch,
    http::sample,
    procs::{self, Usage},
};

use crate::{cpu, proc, stats, trafgen};

pub struct Settings {
    pub cpu_window: Duration,
    /// How long every port gets SYNs while clients scrape (memory and poll time).
    pub memory_window: Duration,
    pub scrapes: usize,
    /// How long 200 scrapes/s run (and the quiet comparison before them).
    pub pressure: Duration,
}

/// Scrapes per second of the pressure run.
pub const PRESSURE_RATE: u32 = 200;
/// Idle connections held open during the idle-connection scrapes.
pub const IDLE_CONNECTIONS: usize = 1000;
/// Requests per second during the memory window, spread over [`SCRAPED`].
pub const MEMORY_SCRAPE_RATE: u32 = 20;
/// What the memory window's clients fetch in turn (`{port}`: a different port each time).
pub const SCRAPED: [&str; 4] = ["/metrics", "/api/v1/ports", "/api/v1/ports/{port}", "/"];

/// Poll-time figures from `scan_agent_poll_duration_seconds` (reading the counters, the
/// detector step, sketches): between two scrapes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Polls {
    pub count: f64,
    pub mean_ms: f64,
    /// Polls that took at most 2 ms (the histogram's 0.002 bucket).
    pub within_2ms: f64,
}

impl Polls {
    fn read(text: &str) -> (f64, f64, f64) {
        let name = "scan_agent_poll_duration_seconds";
        (
            sample(text, &format!("{name}_count"), "").unwrap_or(0.0),
            sample(text, &format!("{name}_sum"), "").unwrap_or(0.0),
            sample(text, &format!("{name}_bucket"), "le=\"0.002\"").unwrap_or(f64::NAN),
        )
    }

    /// The polls between exposition `before` and `after`.
    fn between(before: &str, after: &str) -> Self {
        let (c0, s0, b0) = Self::read(before);
        let (c1, s1, b1) = Self::read(after);
        let count = c1 - c0;
        Self {
            count,
            mean_ms: if count > 0.0 {
                (s1 - s0) / count * 1e3
            } else {
                f64::NAN
            },
            within_2ms: b1 - b0,
        }
    }
}

/// Memory of the agent's processes at the points of the run.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// Attached, two polls done, no SYN yet: the baseline of the same run.
    pub idle: Vec<Usage>,
    /// Right after SYNs reached all 65,536 ports.
    pub active: Vec<Usage>,
    /// Median and largest sum of VmRSS (KiB) over the second half of the memory window.
    pub steady_kib: f64,
    pub steady_max_kib: u64,
    /// Median VmRSS (KiB) per process over the second half of the window, by pid.
    pub steady_by_pid: Vec<(u32, f64)>,
    /// At the end of the window (VmHWM: the peak over each process's life).
    pub end: Vec<Usage>,
    pub window_s: f64,
    pub scrapes: u64,
    pub idle_polls: Polls,
    pub loaded_polls: Polls,
}

pub struct AgentResults {
    pub binary: PathBuf,
    pub memory: Memory,
    pub rss_mib: f64,
    pub hwm_mib: f64,
    pub ports_active: f64,
    pub syns_seen: f64,
    pub cpu_percent: f64,
    pub cpu_window_s: f64,
    pub background_pps: u64,
    pub scrape_ms: f64,
    pub scrape_bytes: usize,
    /// Slowest of 5 scrapes with [`IDLE_CONNECTIONS`] idle connections open.
    pub idle_scrape_ms_max: f64,
    /// Scrapes per second achieved in the pressure run, and for how long.
    pub pressure_rate: f64,
    pub pressure_s: f64,
    /// Longest gap between two polls without load and under pressure, seconds.
    pub poll_gap_quiet_s: f64,
    pub poll_gap_pressure_s: f64,
    pub interval_s: f64,
}

/// Builds the agent binary (the bench itself is built by `cargo run`, the agent's
/// binary target is not) and returns its path.
pub fn build_binary(root: &Path, target_dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    proc::run(
        Command::new(cargo).current_dir(root).args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "scan-agent",
            "--bin",
            "scan-agent",
        ]),
        Duration::from_secs(900),
    )
    .context("building target/release/scan-agent")?;
    let binary = target_dir.join("release/scan-agent");
    if !binary.exists() {
        bail!("{} missing after the build", binary.display());
    }
    Ok(binary)
}

pub fn run(settings: &Settings, binary: &Path, dir: &Path) -> Result<AgentResults> {
    let lab = Lab::create_quiet()?;
    let scratch = Scratch::new("bench", binary)?;
    let mut args = vec!["--iface".to_string(), lab.host_if.clone()];
    args.extend(scratch.agent_args());
    let mut agent = Agent::start(binary, &args, &dir.join("agent.log"))?;
    let result = measure(settings, &lab, dir, &agent);
    // Stop it the way an operator would: SIGTERM, state saved, detached.
    let status = agent.stop(libc::SIGTERM)?;
    let log = agent.log_text();
    let mut results = result.map_err(|e| {
        e.context(format!(
            "agent log: {}",
            log.trim().lines().last().unwrap_or("")
        ))
    })?;
    if !status.success() {
        bail!("the agent exited with {status} on SIGTERM: {}", log.trim());
    }
    results.binary = binary.to_path_buf();
    drop(scratch);
    drop(lab);
    Ok(results)
}

fn measure(settings: &Settings, lab: &Lab, dir: &Path, agent: &Agent) -> Result<AgentResults> {
    let pid = agent.pid().context("the agent has no pid")?;
    // The baseline of this run: attached, polling, nothing counted yet.
    let first = agent.metrics()?;
    agent.wait_poll()?;
    let idle_metrics = agent.metrics_after_poll()?;
    let mut memory = Memory {
        idle: procs::tree(pid)?,
        idle_polls: Polls::between(&first, &idle_metrics),
        ..Memory::default()
    };
    // Warm-up: two SYNs to every port, then two detector steps (default 5 s each).
    let all_ports = trafgen::Flood {
        packets: 2 * 65_536,
        rate_pps: 100_000,
        first_port: 0,
        last_port: 65_535,
    };
    all_ports.run(lab, dir)?;
    let interval = scan_agent::detector::DEFAULT_INTERVAL;
    let deadline = Instant::now() + interval * 4;
    let (syns_seen, ports_active) = loop {
        proc::sleep(Duration::from_millis(500))?;
        let text = agent.metrics()?;
        let seen = sample(&text, "scan_packet_flags_total", "flag=\"syn\"").unwrap_or(0.0);
        let active = sample(&text, "scan_agent_ports_active", "").unwrap_or(0.0);
        if active >= 65_536.0 || Instant::now() > deadline {
            break (seen, active);
        }
    };
    if syns_seen < 2.0 * 65_536.0 {
        bail!(
            "the agent counted {syns_seen} SYNs of the {} sent",
            2 * 65_536
        );
    }
    memory.active = procs::tree(pid)?;
    let rss = procs::total(&memory.active).0;
    let hwm: u64 = memory.active.iter().map(|u| u.hwm_kib).sum();

    // CPU window: every port keeps getting about one SYN per interval.
    let background_pps = (65_536.0 / interval.as_secs_f64()).ceil() as u64;
    let window = settings.cpu_window;
    let background = trafgen::Flood {
        packets: background_pps * (window.as_secs() + 30),
        rate_pps: background_pps,
        first_port: 0,
        last_port: 65_535,
    };
    let mut flood = background.spawn(lab, dir)?;
    proc::sleep(Duration::from_secs(1))?;
    // CPU of both processes of the agent (issue 12): the attacher and the worker
    // that polls and serves HTTP.
    let pids: Vec<u32> = memory.active.iter().map(|u| u.pid).collect();
    let cpu_ns_all = || -> Result<u64> { pids.iter().map(|&pid| cpu::process_cpu_ns(pid)).sum() };
    let cpu_before = cpu_ns_all()?;
    let t = Instant::now();
    proc::sleep(window)?;
    let cpu_ns = cpu_ns_all()? - cpu_before;
    let cpu_window_s = t.elapsed().as_secs_f64();
    if !flood.running() {
        bail!("the background flood ended early");
    }
    drop(flood);
    memory_window(settings, lab, dir, agent, pid, background_pps, &mut memory)?;

    let mut bytes = 0;
    let mut times = Vec::new();
    for _ in 0..settings.scrapes.max(1) {
        let t = Instant::now();
        bytes = agent.metrics()?.len();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let idle_scrape_ms_max = idle_scrapes(agent)?;
    let (poll_gap_quiet_s, _, _) = scrape_for(agent, settings.pressure, 5)?;
    let (poll_gap_pressure_s, scrapes, seconds) =
        scrape_for(agent, settings.pressure, PRESSURE_RATE)?;
    Ok(AgentResults {
        memory,
        idle_scrape_ms_max,
        pressure_rate: scrapes as f64 / seconds,
        pressure_s: seconds,
        poll_gap_quiet_s,
        poll_gap_pressure_s,
        interval_s: interval.as_secs_f64(),
        binary: PathBuf::new(),
        rss_mib: rss as f64 / 1024.0,
        hwm_mib: hwm as f64 / 1024.0,
        ports_active,
        syns_seen,
        cpu_percent: cpu_ns as f64 / (cpu_window_s * 1e9) * 100.0,
        cpu_window_s,
        background_pps,
        scrape_ms: stats::median(&times),
        scrape_bytes: bytes,
    })
}

/// Every port keeps getting SYNs while clients fetch every endpoint at
/// [`MEMORY_SCRAPE_RATE`]: the RSS of every process of the agent sampled twice a second,
/// the polls' time from the agent's histogram.
fn memory_window(
    settings: &Settings,
    lab: &Lab,
    dir: &Path,
    agent: &Agent,
    pid: u32,
    background_pps: u64,
    memory: &mut Memory,
) -> Result<()> {
    let window = settings.memory_window;
    let background = trafgen::Flood {
        packets: background_pps * (window.as_secs() + 30),
        rate_pps: background_pps,
        first_port: 0,
        last_port: 65_535,
    };
    let mut flood = background.spawn(lab, dir)?;
    proc::sleep(Duration::from_secs(1))?;
    let before = agent.metrics()?;
    let started = Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (samples, scrapes) = std::thread::scope(|scope| -> Result<_> {
        let client = scope.spawn(|| -> Result<u64> {
            let period = Duration::from_secs_f64(1.0 / f64::from(MEMORY_SCRAPE_RATE));
            let mut next = Instant::now();
            let mut done = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += period;
                // Ports spread over the range, a different one each time.
                let port = (done * 7_919 % 65_536).to_string();
                let path = SCRAPED[(done % SCRAPED.len() as u64) as usize].replace("{port}", &port);
                let (status, body) = agent.get(&path)?;
                if status != 200 || body.is_empty() {
                    bail!("{path} answered {status}: {body}");
                }
                done += 1;
            }
            Ok(done)
        });
        let mut samples = Vec::new();
        let sampled = (|| -> Result<()> {
            while started.elapsed() < window {
                samples.push((started.elapsed(), procs::tree(pid)?));
                proc::sleep(Duration::from_millis(500))?;
            }
            Ok(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let scrapes = client
            .join()
            .unwrap_or_else(|_| bail!("the scrape thread panicked"));
        sampled?;
        Ok((samples, scrapes?))
    })?;
    memory.window_s = started.elapsed().as_secs_f64();
    let after = agent.metrics()?;
    if !flood.running() {
        bail!("the background flood ended early");
    }
    drop(flood);
    memory.loaded_polls = Polls::between(&before, &after);
    memory.scrapes = scrapes;
    let steady: Vec<&Vec<Usage>> = samples
        .iter()
        .filter(|(t, _)| *t >= window / 2)
        .map(|(_, tree)| tree)
        .collect();
    let totals: Vec<f64> = steady
        .iter()
        .map(|tree| procs::total(tree).0 as f64)
        .collect();
    memory.steady_kib = stats::median(&totals);
    memory.steady_max_kib = totals.iter().fold(0.0, |m: f64, &t| m.max(t)) as u64;
    let mut pids: Vec<u32> = steady
        .iter()
        .flat_map(|t| t.iter().map(|u| u.pid))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    memory.steady_by_pid = pids
        .into_iter()
        .map(|p| {
            let rss: Vec<f64> = steady
                .iter()
                .filter_map(|t| t.iter().find(|u| u.pid == p))
                .map(|u| u.rss_kib as f64)
                .collect();
            (p, stats::median(&rss))
        })
        .collect();
    memory.end = procs::tree(pid)?;
    Ok(())
}

/// The slowest of 5 scrapes while [`IDLE_CONNECTIONS`] connections that never send a
/// byte are open (more than the agent's connection cap).
fn idle_scrapes(agent: &Agent) -> Result<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(4096);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let idle = (0..IDLE_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(agent.listen))
        .collect::<std::io::Result<Vec<_>>>()
        .context("opening the idle connections")?;
    proc::sleep(Duration::from_millis(500))?;
    let mut slowest: f64 = 0.0;
    for _ in 0..5 {
        let t = Instant::now();
        agent
            .metrics()
            .context("scrape with idle connections open")?;
        slowest = slowest.max(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(idle);
    Ok(slowest)
}

/// Scrapes at `rate` per second (4 threads) for `length`; returns the longest gap
/// between consecutive poll timestamps seen, the scrapes done and the seconds taken.
fn scrape_for(agent: &Agent, length: Duration, rate: u32) -> Result<(f64, u64, f64)> {
    let started = Instant::now();
    let threads = 4;
    let period = Duration::from_secs_f64(f64::from(threads) / f64::from(rate));
    let results: Vec<Result<(Vec<f64>, u64)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                scope.spawn(move || -> Result<(Vec<f64>, u64)> {
                    let mut stamps = Vec::new();
                    let mut done = 0;
                    let mut next = started + period * i / threads;
                    while started.elapsed() < length {
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                        next += period;
                        let text = agent.metrics()?;
                        done += 1;
                        if let Some(t) = sample(&text, "scan_agent_last_poll_timestamp_seconds", "")
                        {
                            stamps.push(t);
                        }
                    }
                    Ok((stamps, done))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| bail!("a scrape thread panicked"))
            })
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut stamps = Vec::new();
    let mut done = 0;
    for result in results {
        let (s, d) = result?;
        stamps.extend(s);
        done += d;
    }
    stamps.sort_by(f64::total_cmp);
    stamps.dedup();
    let gap = stamps.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    Ok((gap, done, seconds))
}
