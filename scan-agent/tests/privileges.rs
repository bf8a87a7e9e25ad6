//! Least privilege (issue 12): the real agent in a lab namespace. The process listening
//! on the metrics port is the worker, not the attacher, and every one of its threads has
//! no effective, permitted or ambient capability, before and after the attacher
//! re-attaches to a recreated interface (whose counts stay exact).
use std::{
    process::Command,
    time::{Duration, Instant},
};

use scan_lab::{
    Agent, Lab, Scratch,
    http::sample,
    net::{wait_xdp_attached, xdp_attached},
    privileges::{ThreadCaps, pids_listening_on, thread_caps},
};

const AGENT: &str = env!("CARGO_BIN_EXE_scan-agent");

fn syns(metrics: &str, port: u16) -> f64 {
    sample(
        metrics,
        "scan_syn_packets_total",
        &format!("port=\"{port}\""),
    )
    .unwrap_or(0.0)
}

fn wait_metrics(
    agent: &Agent,
    limit: Duration,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        let metrics = agent.metrics().expect("scrape");
        if check(&metrics) {
            return metrics;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}\n{metrics}\nlog:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The one process listening on the agent's port; its threads hold no capability.
fn assert_listener_unprivileged(agent: &Agent, when: &str) -> (u32, Vec<ThreadCaps>) {
    let pids = pids_listening_on(agent.listen.port()).expect("reading /proc");
    assert_eq!(
        pids.len(),
        1,
        "{when}: one process should hold the listening socket, found {pids:?}"
    );
    let pid = pids[0];
    assert_ne!(
        Some(pid),
        agent.pid(),
        "{when}: the attacher (scan-agent run) holds the listening socket"
    );
    assert_eq!(
        Some(pid),
        agent.worker_pid(),
        "{when}: the listener is not the attacher's worker"
    );
    let threads = thread_caps(pid).expect("reading the worker's task statuses");
    for t in &threads {
        assert!(
            t.effective == 0 && t.permitted == 0 && t.ambient == 0 && t.inheritable == 0,
            "{when}: thread {} ({}) of the listening process {pid} holds capabilities: {t:?}",
            t.tid,
            t.name
        );
        assert!(
            t.no_new_privs,
            "{when}: thread {} without no_new_privs",
            t.tid
        );
    }
    (pid, threads)
}

#[test]
fn the_process_serving_http_has_no_capabilities_and_reattach_still_works() {
    let mut lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new("privileges", AGENT.as_ref()).expect("scratch directories");
    let mut args: Vec<String> = [
        "--iface",
        &lab.host_if,
        "--interval",
        "1s",
        "--watch-ports",
        "445",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(scratch.agent_args());
    let mut agent = Agent::start(AGENT.as_ref(), &args, &scratch.file("agent.log")).expect("start");
    assert!(xdp_attached(&lab.host_if));

    let (worker, threads) = assert_listener_unprivileged(&agent, "after attach");
    // The worker runs its HTTP server and poll loop on several threads: every one was
    // checked (the runtime's workers, the channel reader).
    assert!(threads.len() >= 3, "{threads:?}");
    eprintln!(
        "worker {worker}: {} threads ({}), CapEff/CapPrm/CapAmb 0 in each",
        threads.len(),
        threads
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The attacher keeps what attaching needs (the test runs as root): the check above
    // looks at the right process, not at an unprivileged one by accident.
    let attacher = thread_caps(agent.pid().unwrap()).expect("attacher status");
    let cap_bpf = 1u64 << 39;
    assert!(
        attacher.iter().all(|t| t.effective & cap_bpf != 0),
        "{attacher:?}"
    );
    // Not even a capability it could regain through an exec (root's bounding set is
    // dropped too when the worker starts as root, as here).
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    assert!(status.contains("CapBnd:\t0000000000000000"), "{status}");

    // What the split costs: the resident set of each process.
    for p in scan_lab::procs::tree(agent.pid().unwrap()).unwrap() {
        eprintln!(
            "pid {} ({}): RSS {} KiB, {} fds",
            p.pid, p.role, p.rss_kib, p.fds
        );
    }
    assert_eq!(lab.syns(false, 445, 10).unwrap(), 10);
    wait_metrics(&agent, Duration::from_secs(5), "10 SYNs", |m| {
        syns(m, 445) == 10.0
    });

    // Deleted and recreated (new ifindex): the attacher attaches again, the worker gets
    // the new load's maps, and counting goes on exactly.
    lab.recreate_pair().expect("recreate the pair");
    let reattached = wait_xdp_attached(&lab.host_if, Duration::from_secs(2)).unwrap_or_else(|e| {
        panic!(
            "not re-attached: {e}
{}",
            agent.log_text()
        )
    });
    eprintln!("re-attached after {:?}", reattached);
    let host_if = lab.host_if.clone();
    let metrics = wait_metrics(&agent, Duration::from_secs(3), "attached again", |m| {
        m.lines().any(|l| {
            l.starts_with("scan_agent_attached{")
                && l.contains(&format!("interface=\"{host_if}\""))
                && !l.contains("mode=\"none\"")
                && l.ends_with(" 1")
        }) && sample(m, "scan_agent_reattaches_total", "") == Some(1.0)
    });
    assert_eq!(
        sample(&metrics, "scan_agent_reattaches_total", ""),
        Some(1.0)
    );
    assert_eq!(lab.syns(false, 445, 7).unwrap(), 7);
    wait_metrics(&agent, Duration::from_secs(5), "17 SYNs", |m| {
        syns(m, 445) == 17.0
    });
    let (after, _) = assert_listener_unprivileged(&agent, "after the re-attach");
    assert_eq!(after, worker, "the worker was restarted");

    assert!(
        agent.stop(libc::SIGTERM).unwrap().success(),
        "{}",
        agent.log_text()
    );
    assert!(!xdp_attached(&lab.host_if), "detached at stop");
    // Both processes said what they did.
    let log = std::fs::read_to_string(&agent.log).unwrap();
    eprintln!("agent log:\n{log}");
    assert!(
        log.contains("it drops its capabilities, then serves HTTP"),
        "{log}"
    );
    assert!(log.contains("SIGTERM: saving the state"), "{log}");
}

/// The worker dying (a crash) stops the attacher too, with a non-zero status, after it
/// detached: systemd then restarts the pair.
#[test]
fn a_dead_worker_stops_the_attacher_which_detaches() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new("worker-dies", AGENT.as_ref()).expect("scratch directories");
    let mut args = vec!["--iface".to_string(), lab.host_if.clone()];
    args.extend(scratch.agent_args());
    let mut agent = Agent::start(AGENT.as_ref(), &args, &scratch.file("agent.log")).expect("start");
    assert!(xdp_attached(&lab.host_if));
    let worker = agent.worker_pid().expect("a worker");
    // SAFETY: kill on the agent's worker.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let started = Instant::now();
    while agent.pid().is_some_and(|pid| {
        std::path::Path::new(&format!("/proc/{pid}/task")).exists() && !is_zombie(pid)
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the attacher still runs 10 s after its worker died:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = agent.stop(libc::SIGTERM).unwrap();
    assert_eq!(status.code(), Some(1), "{}", agent.log_text());
    assert!(
        !xdp_attached(&lab.host_if),
        "still attached after the attacher exited"
    );
    assert!(
        agent.log_text().contains("the worker exited unexpectedly"),
        "{}",
        agent.log_text()
    );
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn wait_gone(pid: u32, limit: Duration, what: &str, log: &str) {
    let started = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(
            started.elapsed() < limit,
            "{what} still runs after {limit:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The attacher killed outright (SIGKILL, no chance to pass anything on): the worker
/// sees it (end of file on the channel, parent-death signal), saves the state and exits;
/// the kernel detached the program with the attacher's links.
#[test]
fn a_dead_attacher_ends_the_worker_which_saves_first() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new("attacher-dies", AGENT.as_ref()).expect("scratch directories");
    let mut agent = scratch
        .start_agent(&lab.host_if, &["--save-interval", "1h"], "1")
        .expect("start");
    let worker = agent.worker_pid().expect("a worker");
    assert_eq!(lab.syns(false, 445, 5).unwrap(), 5);
    wait_metrics(&agent, Duration::from_secs(5), "5 SYNs", |m| {
        syns(m, 445) == 5.0
    });
    // With a one-hour save interval, only the worker's save on the way out writes it.
    assert!(!scratch.state_file().exists());
    let attacher = agent.pid().unwrap();
    // SAFETY: kill on the agent's own pid.
    unsafe { libc::kill(attacher as i32, libc::SIGKILL) };
    wait_gone(
        worker,
        Duration::from_secs(10),
        "the worker",
        &agent.log_text(),
    );
    assert!(
        scratch.state_file().exists(),
        "no state saved:\n{}",
        agent.log_text()
    );
    // Which of the two it saw first varies: the parent-death signal (SIGTERM, sent when
    // the attacher's forking thread exits, while getppid() may still name the dying
    // attacher) or the end of file.
    let log = agent.log_text();
    assert!(
        log.contains("the attacher (pid") || log.contains("SIGTERM: saving the state"),
        "{log}"
    );
    assert!(
        !xdp_attached(&lab.host_if),
        "still attached without its attacher"
    );
    let _ = agent.stop(libc::SIGKILL);
}

/// SIGTERM to the attacher alone (`kill <MainPID>`, not the unit's cgroup): it passes
/// it on, the worker saves, and both exit 0.
#[test]
fn sigterm_to_the_attacher_alone_stops_both_cleanly() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new("attacher-term", AGENT.as_ref()).expect("scratch directories");
    let mut agent = scratch
        .start_agent(&lab.host_if, &["--save-interval", "1h"], "1")
        .expect("start");
    let (worker, attacher) = (agent.worker_pid().unwrap(), agent.pid().unwrap());
    // SAFETY: kill on the agent's own pid.
    unsafe { libc::kill(attacher as i32, libc::SIGTERM) };
    wait_gone(
        worker,
        Duration::from_secs(10),
        "the worker",
        &agent.log_text(),
    );
    let status = agent.stop(libc::SIGTERM).unwrap();
    assert!(status.success(), "{status}\n{}", agent.log_text());
    assert!(scratch.state_file().exists(), "{}", agent.log_text());
    assert!(!xdp_attached(&lab.host_if));
}

/// Two interfaces share the pinned port map; the first one attached is deleted: the
/// worker drops that load's maps but still reads the shared port map, so the other
/// interface's SYNs are counted exactly (no counter reset).
#[test]
fn the_first_of_two_interfaces_deleted_leaves_the_shared_counts() {
    let first = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let second = Lab::create().expect("creating a second lab");
    let scratch = Scratch::new("two-ifaces", AGENT.as_ref()).expect("scratch directories");
    let agent = scratch
        .start_agent(&first.host_if, &["--iface", &second.host_if], "1")
        .expect("start");
    assert!(xdp_attached(&first.host_if) && xdp_attached(&second.host_if));
    assert_eq!(first.syns(false, 445, 4).unwrap(), 4);
    assert_eq!(second.syns(false, 445, 3).unwrap(), 3);
    wait_metrics(&agent, Duration::from_secs(5), "7 SYNs", |m| {
        syns(m, 445) == 7.0
    });
    let out = Command::new("ip")
        .args(["link", "del", &first.host_if])
        .output()
        .expect("ip link del");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first_if = first.host_if.clone();
    wait_metrics(
        &agent,
        Duration::from_secs(5),
        "first interface gone",
        |m| {
            m.lines().any(|l| {
                l.starts_with("scan_agent_attached{")
                    && l.contains(&format!("interface=\"{first_if}\""))
                    && l.ends_with(" 0")
            })
        },
    );
    assert_eq!(second.syns(false, 445, 6).unwrap(), 6);
    let metrics = wait_metrics(&agent, Duration::from_secs(5), "13 SYNs", |m| {
        syns(m, 445) == 13.0
    });
    assert_eq!(
        sample(&metrics, "scan_agent_count_resets_total", ""),
        Some(0.0),
        "{metrics}"
    );
}
