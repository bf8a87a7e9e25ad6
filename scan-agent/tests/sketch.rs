//! Distinct sources and targets through the real program: crafted SYNs (IPv4 and IPv6
//! mixed) run through `BPF_PROG_TEST_RUN`, the kernel sketches taken by mmap exactly
//! as the agent takes them, and their estimates checked: exact for small counts, and
//! the 95th percentile of the relative error over seeds within 5% beyond.
//!
//! Every frame carries a new source and a new target, so one run checks both sketches.
//! By default the large sizes run with fewer seeds (100,000: 3, 1,000,000: 1) so the
//! test stays short in `cargo xtask test`; with `SCAN_SKETCH_SEEDS=20` every size runs
//! 20 seeds (the BENCHMARKS.md figures: `cargo xtask sketch-accuracy --seeds 20`, which
//! runs this test in release with that variable).
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); without it the tests fail, saying so.
mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use scan_agent::{
    sensor::{Hook, LinkKind, PortSketches, Sensor},
    sketch::Distinct,
};
use scan_common::mix64;
use scan_lab::frames::{Frame, tcp};

const PORT: u16 = 445;
const ETH: usize = 14;

/// The `i`-th distinct address of a run: even `i` IPv4, odd `i` IPv6 (while the
/// IPv4 range lasts). Sources come from 198.18.0.0/16 and 2001:db8:1::/48, targets
/// from 198.19.0.0/16 and 2001:db8:2::/48; `seed` permutes which addresses are used.
fn address(i: u64, seed: u64, target: bool) -> Result<Ipv4Addr, Ipv6Addr> {
    if i.is_multiple_of(2) && i / 2 < 65_536 {
        // An odd multiplier permutes 0..65536.
        let host = ((i / 2).wrapping_mul(40_503) + seed * 7_919) % 65_536;
        let base = if target { 0xC613_0000u32 } else { 0xC612_0000 };
        Ok(Ipv4Addr::from(base | host as u32))
    } else {
        let prefix: u128 = if target {
            0x2001_0db8_0002
        } else {
            0x2001_0db8_0001
        };
        // mix64 is a bijection: distinct i, distinct interface ids.
        let low = mix64(i ^ (seed << 48));
        Err(Ipv6Addr::from(
            (prefix << 80) | ((seed as u128) << 64) | low as u128,
        ))
    }
}

struct Templates {
    v4: Vec<u8>,
    v6: Vec<u8>,
}

impl Templates {
    fn new() -> Self {
        let v4 = Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 40_000, PORT, tcp::SYN).build();
        let v6 = Frame::ipv6_tcp(
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::LOCALHOST,
            40_000,
            PORT,
            tcp::SYN,
        )
        .build();
        Self { v4, v6 }
    }

    /// Runs one SYN from `source` to `target` (same family) through the program.
    fn run(
        &mut self,
        sensor: &Sensor,
        source: Result<Ipv4Addr, Ipv6Addr>,
        target: Result<Ipv4Addr, Ipv6Addr>,
        repeat: u32,
    ) {
        let frame = match (source, target) {
            (Ok(s), Ok(t)) => {
                self.v4[ETH + 12..ETH + 16].copy_from_slice(&s.octets());
                self.v4[ETH + 16..ETH + 20].copy_from_slice(&t.octets());
                &self.v4
            }
            (Err(s), Err(t)) => {
                self.v6[ETH + 8..ETH + 24].copy_from_slice(&s.octets());
                self.v6[ETH + 24..ETH + 40].copy_from_slice(&t.octets());
                &self.v6
            }
            _ => unreachable!("address() keeps sources and targets in one family"),
        };
        let result = sensor.test_run(frame, repeat).expect("test run");
        assert_eq!(result.return_value, 2, "XDP_PASS");
    }
}

fn take(sensor: &Sensor) -> PortSketches {
    let mut out = Vec::new();
    sensor.take_sketches(&mut out);
    assert_eq!(out.len(), 1, "exactly one port sketched: {out:?}");
    out.pop().unwrap()
}

/// Relative errors (sources, targets) of one run of `n` distinct sources and targets.
fn one_run(sensor: &Sensor, templates: &mut Templates, n: u64, seed: u64) -> (f64, f64) {
    for i in 0..n {
        templates.run(sensor, address(i, seed, false), address(i, seed, true), 1);
    }
    let taken = take(sensor);
    assert_eq!(taken.port, PORT);
    let error = |d: &Distinct| d.estimate() / n as f64 - 1.0;
    if n <= 10 {
        assert_eq!(
            taken.sources.estimate(),
            n as f64,
            "sources, n={n} seed={seed}"
        );
        assert_eq!(
            taken.targets.estimate(),
            n as f64,
            "targets, n={n} seed={seed}"
        );
    }
    (error(&taken.sources), error(&taken.targets))
}

fn p95(mut errors: Vec<f64>) -> f64 {
    errors.iter_mut().for_each(|e| *e = e.abs());
    errors.sort_by(f64::total_cmp);
    errors[(errors.len() * 95).div_ceil(100) - 1]
}

#[test]
fn distinct_sources_and_targets_within_five_percent() {
    let sensor = common::load_sensor();
    let mut templates = Templates::new();
    let full: Option<u64> = std::env::var("SCAN_SKETCH_SEEDS")
        .ok()
        .map(|s| s.parse().expect("SCAN_SKETCH_SEEDS: a number of seeds"));
    for (n, seeds) in [
        (1u64, 20u64),
        (2, 20),
        (10, 20),
        (100, 20),
        (1_000, 20),
        (10_000, 20),
        (100_000, 3),
        (1_000_000, 1),
    ] {
        let seeds = full.unwrap_or(seeds);
        let (sources, targets): (Vec<f64>, Vec<f64>) = (0..seeds)
            .map(|seed| one_run(&sensor, &mut templates, n, seed))
            .unzip();
        let (ps, pt) = (p95(sources), p95(targets));
        println!("n={n:>9} seeds={seeds:>2} p95 |error| sources {ps:.4} targets {pt:.4}");
        assert!(ps <= 0.05 && pt <= 0.05, "n={n}: p95 {ps:.4} / {pt:.4}");
    }
}

