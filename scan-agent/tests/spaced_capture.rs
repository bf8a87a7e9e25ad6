//! The capture that once kept replay busy for 83 s (issue 14), replayed through the
//! real program (root, as `cargo xtask test` runs it). The mutated-capture campaign's
//! smoke run is in scan-lab's tests (its own process, so its RSS is its own).
use std::time::{Duration, Instant};

use scan_agent::{detector::DetectorConfig, replay::replay};
use scan_lab::frames::{Frame, tcp};

fn temp_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("scan-agent-campaign-{}-{tag}", std::process::id()))
}

/// Issue 14: a 2 KB capture with 30 frames spaced just under 100,000 intervals apart
/// kept replay busy for 83 s.
#[test]
fn thirty_frames_100000_intervals_apart_replay_in_seconds() {
    let dir = temp_dir("spaced");
    std::fs::create_dir_all(&dir).unwrap();
    let config = DetectorConfig::default();
    let gap = config.interval * 99_999 + config.interval / 2;
    let syn = Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1, 445, tcp::SYN).build();
    let frames: Vec<(Duration, Vec<u8>)> = (0..30u32)
        .map(|i| (Duration::from_secs(1_700_000_000) + gap * i, syn.clone()))
        .collect();
    let path = dir.join("spaced.pcap");
    scan_lab::pcap::write_pcap(&path, &frames).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 3_000);
    let started = Instant::now();
    let report = replay(&path, Some(config))
        .unwrap_or_else(|e| panic!("{e} (effective uid {})", unsafe { libc::geteuid() }));
    let took = started.elapsed();
    std::fs::remove_dir_all(&dir).ok();
    assert!(took < Duration::from_secs(5), "replay took {took:?}");
    assert_eq!(report.packets, 30);
    assert_eq!(report.ports.get(&445), Some(&30));
}
