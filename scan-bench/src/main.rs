//! scan-bench: the sensor against its baselines, side by side, in one run
//! (`cargo xtask bench [--quick]`, as root). Writes target/bench/summary.json and
//! the results section of BENCHMARKS.md. A part that fails is recorded under
//! `errors.<part>` and the others still run; the exit status is non-zero if any
//! part failed. Timings are reported, never asserted.
mod afpacket;
mod agent;
mod cprog;
mod cpu;
mod dispatch;
mod flood;
mod frames;
mod leftovers;
mod machine;
mod mapread;
mod nft;
mod proc;
mod progstats;
mod render;
mod report;
mod stats;
mod testrun;
mod trafgen;

use std::{
    collections::BTreeMap,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(about = "Benchmarks of the port-scan surge sensor against its baselines (run as root)")]
struct Args {
    /// Each part briefly (under 3 minutes in all; a CI smoke check). Same keys in
    /// summary.json; the section goes to target/bench/results.md, not BENCHMARKS.md.
    #[arg(long)]
    quick: bool,
    /// Run only these parts (repeatable); BENCHMARKS.md is then left alone.
    #[arg(long, value_enum)]
    only: Vec<Part>,
    /// Measure this agent binary instead of building target/release/scan-agent (to compare
    /// two builds in one session); BENCHMARKS.md is then left alone.
    #[arg(long)]
    agent_binary: Option<PathBuf>,
    /// Also test-run this eBPF object, another build of scan-ebpf (e.g. an earlier
    /// commit's target/bpf/bpfel-unknown-none/release/scan-ebpf), loaded exactly as ours
    /// with and without sketches, and report it against ours paired within each run;
    /// BENCHMARKS.md is then left alone.
    #[arg(long)]
    compare_object: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    XdpTestRun,
    Flood,
    MapRead,
    Agent,
}

/// How long each part runs.
struct Plan {
    test_run: testrun::Settings,
    flood: flood::Settings,
    map_read: mapread::Settings,
    agent: agent::Settings,
    render_iterations: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                test_run: testrun::Settings {
                    repeat: 100_000,
                    runs: 5,
                },
                flood: flood::Settings {
                    rate_pps: 100_000,
                    seconds: 1.5,
                    rounds: 1,
                    stats_seconds: 1.0,
                },
                map_read: mapread::Settings {
                    fast_iterations: 50,
                    batch_iterations: 5,
                    per_key_iterations: 2,
                },
                agent: agent::Settings {
                    cpu_window: Duration::from_secs(10),
                    memory_window: Duration::from_secs(10),
                    scrapes: 3,
                    pressure: Duration::from_secs(6),
                },
                render_iterations: 10,
            }
        } else {
            Plan {
                test_run: testrun::Settings {
                    repeat: 1_000_000,
                    runs: 31,
                },
                flood: flood::Settings {
                    rate_pps: 100_000,
                    seconds: 10.0,
                    rounds: 3,
                    stats_seconds: 3.0,
                },
                map_read: mapread::Settings {
                    fast_iterations: 500,
                    batch_iterations: 31,
                    per_key_iterations: 9,
                },
                agent: agent::Settings {
                    cpu_window: Duration::from_secs(60),
                    memory_window: Duration::from_secs(60),
                    scrapes: 21,
                    pressure: Duration::from_secs(30),
                },
                render_iterations: 101,
            }
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("scan-bench lives in the workspace")
        .to_path_buf()
}

