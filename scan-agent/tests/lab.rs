//! Lab tests: a veth pair between the root namespace and a lab namespace, the real
//! agent binary attached to the root-side end, real `connect()` SYNs from the lab
//! namespace, `/metrics` scraped over HTTP, exact counts asserted.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use scan_lab::{
    Agent, Lab, Scratch,
    http::{sample, series},
};

const AGENT: &str = env!("CARGO_BIN_EXE_scan-agent");

fn scratch(tag: &str) -> Scratch {
    Scratch::new(tag, AGENT.as_ref()).expect("scratch directories")
}

/// Starts the agent on `lab` with the test settings plus `extra`; `run` names its log.
fn start(lab: &Lab, scratch: &Scratch, extra: &[&str], run: &str) -> Agent {
    Agent::start(
        AGENT.as_ref(),
        &agent_args(lab, scratch, extra),
        &scratch.file(&format!("{run}.log")),
    )
    .unwrap_or_else(|e| panic!("agent run {run:?} does not start: {e:#}"))
}

/// After a restart: no count went back, and the surge's exact count is still there.
fn assert_counts_kept(before: &str, after: &str) {
    assert!(
        port_total(after, 22) >= port_total(before, 22),
        "counts reset:\n{after}"
    );
    assert_eq!(port_total(after, 445), 600.0);
}

fn agent_args(lab: &Lab, scratch: &Scratch, extra: &[&str]) -> Vec<String> {
    let mut flags = vec![
        "--warmup",
        "8s",
        "--surge-threshold",
        "4",
        "--save-interval",
        "10s",
        "--watch-ports",
        "22,80,445,3389,8080,9998,9999",
        "--top-ports",
        "5",
    ];
    flags.extend(extra);
    scratch.run_args(&lab.host_if, &flags)
}

fn port_total(metrics: &str, port: u16) -> f64 {
    sample(
        metrics,
        "scan_syn_packets_total",
        &format!("port=\"{port}\""),
    )
    .unwrap_or(0.0)
}

fn value(metrics: &str, name: &str, labels: &str) -> f64 {
    sample(metrics, name, labels)
        .unwrap_or_else(|| panic!("{name}{{{labels}}} missing from /metrics:\n{metrics}"))
}

