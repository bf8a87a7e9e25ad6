//! Project tasks: `cargo xtask setup|run|test|package|fuzz|fuzz-inputs|capture-campaign|bench|soak|eval|vm-test|sketch-accuracy`.
mod fuzz_inputs;
mod package;
mod setup;
mod vm_test;

use std::process::{Command, ExitStatus};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set-up, demo, tests and benchmarks of the port-scan surge sensor")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (idempotent; a few seconds when done).
    Setup,
    /// Set up, build, and start the agent: on a self-contained lab with generated
    /// scanning when no --iface is given, else on the given interface(s).
    Run {
        /// Also start Prometheus and Alertmanager (loopback) with the shipped rules.
        #[arg(long)]
        with_prometheus: bool,
        /// Arguments for `scan-agent run` (after `--`), e.g. `-- --iface eth0`.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Set up, then run every check and test (what CI runs).
    Test,
    /// Build the Debian package (cargo-deb) into target/package/ and check it with lintian.
    Package {
        /// Package version instead of Cargo.toml's (e.g. 0.1.0-2 for an upgrade test).
        #[arg(long)]
        deb_version: Option<String>,
    },
    /// Build the package twice (two versions) and install, upgrade, remove and purge it
    /// under a throwaway systemd (deploy/debian/package-test.sh; root).
    PackageTest,
    /// Benchmarks side by side with their baselines; writes target/bench/summary.json
    /// and the table in BENCHMARKS.md.
    Bench {
        /// Each part briefly (under 3 minutes in all); same keys.
        #[arg(long)]
        quick: bool,
    },
    /// Sketch accuracy at every size (1 to 1,000,000 distinct sources and targets on one
    /// port, IPv4 and IPv6 mixed) through the real program, with `--seeds` seeds per
    /// size (the fast test in `cargo xtask test` runs fewer at the large sizes); prints
    /// the 95th-percentile error per size, the figures in BENCHMARKS.md.
    SketchAccuracy {
        #[arg(long, default_value_t = 20)]
        seeds: u32,
    },
    /// Coverage-guided fuzzing (cargo-fuzz, nightly) of the pcap/pcapng reader, the
    /// state loader and the config parser: seeds and kept corpus first, then N seconds
    /// per target; reports executions and crashes.
    FuzzInputs {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (capture, state, config); repeat for several.
        #[arg(long)]
        target: Vec<String>,
        /// A debug build without AddressSanitizer: it builds in about a third of the
        /// time (the targets are safe Rust), for the smoke run in `cargo xtask test`.
        #[arg(long)]
        quick_build: bool,
    },
    /// The mutated-capture campaign: damaged pcap/pcapng files through replay (release
    /// build); fails on any panic, a file over 5 s or a peak RSS over 64 MiB.
    CaptureCampaign {
        #[arg(long, default_value_t = 10_000)]
        files: u64,
        #[arg(long, default_value_t = 14)]
        seed: u64,
    },
    /// The agent under steady SYN load for N minutes: scrapes every 100 ms, a restart
    /// every few minutes; fails unless counts are exact, nothing is flagged and RSS and
    /// open fds stay flat after warm-up.
    Soak {
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Soak the release build (what ships) instead of the debug build.
        #[arg(long)]
        release: bool,
    },
    /// Detection scorecard: generated scenarios through the real XDP program and detector;
    /// prints a table and writes target/eval/summary.json.
    Eval {
        /// Only the quick subset (what `cargo xtask test` runs).
        #[arg(long)]
        quick: bool,
    },
    /// The libxdp dispatcher tests with real xdp-filter/xdp-loader in a Debian Linux
    /// guest under QEMU (this machine's kernel refuses freplace programs): kernel
    /// downloaded once into target/vm, no network device in the guest.
    VmTest,
    /// Run the differential parser test on many frames (release build).
    Fuzz {
        #[arg(long, default_value_t = 5_000_000)]
        frames: u64,
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::env::set_current_dir(workspace_root()).context("entering the workspace root")?;
    match cli.task {
        Task::Setup => setup::setup(),
        Task::Run {
            with_prometheus,
            agent_args,
        } => {
            setup::setup()?;
            run_agent(with_prometheus, &agent_args)
        }
        Task::Package { deb_version } => {
            setup::setup()?;
            package::package(deb_version.as_deref()).map(drop)
        }
        Task::PackageTest => {
            setup::setup()?;
            require_root("the package test runs a nested systemd in namespaces")?;
            package::test_package()
        }
        Task::Test => {
            setup::setup()?;
            test()
        }
        Task::Bench { quick } => {
            setup::setup()?;
            require_root("benchmarks load XDP programs and create network namespaces")?;
            let mut c = cmd("cargo");
            c.args(["run", "--release", "-p", "scan-bench", "--"]);
            if quick {
                c.arg("--quick");
            }
            run(&mut c)
        }
        Task::SketchAccuracy { seeds } => {
            setup::setup()?;
            require_root("the accuracy test runs SYNs through the loaded XDP program")?;
            run(cmd("cargo")
                .args(["test", "--release", "-p", "scan-agent", "--test", "sketch"])
                .args([
                    "--",
                    "--exact",
                    "distinct_sources_and_targets_within_five_percent",
                    "--nocapture",
                ])
                .env("SCAN_SKETCH_SEEDS", seeds.to_string()))
        }
        Task::FuzzInputs {
            seconds,
            target,
            quick_build,
        } => fuzz_inputs::fuzz_inputs(seconds, &target, quick_build),
        Task::CaptureCampaign { files, seed } => {
            setup::setup()?;
            require_root("the campaign replays through the real XDP program")?;
            run(cmd("cargo")
                .args(["run", "--release", "-p", "scan-lab", "--bin"])
                .args(["scan-lab-capture-campaign", "--", "--files"])
                .arg(files.to_string())
                .arg("--seed")
                .arg(seed.to_string()))
        }
        Task::Soak { minutes, release } => {
            setup::setup()?;
            require_root("the soak creates a lab namespace and attaches XDP")?;
            soak(minutes, release)
        }
        Task::Eval { quick } => {
            setup::setup()?;
            require_root("the scorecard loads the XDP program and creates a lab veth")?;
            let mut c = cmd("cargo");
            c.args([
                "run",
                "--release",
                "-p",
                "scan-lab",
                "--bin",
                "scan-eval",
                "--",
            ]);
            if quick {
                c.args(["--quick", "--out", "target/eval/quick-summary.json"]);
            }
            run(&mut c)
        }
        Task::VmTest => {
            setup::setup()?;
            require_root("the guest's tests attach XDP; QEMU and apt-get run from here")?;
            vm_test::vm_test()
        }
        Task::Fuzz { frames, seed } => {
            setup::setup()?;
            let mut c = cmd("cargo");
            c.args([
                "test",
                "--release",
                "-p",
                "scan-agent",
                "--test",
                "differential",
            ])
            .args(["--", "--nocapture"])
            .env("SCAN_FUZZ_FRAMES", frames.to_string());
            if let Some(seed) = seed {
                c.env("SCAN_FUZZ_SEED", seed.to_string());
            }
            run(&mut c)
        }
    }
}

/// Builds the agent (debug, or release) and runs the soak for `minutes`.
fn soak(minutes: f64, release: bool) -> Result<()> {
    run(cmd("cargo").args(["build", "-p", "scan-lab", "--bin", "scan-lab-soak"]))?;
    let mut build = cmd("cargo");
    build.args(["build", "-p", "scan-agent", "--bin", "scan-agent"]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let agent = if release {
        "target/release/scan-agent"
    } else {
        "target/debug/scan-agent"
    };
    run(cmd("target/debug/scan-lab-soak")
        .args(["--minutes", &minutes.to_string()])
        .args(["--agent", agent]))
}

fn test() -> Result<()> {
    require_root("the program and lab tests load XDP programs and create network namespaces")?;
    let started = std::time::Instant::now();
    let mut steps: Vec<(&str, Command)> = Vec::new();
    let mut fmt = cmd("cargo");
    fmt.args(["fmt", "--all", "--check"]);
    steps.push(("rustfmt", fmt));
    let mut clippy = cmd("cargo");
    clippy.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    steps.push(("clippy (userspace)", clippy));
    let mut clippy_ebpf = cmd("cargo");
    // The eBPF crate is linted on the host target, as aya's CI does.
    clippy_ebpf.args([
        "clippy",
        "-p",
        "scan-ebpf",
        "--bins",
        "--",
        "-C",
        "panic=abort",
        "-D",
        "warnings",
    ]);
    steps.push(("clippy (eBPF)", clippy_ebpf));
    let mut tests = cmd("cargo");
    tests.args(["test", "--workspace", "--exclude", "scan-ebpf"]);
    steps.push(("tests", tests));
    let mut deploy = cmd("bash");
    deploy.arg("deploy/check.sh");
    steps.push(("deploy kit checks", deploy));
    // The shipped unit, run by a real (throwaway, namespaced) systemd with the agent
    // built by the tests step: least privilege shown working, and each unusual line
    // of the unit shown necessary by a negative control.
    let mut unit = cmd("bash");
    unit.args(["deploy/systemd/sandbox-test.sh", "target/debug/scan-agent"]);
    steps.push(("systemd unit under a sandboxed systemd", unit));
    // The Debian package: built twice (lintian-checked), installed, upgraded with
    // keep_attached under load, removed and purged in the same kind of throwaway systemd.
    let mut package = cmd(&std::env::current_exe()?.to_string_lossy());
    package.arg("package-test");
    steps.push((
        "Debian package: build, lintian, install/upgrade/remove/purge",
        package,
    ));
    // Issue 10: a 2-minute soak (restarts, scrapes every 100 ms, exact counts, no false
    // flag, flat RSS and fds); `cargo xtask soak --minutes 30` is the long one.
    let mut soak = cmd("cargo");
    soak.args(["run", "-p", "scan-lab", "--bin", "scan-lab-soak", "--"])
        .args(["--minutes", "2", "--agent", "target/debug/scan-agent"]);
    steps.push(("soak (2-minute smoke)", soak));
    // A smoke run of every benchmark part: it must work; its timings are not judged.
    let mut bench = cmd("cargo");
    bench.args(["run", "--release", "-p", "scan-bench", "--", "--quick"]);
    steps.push(("benchmarks (quick smoke run)", bench));

    // The detection scorecard's quick subset: it must pass (done-when criteria per scenario).
    let mut eval = cmd("cargo");
    eval.args([
        "run",
        "--release",
        "-p",
        "scan-lab",
        "--bin",
        "scan-eval",
        "--",
    ])
    .args(["--quick", "--out", "target/eval/quick-summary.json"]);
    steps.push(("detection scorecard (quick subset)", eval));
    // Issue 15: the libxdp dispatcher path with real xdp-filter and xdp-loader, in a
    // Linux 6.1 guest under QEMU (this kernel refuses freplace); about 2 minutes warm.
    let mut vm = cmd(&std::env::current_exe()?.to_string_lossy());
    vm.arg("vm-test");
    steps.push(("libxdp dispatcher in a Linux 6.1 guest (vm-test)", vm));

    // Issue 14's fuzz smoke: cargo-fuzz (installed on first use), a nightly build of the
    // three targets, their seeds and corpus as regressions and 5 s of fuzzing each. It
    // runs niced beside the steps from the start, so its build fills the time the lab
    // tests spend waiting instead of adding minutes of its own.
    let fuzz_smoke = fuzz_inputs::start_smoke()?;

    let total = steps.len() + 1;
    let mut failed = Vec::new();
    let mut counts = TestCounts::default();
    for (name, mut command) in steps {
        println!("\n=== xtask test: {name}");
        let step_started = std::time::Instant::now();
        match run_counting(&mut command, &mut counts) {
            Ok(s) if s.success() => {
                println!(
                    "=== {name}: ok ({:.1}s)",
                    step_started.elapsed().as_secs_f64()
                )
            }
            Ok(s) => failed.push(format!("{name} ({s})")),
            Err(e) => failed.push(format!("{name} ({e:#})")),
        }
    }
    println!("\n=== xtask test: fuzz smoke (running since the start)");
    if let Err(e) = fuzz_smoke.finish() {
        failed.push(format!("fuzz smoke ({e:#})"));
    }
    println!(
        "\nxtask test finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!("steps: {} of {total} passed", total - failed.len());
    for f in &failed {
        println!("FAILED: {f}");
    }
    if counts.ignored > 0 {
        failed.push(format!(
            "{} test(s) ignored: nothing may be skipped",
            counts.ignored
        ));
    }
    if counts.passed == 0 {
        failed.push("no test ran".into());
    }
    println!("tests: {} passed, {} failed", counts.passed, counts.failed);
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

fn run_agent(with_prometheus: bool, agent_args: &[String]) -> Result<()> {
    // `cargo xtask run -- --with-prometheus` is accepted as well as before the `--`.
    let with_prometheus = with_prometheus || agent_args.iter().any(|a| a == "--with-prometheus");
    let agent_args: Vec<String> = agent_args
        .iter()
        .filter(|a| *a != "--with-prometheus")
        .cloned()
        .collect();
    run(cmd("cargo").args(["build", "--release", "-p", "scan-agent", "-p", "scan-lab"]))?;
    let has_iface = agent_args
        .iter()
        .any(|a| a == "--iface" || a.starts_with("--iface="));
    if has_iface {
        require_root("attaching XDP needs CAP_BPF and CAP_NET_ADMIN")?;
        let mut c = cmd("target/release/scan-agent");
        c.arg("run").args(&agent_args);
        return run_in_foreground(&mut c);
    }
    require_root("the lab creates network namespaces and attaches XDP")?;
    let mut c = cmd("target/release/scan-lab-demo");
    if with_prometheus {
        c.arg("--with-prometheus");
    }
    c.arg("--").args(&agent_args);
    run_in_foreground(&mut c)
}

/// Like a shell: Ctrl-C goes to the child (agent or demo), which cleans up and
/// exits; this process waits for it instead of dying first. Both children install
/// their own SIGINT/SIGTERM handlers, which replace the inherited SIG_IGN.
fn run_in_foreground(c: &mut Command) -> Result<()> {
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    run(c)
}

fn require_root(why: &str) -> Result<()> {
    if !setup::is_root() {
        bail!("must run as root: {why}. Re-run with sudo");
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cmd(program: &str) -> Command {
    Command::new(program)
}

#[derive(Default)]
struct TestCounts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestCounts {
    /// Adds the counts of a cargo test summary (`test result: ok. 3 passed; 0 failed;
    /// 1 ignored; ...`) or of a plain `N passed, M failed` line.
    fn add_line(&mut self, line: &str) {
        let Some(body) = line
            .strip_prefix("test result: ")
            .or_else(|| line.contains(" passed, ").then_some(line))
        else {
            return;
        };
        let mut previous: Option<u64> = None;
        for word in body.split(|c: char| c.is_whitespace() || c == ';' || c == ',') {
            match (previous, word) {
                (Some(n), "passed") => self.passed += n,
                (Some(n), "failed") => self.failed += n,
                (Some(n), "ignored") => self.ignored += n,
                _ => {}
            }
            previous = word.parse().ok();
        }
    }
}

/// Runs `c`, echoing its standard output line by line and counting test results.
fn run_counting(c: &mut Command, counts: &mut TestCounts) -> Result<ExitStatus> {
    use std::io::BufRead as _;
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {c:?}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        counts.add_line(&line);
    }
    Ok(child.wait()?)
}

pub fn status(c: &mut Command) -> Result<ExitStatus> {
    c.status().with_context(|| format!("starting {c:?}"))
}

pub fn run(c: &mut Command) -> Result<()> {
    let s = status(c)?;
    if !s.success() {
        bail!("{c:?} failed: {s}");
    }
    Ok(())
}
