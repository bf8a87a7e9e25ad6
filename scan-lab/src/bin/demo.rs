//! `cargo xtask run` with no interface: the lab as a live demo. Background scanning
//! over many ports, then a surge on 445 every few minutes; a refreshing table of
//! the top ports. Ctrl-C stops everything and removes every namespace and link.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use scan_lab::{
    Agent, Lab, Scratch,
    http::{sample, sample_sum},
    monitoring::Monitoring,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Parser)]
struct Args {
    /// Also run Prometheus and Alertmanager with the shipped rules (test-scale `for:`).
    #[arg(long)]
    with_prometheus: bool,
    /// The agent binary.
    #[arg(long, default_value = "target/release/scan-agent")]
    agent: PathBuf,
    /// Stop by itself after this long.
    #[arg(long, default_value_t = 3600)]
    seconds: u64,
    /// Extra arguments for `scan-agent run` (after `--`).
    #[arg(last = true)]
    agent_args: Vec<String>,
}

/// (port, SYN/s) of the steady background: what "normal" looks like.
const BACKGROUND: &[(u16, f64)] = &[
    (22, 4.0),
    (23, 2.0),
    (80, 3.0),
    (443, 3.0),
    (3389, 1.5),
    (8080, 1.0),
];
const SURGE_PORT: u16 = 445;
const SURGE_RATE: f64 = 60.0;

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: installs an async-signal-safe handler that only stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
    }
    let lab = Lab::create()?;
    let scratch = Scratch::new("demo", &args.agent)?;
    let mut agent_args: Vec<String> = [
        "--iface",
        &lab.host_if,
        "--interval",
        "1s",
        "--short-window",
        "10s",
        "--baseline-window",
        "10m",
        "--warmup",
        "30s",
        "--surge-threshold",
        "4",
        "--top-ports",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    agent_args.extend(scratch.agent_args());
    agent_args.extend(args.agent_args.iter().cloned());
    let agent = Agent::start(&args.agent, &agent_args, &scratch.file("agent.log"))
        .context("starting the agent (built by `cargo xtask run`)")?;
    let monitoring = if args.with_prometheus {
        let rules = scratch.file("rules.yml");
        let status = std::process::Command::new("bash")
            .args([
                "deploy/prometheus/test-scale.sh",
                "deploy/prometheus/scan-agent.rules.yml",
            ])
            .arg(&rules)
            .status()?;
        anyhow::ensure!(status.success(), "scaling the shipped rules failed");
        Some(Monitoring::start(
            agent.listen,
            &rules,
            &scratch.file("monitoring"),
            "2s",
        )?)
    } else {
        None
    };

    let result = std::thread::scope(|scope| -> Result<()> {
        for &(port, rate) in BACKGROUND {
            let lab = &lab;
            scope.spawn(move || {
                while !STOP.load(Ordering::Relaxed) {
                    let _ = lab.syns_at_rate(port, rate.ceil() as u32, rate);
                }
            });
        }
        // A masscan-like sweep: one SYN to each of many ports, slowly.
        scope.spawn(|| {
            let mut port = 1000u16;
            while !STOP.load(Ordering::Relaxed) {
                let _ = lab.syns(false, port, 1);
                port = if port >= 9000 { 1000 } else { port + 7 };
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        // The surge: 60 s at 60 SYN/s on 445 after warm-up, then quiet, repeating.
        scope.spawn(|| {
            let started = Instant::now();
            while !STOP.load(Ordering::Relaxed) {
                let phase = started.elapsed().as_secs() % 180;
                if (60..120).contains(&phase) {
                    let _ = lab.syns_at_rate(SURGE_PORT, SURGE_RATE as u32, SURGE_RATE);
                } else {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
        let started = Instant::now();
        while !STOP.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(args.seconds)
        {
            draw(&agent, &lab, monitoring.as_ref(), started.elapsed());
            std::thread::sleep(Duration::from_secs(2));
        }
        STOP.store(true, Ordering::Relaxed);
        Ok(())
    });
    println!(
        "\nstopping: removing the lab namespace {} and its veth pair",
        lab.namespace
    );
    drop(monitoring);
    drop(agent);
    drop(scratch);
    drop(lab);
    result
}

fn draw(agent: &Agent, lab: &Lab, monitoring: Option<&Monitoring>, elapsed: Duration) {
    let Ok(metrics) = agent.metrics() else {
        println!("(agent not answering)");
        return;
    };
    let mut rows: Vec<(u16, f64, f64, f64, bool)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("scan_surge_ratio{port=\""))
        .filter_map(|rest| {
            let (port, value) = rest.split_once("\"} ")?;
            let port: u16 = port.parse().ok()?;
            let label = format!("port=\"{port}\"");
            Some((
                port,
                sample(&metrics, "scan_syn_rate", &label).unwrap_or(0.0),
                sample(&metrics, "scan_syn_baseline_rate", &label).unwrap_or(0.0),
                value.parse().ok()?,
                sample(&metrics, "scan_surge_flagged", &label) == Some(1.0),
            ))
        })
        .filter(|r| r.1 > 0.0 || r.2 > 0.0)
        .collect();
    rows.sort_by(|a, b| b.3.total_cmp(&a.3));
    let mut out = String::from("\x1b[2J\x1b[H");
    out += &format!(
        "scan-agent lab demo — {}s — XDP on {} — metrics: http://{}/metrics\n",
        elapsed.as_secs(),
        lab.host_if,
        agent.listen
    );
    if let Some(m) = monitoring {
        out += &format!(
            "Prometheus: http://{}  Alertmanager: http://{}\n",
            m.prometheus, m.alertmanager
        );
    }
    let warming = sample(&metrics, "scan_agent_warmup_remaining_seconds", "").unwrap_or(0.0);
    if warming > 0.0 {
        out += &format!("learning baselines: {warming:.0}s of warm-up left\n");
    }
    out += "\n  port     SYN/s  baseline     ratio\n";
    for (port, rate, baseline, ratio, flagged) in rows.iter().take(14) {
        out += &format!(
            "{port:>6} {rate:>9.2} {baseline:>9.2} {ratio:>9.2}  {}\n",
            if *flagged { "SURGE" } else { "" }
        );
    }
    out += &format!(
        "\nall ports: {} SYNs; packets seen: {}. Surge on {SURGE_PORT} from 60s to 120s of every 3 min. Ctrl-C to stop.\n",
        sample(&metrics, "scan_packet_flags_total", "flag=\"syn\"").unwrap_or(0.0),
        sample_sum(&metrics, "scan_packets_total"),
    );
    print!("{out}");
}
