//! Alerting end to end: the lab, the real agent, a real Prometheus with the shipped
//! rules and a real Alertmanager (Debian packages) on loopback. A scripted surge on
//! 445 must reach Alertmanager as `PortScanSurge{port="445"}` and resolve after.
//!
//! Prometheus scrapes the agent as it would across a network: over TLS with basic auth
//! (`--web.config.file`, Prometheus `tls_config` + `basic_auth`) for the surge, and over
//! mutual TLS in a second run.
//!
//! Test-scale durations: the shipped rules go through `deploy/prometheus/test-scale.sh`,
//! which rewrites only the `for:` lines (and checks that it did); thresholds,
//! expressions, labels and annotations are the production ones.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use scan_lab::{
    Agent, Lab, Scratch,
    monitoring::Monitoring,
    pki::{Pki, bcrypt_hash},
};

const AGENT: &str = env!("CARGO_BIN_EXE_scan-agent");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn test_rules(scratch: &Scratch) -> PathBuf {
    let rules = scratch.file("rules.yml");
    let status = Command::new("bash")
        .arg(workspace().join("deploy/prometheus/test-scale.sh"))
        .arg(workspace().join("deploy/prometheus/scan-agent.rules.yml"))
        .arg(&rules)
        .arg("5s")
        .status()
        .expect("bash");
    assert!(status.success(), "test-scale.sh failed");
    rules
}