/// A scratch directory of ours under /tmp, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs one part: its time is recorded, and an error or panic becomes
/// `errors.<name>` instead of stopping the run.
fn part<T>(
    results: &mut report::Results,
    name: &'static str,
    f: impl FnOnce() -> Result<T>,
) -> Option<T> {
    if proc::stop_requested() {
        results
            .errors
            .insert(name, "not run: interrupted by SIGINT/SIGTERM".into());
        return None;
    }
    eprintln!("== {name}");
    let started = Instant::now();
    let outcome = panic::catch_unwind(AssertUnwindSafe(f));
    let secs = started.elapsed().as_secs_f64();
    results.part_seconds.insert(name, secs);
    let error = match outcome {
        Ok(Ok(value)) => {
            eprintln!("== {name}: done in {secs:.1} s");
            return Some(value);
        }
        Ok(Err(e)) => format!("{e:#}"),
        Err(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
    };
    eprintln!("== {name}: FAILED after {secs:.1} s: {error}");
    results.errors.insert(name, error);
    None
}

fn note_errors(results: &mut report::Results, name: &'static str, errors: &[String]) {
    if !errors.is_empty() {
        results.errors.insert(name, errors.join("; "));
    }
}

fn main() -> ExitCode {
    match bench() {
        Ok(failed) if failed.is_empty() => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("scan-bench: these parts failed: {}", failed.join(", "));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("scan-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns the names of the parts that failed.
fn bench() -> Result<Vec<String>> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "must run as root: the benchmarks load XDP programs and create network namespaces \
             (use `cargo xtask bench`, which checks this, or sudo)"
        );
    }
    proc::install_signal_handlers();
    let started = Instant::now();
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "{}{}",
        leftovers::SCRATCH_PREFIX,
        std::process::id()
    )));
    std::fs::create_dir_all(&scratch.0)?;
    for removed in leftovers::remove_leftovers() {
        eprintln!("removed a leftover of a killed run: {removed}");
    }

    let plan = Plan::new(args.quick);
    let wants = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let mut results = report::Results {
        quick: args.quick,
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        seconds: 0.0,
        machine: machine::Machine::probe(&cprog::clang()),
        testrun: None,
        flood: None,
        mapread: None,
        agent: None,
        render: None,
        part_seconds: BTreeMap::new(),
        errors: BTreeMap::new(),
    };
    let objects = cprog::build(&root.join("bench"), &out_dir).map_err(|e| format!("{e:#}"));
    let objects = objects.as_ref().map_err(Clone::clone);

    if wants(Part::XdpTestRun) {
        results.testrun = part(&mut results, "xdp_test_run", || {
            let compare = match &args.compare_object {
                // Loaded once and kept for the whole run, as ours is.
                Some(path) => Some(&*Vec::leak(
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                )),
                None => None,
            };
            testrun::run(&plan.test_run, objects.clone(), compare)
        });
        if let Some(t) = &results.testrun {
            let errors = t.errors.clone();
            note_errors(&mut results, "xdp_test_run", &errors);
        }
    }
    if wants(Part::Flood) {
        results.flood = part(&mut results, "flood", || {
            flood::run(&plan.flood, &scratch.0, objects.clone())
        });
        if let Some(f) = &results.flood {
            let errors = f.errors.clone();
            note_errors(&mut results, "flood", &errors);
        }
    }
    if wants(Part::MapRead) {
        results.mapread = part(&mut results, "map_read", || {
            mapread::run(&plan.map_read, objects.clone())
        });
        if let Some(m) = &results.mapread {
            let errors = m.errors.clone();
            note_errors(&mut results, "map_read", &errors);
        }
    }
    if wants(Part::Agent) {
        results.render = part(&mut results, "metrics_render", || {
            render::run(plan.render_iterations)
        });
        results.agent = part(&mut results, "agent", || {
            let binary = match &args.agent_binary {
                Some(binary) => binary.clone(),
                None => agent::build_binary(&root, &target)?,
            };
            agent::run(&plan.agent, &binary, &scratch.0)
        });
    }
    results.seconds = started.elapsed().as_secs_f64();

    let summary = out_dir.join("summary.json");
    std::fs::write(
        &summary,
        serde_json::to_string_pretty(&results.summary_json())? + "\n",
    )
    .with_context(|| format!("writing {}", summary.display()))?;
    let section = results.markdown();
    let results_md = out_dir.join("results.md");
    std::fs::write(&results_md, &section)?;
    eprintln!("\nwrote {} and {}", summary.display(), results_md.display());
    if !args.quick
        && args.only.is_empty()
        && args.agent_binary.is_none()
        && args.compare_object.is_none()
    {
        let benchmarks = root.join("BENCHMARKS.md");
        report::rewrite(&benchmarks, &section)?;
        eprintln!("rewrote the results section of {}", benchmarks.display());
    }
    println!("{section}");
    Ok(results.errors.keys().map(|k| k.to_string()).collect())
}