/// Polls /metrics until `check` holds, or fails after `limit` with the last scrape.
fn wait_for(agent: &Agent, limit: Duration, what: &str, check: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let metrics = agent.metrics().expect("scrape /metrics");
        if check(&metrics) {
            return metrics;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}; last /metrics:\n{metrics}\nagent log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn exact_counts_surge_and_restarts_keep_everything() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("main");
    let _open = lab.listen(8080).expect("listener on 8080");
    let mut agent = start(&lab, &scratch, &["--xdp-mode", "native"], "1");
    let metrics = agent.metrics().unwrap();
    assert_eq!(
        value(
            &metrics,
            "scan_agent_attached",
            &format!("interface=\"{}\"", lab.host_if)
        ),
        1.0
    );
    assert!(metrics.contains("mode=\"native\""), "{metrics}");

    // Known numbers to open and closed ports, both families.
    assert_eq!(lab.syns(false, 22, 37).unwrap(), 37);
    assert_eq!(lab.syns(true, 80, 5).unwrap(), 5);
    assert_eq!(lab.syns(false, 80, 11).unwrap(), 11);
    assert_eq!(lab.syns(false, 8080, 20).unwrap(), 20);
    assert_eq!(lab.syns(true, 3389, 3).unwrap(), 3);
    let metrics = agent.metrics_after_poll().unwrap();
    assert_eq!(port_total(&metrics, 22), 37.0);
    assert_eq!(port_total(&metrics, 80), 16.0);
    assert_eq!(port_total(&metrics, 8080), 20.0);
    assert_eq!(port_total(&metrics, 3389), 3.0);
    assert_eq!(port_total(&metrics, 445), 0.0);
    assert_eq!(
        value(&metrics, "scan_packet_flags_total", "flag=\"syn\""),
        76.0
    );
    assert!(value(&metrics, "scan_packet_flags_total", "flag=\"ipv6\"") >= 8.0);
    assert!(value(&metrics, "scan_packets_total", "outcome=\"tcp\"") >= 76.0);
    assert!(!metrics.contains("all_ports"), "{metrics}");

    // Steady background on 22 (~4 SYN/s) through the rest of the test, a 445
    // surge after warm-up: 445 must be flagged, 22 must not.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let background = scope.spawn(|| {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += lab.syns_at_rate(22, 4, 4.0).expect("background SYNs");
            }
            sent
        });
        std::thread::sleep(Duration::from_secs(10));
        let surge = scope.spawn(|| lab.syns_at_rate(445, 600, 60.0).expect("surge SYNs"));
        let metrics = wait_for(&agent, Duration::from_secs(12), "445 flagged", |m| {
            sample(m, "scan_surge_flagged", "port=\"445\"") == Some(1.0)
        });
        assert!(
            value(&metrics, "scan_surge_ratio", "port=\"445\"") >= 4.0,
            "{metrics}"
        );
        assert!(
            value(&metrics, "scan_surge_ratio", "port=\"22\"") < 4.0,
            "{metrics}"
        );
        assert_eq!(value(&metrics, "scan_surge_flagged", "port=\"22\""), 0.0);
        assert_eq!(value(&metrics, "scan_agent_warming_up", ""), 0.0);
        assert_eq!(surge.join().unwrap(), 600);

        // Restart with TERM mid-traffic: counts and baselines are kept.
        let before = agent.metrics().unwrap();
        let baseline_22 = value(&before, "scan_syn_baseline_rate", "port=\"22\"");
        assert!(baseline_22 > 0.0, "{before}");
        let status = agent.stop(libc::SIGTERM).unwrap();
        assert!(status.success(), "TERM must exit 0, got {status}");
        agent = start(&lab, &scratch, &[], "2");
        let after = agent.metrics().unwrap();
        assert_counts_kept(&before, &after);
        assert!(
            agent.log_text().contains("restored baselines"),
            "{}",
            agent.log_text()
        );
        let restored = value(&after, "scan_syn_baseline_rate", "port=\"22\"");
        assert!(
            (restored - baseline_22).abs() <= baseline_22 * 0.5,
            "baseline 22: {baseline_22} before, {restored} after"
        );
        wait_for(&agent, Duration::from_secs(10), "counting resumes", |m| {
            port_total(m, 22) > port_total(&after, 22)
        });

        // KILL mid-traffic: the periodic save and the pinned maps carry over.
        let before = agent.metrics().unwrap();
        // Past one --save-interval (10 s, the shortest allowed) since this agent started.
        std::thread::sleep(Duration::from_secs(11));
        agent.stop(libc::SIGKILL).unwrap();
        agent = start(&lab, &scratch, &[], "3");
        let after = agent.metrics().unwrap();
        assert_counts_kept(&before, &after);
        assert!(
            value(&after, "scan_syn_baseline_rate", "port=\"22\"") > 0.0,
            "{after}"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let background_sent = background.join().unwrap();
        // Every background SYN sent while an agent was attached was counted; the
        // ones sent in the gaps between agents may not be.
        let total = port_total(&agent.metrics().unwrap(), 22);
        assert!(total <= f64::from(37 + background_sent), "{total} > sent");
    });

    // Without --keep-attached the program leaves with the agent: not counted.
    agent.stop(libc::SIGTERM).unwrap();
    assert_eq!(lab.syns(false, 9998, 7).unwrap(), 7);
    // With --keep-attached it stays: every SYN sent while the agent is down counts.
    let mut agent = start(&lab, &scratch, &["--keep-attached"], "4");
    agent.stop(libc::SIGTERM).unwrap();
    assert_eq!(lab.syns(false, 9999, 50).unwrap(), 50);
    let agent = start(&lab, &scratch, &[], "5");
    assert!(agent.log_text().contains("adopted"), "{}", agent.log_text());
    let metrics = agent.metrics().unwrap();
    assert_eq!(
        port_total(&metrics, 9998),
        0.0,
        "SYNs counted with no program attached?"
    );
    assert_eq!(port_total(&metrics, 9999), 50.0);
    assert_eq!(port_total(&metrics, 445), 600.0);
    assert_eq!(port_total(&metrics, 8080), 20.0);
}