/// The agent with the test settings and `web_config`; `curl` reaches it over HTTPS.
fn start_agent(lab: &Lab, scratch: &Scratch, web_config: &Path, curl: Vec<String>) -> Agent {
    let mut args = scratch.run_args(&lab.host_if, &["--watch-ports", "22,445"]);
    args.extend(["--web.config.file".into(), web_config.display().to_string()]);
    Agent::start_with(
        AGENT.as_ref(),
        &args,
        &scratch.file("agent.log"),
        Some(curl),
    )
    .expect("agent")
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_445_surge_reaches_alertmanager_over_tls_with_basic_auth_and_resolves() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new("alerting", AGENT.as_ref()).expect("scratch directories");
    let rules = test_rules(&scratch);
    let pki = Pki::new(&scratch.dir, "alerting").expect("test CA");
    let server = pki.server("agent").expect("server certificate");
    let web_config = scratch.file("web.yml");
    std::fs::write(
        &web_config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n\
             basic_auth_users:\n  prometheus: '{}'\n",
            path(&server.cert),
            path(&server.key),
            bcrypt_hash("s3cret").unwrap()
        ),
    )
    .unwrap();
    let ca = path(&pki.ca);
    let curl = |user: &str| -> Vec<String> {
        vec!["--cacert".into(), ca.clone(), "-u".into(), user.into()]
    };
    let agent = start_agent(&lab, &scratch, &web_config, curl("prometheus:s3cret"));
    // The real agent: a wrong password is 401, plain HTTP to the TLS port gets no answer.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(curl("prometheus:wrong"))
        .arg(format!("https://{}/metrics", agent.listen))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    assert!(
        scan_lab::http::get(agent.listen, "/metrics").is_err(),
        "plain HTTP to the TLS port answered"
    );
    let monitoring = Monitoring::start_with(
        agent.listen,
        &rules,
        &scratch.file("monitoring"),
        "1s",
        &format!(
            "    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      \
             username: prometheus\n      password: s3cret\n"
        ),
    )
    .expect("Prometheus and Alertmanager (Debian packages, installed by cargo xtask setup)");

    let stop_background = AtomicBool::new(false);
    let stop_surge = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop_background.load(Ordering::Relaxed) {
                lab.syns_at_rate(22, 3, 3.0).expect("background SYNs");
            }
        });
        std::thread::sleep(Duration::from_secs(8));
        assert!(
            monitoring
                .find_alert("PortScanSurge", &[])
                .unwrap()
                .is_none(),
            "an alert before any surge: {:?}",
            monitoring.alerts()
        );

        let surge_started = Instant::now();
        let (lab, stop_surge_flag) = (&lab, &stop_surge);
        let surge = scope.spawn(move || {
            let mut sent = 0;
            while !stop_surge_flag.load(Ordering::Relaxed)
                && surge_started.elapsed() < Duration::from_secs(120)
            {
                sent += lab.syns_at_rate(445, 50, 50.0).expect("surge SYNs");
            }
            sent
        });
        let alert = loop {
            if let Some(alert) = monitoring
                .find_alert("PortScanSurge", &[("port", "445")])
                .unwrap()
            {
                break alert;
            }
            assert!(
                surge_started.elapsed() < Duration::from_secs(90),
                "no PortScanSurge{{port=\"445\"}} in Alertmanager 90 s into the surge: {:?}\nagent log:\n{}",
                monitoring.alerts(),
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        let fired_after = surge_started.elapsed();
        println!(
            "surge start -> PortScanSurge in Alertmanager: {:.1} s",
            fired_after.as_secs_f64()
        );
        assert_eq!(alert["labels"]["severity"], "warning");
        let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
        assert!(summary.contains("445"), "summary: {summary}");
        assert!(alert["annotations"]["runbook"].is_string(), "{alert}");
        assert!(
            monitoring
                .find_alert("PortScanSurge", &[("port", "22")])
                .unwrap()
                .is_none(),
            "steady port 22 alerted"
        );

        stop_surge.store(true, Ordering::Relaxed);
        assert!(surge.join().unwrap() > 0);
        let surge_ended = Instant::now();
        while monitoring
            .find_alert("PortScanSurge", &[("port", "445")])
            .unwrap()
            .is_some()
        {
            assert!(
                surge_ended.elapsed() < Duration::from_secs(120),
                "PortScanSurge{{port=\"445\"}} still active 120 s after the surge: {:?}",
                monitoring.alerts()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        println!(
            "surge end -> alert resolved: {:.1} s",
            surge_ended.elapsed().as_secs_f64()
        );
        assert!(
            monitoring
                .find_alert("ScanAgentNotAttached", &[])
                .unwrap()
                .is_none()
                && monitoring
                    .find_alert("ScanAgentDown", &[])
                    .unwrap()
                    .is_none(),
            "agent health alerts fired: {:?}",
            monitoring.alerts()
        );
        stop_background.store(true, Ordering::Relaxed);
    });
}

#[test]
fn prometheus_scrapes_over_mutual_tls() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new("alerting-mtls", AGENT.as_ref()).expect("scratch directories");
    let rules = test_rules(&scratch);
    let pki = Pki::new(&scratch.dir, "mtls").expect("test CA");
    let server = pki.server("agent").expect("server certificate");
    let client = pki
        .client("prometheus", "prometheus.example")
        .expect("client certificate");
    let web_config = scratch.file("web.yml");
    std::fs::write(
        &web_config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n  \
             client_allowed_sans: [prometheus.example]\n",
            path(&server.cert),
            path(&server.key),
            path(&pki.ca)
        ),
    )
    .unwrap();
    let ca = path(&pki.ca);
    let agent = start_agent(
        &lab,
        &scratch,
        &web_config,
        vec![
            "--cacert".into(),
            ca.clone(),
            "--cert".into(),
            path(&client.cert),
            "--key".into(),
            path(&client.key),
        ],
    );
    // Without the client certificate the handshake is refused.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", &ca])
        .arg(format!("https://{}/metrics", agent.listen))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "answered without a client certificate"
    );
    lab.syns(false, 445, 9).unwrap();
    let monitoring = Monitoring::start_with(
        agent.listen,
        &rules,
        &scratch.file("monitoring"),
        "1s",
        &format!(
            "    scheme: https\n    tls_config:\n      ca_file: {ca}\n      cert_file: {}\n      \
             key_file: {}\n",
            path(&client.cert),
            path(&client.key)
        ),
    )
    .expect("Prometheus and Alertmanager (Debian packages, installed by cargo xtask setup)");
    // Prometheus has scraped the agent over mutual TLS: the target is up and the exact
    // count of the SYNs sent is in its database.
    let started = Instant::now();
    loop {
        let up = monitoring.query("up{job=\"scan-agent\"}").unwrap();
        let syns = monitoring
            .query("scan_syn_packets_total{job=\"scan-agent\",port=\"445\"}")
            .unwrap();
        if up == Some(1.0) && syns == Some(9.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not scraped over mutual TLS within 30 s: up {up:?}, SYNs to 445 {syns:?}; \
             Prometheus logs in {}",
            monitoring.dir.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sets every flag when dropped (also while unwinding from a failed assertion).
struct StopOnDrop<'a>(&'a [&'a AtomicBool]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for flag in self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Waits until `done` holds, at most `limit`, failing with `what` and the alerts.
fn wait_for(
    monitoring: &Monitoring,
    agent: &Agent,
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}. Alertmanager: {:?}\nagent log:\n{}",
            monitoring.alerts(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    started.elapsed()
}

/// Whether Prometheus has any PortScanDistributed alert, pending or firing.
fn distributed_in_prometheus(monitoring: &Monitoring) -> bool {
    let (status, body) = scan_lab::http::get(
        monitoring.prometheus,
        "/api/v1/query?query=ALERTS%7Balertname%3D%22PortScanDistributed%22%7D",
    )
    .expect("querying Prometheus");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("Prometheus JSON");
    !json["data"]["result"]
        .as_array()
        .expect("result")
        .is_empty()
}

/// One source sweeping 445 over 50 target addresses is a surge but not distributed;
/// then 302 sources (202 IPv4, 100 IPv6, a few SYNs each) are both; the agent's API
/// names the prefixes they came from.
#[test]
fn a_sweep_is_a_surge_and_a_worm_is_distributed_too() {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new("distributed", AGENT.as_ref()).expect("scratch directories");
    let rules = scratch.file("rules.yml");
    let status = Command::new("bash")
        .arg(workspace().join("deploy/prometheus/test-scale.sh"))
        .arg(workspace().join("deploy/prometheus/scan-agent.rules.yml"))
        .arg(&rules)
        .arg("5s")
        .status()
        .expect("bash");
    assert!(status.success(), "test-scale.sh failed");

    // All in the lab's own subnets: targets .3-.52 on the host end, worm sources
    // .53-.254 and 100 IPv6 addresses in the namespace.
    let [a, b, octet, _] = lab.host_v4.octets();
    let v4 = |host: u8| IpAddr::V4(Ipv4Addr::new(a, b, octet, host));
    let v6_net = u128::from(lab.host_v6) & !u128::from(u64::MAX);
    let targets: Vec<IpAddr> = (3..=52).map(v4).collect();
    let mut worm: Vec<(IpAddr, IpAddr)> = (53..=254)
        .map(|h| (v4(h), IpAddr::V4(lab.host_v4)))
        .collect();
    worm.extend((0..100u128).map(|i| {
        (
            IpAddr::V6(Ipv6Addr::from(v6_net | (0x1000 + i))),
            IpAddr::V6(lab.host_v6),
        )
    }));
    let worm_sources: Vec<IpAddr> = worm.iter().map(|&(s, _)| s).collect();
    // Interleaved (two IPv4, one IPv6, ...), so the shares hold at any moment.
    let (v4_part, v6_part) = worm.split_at(202);
    let mut interleaved = Vec::with_capacity(worm.len());
    let (mut i4, mut i6) = (v4_part.iter(), v6_part.iter());
    loop {
        let before = interleaved.len();
        interleaved.extend(i4.next());
        interleaved.extend(i4.next());
        interleaved.extend(i6.next());
        if interleaved.len() == before {
            break;
        }
    }
    let worm = interleaved;
    lab.add_addresses(&targets, &worm_sources)
        .expect("adding lab addresses");

    let agent = scratch
        .start_agent(&lab.host_if, &["--watch-ports", "22,445"], "agent")
        .expect("agent");
    let monitoring = Monitoring::start(agent.listen, &rules, &scratch.file("monitoring"), "1s")
        .expect("Prometheus and Alertmanager (Debian packages, installed by cargo xtask setup)");
    let surge_445 = || {
        monitoring
            .find_alert("PortScanSurge", &[("port", "445")])
            .unwrap()
            .is_some()
    };
    let distributed_445 = || {
        monitoring
            .find_alert("PortScanDistributed", &[("port", "445")])
            .unwrap()
            .is_some()
    };

    let stop_background = AtomicBool::new(false);
    let stop_sweep = AtomicBool::new(false);
    let stop_worm = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // A failed assertion stops every traffic thread, so the scope can end.
        let _stop = StopOnDrop(&[&stop_background, &stop_sweep, &stop_worm]);
        scope.spawn(|| {
            while !stop_background.load(Ordering::Relaxed) {
                lab.syns_at_rate(22, 3, 3.0).expect("background SYNs");
            }
        });
        std::thread::sleep(Duration::from_secs(8));

        // Phase 1: one loud scanner, 50 SYN/s over 50 targets.
        let sweep = scope.spawn(|| {
            let started = Instant::now();
            let pairs: Vec<(IpAddr, IpAddr)> = targets
                .iter()
                .map(|&t| (IpAddr::V4(lab.peer_v4), t))
                .collect();
            let mut sent = 0;
            while !stop_sweep.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(150)
            {
                sent += lab.syns_from(pairs.clone(), 445, 50.0).expect("sweep SYNs");
            }
            sent
        });
        let fired = wait_for(
            &monitoring,
            &agent,
            Duration::from_secs(90),
            "sweep: PortScanSurge",
            surge_445,
        );
        println!("sweep -> PortScanSurge: {:.1} s", fired.as_secs_f64());
        // Hold the sweep long enough for PortScanDistributed's `for` several times over.
        for _ in 0..20 {
            assert!(
                !distributed_in_prometheus(&monitoring),
                "one source raised PortScanDistributed: {:?}",
                monitoring.alerts()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let (_, body) = scan_lab::http::get(agent.listen, "/api/v1/ports/445").unwrap();
        let port: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(port["sources"], 1.0, "{port}");
        let targets_seen = port["targets"].as_f64().unwrap();
        // 50 targets: beyond the exact list, an estimate (within 5%).
        assert!(
            (47.0..=53.0).contains(&targets_seen),
            "targets {targets_seen}: {port}"
        );
        let prefixes = port["top_prefixes"].as_array().cloned().unwrap_or_default();
        assert_eq!(prefixes.len(), 1, "{port}");
        assert_eq!(prefixes[0]["prefix"], format!("{a}.{b}.{octet}.0/24"));
        stop_sweep.store(true, Ordering::Relaxed);
        assert!(sweep.join().unwrap() > 0);
        let resolved = wait_for(
            &monitoring,
            &agent,
            Duration::from_secs(150),
            "sweep alert resolves",
            || !surge_445(),
        );
        println!("sweep end -> resolved: {:.1} s", resolved.as_secs_f64());

        // Phase 2: 302 sources, a few SYNs each per round, 100 SYN/s in all.
        let worm_thread = scope.spawn(|| {
            let started = Instant::now();
            let mut sent = 0;
            while !stop_worm.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(150)
            {
                sent += lab.syns_from(worm.clone(), 445, 100.0).expect("worm SYNs");
            }
            sent
        });
        let both = wait_for(
            &monitoring,
            &agent,
            Duration::from_secs(120),
            "worm: PortScanSurge and PortScanDistributed",
            || surge_445() && distributed_445(),
        );
        println!(
            "worm -> PortScanSurge and PortScanDistributed: {:.1} s",
            both.as_secs_f64()
        );
        let alert = monitoring
            .find_alert("PortScanDistributed", &[("port", "445")])
            .unwrap()
            .unwrap();
        assert_eq!(alert["labels"]["severity"], "warning");
        let description = alert["annotations"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(description.contains("/api/v1/ports/445"), "{description}");
        // The agent names the prefixes: the lab's /24 and the /48 of its IPv6 subnet.
        let (_, body) = scan_lab::http::get(agent.listen, "/api/v1/ports/445").unwrap();
        let port: serde_json::Value = serde_json::from_str(&body).unwrap();
        let sources = port["sources"].as_f64().unwrap();
        assert!(
            (250.0..=320.0).contains(&sources),
            "sources {sources}: {port}"
        );
        let prefixes: Vec<(String, f64)> = port["top_prefixes"]
            .as_array()
            .unwrap_or_else(|| panic!("no top_prefixes: {port}"))
            .iter()
            .map(|p| {
                (
                    p["prefix"].as_str().unwrap().to_string(),
                    p["share"].as_f64().unwrap(),
                )
            })
            .collect();
        let v6_48 = Ipv6Addr::from(v6_net & !((1u128 << 80) - 1));
        assert_eq!(prefixes.len(), 2, "{prefixes:?}");
        assert_eq!(
            prefixes[0].0,
            format!("{a}.{b}.{octet}.0/24"),
            "{prefixes:?}"
        );
        assert_eq!(prefixes[1].0, format!("{v6_48}/48"), "{prefixes:?}");
        // Shares count since the port was flagged, which may include the sweep (from
        // the same /24) when the detector kept the episode open between the phases.
        assert!(
            (prefixes[0].1 + prefixes[1].1 - 1.0).abs() < 1e-9,
            "{prefixes:?}"
        );
        assert!(prefixes[1].1 >= 0.05, "{prefixes:?}");
        stop_worm.store(true, Ordering::Relaxed);
        assert!(worm_thread.join().unwrap() > 0);
        stop_background.store(true, Ordering::Relaxed);
    });
}
