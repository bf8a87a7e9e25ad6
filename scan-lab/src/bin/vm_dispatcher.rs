//! The libxdp dispatcher tests, run by `cargo xtask vm-test` inside a Linux 6.1 guest
//! under QEMU: the host kernel refuses every freplace (BPF_PROG_TYPE_EXT) load, so
//! the agent's dispatcher path and xdp-tools' can only meet in a kernel that allows
//! them. Real xdp-filter and xdp-loader (xdp-tools 1.3.1), the agent just built, a
//! lab veth, frames written raw (exact counts, no retransmissions). Prints one
//! `VM-TEST ok|FAILED <name>` line per scenario and the per-packet cost of the
//! dispatcher path beside plain XDP (`BPF_PROG_TEST_RUN`, same run).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use scan_lab::{
    Agent, Lab, Scratch,
    frames::{Frame, ether_type, tcp},
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
}

/// One test scenario: `Ok` when every expectation held.
type Scenario = fn(&Args) -> Result<()>;

/// The port xdp-filter is told to drop.
const DROPPED: u16 = 445;

fn main() -> Result<()> {
    let args = Args::parse();
    let scenarios: [(&str, Scenario); 4] = [
        ("filter_then_agent", filter_then_agent),
        ("agent_then_filter", agent_then_filter),
        ("keep_attached_restart", keep_attached_restart),
        (
            "foreign_program_is_not_replaced",
            foreign_program_is_not_replaced,
        ),
    ];
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
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
    ensure!(flag(&metrics, &i, "syn") == 8.0, "{metrics}");

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
    ensure!(lab_hook(&i)?.is_none(), "the hook is free at the end");
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
        lab_hook(&i)?.is_none(),
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
    let foreign = lab_hook(&i)?.context("the foreign program is attached")?;
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
            lab_hook(&i)? == Some(foreign),
            "the foreign program was replaced"
        );
    }
    tool("ip", &["link", "set", "dev", &i, "xdp", "off"])?;
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
    let plain_id = lab_hook(&plain_lab.host_if)?.context("plain XDP attached")?;
    let dispatcher_id = lab_hook(&shared_lab.host_if)?.context("dispatcher attached")?;
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

/// The id of the program on the XDP hook.
fn lab_hook(iface: &str) -> Result<Option<u32>> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(index != 0, "no interface {iface}");
    Ok(scan_agent::xdp_hook::query(index)?.map(|h| h.prog_id))
}

fn expect_ports(metrics: &str, expected: &[(u16, u64)]) -> Result<()> {
    for &(p, n) in expected {
        ensure!(
            port(metrics, p) == n as f64,
            "port {p}: counted {}, expected {n}\n{metrics}",
            port(metrics, p)
        );
    }
    Ok(())
}

/// SYN frames per port, IPv4 and IPv6 alternating, every third behind a VLAN tag.
fn syn_frames(lab: &Lab, per_port: &BTreeMap<u16, usize>) -> Result<Vec<Vec<u8>>> {
    let (host, peer) = lab.macs()?;
    let mut frames = Vec::new();
    for (&port, &n) in per_port {
        for i in 0..n {
            let frame = if i % 2 == 0 {
                Frame::ipv4_tcp(lab.peer_v4, lab.host_v4, 40_000 + i as u16, port, tcp::SYN)
            } else {
                Frame::ipv6_tcp(lab.peer_v6, lab.host_v6, 40_000 + i as u16, port, tcp::SYN)
            };
            let frame = if i % 3 == 2 {
                frame.vlan(ether_type::VLAN, 7)
            } else {
                frame
            };
            frames.push(frame.macs(host, peer).build());
        }
    }
    Ok(frames)
}

/// The value of the series of `name` whose labels contain every one of `labels`.
fn value(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter(|rest| rest.starts_with('{'))
        .filter_map(|rest| rest.rsplit_once(' '))
        .find(|(series, _)| labels.iter().all(|l| series.contains(l)))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

fn port(metrics: &str, port: u16) -> f64 {
    value(
        metrics,
        "scan_syn_packets_total",
        &[&format!("port=\"{port}\"")],
    )
}

fn flag(metrics: &str, interface: &str, flag: &str) -> f64 {
    value(
        metrics,
        "scan_packet_flags_total",
        &[
            &format!("interface=\"{interface}\""),
            &format!("flag=\"{flag}\""),
        ],
    )
}

fn attached(metrics: &str, interface: &str, hook: &str) -> f64 {
    value(
        metrics,
        "scan_agent_attached",
        &[
            &format!("interface=\"{interface}\""),
            &format!("hook=\"{hook}\""),
        ],
    )
}