#[test]
fn endpoints_answer_and_metrics_pass_promtool() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("endpoints");
    let agent = start(&lab, &scratch, &[], "1");
    lab.syns(false, 445, 3).unwrap();
    agent.wait_poll().unwrap();
    let (status, body) = scan_lab::http::get(agent.listen, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = scan_lab::http::get(agent.listen, "/").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("/metrics"), "{body}");
    // The JSON API: the exported ports and any single port, with exact kernel counts.
    let (status, body) = scan_lab::http::get(agent.listen, "/api/v1/ports").unwrap();
    assert_eq!(status, 200, "{body}");
    let ports: scan_agent::api::PortsResponse = serde_json::from_str(&body).expect(&body);
    assert_eq!(ports.version, scan_agent::api::API_VERSION);
    assert!(ports.warming_up);
    assert_eq!(ports.syn_total_all_ports, 3, "{body}");
    let p445 = ports.ports.iter().find(|p| p.port == 445).expect(&body);
    assert_eq!(
        (p445.syn_total, p445.flagged, p445.episode_start),
        (3, false, None)
    );
    // Watch-list ports are exported even when idle.
    assert!(ports.ports.iter().any(|p| p.port == 9999), "{body}");
    for window in ports.ports.windows(2) {
        assert!(window[0].ratio >= window[1].ratio, "not by ratio: {body}");
    }
    let (status, body) = scan_lab::http::get(agent.listen, "/api/v1/ports/445").unwrap();
    assert_eq!(status, 200, "{body}");
    let one: scan_agent::api::PortView = serde_json::from_str(&body).expect(&body);
    assert_eq!((one.port, one.syn_total), (445, 3));
    let (status, body) = scan_lab::http::get(agent.listen, "/api/v1/ports/12345").unwrap();
    let idle: scan_agent::api::PortView = serde_json::from_str(&body).expect(&body);
    assert_eq!((status, idle.syn_total, idle.rate), (200, 0, 0.0));
    let (status, body) = scan_lab::http::get(agent.listen, "/api/v1/ports/70000").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("0 to 65535"), "{body}");
    let metrics = agent.metrics().unwrap();
    for name in [
        "scan_syn_packets_total",
        "scan_syn_rate",
        "scan_syn_baseline_rate",
        "scan_surge_ratio",
        "scan_packets_total",
        "scan_packet_flags_total",
        "scan_agent_attached",
        "scan_agent_poll_duration_seconds",
        "scan_agent_poll_errors_total",
        "scan_agent_ports_active",
        "scan_agent_ports_exported",
        "scan_agent_ports_left_out",
        "scan_agent_warming_up",
        "scan_agent_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}"
        );
    }
    assert!(metrics.contains("# TYPE scan_syn_packets_total counter"));
    assert!(metrics.contains("# TYPE scan_surge_ratio gauge"));
    assert_eq!(value(&metrics, "scan_agent_warming_up", ""), 1.0);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, installed by cargo xtask setup)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    // Clean means no lint line at all, not only exit status 0.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The deploy kit (rules, dashboard) names only metrics that this scrape has.
    let scrape = scratch.file("scrape.txt");
    std::fs::write(&scrape, &metrics).unwrap();
    let kit = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/kitcheck.py"
        ))
        .arg("exposition")
        .arg(&scrape)
        .output()
        .expect("python3");
    assert!(
        kit.status.success(),
        "{}",
        String::from_utf8_lossy(&kit.stdout)
    );

    // The interface disappears: /healthz says so and the attached gauge drops.
    scan_lab::net::ip(&["link", "del", &lab.host_if]).unwrap();
    agent.wait_poll().unwrap();
    let (status, body) = scan_lab::http::get(agent.listen, "/healthz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("interface gone") && body.contains(&lab.host_if),
        "{body}"
    );
    let metrics = agent.metrics().unwrap();
    assert_eq!(
        value(
            &metrics,
            "scan_agent_attached",
            &format!("interface=\"{}\"", lab.host_if)
        ),
        0.0
    );
}

