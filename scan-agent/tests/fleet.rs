//! A fleet on an existing engine, end to end: three agents on three lab links, each scraped
//! by its own Prometheus in agent mode that remote-writes to one central Prometheus with the
//! shipped rules (test-scale `for:`), which alerts to Alertmanager; all built from the shipped
//! deploy/prometheus/fleet/ configurations. A surge on 445 at one router fires that router's
//! PortScanSurge but not PortScanSurgeFleet; at two routers it fires PortScanSurgeFleet; both
//! resolve when the surges end.
use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use scan_lab::{Agent, Lab, Scratch, monitoring::Fleet};

const AGENT: &str = env!("CARGO_BIN_EXE_scan-agent");
/// The `for:` of every alert in the test-scale rules.
const FOR: &str = "5s";
const SURGE_RATE: f64 = 60.0;
/// Longest a surge runs (bounds the SYNs sent: 60 s at 60/s per router).
const SURGE_LIMIT: Duration = Duration::from_secs(60);

fn start_agent(lab: &Lab, scratch: &Scratch) -> Agent {
    scratch
        .start_agent(
            &lab.host_if,
            &["--surge-threshold", "4", "--watch-ports", "22,445"],
            "agent",
        )
        .expect("agent starts")
}

/// Runs `check` every 500 ms until it returns Some, or fails after `limit` naming `what`.
fn wait<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return (value, started.elapsed());
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// SYNs to 445 at SURGE_RATE from each of `labs` until `stop` (or SURGE_LIMIT).
fn surge<'a>(scope: &'a std::thread::Scope<'a, '_>, labs: &'a [&'a Lab], stop: &'a AtomicBool) {
    for lab in labs {
        scope.spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < SURGE_LIMIT {
                lab.syns_at_rate(445, SURGE_RATE as u32 / 4, SURGE_RATE)
                    .expect("surge SYNs");
            }
        });
    }
}

#[test]
fn fleet_alert_needs_two_routers_on_prometheus_remote_write() {
    let labs: Vec<Lab> = (0..3)
        .map(|_| Lab::create().expect("creating a lab (needs root and network namespaces)"))
        .collect();
    let scratches: Vec<Scratch> = (0..3)
        .map(|i| Scratch::new(&format!("fleet{i}"), AGENT.as_ref()).expect("scratch"))
        .collect();
    let agents: Vec<Agent> = labs
        .iter()
        .zip(&scratches)
        .map(|(lab, scratch)| start_agent(lab, scratch))
        .collect();
    let rules = scratches[0].file("rules.yml");
    let status = std::process::Command::new("bash")
        .arg("../deploy/prometheus/test-scale.sh")
        .arg("../deploy/prometheus/scan-agent.rules.yml")
        .arg(&rules)
        .arg(FOR)
        .status()
        .expect("bash");
    assert!(status.success(), "scaling the shipped rules");
    let routers: Vec<(std::net::SocketAddr, String)> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| (a.listen, format!("r{}", i + 1)))
        .collect();
    let fleet = Fleet::start(
        &routers,
        Path::new("../deploy/prometheus/fleet"),
        &rules,
        &scratches[0].file("fleet"),
        "1s",
    )
    .expect("fleet monitoring starts");
    let logs = || format!("logs in {}", fleet.dir.display());

    // The pipeline carries every router: each agent's series reach the central Prometheus,
    // and the agents are out of warm-up.
    wait(
        Duration::from_secs(40),
        "three warmed-up routers on the central Prometheus",
        || {
            (fleet
                .query("scan_agent_warming_up{job=\"scan-agent\"} == 0")
                .unwrap()
                .len()
                == 3)
                .then_some(())
        },
    );
    let fleet_alert = |state: &str| {
        fleet
            .query(&format!(
                "ALERTS{{alertname=\"PortScanSurgeFleet\",alertstate=\"{state}\"}}"
            ))
            .unwrap()
    };

    // One router: its own alert fires in Alertmanager; the fleet alert never even pends.
    let stop = AtomicBool::new(false);
    let one = [&labs[0]];
    std::thread::scope(|scope| {
        surge(scope, &one, &stop);
        let (_, fired) = wait(
            Duration::from_secs(40),
            "PortScanSurge for r1 in Alertmanager",
            || {
                assert!(fleet_alert("pending").is_empty() && fleet_alert("firing").is_empty());
                fleet
                    .find_alert("PortScanSurge", &[("instance", "r1"), ("port", "445")])
                    .unwrap()
            },
        );
        eprintln!("one router: PortScanSurge r1 in Alertmanager after {fired:?}");
        // Keep surging as long again: the fleet alert must stay silent throughout.
        let hold = Instant::now();
        while hold.elapsed() < fired.max(Duration::from_secs(10)) {
            assert!(
                fleet_alert("pending").is_empty() && fleet_alert("firing").is_empty(),
                "fleet alert for one router; {}",
                logs()
            );
            assert!(
                fleet
                    .find_alert("PortScanSurgeFleet", &[])
                    .unwrap()
                    .is_none(),
                "fleet alert in Alertmanager for one router"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (_, resolved) = wait(Duration::from_secs(60), "PortScanSurge r1 resolved", || {
        fleet
            .find_alert("PortScanSurge", &[("instance", "r1")])
            .unwrap()
            .is_none()
            .then_some(())
    });
    eprintln!("one router: resolved {resolved:?} after the surge");
    assert!(fleet_alert("firing").is_empty());

    // Two routers: the fleet alert fires in Alertmanager, then resolves.
    let stop = AtomicBool::new(false);
    let two = [&labs[0], &labs[1]];
    std::thread::scope(|scope| {
        surge(scope, &two, &stop);
        let (alert, fired) = wait(
            Duration::from_secs(50),
            "PortScanSurgeFleet in Alertmanager",
            || {
                fleet
                    .find_alert(
                        "PortScanSurgeFleet",
                        &[("port", "445"), ("severity", "critical")],
                    )
                    .unwrap()
            },
        );
        eprintln!("two routers: PortScanSurgeFleet in Alertmanager after {fired:?}");
        let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
        assert_eq!(
            summary, "SYN surge to TCP port 445 on 2 routers at once",
            "{alert}"
        );
        // r3 saw no surge: exactly two routers flag 445 at the central Prometheus.
        let flagged = fleet
            .query("port:scan_surge_flagged:sum{port=\"445\"}")
            .unwrap();
        assert_eq!(flagged[0]["value"][1], "2", "{flagged:?}");
        stop.store(true, Ordering::Relaxed);
    });
    let (_, resolved) = wait(
        Duration::from_secs(60),
        "PortScanSurgeFleet resolved",
        || {
            fleet
                .find_alert("PortScanSurgeFleet", &[])
                .unwrap()
                .is_none()
                .then_some(())
        },
    );
    eprintln!("two routers: fleet alert resolved {resolved:?} after the surges");
    drop(fleet);
    drop(agents);
}
