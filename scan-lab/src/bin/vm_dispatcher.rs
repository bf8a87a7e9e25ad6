//! The libxdp dispatcher tests, run by `cargo xtask vm-test` inside a Linux 6.1 guest
//! under QEMU: the host kernel refuses every freplace (BPF_PROG_TYPE_EXT) load, so
//! the agent's dispatcher path and xdp-tools' can only meet in a kernel that allows
//! them. Real xdp-filter and xdp-loader (xdp-tools 1.3.1), the agent just built, a
//! lab veth, frames written raw (exact counts, no retransmissions). Prints one
//! `VM-TEST ok|FAILED <name>` line per scenario and the per-packet cost of the
//! dispatcher path beside plain XDP (`BPF_PROG_TEST_RUN`, same run).
use std::{
    collections::BTreeMap,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use clap::Parser;
use scan_agent::sensor::{Hook, LinkKind, Sensor};
use scan_lab::{
    Agent, Lab, Scratch,
    frames::{Frame, syn_frames, tcp},
    http::{attached, packet_flag, port_syns},
    net::xdp_prog_id,
};

#[derive(Parser)]
struct Args {
    /// The scan-agent binary under test.
    #[arg(long)]
    agent: PathBuf,
    /// A foreign (non-dispatcher) XDP program object with an `xdp` section.
    #[arg(long)]
    foreign: PathBuf,
    /// Runs per BPF_PROG_TEST_RUN in the cost measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Only the scenarios with these names (all when none is given).
    #[arg(long)]
    only: Vec<String>,
    /// Instead of the scenarios (which need a guest): the dispatcher's own cost on
    /// this host, with real JIT and no freplace (see [`host_cost`]).
    #[arg(long)]
    host_cost: bool,
}

/// One test scenario: `Ok` when every expectation held.
type Scenario = fn(&Args) -> Result<()>;

/// The port xdp-filter is told to drop.
const DROPPED: u16 = 445;

fn main() -> Result<()> {
    let args = Args::parse();
    if args.host_cost {
        println!("VM-HOST-COST {}", host_cost(&args)?);
        return Ok(());
    }
    let scenarios: [(&str, Scenario); 5] = [
        ("filter_then_agent", filter_then_agent),
        ("agent_then_filter", agent_then_filter),
        ("keep_attached_restart", keep_attached_restart),
        (
            "foreign_program_is_not_replaced",
            foreign_program_is_not_replaced,
        ),
        ("both_wait_for_libxdps_lock", both_wait_for_libxdps_lock),
    ];
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let started = Instant::now();
        match scenario(&args) {
            Ok(()) => println!(
                "VM-TEST ok {name} ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!("VM-TEST FAILED {name}: {e:#}");
                failed.push(name);
            }
        }
        // A failed scenario must not leave xdp-filter to the next one.
        let _ = Command::new("xdp-filter")
            .args(["unload", "--all"])
            .output();
    }
    match cost(&args) {
        Ok(line) => println!("VM-BENCH {line}"),
        Err(e) => {
            println!("VM-TEST FAILED dispatcher_cost: {e:#}");
            failed.push("dispatcher_cost");
        }
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// xdp-filter first (it makes libxdp's dispatcher), then the agent joins it.
fn filter_then_agent(args: &Args) -> Result<()> {
    let lab = Lab::create_quiet()?;
    let i = lab.host_if.clone();
    let scratch = Scratch::new("vm-filter-first", &args.agent)?;
    tool("xdp-filter", &["load", &i])?;
    tool(
        "xdp-filter",
        &["port", &DROPPED.to_string(), "--mode", "dst"],
    )?;
    let filter = loader_status(&i)?.ids;
    let mut agent = start(&scratch, &i, &[], "agent")?;
    let status = loader_status(&i)?;
    ensure!(
        status.components == ["xdpfilt_alw_all", "scan_xdp"] && status.ids[0] == filter[0],
        "xdp-loader status (xdp-filter was program {filter:?}):\n{}",
        status.text
    );
    let metrics = agent.metrics()?;
    ensure!(
        attached(&metrics, &i, "xdp_dispatcher") == 1.0,
        "not attached as a dispatcher component:\n{}",
        agent.log_text()
    );

    let drops = filter_port_hits(DROPPED)?;
    let per_port = BTreeMap::from([(DROPPED, 8), (80, 5), (22, 3)]);
    ensure!(lab.inject(syn_frames(&lab, &per_port)?)? == 16);
    let metrics = agent.metrics_after_poll()?;
    ensure!(
        filter_port_hits(DROPPED)? - drops == 8,
        "xdp-filter dropped {} of 8",
        filter_port_hits(DROPPED)? - drops
    );
    expect_ports(&metrics, &[(DROPPED, 0), (80, 5), (22, 3)])?;
    ensure!(packet_flag(&metrics, &i, "syn") == 8.0, "{metrics}");

    ensure!(agent.stop(libc::SIGTERM)?.success(), "{}", agent.log_text());
    let status = loader_status(&i)?;
    ensure!(
        status.components == ["xdpfilt_alw_all"] && status.ids == filter,
        "agent stopped, xdp-loader status (xdp-filter was program {filter:?}):\n{}",
        status.text
    );
    // xdp-filter still drops what it is told to.
    let drops = filter_port_hits(DROPPED)?;
    ensure!(lab.inject(syn_frames(&lab, &BTreeMap::from([(DROPPED, 4)]))?)? == 4);
    ensure!(
        filter_port_hits(DROPPED)? - drops == 4,
        "xdp-filter after the agent"
    );
    tool("xdp-filter", &["unload", &i])?;
    ensure!(xdp_prog_id(&i)?.is_none(), "the hook is free at the end");
    Ok(())
}

/// The agent first (it makes the dispatcher), then xdp-filter joins; xdp-filter
/// leaves again and the agent keeps counting.
fn agent_then_filter(args: &Args) -> Result<()> {
    let lab = Lab::create_quiet()?;
    let i = lab.host_if.clone();
    let scratch = Scratch::new("vm-agent-first", &args.agent)?;
    let mut agent = start(&scratch, &i, &[], "agent")?;
    let status = loader_status(&i)?;
    ensure!(
        status.components == ["scan_xdp"],
        "xdp-loader status:\n{}",
        status.text
    );
    tool("xdp-filter", &["load", &i])?;
    tool(
        "xdp-filter",
        &["port", &DROPPED.to_string(), "--mode", "dst"],
    )?;
    let status = loader_status(&i)?;
    ensure!(
        status.components == ["xdpfilt_alw_all", "scan_xdp"],
        "xdp-loader status:\n{}",
        status.text
    );
    let drops = filter_port_hits(DROPPED)?;
    let per_port = BTreeMap::from([(DROPPED, 6), (3389, 7)]);
    ensure!(lab.inject(syn_frames(&lab, &per_port)?)? == 13);
    let metrics = agent.metrics_after_poll()?;
    ensure!(filter_port_hits(DROPPED)? - drops == 6, "xdp-filter drops");
    expect_ports(&metrics, &[(DROPPED, 0), (3389, 7)])?;

    tool("xdp-filter", &["unload", &i])?;
    let status = loader_status(&i)?;
    ensure!(
        status.components == ["scan_xdp"],
        "xdp-filter unloaded, xdp-loader status:\n{}",
        status.text
    );
    let per_port = BTreeMap::from([(DROPPED, 4), (3389, 2)]);
    ensure!(lab.inject(syn_frames(&lab, &per_port)?)? == 6);
    let metrics = agent.metrics_after_poll()?;
    expect_ports(&metrics, &[(DROPPED, 4), (3389, 9)])?;
    ensure!(agent.stop(libc::SIGTERM)?.success(), "{}", agent.log_text());
    ensure!(
        xdp_prog_id(&i)?.is_none(),
        "the agent was the last component: stopping frees the hook:\n{}",
        loader_status(&i)?.text
    );
    Ok(())
}

/// `--keep-attached` in a dispatcher: the component stays when the agent stops and
/// counts meanwhile; the next run replaces it (one component, nothing lost), and
/// `scan-agent detach` removes it, leaving xdp-filter.
fn keep_attached_restart(args: &Args) -> Result<()> {
    let lab = Lab::create_quiet()?;
    let i = lab.host_if.clone();
    let scratch = Scratch::new("vm-keep", &args.agent)?;
    tool("xdp-filter", &["load", &i])?;
    tool(
        "xdp-filter",
        &["port", &DROPPED.to_string(), "--mode", "dst"],
    )?;
    let mut agent = start(&scratch, &i, &["--keep-attached"], "first")?;
    ensure!(lab.inject(syn_frames(&lab, &BTreeMap::from([(80, 5)]))?)? == 5);
    agent.wait_poll()?;
    ensure!(agent.stop(libc::SIGTERM)?.success(), "{}", agent.log_text());
    let status = loader_status(&i)?;
    ensure!(
        status.components == ["xdpfilt_alw_all", "scan_xdp"],
        "kept: xdp-loader status:\n{}",
        status.text
    );
    // Counted by the kept component while no agent runs.
    let per_port = BTreeMap::from([(80, 7), (DROPPED, 3)]);
    ensure!(lab.inject(syn_frames(&lab, &per_port)?)? == 10);

    let mut agent = start(&scratch, &i, &["--keep-attached"], "second")?;
    let status = loader_status(&i)?;
    ensure!(
        status.components == ["xdpfilt_alw_all", "scan_xdp"],
        "restarted: one component of the agent:\n{}",
        status.text
    );
    ensure!(lab.inject(syn_frames(&lab, &BTreeMap::from([(80, 2)]))?)? == 2);
    let metrics = agent.metrics_after_poll()?;
    expect_ports(&metrics, &[(80, 14), (DROPPED, 0)])?;
    ensure!(agent.stop(libc::SIGTERM)?.success(), "{}", agent.log_text());

    let out = Command::new(&args.agent)
        .args(["detach", "--pin-path"])
        .arg(&scratch.pin_path)
        .output()?;
    ensure!(
        out.status.success(),
        "scan-agent detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = loader_status(&i)?;
    ensure!(
        status.components == ["xdpfilt_alw_all"],
        "after scan-agent detach ({}): xdp-loader status:\n{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        status.text
    );
    tool("xdp-filter", &["unload", &i])?;
    Ok(())
}

/// A program attached alone (not a dispatcher): `--attach xdp` refuses and names it;
/// `--attach auto` cannot fall back to TCX on 6.1 and says why. It stays either way.
fn foreign_program_is_not_replaced(args: &Args) -> Result<()> {
    let lab = Lab::create_quiet()?;
    let i = lab.host_if.clone();
    let scratch = Scratch::new("vm-foreign", &args.agent)?;
    let object = args.foreign.display().to_string();
    tool(
        "ip",
        &[
            "link", "set", "dev", &i, "xdp", "obj", &object, "sec", "xdp",
        ],
    )?;
    let foreign = xdp_prog_id(&i)?.context("the foreign program is attached")?;
    for attach in ["xdp", "auto"] {
        let out = Command::new(&args.agent)
            .args([
                "run",
                "--iface",
                &i,
                "--attach",
                attach,
                "--xdp-multiprog",
                "on",
            ])
            .args(scratch.agent_args())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "--attach {attach} started:\n{stderr}"
        );
        ensure!(
            stderr.contains(&foreign.to_string()),
            "--attach {attach}: the error does not name program {foreign}:\n{stderr}"
        );
        if attach == "auto" {
            ensure!(
                stderr.contains("TCX"),
                "--attach auto does not say why TCX is not there:\n{stderr}"
            );
        }
        println!(
            "  --attach {attach}: {}",
            stderr.trim().lines().last().unwrap_or("")
        );
        ensure!(
            xdp_prog_id(&i)? == Some(foreign),
            "the foreign program was replaced"
        );
    }
    tool("ip", &["link", "set", "dev", &i, "xdp", "off"])?;
    Ok(())
}

/// The protocol's lock is libxdp's: while it is held (`flock` on the bpffs `xdp/`
/// directory) neither the agent nor xdp-filter (libxdp 1.3.1) touches the hook; both
/// wait. Released, they race: the agent reads and swaps under the lock; libxdp 1.3.1
/// does not hold it from its read of the hook to its swap, so xdp-filter either joins
/// or fails with EBUSY (the kernel refuses its stale swap) and joins when loaded again.
/// Nothing is lost either way: both listed, exact counts.
fn both_wait_for_libxdps_lock(args: &Args) -> Result<()> {
    const HELD: Duration = Duration::from_secs(6);
    let lab = Lab::create_quiet()?;
    let i = lab.host_if.clone();
    let scratch = Scratch::new("vm-lock", &args.agent)?;
    let dir = Path::new("/sys/fs/bpf/xdp");
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::File::open(dir)?;
    // SAFETY: flock on an fd we own.
    ensure!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0);
    let filter = Command::new("xdp-filter")
        .args(["load", &i])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The agent is started from this thread (its parent-death signal follows the
    // thread that spawned it); a helper thread holds the lock meanwhile.
    let holder = std::thread::spawn({
        let i = i.clone();
        move || -> Result<Option<u32>> {
            std::thread::sleep(HELD);
            let hook = xdp_prog_id(&i)?;
            drop(lock);
            Ok(hook)
        }
    });
    let agent = start(&scratch, &i, &[], "agent");
    let hook = holder
        .join()
        .map_err(|_| anyhow::anyhow!("the lock holder panicked"))??;
    let filter = filter.wait_with_output()?;
    let mut agent = agent?;
    ensure!(
        hook.is_none(),
        "the hook was taken while the lock was held: program {hook:?}"
    );
    let components = loader_status(&i)?.components;
    println!(
        "  after the release: xdp-filter load {} {}; components {components:?}",
        filter.status,
        String::from_utf8_lossy(&filter.stderr).trim(),
    );
    if !filter.status.success() {
        ensure!(
            filter.status.code() == Some(240) && components == ["scan_xdp"],
            "xdp-filter load failed otherwise than by losing the race"
        );
        tool("xdp-filter", &["load", &i])?;
    }
    let status = loader_status(&i)?;
    ensure!(
        status.components == ["xdpfilt_alw_all", "scan_xdp"],
        "xdp-loader status:\n{}",
        status.text
    );
    tool(
        "xdp-filter",
        &["port", &DROPPED.to_string(), "--mode", "dst"],
    )?;
    let per_port = BTreeMap::from([(DROPPED, 3), (8080, 6)]);
    ensure!(lab.inject(syn_frames(&lab, &per_port)?)? == 9);
    expect_ports(&agent.metrics_after_poll()?, &[(DROPPED, 0), (8080, 6)])?;
    ensure!(agent.stop(libc::SIGTERM)?.success(), "{}", agent.log_text());
    tool("xdp-filter", &["unload", &i])?;
    ensure!(xdp_prog_id(&i)?.is_none(), "the hook is free at the end");
    Ok(())
}

/// Per-packet cost of plain XDP and of the dispatcher path (dispatcher, one freplace
/// call into the agent's component) on the same SYN frame: both attached at once on
/// two lab veths, measured alternately, medians of the rounds.
fn cost(args: &Args) -> Result<String> {
    const ROUNDS: usize = 7;
    let plain_lab = Lab::create_quiet()?;
    let shared_lab = Lab::create_quiet()?;
    let frame = syn_frames(&plain_lab, &BTreeMap::from([(80, 1)]))?.remove(0);
    let plain_scratch = Scratch::new("vm-cost-plain", &args.agent)?;
    let shared_scratch = Scratch::new("vm-cost-dispatcher", &args.agent)?;
    let frame_file = plain_scratch.file("syn.bin");
    std::fs::write(&frame_file, &frame)?;
    let plain_flags = ["--attach", "xdp", "--xdp-multiprog", "off"];
    let mut plain = start_with(&plain_scratch, &plain_lab.host_if, &plain_flags, "plain")?;
    let mut shared = start(&shared_scratch, &shared_lab.host_if, &[], "dispatcher")?;
    let plain_id = xdp_prog_id(&plain_lab.host_if)?.context("plain XDP attached")?;
    let dispatcher_id = xdp_prog_id(&shared_lab.host_if)?.context("dispatcher attached")?;
    let (mut plain_ns, mut dispatcher_ns) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain_ns.push(test_run(plain_id, &frame_file, args.repeat)?);
        dispatcher_ns.push(test_run(dispatcher_id, &frame_file, args.repeat)?);
    }
    ensure!(plain.stop(libc::SIGTERM)?.success());
    ensure!(shared.stop(libc::SIGTERM)?.success());
    let median = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (p, d) = (median(&mut plain_ns), median(&mut dispatcher_ns));
    Ok(format!(
        "BPF_PROG_TEST_RUN, {ROUNDS} alternating rounds of {} runs, IPv4 SYN: plain XDP \
         median {p} ns/packet {plain_ns:?}, dispatcher path median {d} ns/packet \
         {dispatcher_ns:?}; ratio {:.2}",
        args.repeat,
        d as f64 / p as f64
    ))
}

/// On the host, where freplace is refused but JIT is real: the agent's program alone,
/// libxdp's dispatcher with one slot enabled and empty (its stub returns the chain-call
/// value, so the dispatcher goes on and returns XDP_PASS: everything of the dispatcher
/// path but the jump into the component), and an empty XDP_PASS program (the test-run
/// harness), alternately, medians of the kernel's mean per run.
fn host_cost(args: &Args) -> Result<String> {
    const ROUNDS: usize = 7;
    let frame = Frame::ipv4_tcp(
        std::net::Ipv4Addr::new(198, 18, 0, 2),
        std::net::Ipv4Addr::new(198, 18, 0, 1),
        40_000,
        80,
        tcp::SYN,
    )
    .macs([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
    .build();
    let ours = Sensor::unattached(Hook::Xdp, LinkKind::Ethernet).context("loading our program")?;
    let mut pass = Ebpf::load_file(&args.foreign)
        .with_context(|| format!("loading {}", args.foreign.display()))?;
    let pass: &mut Xdp = pass
        .program_mut("xdp_pass")
        .context("no xdp_pass program")?
        .try_into()?;
    pass.load()?;
    // struct xdp_dispatcher_config (xdp-tools protocol.org, version 2): magic,
    // version, programs enabled, frags; chain-call actions, run priorities, flags.
    let mut config = [0u8; 4 + 3 * 4 * 10];
    config[..4].copy_from_slice(&[236, 2, 1, 0]);
    config[4..8].copy_from_slice(&((1u32 << 2) | (1 << 31)).to_ne_bytes());
    config[44..48].copy_from_slice(&200u32.to_ne_bytes());
    let object = "/usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o";
    let mut dispatcher = EbpfLoader::new()
        .override_global("conf", &config, true)
        .load_file(object)
        .with_context(|| format!("loading {object} (package libxdp1)"))?;
    let dispatcher: &mut Xdp = dispatcher
        .program_mut("xdp_dispatcher")
        .context("no xdp_dispatcher program")?
        .try_into()?;
    dispatcher.load()?;
    // Thread CPU time per run (nanosecond resolution; the kernel's own mean is whole
    // nanoseconds), as scan-bench measures.
    let timed = |run: &dyn Fn() -> Result<u32>| -> Result<f64> {
        let started = thread_cpu_ns();
        let verdict = run()?;
        let spent = thread_cpu_ns() - started;
        ensure!(verdict == 2, "not XDP_PASS: {verdict}");
        Ok(spent as f64 / f64::from(args.repeat))
    };
    let xdp_run = |xdp: &Xdp| -> Result<u32> {
        Ok(xdp
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: args.repeat,
                ..Default::default()
            })?
            .return_value)
    };
    let (mut o, mut d, mut e) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        o.push(timed(&|| {
            Ok(ours.test_run(&frame, args.repeat)?.return_value)
        })?);
        d.push(timed(&|| xdp_run(dispatcher))?);
        e.push(timed(&|| xdp_run(pass))?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (o, d, e) = (median(&mut o), median(&mut d), median(&mut e));
    Ok(format!(
        "BPF_PROG_TEST_RUN on this host, {ROUNDS} alternating rounds of {} runs, IPv4 SYN, \
         medians of thread CPU time per run: agent's program {o:.2} ns, libxdp dispatcher \
         with one empty slot {d:.2} ns, empty XDP_PASS {e:.2} ns: the dispatcher adds \
         {:.2} ns before the component",
        args.repeat,
        d - e
    ))
}

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `bpftool prog run`'s mean duration per run.
fn test_run(prog_id: u32, frame: &Path, repeat: u32) -> Result<u64> {
    let text = tool(
        "bpftool",
        &[
            "prog",
            "run",
            "id",
            &prog_id.to_string(),
            "data_in",
            &frame.display().to_string(),
            "repeat",
            &repeat.to_string(),
        ],
    )?;
    // "Return value: 2, duration (average): 123ns"
    let at = text
        .find("duration")
        .with_context(|| format!("bpftool prog run: {text}"))?;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bpftool prog run: {text}"))
}

fn start(scratch: &Scratch, iface: &str, extra: &[&str], run: &str) -> Result<Agent> {
    let mut flags = vec!["--attach", "xdp", "--xdp-multiprog", "on"];
    flags.extend(extra);
    start_with(scratch, iface, &flags, run)
}

fn start_with(scratch: &Scratch, iface: &str, flags: &[&str], run: &str) -> Result<Agent> {
    let agent = scratch.start_agent(iface, flags, run)?;
    agent.wait_poll()?;
    Ok(agent)
}

fn tool(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("{program} does not run"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{program} {args:?} failed:\n{text}");
    }
    Ok(text)
}

struct LoaderStatus {
    text: String,
    /// The dispatcher's components in run order (empty without a dispatcher).
    components: Vec<String>,
    /// Their program ids, in the same order.
    ids: Vec<u32>,
}

/// `xdp-loader status IFACE`: component lines are `=> PRIO NAME ID TAG ACTIONS`.
fn loader_status(iface: &str) -> Result<LoaderStatus> {
    let text = tool("xdp-loader", &["status", iface])?;
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|words| words.first() == Some(&"=>") && words.len() >= 4)
        .collect();
    let components = rows.iter().map(|w| w[2].to_string()).collect();
    let ids = rows.iter().map(|w| w[3].parse().unwrap_or(0)).collect();
    Ok(LoaderStatus {
        text: text.clone(),
        components,
        ids,
    })
}

/// xdp-filter's hit counter of a filtered port (`xdp-filter status`).
fn filter_port_hits(port: u16) -> Result<u64> {
    let text = tool("xdp-filter", &["status"])?;
    let ports = text
        .split("Filtered ports:")
        .nth(1)
        .with_context(|| format!("no filtered ports in xdp-filter status:\n{text}"))?;
    ports
        .lines()
        .find(|line| line.split_whitespace().next() == Some(&port.to_string()))
        .and_then(|line| line.split_whitespace().last()?.parse().ok())
        .with_context(|| format!("no hit counter for port {port}:\n{text}"))
}

fn expect_ports(metrics: &str, expected: &[(u16, u64)]) -> Result<()> {
    for &(p, n) in expected {
        ensure!(
            port_syns(metrics, p) == n as f64,
            "port {p}: counted {}, expected {n}\n{metrics}",
            port_syns(metrics, p)
        );
    }
    Ok(())
}
