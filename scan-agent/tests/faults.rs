//! Fault injection (issue 10): the real agent in a lab namespace, faults a router lives
//! through (taken port, corrupt state file, outages, a reboot that loses the pins), exact
//! counts and zero false flags asserted.
use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use scan_lab::{
    Agent, Lab, Scratch,
    http::{port_syns, sample},
    net::{wait_xdp_attached, xdp_attached},
};

const AGENT: &str = env!("CARGO_BIN_EXE_scan-agent");

/// Short windows so that "3 baseline windows" is 30 s.
fn args(lab: &Lab, scratch: &Scratch, extra: &[&str]) -> Vec<String> {
    let mut flags = vec![
        "--short-window",
        "2s",
        "--baseline-window",
        "10s",
        "--warmup",
        "4s",
        "--surge-threshold",
        "4",
        "--save-interval",
        "10s",
        "--watch-ports",
        "22,445,9999",
    ];
    flags.extend(extra);
    scratch.run_args(&lab.host_if, &flags)
}

fn start(lab: &Lab, scratch: &Scratch, extra: &[&str], run: &str) -> Agent {
    Agent::start(
        AGENT.as_ref(),
        &args(lab, scratch, extra),
        &scratch.file(&format!("{run}.log")),
    )
    .unwrap_or_else(|e| panic!("agent run {run:?} does not start: {e:#}"))
}

fn lab_and_scratch(tag: &str) -> (Lab, Scratch) {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new(tag, AGENT.as_ref()).expect("scratch directories");
    (lab, scratch)
}

fn value(metrics: &str, name: &str, labels: &str) -> f64 {
    sample(metrics, name, labels)
        .unwrap_or_else(|| panic!("{name}{{{labels}}} missing from /metrics:\n{metrics}"))
}

