//! `cargo xtask fuzz-inputs --seconds N`: coverage-guided fuzzing (cargo-fuzz and
//! libFuzzer, on rustup's nightly) of the agent's input parsers, the targets in `fuzz/`:
//! the pcap/pcapng reader, the state loader and the config parser. Each target first
//! runs its seeds (`fuzz/seeds/<target>`) and the corpus kept from earlier runs
//! (`target/fuzz/corpus/<target>`) as regressions, then fuzzes for N seconds; the
//! executions and crashes are reported per target, and a crash fails the command
//! (its input is kept under `target/fuzz/artifacts/<target>/`).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, run, status};

pub const TARGETS: &[&str] = &["capture", "state", "config"];

/// cargo-fuzz and rustup's nightly, installed on first use.
pub fn ensure_cargo_fuzz() -> Result<()> {
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        status(c).map(|s| s.success()).unwrap_or(false)
    };
    if !quiet(cmd("rustup").args(["run", "nightly", "rustc", "-V"])) {
        bail!(
            "coverage-guided fuzzing needs rustup's nightly toolchain (libFuzzer's \
             instrumentation is unstable): `rustup toolchain install nightly`"
        );
    }
    if !quiet(cmd("cargo").args(["fuzz", "--version"])) {
        println!("installing cargo-fuzz (once)");
        run(cmd("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// What one target's run did.
struct Outcome {
    target: &'static str,
    executions: Option<u64>,
    crashed: bool,
    log: String,
}

/// The executions libFuzzer reports at exit (`-print_final_stats=1`).
fn executions(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")
            .and_then(|n| n.trim().parse().ok())
    })
}

pub fn fuzz_inputs(seconds: u64, only: &[String], quick_build: bool) -> Result<()> {
    ensure_cargo_fuzz()?;
    let targets: Vec<&'static str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        let mut targets = Vec::new();
        for name in only {
            let Some(t) = TARGETS.iter().find(|t| *t == name) else {
                bail!(
                    "no fuzz target {name:?}; the targets are {}",
                    TARGETS.join(", ")
                );
            };
            targets.push(*t);
        }
        targets
    };
    // The same build options for `build` and `run`, else `run` builds again.
    let build_options: &[&str] = if quick_build {
        &["--dev", "--sanitizer", "none"]
    } else {
        &[]
    };
    // One build for all targets (the first takes minutes: every dependency, with ASan).
    run(cmd("cargo")
        .args(["+nightly", "fuzz", "build"])
        .args(build_options))?;
    let mut outcomes = Vec::new();
    for target in targets {
        let corpus = Path::new("target/fuzz/corpus").join(target);
        let artifacts = Path::new("target/fuzz/artifacts").join(target);
        let seeds = Path::new("fuzz/seeds").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log_path = Path::new("target/fuzz").join(format!("{target}.log"));
        let log_file = std::fs::File::create(&log_path)?;
        println!(
            "=== fuzzing {target} for {seconds}s (log: {})",
            log_path.display()
        );
        let mut c = cmd("cargo");
        c.args(["+nightly", "fuzz", "run"])
            .args(build_options)
            .arg(target)
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            // An input that takes 10 s, or a process over 1 GiB, is a finding too.
            .args(["-timeout=10", "-rss_limit_mb=1024", "-print_final_stats=1"])
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let ok = status(&mut c)?.success();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        outcomes.push(Outcome {
            target,
            executions: executions(&log),
            crashed: !ok,
            log,
        });
    }
    println!("\n{:<10} {:>14} {:>8}", "target", "executions", "crashes");
    let mut failed = Vec::new();
    for o in &outcomes {
        println!(
            "{:<10} {:>14} {:>8}",
            o.target,
            o.executions
                .map_or_else(|| "?".to_string(), |n| n.to_string()),
            u32::from(o.crashed)
        );
        if o.crashed || o.executions.is_none() {
            let tail: Vec<&str> = o.log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            println!("--- {} log (end):\n{}", o.target, tail.join("\n"));
            failed.push(o.target);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs under target/fuzz/artifacts/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// `fuzz-inputs --quick-build --seconds 5` running in the background for `cargo xtask test`, its
/// output in a log file.
pub struct Smoke {
    child: Child,
    log: PathBuf,
    started: Instant,
}

const SMOKE_SECONDS: &str = "5";

/// Starts the smoke run, niced so that the steps in the foreground keep their pace.
pub fn start_smoke() -> Result<Smoke> {
    let log = PathBuf::from("target/fuzz-smoke.log");
    std::fs::create_dir_all("target")?;
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = cmd("nice")
        .args(["-n", "19"])
        .arg(std::env::current_exe()?)
        .args(["fuzz-inputs", "--quick-build", "--seconds", SMOKE_SECONDS])
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting the fuzz smoke (fuzz-inputs)")?;
    Ok(Smoke {
        child,
        log,
        started: Instant::now(),
    })
}

impl Smoke {
    /// Waits for the smoke run and prints its summary (the whole log's end if it failed).
    pub fn finish(mut self) -> Result<()> {
        let ok = self.child.wait()?.success();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let summary = lines
            .iter()
            .rposition(|l| l.starts_with("target ") && l.contains("executions"))
            .map_or(&lines[lines.len().saturating_sub(40)..], |at| &lines[at..]);
        println!("{}", summary.join("\n"));
        if !ok {
            bail!("failed; its log: {}", self.log.display());
        }
        println!(
            "=== fuzz smoke: ok ({:.1}s since the start, in the background)",
            self.started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