#[test]
fn program_logs_reach_the_agent_log_only_with_the_debug_switch() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("logs");
    let mut agent = start(&lab, &scratch, &[], "quiet");
    lab.syns(false, 445, 2).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    agent.stop(libc::SIGTERM).unwrap();
    assert!(
        !agent.log_text().contains("syn_port="),
        "logged without the switch:\n{}",
        agent.log_text()
    );

    let mut agent = start(&lab, &scratch, &["--debug-program"], "debug");
    lab.syns(false, 445, 2).unwrap();
    let started = Instant::now();
    while !agent.log_text().contains("syn_port=445") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no program log record for the SYN:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop(libc::SIGTERM).unwrap();
}

#[test]
fn one_agent_counts_on_several_interfaces() {
    let first = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let second = Lab::create().expect("creating a second lab");
    let scratch = scratch("two-ifaces");
    let mut args = agent_args(&first, &scratch, &["--xdp-mode", "skb"]);
    args.extend(["--iface".to_string(), second.host_if.clone()]);
    let agent = Agent::start(AGENT.as_ref(), &args, &scratch.file("1.log")).expect("agent starts");
    let metrics = agent.metrics().unwrap();
    for lab in [&first, &second] {
        let labels = format!("interface=\"{}\",mode=\"skb\"", lab.host_if);
        assert_eq!(
            value(&metrics, "scan_agent_attached", &labels),
            1.0,
            "{metrics}"
        );
    }
    assert_eq!(first.syns(false, 445, 17).unwrap(), 17);
    assert_eq!(second.syns(true, 445, 8).unwrap(), 8);
    assert_eq!(second.syns(false, 3389, 5).unwrap(), 5);
    let metrics = agent.metrics_after_poll().unwrap();
    assert_eq!(port_total(&metrics, 445), 25.0);
    assert_eq!(port_total(&metrics, 3389), 5.0);
    // Per interface: each uplink's SYN total (the all-ports total, per interface).
    for (lab, syns) in [(&first, 17.0), (&second, 13.0)] {
        let iface = format!("interface=\"{}\"", lab.host_if);
        assert_eq!(
            series_value(
                &metrics,
                "scan_packet_flags_total",
                &[&iface, "flag=\"syn\""]
            ),
            syns,
            "{metrics}"
        );
    }
    // IPv6 also carries neighbour discovery: at least the 8 SYNs.
    assert!(
        series_value(
            &metrics,
            "scan_packet_flags_total",
            &[
                &format!("interface=\"{}\"", second.host_if),
                "flag=\"ipv6\""
            ]
        ) >= 8.0
    );
}

/// The value of the series of `name` whose labels contain every one of `labels`.
fn series_value(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    series(metrics, name, labels)
        .unwrap_or_else(|| panic!("{name} with {labels:?} missing from /metrics:\n{metrics}"))
}

#[test]
fn check_reports_the_preflight_and_tries_xdp_on_request() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let out = Command::new(AGENT)
        .args(["check", "--iface", &lab.host_if, "--try-attach", "native"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "kernel",
        "BTF",
        "CAP_BPF",
        "CAP_NET_ADMIN",
        "CAP_PERFMON",
        "bpffs",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("[ ok ]") && l.contains(line)),
            "{report}"
        );
    }
    assert!(report.contains("takes XDP in native mode"), "{report}");

    let out = Command::new(AGENT)
        .args(["check", "--iface", "scl-no-such0"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        report.contains("[FAIL] iface scl-no-such0") && report.contains("no such interface"),
        "{report}"
    );
}

