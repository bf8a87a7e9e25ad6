//! Alerting end to end: the lab, the real agent, a real Prometheus with the shipped
//! rules and a real Alertmanager (Debian packages) on loopback. A scripted surge on
//! 445 must reach Alertmanager as `PortScanSurge{port="445"}` and resolve after.
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

use scan_lab::{Agent, Lab, Scratch, monitoring::Monitoring};

const AGENT: &str = env!("CARGO_BIN_EXE_scan-agent");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn a_445_surge_reaches_alertmanager_and_resolves() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new("alerting", AGENT.as_ref()).expect("scratch directories");
    let rules = scratch.file("rules.yml");
    let status = Command::new("bash")
        .arg(workspace().join("deploy/prometheus/test-scale.sh"))
        .arg(workspace().join("deploy/prometheus/scan-agent.rules.yml"))
        .arg(&rules)
        .arg("5s")
        .status()
        .expect("bash");
    assert!(status.success(), "test-scale.sh failed");

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
    let agent = Agent::start(AGENT.as_ref(), &args, &scratch.file("agent.log")).expect("agent");
    let monitoring = Monitoring::start(agent.listen, &rules, &scratch.file("monitoring"), "1s")
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