/// Waits (at most 5 s: /metrics shows the last poll) until port's count is `expected`;
/// fails with the last scrape if it is not. Returns that scrape.
fn wait_syns(agent: &Agent, port: u16, expected: f64) -> String {
    let started = Instant::now();
    loop {
        let metrics = agent.metrics().expect("scrape");
        if port_syns(&metrics, port) == expected {
            return metrics;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "port {port}: {} SYNs counted, {expected} sent\n{metrics}\nlog:\n{}",
            port_syns(&metrics, port),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every `scan_surge_flagged` sample that is 1.
fn flagged(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("scan_surge_flagged{") && l.ends_with(" 1"))
        .map(str::to_string)
        .collect()
}

/// Whether any XDP program is attached to `interface` (`ip link` shows `prog/xdp`).
/// Scrapes every 500 ms for `span`, asserting no port is flagged at any of them.
fn assert_never_flagged(agent: &Agent, span: Duration, what: &str) -> String {
    assert_flagged_only(agent, span, what, &[])
}

/// Scrapes every 500 ms for `span`, asserting no port but `allowed` is flagged.
fn assert_flagged_only(agent: &Agent, span: Duration, what: &str, allowed: &[u16]) -> String {
    let started = Instant::now();
    loop {
        let metrics = agent.metrics().expect("scrape");
        let mut f = flagged(&metrics);
        f.retain(|l| !allowed.iter().any(|p| l.contains(&format!("port=\"{p}\""))));
        assert!(
            f.is_empty(),
            "{what}: flagged {f:?}\n{metrics}\nlog:\n{}",
            agent.log_text()
        );
        if started.elapsed() >= span {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn taken_listen_port_exits_non_zero_and_never_touches_the_interface() {
    let (lab, scratch) = lab_and_scratch("taken-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = taken.local_addr().unwrap().to_string();
    let mut run = args(
        &lab,
        &scratch,
        &["--listen", &listen, "--xdp-mode", "native"],
    );
    run.insert(0, "run".into());
    let out = Command::new(AGENT)
        .args(&run)
        .env("RUST_LOG", "info")
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {listen}")),
        "{stderr}"
    );
    assert!(!xdp_attached(&lab.host_if), "the interface was touched");
    assert!(!stderr.contains("attached to"), "{stderr}");
    // Not even the pins were created: nothing before the listener touched the kernel.
    assert!(!scratch.pin_path.exists(), "{stderr}");
}

#[test]
fn corrupt_state_file_is_moved_aside_and_learning_starts_afresh() {
    let (lab, scratch) = lab_and_scratch("corrupt-state");
    let state = scratch.state_file();
    std::fs::write(&state, b"SCANSTAT\x01\x00\x00\x00garbage that is no state").unwrap();
    let mut agent = start(&lab, &scratch, &[], "1");
    let metrics = agent.metrics().unwrap();
    assert_eq!(
        value(&metrics, "scan_agent_state_restore_failures_total", ""),
        1.0
    );
    assert_eq!(value(&metrics, "scan_agent_warming_up", ""), 1.0);
    assert!(
        agent.log_text().contains("moved it to"),
        "{}",
        agent.log_text()
    );
    let aside: Vec<_> = std::fs::read_dir(&scratch.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.bin.bad-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(xdp_attached(&lab.host_if));
    assert_eq!(lab.syns(false, 445, 9).unwrap(), 9);
    wait_syns(&agent, 445, 9.0);
    // The state written on stop loads cleanly at the next start.
    assert!(agent.stop(libc::SIGTERM).unwrap().success());
    let agent = start(&lab, &scratch, &[], "2");
    let metrics = agent.metrics().unwrap();
    assert_eq!(
        value(&metrics, "scan_agent_state_restore_failures_total", ""),
        0.0
    );
    assert!(
        agent.log_text().contains("restored baselines"),
        "{}",
        agent.log_text()
    );
}

/// Steady traffic to port 22 at ~5 SYN/s for the whole test; the agent is down for 3
/// baseline windows (30 s). Without --keep-attached that time is unobserved: nothing
/// decays, nothing is flagged after the restart. With it, every SYN sent while the agent
/// was down is counted, and nothing is flagged either. Then a simulated reboot (pins
/// and links gone, counters from 0): no flag, no counter reset.
#[test]
fn outages_and_a_reboot_flag_nothing_and_lose_nothing() {
    let (lab, scratch) = lab_and_scratch("outage");
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let background = scope.spawn(|| {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                sent += lab.syns_at_rate(22, 5, 5.0).expect("background SYNs");
            }
            sent
        });
        // Warm up, with a learned baseline on 22.
        let mut agent = start(&lab, &scratch, &[], "1");
        let before = assert_never_flagged(&agent, Duration::from_secs(8), "before the outage");
        assert_eq!(value(&before, "scan_agent_warming_up", ""), 0.0);
        assert!(
            value(&before, "scan_syn_baseline_rate", "port=\"22\"") > 2.0,
            "{before}"
        );
        assert!(agent.stop(libc::SIGTERM).unwrap().success());

        // Outage without a kept link: 3 baseline windows.
        std::thread::sleep(Duration::from_secs(30));
        let mut agent = start(&lab, &scratch, &["--keep-attached"], "2");
        assert!(
            agent
                .log_text()
                .contains("not attached is not learned from"),
            "{}",
            agent.log_text()
        );
        let after = assert_never_flagged(&agent, Duration::from_secs(8), "after the outage");
        assert!(
            value(&after, "scan_syn_baseline_rate", "port=\"22\"") > 2.0,
            "{after}"
        );
        assert_eq!(value(&after, "scan_agent_count_resets_total", ""), 0.0);
        assert!(agent.stop(libc::SIGTERM).unwrap().success());

        // Outage with the link kept: every SYN to 9999 sent meanwhile is counted.
        assert_eq!(lab.syns(false, 9999, 40).unwrap(), 40);
        std::thread::sleep(Duration::from_secs(30));
        let mut agent = start(&lab, &scratch, &["--keep-attached"], "3");
        assert!(
            agent.log_text().contains("counted throughout"),
            "{}",
            agent.log_text()
        );
        let kept = agent.metrics().unwrap();
        assert_eq!(port_syns(&kept, 9999), 40.0, "{kept}");
        // The 40 SYNs to 9999 during the outage are a real surge (baseline 0): only
        // that port may be flagged.
        assert_flagged_only(
            &agent,
            Duration::from_secs(8),
            "after the kept outage",
            &[9999],
        );
        assert!(agent.stop(libc::SIGTERM).unwrap().success());

        // A reboot: links and maps gone (pins are on bpffs, which does not survive).
        let out = Command::new(AGENT)
            .args(["detach", "--pin-path"])
            .arg(&scratch.pin_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!xdp_attached(&lab.host_if));
        std::thread::sleep(Duration::from_secs(5));
        let agent = start(&lab, &scratch, &["--keep-attached"], "4");
        let rebooted =
            assert_flagged_only(&agent, Duration::from_secs(8), "after the reboot", &[9999]);
        assert_eq!(port_syns(&rebooted, 9999), 0.0, "counters restart from 0");
        assert_eq!(value(&rebooted, "scan_agent_count_resets_total", ""), 0.0);
        assert!(value(&rebooted, "scan_syn_baseline_rate", "port=\"22\"") > 2.0);
        stop.store(true, Ordering::Relaxed);
        background.join().unwrap();
    });
}

/// Polls /metrics until `check` holds; returns how long it took. Fails after `limit`.
fn time_until(
    agent: &Agent,
    limit: Duration,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let metrics = agent.metrics().expect("scrape");
        if check(&metrics) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}\n{metrics}\nlog:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn attached(metrics: &str, interface: &str) -> bool {
    metrics.lines().any(|l| {
        l.starts_with("scan_agent_attached{")
            && l.contains(&format!("interface=\"{interface}\""))
            && !l.contains("mode=\"none\"")
            && l.ends_with(" 1")
    })
}

/// The watched interface (by pattern) deleted and recreated, set down and up, renamed; a
/// kept link's pin removed under the agent. (A configured name that is gone exports
/// `scan_agent_attached` 0: lab.rs, endpoints test.) Counts stay
/// exact across all of it, and every re-attach is within 2 s.
#[test]
fn interfaces_that_come_and_go_are_attached_again_and_counts_stay_exact() {
    let (mut lab, scratch) = lab_and_scratch("ifaces");
    let pattern = format!("{}*", lab.host_if);
    let mut run = args(&lab, &scratch, &["--keep-attached"]);
    // The pattern instead of the plain name.
    let at = run.iter().position(|a| *a == lab.host_if).unwrap();
    run[at] = pattern.clone();
    let agent = Agent::start(AGENT.as_ref(), &run, &scratch.file("1.log")).expect("start");
    let metrics = agent.metrics().unwrap();
    assert!(attached(&metrics, &lab.host_if), "{metrics}");
    assert_eq!(lab.syns(false, 445, 10).unwrap(), 10);
    wait_syns(&agent, 445, 10.0);

    // Deleted and recreated: a new ifindex, attached again within 2 s.
    lab.recreate_pair().expect("recreate the pair");
    // Measured on the kernel's side (`ip link`); /metrics follows at the next poll.
    let reattached = wait_xdp_attached(&lab.host_if, Duration::from_secs(2)).unwrap_or_else(|e| {
        panic!(
            "not re-attached: {e}
{}",
            agent.log_text()
        )
    });
    eprintln!("re-attach after delete + recreate: {:?}", reattached);
    time_until(
        &agent,
        Duration::from_secs(3),
        "attached in /metrics",
        |m| attached(m, &lab.host_if),
    );
    assert_eq!(lab.syns(false, 445, 7).unwrap(), 7);
    let metrics = wait_syns(&agent, 445, 17.0);
    assert_eq!(value(&metrics, "scan_agent_reattaches_total", ""), 1.0);

    // Down and up: the program stays.
    Command::new("ip")
        .args(["link", "set", &lab.host_if, "down"])
        .status()
        .unwrap();
    Command::new("ip")
        .args(["link", "set", &lab.host_if, "up"])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lab.syns(false, 445, 5).unwrap(), 5);
    wait_syns(&agent, 445, 22.0);

    // Renamed (still matching the pattern): the same interface, the program stays.
    let renamed = format!("{}r", lab.host_if);
    for args in [
        vec!["link", "set", &lab.host_if, "down"],
        vec!["link", "set", &lab.host_if, "name", &renamed],
        vec!["link", "set", &renamed, "up"],
    ] {
        assert!(Command::new("ip").args(&args).status().unwrap().success());
    }
    time_until(&agent, Duration::from_secs(2), "rename seen", |m| {
        attached(m, &renamed)
    });
    assert_eq!(lab.syns(false, 445, 4).unwrap(), 4);
    let metrics = wait_syns(&agent, 445, 26.0);
    assert_eq!(value(&metrics, "scan_agent_reattaches_total", ""), 1.0);
    assert!(xdp_attached(&renamed));

    // The kept link's pin removed under the agent: pinned again, program still there.
    let pins: Vec<_> = std::fs::read_dir(&scratch.pin_path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("link-"))
        .collect();
    assert_eq!(pins.len(), 1, "{pins:?}");
    std::fs::remove_file(pins[0].path()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        pins[0].path().exists(),
        "pin not restored:\n{}",
        agent.log_text()
    );
    assert_eq!(lab.syns(false, 445, 3).unwrap(), 3);
    wait_syns(&agent, 445, 29.0);
    let mut agent = agent;
    assert!(agent.stop(libc::SIGTERM).unwrap().success());
    assert!(xdp_attached(&renamed), "the kept link went with the agent");
}

/// The entries of the pin directory, sorted (empty if it is gone).
fn pins(scratch: &Scratch) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&scratch.pin_path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every pin (the maps and the kept link) removed under a running agent, with the pin
/// directory itself: each is pinned again within a poll or two (logged once each), counting
/// goes on exactly, and the pins are the running maps and link: a restart adopts them, the
/// SYNs sent while the agent was down are counted, and no counter went back.
#[test]
fn pins_removed_under_a_running_agent_are_pinned_again_and_lose_nothing() {
    let (lab, scratch) = lab_and_scratch("pins-removed");
    let mut agent = start(&lab, &scratch, &["--keep-attached"], "1");
    assert_eq!(lab.syns(false, 445, 10).unwrap(), 10);
    wait_syns(&agent, 445, 10.0);
    let before = pins(&scratch);
    // The port map, this interface's class map, the sketches, the samples, the link.
    assert_eq!(before.len(), 5, "{before:?}");
    assert_eq!(
        before.iter().filter(|p| p.starts_with("link-")).count(),
        1,
        "{before:?}"
    );

    std::fs::remove_dir_all(&scratch.pin_path).expect("removing the pins");
    assert!(pins(&scratch).is_empty());
    let removed = Instant::now();
    while pins(&scratch) != before {
        assert!(
            removed.elapsed() < Duration::from_secs(3),
            "pins not restored within 3 s: {:?} of {before:?}\n{}",
            pins(&scratch),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("pins restored {:?} after their removal", removed.elapsed());
    let restored = agent
        .log_text()
        .lines()
        .filter(|l| l.contains("was removed under the running agent: pinned again"))
        .count();
    assert_eq!(restored, before.len(), "{}", agent.log_text());
    assert!(xdp_attached(&lab.host_if));
    assert_eq!(lab.syns(false, 445, 7).unwrap(), 7);
    wait_syns(&agent, 445, 17.0);

    // Down: the kept link counts into the pinned maps; the next run adopts both.
    assert!(agent.stop(libc::SIGTERM).unwrap().success());
    assert_eq!(lab.syns(false, 445, 5).unwrap(), 5);
    let agent = start(&lab, &scratch, &["--keep-attached"], "2");
    let metrics = wait_syns(&agent, 445, 22.0);
    assert_eq!(
        value(&metrics, "scan_agent_count_resets_total", ""),
        0.0,
        "{metrics}"
    );
    assert!(
        agent
            .log_text()
            .contains("adopted the link kept by the previous run"),
        "{}",
        agent.log_text()
    );
    assert_eq!(pins(&scratch), before);
    assert!(flagged(&metrics).is_empty(), "{metrics}");
}

/// A small tmpfs mounted in the scratch directory, unmounted on drop (also when the test
/// fails).
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(scratch: &Scratch) -> Self {
        let dir = scratch.file("statefs");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "scan-lab-state"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "cannot mount a tmpfs (needs root)");
        Self(dir)
    }

    fn remount(&self, options: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success(), "remount {options}");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn save_errors(agent: &Agent) -> f64 {
    value(
        &agent.metrics().unwrap(),
        "scan_agent_state_save_errors_total",
        "",
    )
}

/// The state directory fills up, then becomes read-only: the agent keeps counting and
/// serving, the save error counter rises, and saving works again when space returns.
#[test]
fn full_or_read_only_state_directory_costs_nothing_but_saves() {
    let (lab, scratch) = lab_and_scratch("statefs");
    let fs = SmallFs::mount(&scratch);
    let state = fs.0.join("state.bin");
    let run = args(
        &lab,
        &scratch,
        &["--state-file", &state.display().to_string()],
    );
    let agent = Agent::start(AGENT.as_ref(), &run, &scratch.file("1.log")).expect("start");
    let mut sent = 0.0;
    let mut traffic = |n: u32| {
        assert_eq!(lab.syns(false, 445, n).unwrap(), n);
        sent += f64::from(n);
        wait_syns(&agent, 445, sent);
    };
    traffic(5);

    // Full: a filler takes every block.
    let filler = fs.0.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .output()
        .unwrap();
    let before = save_errors(&agent);
    let started = Instant::now();
    while save_errors(&agent) <= before {
        traffic(3);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no save error on a full file system:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        agent.log_text().contains("No space left"),
        "{}",
        agent.log_text()
    );
    traffic(4);
    assert_eq!(
        scan_lab::http::get(agent.listen, "/healthz").unwrap().0,
        200
    );

    // Space returns: the next save works.
    std::fs::remove_file(&filler).unwrap();
    let _ = std::fs::remove_file(&state);
    let started = Instant::now();
    while !state.exists() {
        traffic(1);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no save after space returned"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Read-only, then writable again.
    fs.remount("ro");
    let before = save_errors(&agent);
    let started = Instant::now();
    while save_errors(&agent) <= before {
        traffic(2);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no save error when read-only"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    fs.remount("rw");
    let saved = std::fs::metadata(&state).unwrap().modified().unwrap();
    let started = Instant::now();
    while std::fs::metadata(&state).unwrap().modified().unwrap() == saved {
        traffic(1);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no save after remount rw"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let errors = save_errors(&agent);
    std::thread::sleep(Duration::from_secs(12));
    traffic(1);
    assert_eq!(
        save_errors(&agent),
        errors,
        "saves still failing after recovery"
    );
    drop(agent);
}

/// SIGKILL while a save is in progress (its temporary file exists): the state file is
/// intact or cleanly replaced, and the next start removes the temporary file.
#[test]
fn sigkill_during_a_state_save_leaves_the_state_intact() {
    let (lab, scratch) = lab_and_scratch("sigkill-save");
    let state = scratch.state_file();
    for round in 1..=3 {
        let mut agent = start(&lab, &scratch, &[], &format!("{round}"));
        assert_eq!(
            value(
                &agent.metrics().unwrap(),
                "scan_agent_state_restore_failures_total",
                ""
            ),
            0.0,
            "round {round}:\n{}",
            agent.log_text()
        );
        // Changes to save, then kill when the temporary file appears (or at 15 s).
        assert_eq!(lab.syns(false, 445, 3).unwrap(), 3);
        let started = Instant::now();
        let mut caught = false;
        while started.elapsed() < Duration::from_secs(15) {
            caught = std::fs::read_dir(&scratch.dir).unwrap().flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".state.bin.tmp")
            });
            if caught {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        agent.stop(libc::SIGKILL).unwrap();
        eprintln!(
            "round {round}: killed {} a save",
            if caught { "during" } else { "around" }
        );
        if state.exists() {
            let bytes = std::fs::read(&state).unwrap();
            scan_agent::state::decode(&state, &bytes).expect("state file intact after SIGKILL");
        }
    }
    let agent = start(&lab, &scratch, &[], "last");
    let leftovers: Vec<_> = std::fs::read_dir(&scratch.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".state.bin.tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        value(
            &agent.metrics().unwrap(),
            "scan_agent_state_restore_failures_total",
            ""
        ),
        0.0
    );
}