#[test]
fn one_source_a_hundred_thousand_times_is_one() {
    let sensor = common::load_sensor();
    let mut templates = Templates::new();
    for (source, target) in [
        (address(0, 3, false), address(0, 3, true)),
        (address(1, 3, false), address(1, 3, true)),
    ] {
        templates.run(&sensor, source, target, 100_000);
        let taken = take(&sensor);
        assert_eq!(taken.sources.estimate(), 1.0);
        assert_eq!(taken.targets.estimate(), 1.0);
    }
    // Taking resets: nothing left for the next interval.
    let mut out = Vec::new();
    sensor.take_sketches(&mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn ports_get_their_own_sketches_and_slots_are_freed() {
    let sensor = common::load_sensor();
    let mut frames = Vec::new();
    for port in [22u16, 80, 443, 445, 3389] {
        for host in 0..u8::from(port % 7 == 0) + port.count_ones() as u8 {
            frames.push((
                port,
                Frame::ipv4_tcp([198, 18, 1, host], [198, 19, 0, 1], 40_000, port, tcp::SYN)
                    .build(),
            ));
        }
        // Not SYNs: never sketched.
        frames.push((
            port,
            Frame::ipv4_tcp(
                [198, 18, 9, 9],
                [198, 19, 0, 1],
                40_000,
                port,
                tcp::SYN | tcp::ACK,
            )
            .build(),
        ));
    }
    for (_, frame) in &frames {
        sensor.test_run(frame, 3).expect("test run");
    }
    let mut out = Vec::new();
    sensor.take_sketches(&mut out);
    out.sort_by_key(|p| p.port);
    let got: Vec<(u16, f64, f64)> = out
        .iter()
        .map(|p| (p.port, p.sources.estimate(), p.targets.estimate()))
        .collect();
    let expected: Vec<(u16, f64, f64)> = [22u16, 80, 443, 445, 3389]
        .iter()
        .map(|&port| {
            let sources = u32::from(port % 7 == 0) + port.count_ones();
            (port, f64::from(sources), 1.0)
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(sensor.sketched_ports(), 5);
    sensor.free_sketch_slot(80);
    assert_eq!(sensor.sketched_ports(), 4);
}

#[test]
fn sketches_off_count_syns_and_sketch_nothing() {
    let sensor = Sensor::unattached_with(Hook::Xdp, LinkKind::Ethernet, false)
        .expect("load without sketches");
    assert!(!sensor.sketches_on());
    let frame = Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 40_000, PORT, tcp::SYN).build();
    sensor.test_run(&frame, 10).expect("test run");
    let mut ports = vec![0; scan_common::PORTS as usize];
    sensor.read_ports(&mut ports);
    assert_eq!(ports[usize::from(PORT)], 10);
    let mut out = Vec::new();
    sensor.take_sketches(&mut out);
    assert!(out.is_empty());
}

#[test]
fn flagged_ports_send_their_sources_up_to_the_budget() {
    let mut sensor = common::load_sensor();
    let syn = |source: [u8; 4], port: u16| {
        Frame::ipv4_tcp(source, [198, 19, 0, 1], 40_000, port, tcp::SYN).build()
    };
    let syn6 = |host: u16, port: u16| {
        Frame::ipv6_tcp(
            Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, host),
            Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1),
            40_000,
            port,
            tcp::SYN,
        )
        .build()
    };
    // Both ports claim their slots; nothing is flagged yet: no samples.
    sensor.test_run(&syn([198, 18, 0, 1], 445), 1).unwrap();
    sensor.test_run(&syn([198, 18, 0, 1], 80), 1).unwrap();
    let mut samples = Vec::new();
    sensor.drain_samples(&mut samples);
    assert!(samples.is_empty(), "{samples:?}");

    sensor.set_sample_budgets(&[445], 5);
    for host in 1..=3u8 {
        sensor.test_run(&syn([198, 18, 7, host], 445), 1).unwrap();
        sensor.test_run(&syn([198, 18, 8, host], 80), 1).unwrap();
    }
    for host in 1..=4u16 {
        sensor.test_run(&syn6(host, 445), 1).unwrap();
    }
    sensor.drain_samples(&mut samples);
    let got: Vec<(u16, u16, Vec<u8>)> = samples
        .iter()
        .map(|s| {
            let len = if s.family == 4 { 4 } else { 16 };
            (s.port, s.family, s.address[..len].to_vec())
        })
        .collect();
    let v6 = |host: u16| {
        Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, host)
            .octets()
            .to_vec()
    };
    assert_eq!(
        got,
        [
            (445, 4, vec![198, 18, 7, 1]),
            (445, 4, vec![198, 18, 7, 2]),
            (445, 4, vec![198, 18, 7, 3]),
            (445, 6, v6(1)),
            (445, 6, v6(2)),
        ]
    );
    // Unflagged again: nothing more.
    sensor.set_sample_budgets(&[], 5);
    sensor.test_run(&syn([198, 18, 7, 9], 445), 1).unwrap();
    samples.clear();
    sensor.drain_samples(&mut samples);
    assert!(samples.is_empty(), "{samples:?}");
}
