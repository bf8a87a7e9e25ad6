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
    let mut args: Vec<String> = [
        "--iface",
        &lab.host_if,
        "--interval",
        "1s",
        "--short-window",
        "5s",
        "--baseline-window",
        "5m",
        "--warmup",
        "5s",
        "--watch-ports",
        "22,445",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(scratch.agent_args());
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
