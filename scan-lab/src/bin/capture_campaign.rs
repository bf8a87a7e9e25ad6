//! `cargo xtask capture-campaign`: the mutated-capture campaign of issue 14 (see
//! `scan_lab::campaign`); exits non-zero on any panic, slow file or RSS over the limit.
use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Damaged captures to replay.
    #[arg(long, default_value_t = 10_000)]
    files: u64,
    #[arg(long, default_value_t = 14)]
    seed: u64,
    /// Longest replay of one file, seconds.
    #[arg(long, default_value_t = 5)]
    time_limit: u64,
    /// Largest peak RSS of the process, MiB.
    #[arg(long, default_value_t = 64)]
    rss_limit_mib: u64,
    /// Where the files are written (failing ones are kept).
    #[arg(long, default_value = "target/capture-campaign")]
    dir: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let limit = Duration::from_secs(args.time_limit);
    let report = scan_lab::campaign::run(args.files, args.seed, &args.dir, limit)?;
    print!("{report}");
    let mut failed = Vec::new();
    if !report.panics.is_empty() {
        failed.push(format!("{} panics", report.panics.len()));
    }
    if !report.slow.is_empty() {
        failed.push(format!("{} files over {limit:?}", report.slow.len()));
    }
    if report.peak_rss > args.rss_limit_mib << 20 {
        failed.push(format!(
            "peak RSS {} MiB over {} MiB",
            report.peak_rss >> 20,
            args.rss_limit_mib
        ));
    }
    if !failed.is_empty() {
        bail!("capture campaign failed: {}", failed.join(", "));
    }
    println!("capture campaign passed");
    Ok(())
}
