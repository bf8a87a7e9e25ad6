//! `cargo xtask run` with no interface: the lab as a live demo. Background scanning
//! over many ports, then a surge on 445 every few minutes, shown live by `scan-agent
//! top` (the operator's view). q or Ctrl-C stops everything and removes every
//! namespace and link.
use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use scan_lab::{Agent, Lab, Scratch, monitoring::Monitoring};

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
        show(&args.agent, &agent, &lab, monitoring.as_ref(), args.seconds)?;
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

/// The live view: `scan-agent top` on this terminal until it quits (q) or time is up;
/// without a terminal, its `--once` table every 2 s.
fn show(
    binary: &Path,
    agent: &Agent,
    lab: &Lab,
    monitoring: Option<&Monitoring>,
    seconds: u64,
) -> Result<()> {
    let url = format!("http://{}", agent.listen);
    let mut intro = format!(
        "scan-agent lab demo: XDP on {}, metrics at {url}/metrics\n\
         background scanning on {} ports; a surge of {SURGE_RATE} SYN/s on {SURGE_PORT} \
         from 60 s to 120 s of every 3 minutes (after a 30 s warm-up)\n",
        lab.host_if,
        BACKGROUND.len()
    );
    if let Some(m) = monitoring {
        intro += &format!(
            "Prometheus: http://{}  Alertmanager: http://{}\n",
            m.prometheus, m.alertmanager
        );
    }
    print!("{intro}");
    let started = Instant::now();
    let deadline = Duration::from_secs(seconds);
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        println!("starting `scan-agent top` (q quits and stops the demo)");
        std::thread::sleep(Duration::from_secs(2));
        let mut top = Command::new(binary)
            .args(["top", "--url", &url, "--refresh", "1s"])
            .spawn()
            .context("starting scan-agent top")?;
        loop {
            if top.try_wait()?.is_some() {
                break;
            }
            if STOP.load(Ordering::Relaxed) || started.elapsed() > deadline {
                // SAFETY: kill on our own child's pid.
                unsafe { libc::kill(top.id() as i32, libc::SIGKILL) };
                top.wait()?;
                // top could not restore the terminal: leave its screen, show the cursor.
                print!("\x1b[?1049l\x1b[?25h");
                let _ = Command::new("stty").arg("sane").status();
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        print!("{intro}");
    } else {
        while !STOP.load(Ordering::Relaxed) && started.elapsed() < deadline {
            let once = Command::new(binary)
                .args(["top", "--once", "--url", &url])
                .output()
                .context("running scan-agent top --once")?;
            println!(
                "--- {}s\n{}{}",
                started.elapsed().as_secs(),
                String::from_utf8_lossy(&once.stdout),
                String::from_utf8_lossy(&once.stderr)
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    Ok(())
}
