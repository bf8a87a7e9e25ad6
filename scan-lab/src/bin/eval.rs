//! `scan-eval`: the detection scorecard (see `scan_lab::eval`); `cargo xtask eval` runs it.
use std::{fs, path::PathBuf, time::Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use scan_agent::sensor::{Hook, LinkKind, Sensor};
use scan_lab::eval;

#[derive(Parser)]
#[command(about = "Replays generated scenarios through the real XDP program and detector")]
struct Args {
    /// Only the quick subset (what `cargo xtask test` runs).
    #[arg(long)]
    quick: bool,
    /// Only the scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Instead of the scenarios: time detector steps with all 65,536 ports active (an hour of
    /// 5-s steps, 512 profiled ports, one hour boundary) and print the process's peak RSS.
    #[arg(long)]
    step_cost: bool,
    /// Where to write the JSON summary.
    #[arg(long, default_value = "target/eval/summary.json")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.step_cost {
        return step_cost();
    }
    let scenarios: Vec<_> = eval::scenarios()
        .into_iter()
        .filter(|s| !args.quick || s.quick)
        .filter(|s| args.only.as_deref().is_none_or(|o| s.name.contains(o)))
        .collect();
    if scenarios.is_empty() {
        bail!(
            "no scenario matches; names: {:?}",
            eval::scenarios().iter().map(|s| s.name).collect::<Vec<_>>()
        );
    }
    println!("{}", eval::header());
    let mut results = Vec::new();
    let mut all_passed = true;
    for scenario in &scenarios {
        // Fresh private maps per scenario; the program is loaded for test runs only.
        let sensor = Sensor::unattached(Hook::Xdp, LinkKind::Ethernet).context(
            "loading the XDP program (needs root, or CAP_BPF + CAP_NET_ADMIN, and a kernel with BPF)",
        )?;
        let started = Instant::now();
        let outcome = eval::run(scenario, &sensor)?;
        println!(
            "{}   ({:.0} s)",
            outcome.row,
            started.elapsed().as_secs_f64()
        );
        all_passed &= outcome.passed;
        results.push(outcome.json);
    }
    let (total_row, total) = eval::total(&results);
    println!("{}\n{total_row}", "-".repeat(108));
    let summary = serde_json::json!({
        "detector": "defaults",
        "quick": args.quick,
        "scenarios": results,
        "total": total,
        "passed": all_passed,
    });
    if let Some(dir) = args.out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&args.out, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "\nfound: surges with at least one episode; >=5x ok: surges of 5x or more for 15 min or more that are one episode, flagged <= 2 min and ended <= 10 min after; F: false episodes (first day; from day 2 on, cyclic and flat ports; per port-week from day 2); pages: false pages of the PortScanSurge replica (first day / all)"
    );
    println!("summary: {}", args.out.display());
    if !all_passed {
        bail!(
            "some scenario did not pass (see the table and {})",
            args.out.display()
        );
    }
    Ok(())
}

/// Detector step cost with every port active (release build for meaningful figures).
fn step_cost() -> Result<()> {
    use scan_agent::detector::{Detector, DetectorConfig, PORTS};
    use std::time::Duration;
    let mut detector = Detector::new(DetectorConfig::default());
    let mut counts = vec![0u64; PORTS];
    let mut times = Vec::new();
    let start = Duration::from_secs(1_700_002_800 - 3_000);
    for step in 0..800u32 {
        for (port, c) in counts.iter_mut().enumerate() {
            *c += 1 + (port % 7) as u64;
        }
        let now = start + Duration::from_secs(5) * step;
        let began = Instant::now();
        detector.step(now, &counts);
        times.push(began.elapsed().as_secs_f64() * 1e3);
    }
    let steady = &mut times[200..].to_vec();
    steady.sort_by(f64::total_cmp);
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    // Step 600 crosses the hour boundary (profiles record the hour and are rebalanced).
    println!(
        "detector step, all {} ports active, {} profiled: median {:.3} ms, 90th percentile {:.3} ms, \
         the step across the hour boundary {:.3} ms; {hwm}",
        detector.active_ports(),
        detector.profiled_ports(),
        steady[steady.len() / 2],
        steady[steady.len() * 9 / 10],
        times[600],
    );
    let state = serde_json::to_vec(&detector.snapshot())?;
    println!("saved state as JSON: {} bytes", state.len());
    Ok(())
}
