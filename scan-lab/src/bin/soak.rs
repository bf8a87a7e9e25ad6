//! `cargo xtask soak --minutes N`: the agent under steady SYN load for N minutes, scraped
//! every 100 ms, restarted every few minutes (with --keep-attached, so no SYN goes
//! uncounted). Fails unless the SYN count is exact at the end, no port is ever flagged,
//! and RSS and open file descriptors stay flat after warm-up. Prints one JSON line of
//! figures.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use scan_lab::{Agent, Lab, Scratch, http::sample, procs};

#[derive(Parser)]
struct Args {
    /// Length of the run.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// The agent binary.
    #[arg(long, default_value = "target/debug/scan-agent")]
    agent: PathBuf,
    /// SYNs per second of the steady load.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
}

const PORT: u16 = 22;

fn main() -> Result<()> {
    let args = Args::parse();
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    // A few restarts even in a short run; every 3 minutes in a long one.
    let run_length = (total / 3).min(Duration::from_secs(180));
    let lab = Lab::create().context("creating the lab (needs root)")?;
    let scratch = Scratch::new("soak", &args.agent)?;
    let agent_args: Vec<String> = [
        "--iface",
        &lab.host_if,
        "--interval",
        "1s",
        "--short-window",
        "10s",
        "--baseline-window",
        "2m",
        "--warmup",
        "20s",
        "--save-interval",
        "10s",
        "--keep-attached",
        "--watch-ports",
        "22",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(scratch.agent_args())
    .collect();

    // Attached (and kept) before the first SYN, so that every SYN sent is counted.
    let mut prime = Agent::start(&args.agent, &agent_args, &scratch.file("prime.log"))?;
    if !prime.stop(libc::SIGTERM)?.success() {
        bail!(
            "the first agent did not stop cleanly:\n{}",
            prime.log_text()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut scrapes = 0u64;
    let mut runs = Vec::new();
    let result = std::thread::scope(|scope| -> Result<()> {
        let load = scope.spawn(|| -> Result<()> {
            // One second of SYNs at a time, bounded by the run's length.
            while !stop.load(Ordering::Relaxed)
                && started.elapsed() < total + Duration::from_secs(60)
            {
                let n = lab.syns_at_rate(PORT, args.rate.round() as u32, args.rate)?;
                sent.fetch_add(u64::from(n), Ordering::Relaxed);
            }
            Ok(())
        });
        let mut run = 0;
        let outcome = (|| -> Result<()> {
            while started.elapsed() < total {
                run += 1;
                let log = scratch.file(&format!("run-{run}.log"));
                let mut agent = Agent::start(&args.agent, &agent_args, &log)?;
                // RSS and fds of both processes (issue 12): the attacher and its worker.
                let pid = agent.pid().context("agent pid")?;
                let processes = procs::tree(pid)?.len();
                if processes != 2 {
                    bail!("run {run}: expected the attacher and its worker, found {processes}");
                }
                let run_started = Instant::now();
                let mut samples = Vec::new();
                // Each process at the warm-up point and at the end of the run.
                let (mut warm_tree, mut last_tree) = (Vec::new(), Vec::new());
                while run_started.elapsed() < run_length && started.elapsed() < total {
                    let metrics = agent.metrics()?;
                    scrapes += 1;
                    let flagged: Vec<&str> = metrics
                        .lines()
                        .filter(|l| l.starts_with("scan_surge_flagged{") && l.ends_with(" 1"))
                        .collect();
                    if !flagged.is_empty() {
                        bail!("false flag in run {run}: {flagged:?}\n{}", agent.log_text());
                    }
                    let tree = procs::tree(pid)?;
                    if warm_tree.is_empty() && run_started.elapsed() >= run_length / 2 {
                        warm_tree = tree.clone();
                    }
                    samples.push((run_started.elapsed(), procs::total(&tree)));
                    last_tree = tree;
                    std::thread::sleep(Duration::from_millis(100));
                }
                // Flat after warm-up: from half the run to its end.
                let warm = samples
                    .iter()
                    .find(|(t, _)| *t >= run_length / 2)
                    .map(|s| s.1)
                    .unwrap_or(samples[0].1);
                let last = samples.last().context("no sample")?.1;
                let max_rss = samples.iter().map(|s| s.1.0).max().unwrap_or(0);
                runs.push(serde_json::json!({
                    "run": run,
                    "seconds": run_started.elapsed().as_secs_f64().round(),
                    "rss_kib_after_warmup": warm.0,
                    "rss_kib_end": last.0,
                    "rss_kib_max": max_rss,
                    "fds_after_warmup": warm.1,
                    "fds_end": last.1,
                    "processes": last_tree
                        .iter()
                        .map(|u| {
                            let at_warm = warm_tree.iter().find(|w| w.pid == u.pid);
                            serde_json::json!({
                                "role": u.role.split_whitespace().next().unwrap_or(""),
                                "rss_kib_after_warmup": at_warm.map(|w| w.rss_kib),
                                "rss_kib_end": u.rss_kib,
                                "hwm_kib": u.hwm_kib,
                                "anon_kib_end": u.anon_kib,
                                "fds_after_warmup": at_warm.map(|w| w.fds),
                                "fds_end": u.fds,
                            })
                        })
                        .collect::<Vec<_>>(),
                }));
                // Tolerances: an HTTP connection or two in flight; allocator noise.
                if last.1 > warm.1 + 2 || last.0 > warm.0 + 4096 {
                    bail!(
                        "run {run}: RSS {} -> {} KiB, fds {} -> {}",
                        warm.0,
                        last.0,
                        warm.1,
                        last.1
                    );
                }
                if !agent.stop(libc::SIGTERM)?.success() {
                    bail!("run {run}: SIGTERM did not exit 0\n{}", agent.log_text());
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        load.join().expect("load thread")?;
        outcome
    });
    result?;
    // The last count: every SYN sent, across every restart.
    let agent = Agent::start(&args.agent, &agent_args, &scratch.file("final.log"))?;
    std::thread::sleep(Duration::from_secs(2));
    let metrics = agent.metrics()?;
    let counted = sample(
        &metrics,
        "scan_syn_packets_total",
        &format!("port=\"{PORT}\""),
    )
    .unwrap_or(0.0) as u64;
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "minutes": args.minutes,
            "syns_sent": sent,
            "syns_counted": counted,
            "scrapes": scrapes,
            "restarts": runs.len(),
            "false_flags": 0,
            "runs": runs,
        })
    );
    if counted != sent {
        bail!("counted {counted} SYNs to port {PORT}, sent {sent}");
    }
    Ok(())
}