#[test]
fn a_mismatched_pin_is_a_clear_error_not_a_reset() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("mismatch");
    std::fs::create_dir_all(&scratch.pin_path).unwrap();
    let pin = scratch.pin_path.join("SCAN_PORT_SYNS");
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type",
            "array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "16",
            "name",
            "SCAN_PORT_SYNS",
        ])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(AGENT)
        .arg("run")
        .args(agent_args(&lab, &scratch, &[]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(stderr.contains(pin.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("scan-agent detach"), "{stderr}");
    assert!(pin.exists(), "the mismatched pin must be left alone");
}

#[test]
fn serves_on_every_listen_address_under_the_telemetry_path() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("listen");
    let second: std::net::SocketAddr = format!("[::1]:{}", scan_lab::agent::free_port().unwrap())
        .parse()
        .unwrap();
    let agent = start(
        &lab,
        &scratch,
        &[
            "--listen",
            &second.to_string(),
            "--web.telemetry-path",
            "/scan/metrics",
        ],
        "1",
    );
    for address in [agent.listen, second] {
        let (status, body) = scan_lab::http::get(address, "/scan/metrics").unwrap();
        assert_eq!(status, 200, "{address}: {body}");
        assert!(body.contains("scan_agent_build_info{"), "{address}: {body}");
        let (status, _) = scan_lab::http::get(address, "/metrics").unwrap();
        assert_eq!(status, 404, "{address}: /metrics is not the telemetry path");
        let (status, body) = scan_lab::http::get(address, "/").unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("href=\"/scan/metrics\""), "{body}");
    }
}

#[test]
fn idle_connections_do_not_lock_out_a_scrape_and_heads_are_bounded() {
    use std::io::{Read as _, Write as _};
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("idle");
    let agent = start(&lab, &scratch, &[], "1");
    // 1,000 connections that never send a byte (more than the agent's cap of 512):
    // the longest idle ones make room, and a scrape still completes within 1 s.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(4096);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    assert!(
        limit.rlim_cur >= 1100,
        "need 1,100 fds, have {}",
        limit.rlim_cur
    );
    let idle: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(agent.listen).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let started = Instant::now();
        let metrics = agent.metrics().expect("scrape with 1,000 idle connections");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "scrape took {took:?}");
        assert!(metrics.contains("scan_agent_build_info{"));
    }
    drop(idle);
    // 1,000 idle through a cap of 512: 488 made room for later ones, and one for the
    // first scrape; each scrape's connection closes, usually freeing its slot before
    // the next scrape arrives (under load not always: up to 2 more).
    let evicted = value(
        &agent.metrics_after_poll().unwrap(),
        "scan_agent_http_connections_evicted_total",
        "",
    );
    assert!((489.0..=491.0).contains(&evicted), "evicted {evicted}");

    // A request head over 16 KiB is refused with 431, not buffered.
    let mut stream = std::net::TcpStream::connect(agent.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let huge = "x".repeat(20 * 1024);
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: {huge}\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    // Only GET: anything else is 405.
    let (status, _) = scan_lab::http::request(agent.listen, "POST", "/metrics", "x").unwrap();
    assert_eq!(status, 405);
}

/// `/metrics` is rendered by the first scrape after a poll and served as is until the
/// next poll: a second scrape of the same poll gets the same text, and polls no one
/// scrapes are not rendered. `scan_agent_render_duration_seconds_count` counts the
/// renders before the one that shows it.
#[test]
fn metrics_are_rendered_once_per_scraped_poll_and_not_for_unscraped_ones() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("lazy-render");
    let agent = start(&lab, &scratch, &[], "1");
    let polled = |m: &str| value(m, "scan_agent_last_poll_timestamp_seconds", "");
    let renders = |m: &str| value(m, "scan_agent_render_duration_seconds_count", "");
    // Two scrapes of one poll (again when a poll came between them).
    let started = Instant::now();
    let (first, second) = loop {
        let first = agent.metrics().unwrap();
        let second = agent.metrics().unwrap();
        if polled(&first) == polled(&second) {
            break (first, second);
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{second}");
    };
    assert_eq!(first, second, "the second scrape of a poll rendered again");
    // Polls (--interval 1s) no one scrapes.
    std::thread::sleep(Duration::from_millis(4500));
    let third = agent.metrics().unwrap();
    assert!(
        polled(&third) >= polled(&first) + 3.0,
        "fewer polls than expected:\n{third}"
    );
    assert_eq!(
        renders(&third),
        renders(&first) + 1.0,
        "rendered without a scrape:\n{third}"
    );
}
