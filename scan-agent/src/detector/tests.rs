use scan_lab::rng::Rng;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3_600);
const MINUTE: Duration = Duration::from_secs(60);
/// A realistic start time (November 2023), to exercise large `now` values.
const T0: Duration = Duration::from_secs(1_700_000_000);

/// Simulated traffic: Poisson SYNs on a few ports, one step every `interval`.
struct Sim {
    det: Detector,
    cum: Vec<u64>,
    rng: Rng,
    now: Duration,
    /// (port, base rate in SYN/s)
    ports: Vec<(u16, f64)>,
    /// Length of the counter slice passed to `step` (`PORTS` unless a test shortens it).
    width: usize,
    /// Simulated time zero.
    start: Duration,
}

/// Background used by several tests: rates from 0.1 to 50 SYN/s.
const BACKGROUND: [(u16, f64); 6] = [
    (22, 0.5),
    (80, 10.0),
    (443, 50.0),
    (445, 2.0),
    (3389, 0.1),
    (8080, 1.0),
];

impl Sim {
    fn new(config: DetectorConfig, seed: u64, ports: &[(u16, f64)]) -> Self {
        Self::at(config, seed, ports, T0)
    }

    fn at(config: DetectorConfig, seed: u64, ports: &[(u16, f64)], start: Duration) -> Self {
        let mut sim = Self {
            det: Detector::new(config),
            cum: vec![0; PORTS],
            rng: Rng::new(seed),
            now: start,
            ports: ports.to_vec(),
            width: PORTS,
            start,
        };
        sim.det.step(sim.now, &sim.cum);
        sim
    }

    /// One interval of traffic at `rate(port, base_rate, time)`, without a step.
    fn traffic<R: Fn(u16, f64, Duration) -> f64>(&mut self, rate: &R) {
        let dt = self.det.config().interval;
        for &(port, base) in &self.ports {
            let mean = rate(port, base, self.now - self.start) * dt.as_secs_f64();
            self.cum[usize::from(port)] += self.rng.poisson(mean);
        }
        self.now += dt;
    }

    /// One interval of traffic, then one step.
    fn step(&mut self, rate: impl Fn(u16, f64, Duration) -> f64) {
        self.traffic(&rate);
        self.det.step(self.now, &self.cum[..self.width]);
        assert_sane(&self.det);
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Steady background until `until` (time since start).
    fn steady_until(&mut self, until: Duration) {
        while self.elapsed() < until {
            self.step(|_, base, _| base);
            for &(port, _) in &self.ports.clone() {
                let s = self.det.status(port);
                assert!(!s.flagged, "{s:?} flagged on steady background");
            }
        }
    }
}

/// No NaN or infinity anywhere, no negative rate.
fn assert_sane(det: &Detector) {
    for &port in &det.live {
        let s = det.status(port);
        assert!(s.rate.is_finite() && s.rate >= 0.0, "{s:?}");
        assert!(s.baseline.is_finite() && s.baseline >= 0.0, "{s:?}");
        assert!(s.ratio.is_finite() && s.ratio > 0.0, "{s:?}");
    }
}

fn assert_all_sane(det: &Detector) {
    for port in 0..=u16::MAX {
        let s = det.status(port);
        assert!(s.rate.is_finite() && s.rate >= 0.0, "{s:?}");
        assert!(s.baseline.is_finite() && s.baseline >= 0.0, "{s:?}");
        assert!(s.ratio.is_finite() && s.ratio >= 0.0, "{s:?}");
    }
}

fn surge(
    port: u16,
    factor: f64,
    from: Duration,
    to: Duration,
) -> impl Fn(u16, f64, Duration) -> f64 {
    move |p, base, t| {
        if p == port && t >= from && t < to {
            base * factor
        } else {
            base
        }
    }
}

#[test]
fn defaults_are_valid() {
    assert_eq!(DetectorConfig::default().validate(), Ok(()));
}

#[test]
fn invalid_configs_are_named() {
    // The error message for a default config changed by `f`.
    let error = |f: fn(&mut DetectorConfig)| {
        let mut c = DetectorConfig::default();
        f(&mut c);
        c.validate()
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default()
    };
    assert!(error(|c| c.interval = Duration::ZERO).contains("interval"));
    assert!(error(|c| c.short_window = DAY).contains("shorter"));
    assert!(error(|c| c.surge_threshold = 1.0).contains("threshold"));
    assert!(error(|c| c.surge_threshold = f64::NAN).contains("threshold"));
    assert!(error(|c| c.floor = 0.0).contains("floor"));
    assert!(error(|c| c.floor = f64::INFINITY).contains("floor"));
    assert!(error(|c| c.surge_adapt_window = Duration::ZERO).contains("adapt"));
}

/// Test 1: a 5x surge on 445 after warm-up is flagged within 2 minutes; nothing else is.
#[test]
fn surge_is_flagged_within_two_minutes() {
    let mut sim = Sim::new(DetectorConfig::default(), 1, &BACKGROUND);
    sim.steady_until(HOUR);
    assert!(!sim.det.warming_up());

    let start = sim.elapsed();
    let rates = surge(445, 5.0, start, start + 10 * MINUTE);
    let mut detected = None;
    while sim.elapsed() < start + 10 * MINUTE {
        sim.step(&rates);
        for &(port, _) in &BACKGROUND {
            let s = sim.det.status(port);
            if port != 445 {
                assert!(!s.flagged, "{s:?} flagged during the surge on 445");
            } else if s.flagged && detected.is_none() {
                detected = Some(sim.elapsed() - start);
            }
        }
    }
    let detected = detected.expect("the surge on 445 was never flagged");
    assert!(detected <= 2 * MINUTE, "flagged only after {detected:?}");
    // Deterministic (seeded): the expected delay is about 45 s at the defaults.
    assert!(
        detected >= Duration::from_secs(20),
        "flagged after {detected:?}"
    );
    let flagged: Vec<u16> = sim.det.flagged_ports().iter().map(|s| s.port).collect();
    assert_eq!(flagged, vec![445]);
    assert_eq!(sim.det.top_ports(1)[0].port, 445);
}

/// Test 2: seven days of Poisson background with a smooth 3x daily cycle: no port's ratio
/// stays at or above the threshold for more than one minute in a row after warm-up.
#[test]
fn seven_days_of_daily_cycle_raise_no_flag() {
    let ports: Vec<(u16, f64)> = vec![
        (22, 0.1),
        (23, 0.3),
        (80, 1.0),
        (443, 5.0),
        (445, 2.0),
        (3389, 20.0),
        (8080, 50.0),
    ];
    let mut sim = Sim::new(DetectorConfig::default(), 7, &ports);
    // Speed only: 120,960 steps over the full 512 KiB counter array spend most of their time
    // in memcmp (3 s in a debug build). Ports beyond the slice are "unchanged" for the
    // detector, so passing the first 8,192 counters is the same computation here; the other
    // tests pass the full array.
    sim.width = 8_192;
    let threshold = sim.det.config().surge_threshold;
    // Rate between low and 3x low: low * (2 - cos(phase)), a different phase per port.
    let cycle = |port: u16, low: f64, t: Duration| {
        let phase = f64::from(port % 24) / 24.0;
        let day = t.as_secs_f64() / DAY.as_secs_f64();
        low * (2.0 - (2.0 * std::f64::consts::PI * (day + phase)).cos())
    };
    let mut run = vec![Duration::ZERO; ports.len()];
    let mut longest = Duration::ZERO;
    let mut highest: f64 = 0.0;
    while sim.elapsed() < 7 * DAY {
        sim.step(cycle);
        if sim.det.warming_up() {
            continue;
        }
        for (i, &(port, _)) in ports.iter().enumerate() {
            let s = sim.det.status(port);
            highest = highest.max(s.ratio);
            if s.ratio >= threshold {
                run[i] += sim.det.config().interval;
                longest = longest.max(run[i]);
            } else {
                run[i] = Duration::ZERO;
            }
        }
    }
    assert!(
        longest <= MINUTE,
        "a ratio stayed above threshold for {longest:?}"
    );
    // Stronger, and deterministic (seeded): the threshold is never reached at all. The cycle
    // alone gives at most 1.44; Poisson noise on the 0.1-0.3 SYN/s port adds the rest
    // (highest seen with this seed: 1.94).
    assert!(highest < threshold, "highest ratio {highest}");
}

/// Test 3: the episode ends within 10 minutes after a surge ends, and no other starts.
#[test]
fn ratio_falls_back_within_ten_minutes() {
    for (seed, length, factor) in [(3, 5 * MINUTE, 5.0), (4, 30 * MINUTE, 20.0), (5, HOUR, 5.0)] {
        let mut sim = Sim::new(DetectorConfig::default(), seed, &BACKGROUND);
        sim.steady_until(HOUR);
        let start = sim.elapsed();
        let end = start + length;
        let rates = surge(445, factor, start, end);
        while sim.elapsed() < end {
            sim.step(&rates);
        }
        assert!(
            sim.det.status(445).flagged,
            "{length:?} x{factor}: not flagged at the end"
        );
        let mut back = None;
        let mut ended = 0;
        while sim.elapsed() < end + 2 * HOUR {
            sim.step(&rates);
            ended += sim.det.ended_episodes().len();
            let s = sim.det.status(445);
            if back.is_some() {
                assert!(!s.flagged, "{length:?} x{factor}: flagged again {s:?}");
            } else if !s.flagged {
                back = Some(sim.elapsed() - end);
            }
        }
        assert_eq!(ended, 1, "{length:?} x{factor}: one episode ends");
        let back = back.expect("the episode never ended");
        assert!(
            back <= 10 * MINUTE,
            "{length:?} x{factor}: ended after {back:?}"
        );
    }
}

/// Test 4: a surge held for one hour is still flagged at its end (and all along after its
/// detection), and has not taught itself into the baseline.
#[test]
fn one_hour_surge_stays_flagged() {
    let mut sim = Sim::new(DetectorConfig::default(), 11, &BACKGROUND);
    sim.steady_until(HOUR);
    let before = sim.det.status(445).baseline;
    let start = sim.elapsed();
    let end = start + HOUR;
    let rates = surge(445, 5.0, start, end);
    while sim.elapsed() < end {
        sim.step(&rates);
        let s = sim.det.status(445);
        if sim.elapsed() >= start + 2 * MINUTE {
            assert!(
                s.flagged,
                "not flagged {:?} into the surge: {s:?}",
                sim.elapsed() - start
            );
        }
    }
    let s = sim.det.status(445);
    assert!(s.flagged && s.ratio > 3.5, "{s:?}");
    // Slow adaptation only: about +33% in an hour (12-hour adapt window), not toward 10.
    assert!(
        s.baseline < before * 1.45,
        "baseline grew from {before} to {}",
        s.baseline
    );
}

/// A level that stays 5x higher for good becomes the new normal after some hours.
#[test]
fn lasting_new_level_is_learned_within_hours() {
    let mut sim = Sim::new(DetectorConfig::default(), 12, &BACKGROUND);
    sim.steady_until(HOUR);
    let start = sim.elapsed();
    let rates = surge(445, 5.0, start, Duration::MAX);
    let mut cleared = None;
    while sim.elapsed() < start + 12 * HOUR && cleared.is_none() {
        sim.step(&rates);
        let s = sim.det.status(445);
        if sim.elapsed() > start + 10 * MINUTE && !s.flagged {
            cleared = Some(sim.elapsed() - start);
        }
    }
    // At most about 0.17 days (4.1 h) at the defaults; 3.4 h with this seed.
    let cleared = cleared.expect("a lasting 5x level was never accepted");
    assert!(
        cleared > 3 * HOUR && cleared < 6 * HOUR,
        "cleared after {cleared:?}"
    );
}

/// Test 5: snapshot -> JSON -> restore mid-run continues exactly like an uninterrupted run.
#[test]
fn restore_continues_exactly() {
    let config = DetectorConfig::default();
    let mut a = Sim::new(config.clone(), 21, &BACKGROUND);
    a.steady_until(30 * MINUTE);
    // Mid-surge, so the guard state matters too.
    let start = a.elapsed();
    let rates = surge(445, 8.0, start, start + 20 * MINUTE);
    while a.elapsed() < start + 5 * MINUTE {
        a.step(&rates);
    }
    assert!(a.det.status(445).flagged);

    let json = serde_json::to_string(&a.det.snapshot()).expect("serialize");
    let state: DetectorState = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(state.check(), Ok(()));
    assert_eq!(state, a.det.snapshot());
    let mut b = Detector::restore(config, state);
    assert_eq!(b.snapshot(), a.det.snapshot());

    // A restart also spans a gap: 10 minutes without a step (the kernel kept counting);
    // both detectors get the same reading after it.
    for _ in 0..120 {
        a.traffic(&rates);
    }
    a.det.step(a.now, &a.cum);
    b.step(a.now, &a.cum);
    assert_eq!(a.det.snapshot(), b.snapshot());
    let mut steps = 0;
    while a.elapsed() < start + 3 * HOUR {
        a.step(&rates);
        b.step(a.now, &a.cum);
        steps += 1;
        for port in [22, 80, 443, 445, 3389, 8080, 9999] {
            // Exact equality of every field, including the bits of every f64.
            assert_eq!(a.det.status(port), b.status(port), "after {steps} steps");
        }
        assert_eq!(a.det.top_ports(3), b.top_ports(3));
        assert_eq!(a.det.warming_up(), b.warming_up());
    }
    assert_eq!(a.det.snapshot(), b.snapshot());
    assert_eq!(a.det.active_ports(), b.active_ports());
}

#[test]
fn interrupted_run_without_gap_is_bit_identical() {
    let config = DetectorConfig::default();
    let mut a = Sim::new(config.clone(), 22, &BACKGROUND);
    a.steady_until(10 * MINUTE); // still warming up at the restart
    let mut b = Detector::restore(
        config,
        serde_json::from_str(&serde_json::to_string(&a.det.snapshot()).expect("ser")).expect("de"),
    );
    while a.elapsed() < HOUR {
        a.step(|_, base, _| base);
        b.step(a.now, &a.cum);
        for &(port, _) in &BACKGROUND {
            let (x, y) = (a.det.status(port), b.status(port));
            assert_eq!(x.rate.to_bits(), y.rate.to_bits());
            assert_eq!(x.baseline.to_bits(), y.baseline.to_bits());
            assert_eq!(x, y);
        }
    }
}

#[test]
fn exact_f64_round_trips_every_bit_pattern() {
    let mut rng = Rng::new(99);
    let mut values = vec![0.0, 1e-300, 5e-324, f64::MAX, 0.1, 1.0 / 3.0, 2.0134, 1e-7];
    values.extend((0..20_000).map(|_| f64::from_bits(rng.next_u64() >> 1)));
    for value in values.into_iter().filter(|v| v.is_finite()) {
        let entry = PortSnapshot {
            port: 1,
            count: u64::MAX,
            rate: value,
            baseline: value,
        };
        let json = serde_json::to_string(&entry).expect("ser");
        let back: PortSnapshot = serde_json::from_str(&json).expect("de");
        assert_eq!(back.rate.to_bits(), value.to_bits(), "{json}");
        assert_eq!(back.count, u64::MAX);
    }
}

/// Test 6: edge cases.
#[test]
fn first_step_only_sets_the_reference() {
    let mut det = Detector::new(DetectorConfig::default());
    assert_eq!(det.last_outcome(), StepOutcome::NotStepped);
    assert!(det.warming_up());
    assert_eq!(det.warmup_remaining(), DEFAULT_WARMUP);
    let mut cum = vec![0; PORTS];
    cum[445] = 1_000_000; // counted before the agent started: not a surge
    det.step(T0, &cum);
    assert_eq!(det.last_outcome(), StepOutcome::First);
    assert_eq!(det.history(), Duration::ZERO);
    assert_eq!(det.status(445).rate, 0.0);
    assert_eq!(det.active_ports(), 0);
    cum[445] += 10;
    det.step(T0 + Duration::from_secs(5), &cum);
    assert_eq!(
        det.last_outcome(),
        StepOutcome::Updated { counter_resets: 0 }
    );
    let s = det.status(445);
    // First update: gain 1, both averages are the first sample exactly.
    assert_eq!((s.rate, s.baseline), (2.0, 2.0));
    assert_eq!(s.ratio, 1.0);
    assert!(!s.flagged);
    assert_eq!(
        det.warmup_remaining(),
        DEFAULT_WARMUP - Duration::from_secs(5)
    );
    assert_all_sane(&det);
}

#[test]
fn counter_going_backwards_counts_the_new_value() {
    let mut sim = Sim::new(DetectorConfig::default(), 31, &BACKGROUND);
    sim.steady_until(HOUR);
    let before = sim.det.status(445);
    // Map recreated: every counter restarts near zero.
    for c in sim.cum.iter_mut() {
        *c = 0;
    }
    sim.cum[445] = 10;
    sim.now += Duration::from_secs(5);
    sim.det.step(sim.now, &sim.cum);
    // All six background ports had counted SYNs; all went back.
    assert_eq!(
        sim.det.last_outcome(),
        StepOutcome::Updated { counter_resets: 6 }
    );
    let after = sim.det.status(445);
    assert!(after.rate < before.rate * 1.2, "{before:?} -> {after:?}");
    assert!(!after.flagged);
    assert_eq!(sim.det.flagged_ports(), vec![]);
    // Carries on normally from the new counters.
    sim.steady_until(2 * HOUR);
    assert_all_sane(&sim.det);
}

#[test]
fn time_repeated_or_going_backwards_is_ignored() {
    let mut sim = Sim::new(DetectorConfig::default(), 41, &BACKGROUND);
    sim.steady_until(HOUR);
    let snap = sim.det.snapshot();

    // Same time again, with more SYNs: ignored, the SYNs go to the next step.
    sim.cum[445] += 50;
    sim.det.step(sim.now, &sim.cum);
    assert_eq!(sim.det.last_outcome(), StepOutcome::RepeatedTime);
    assert_eq!(sim.det.snapshot(), snap);

    // Clock stepped back an hour: nothing updated, the reading becomes the reference.
    sim.cum[445] += 50;
    let back = sim.now - HOUR;
    sim.det.step(back, &sim.cum);
    assert_eq!(
        sim.det.last_outcome(),
        StepOutcome::TimeWentBackwards { by: HOUR }
    );
    for &(port, _) in &BACKGROUND {
        let (s, old) = (
            sim.det.status(port),
            snap.ports.iter().find(|e| e.port == port),
        );
        let old = old.expect("port in snapshot");
        assert_eq!((s.rate, s.baseline), (old.rate, old.baseline));
    }
    assert_eq!(sim.det.history(), snap.history);
    // And it keeps going from the new clock, without a spike.
    sim.now = back;
    for _ in 0..12 {
        sim.step(|_, base, _| base);
    }
    assert_eq!(sim.det.flagged_ports(), vec![]);
    assert!(sim.det.history() > snap.history);
    assert_all_sane(&sim.det);
}

#[test]
fn one_hour_gap_is_spread_and_keeps_warmup() {
    let mut sim = Sim::new(DetectorConfig::default(), 51, &BACKGROUND);
    sim.steady_until(10 * MINUTE);
    assert!(sim.det.warming_up());
    let history = sim.det.history();
    // Agent down for an hour; the kernel kept counting 2 SYN/s on 445.
    sim.cum[445] += 7_200;
    sim.cum[80] += 36_000;
    sim.now += HOUR;
    sim.det.step(sim.now, &sim.cum);
    assert_eq!(sim.det.history(), history + HOUR);
    assert!(!sim.det.warming_up(), "the gap counts toward the warm-up");
    let s = sim.det.status(445);
    // The short rate is the gap's mean (2 SYN/s) up to exp(-60), not a 7200-SYN spike.
    assert!((s.rate - 2.0).abs() < 0.01, "{s:?}");
    assert!(!s.flagged);
    // Ports silent during the gap now read as silent (50 * exp(-60) is flushed to 0).
    assert_eq!(sim.det.status(443).rate, 0.0);
    for _ in 0..24 {
        sim.step(|_, base, _| base);
    }
    assert_all_sane(&sim.det);
}

#[test]
fn all_ports_active() {
    let mut det = Detector::new(DetectorConfig::default());
    let mut cum: Vec<u64> = vec![0; PORTS];
    det.step(T0, &cum);
    for i in 1..=300u32 {
        for (p, c) in cum.iter_mut().enumerate() {
            *c += 1 + (p as u64 % 7);
        }
        if i > 280 {
            // Surge on two ports after the warm-up (15 minutes: 180 steps), 100 SYN/s for
            // 100 s (a single-step spike would be cut by the spike limit).
            cum[7] += 500;
            cum[65_535] += 500;
        }
        det.step(T0 + Duration::from_secs(5 * u64::from(i)), &cum);
    }
    assert!(!det.warming_up());
    assert_eq!(det.active_ports(), PORTS);
    assert_all_sane(&det);
    let top = det.top_ports(5);
    assert_eq!(top.len(), 5);
    let mut two = [top[0].port, top[1].port];
    two.sort_unstable();
    assert_eq!(two, [7, 65_535]);
    assert!(top.windows(2).all(|w| by_ratio(&w[0], &w[1]).is_lt()));
    assert_eq!(det.top_ports(0), vec![]);
    assert_eq!(det.top_ports(PORTS + 5).len(), PORTS);
    let mut flagged: Vec<u16> = det.flagged_ports().iter().map(|s| s.port).collect();
    flagged.sort_unstable();
    assert_eq!(flagged, vec![7, 65_535]);
    let snap = det.snapshot();
    assert_eq!(snap.ports.len(), PORTS);
    assert_eq!(
        Detector::restore(det.config().clone(), snap.clone()).snapshot(),
        snap
    );
}

#[test]
fn extreme_inputs_never_panic_or_produce_nan() {
    let configs = [
        DetectorConfig::default(),
        DetectorConfig {
            interval: Duration::ZERO,
            short_window: Duration::ZERO,
            baseline_window: Duration::ZERO,
            warmup: Duration::ZERO,
            surge_threshold: f64::NAN,
            floor: f64::NAN,
            surge_adapt_window: Duration::ZERO,
        },
        DetectorConfig {
            short_window: Duration::MAX,
            baseline_window: Duration::MAX,
            surge_adapt_window: Duration::MAX,
            warmup: Duration::MAX,
            surge_threshold: f64::INFINITY,
            floor: f64::MAX,
            ..DetectorConfig::default()
        },
        DetectorConfig {
            floor: -1.0,
            surge_threshold: -1.0,
            warmup: Duration::ZERO,
            ..DetectorConfig::default()
        },
    ];
    for config in configs {
        let mut det = Detector::new(config.clone());
        let mut cum = vec![0u64; PORTS];
        let times = [
            T0,
            T0 + Duration::from_nanos(1),
            T0 + Duration::from_nanos(2),
            T0 + DAY * 365 * 100,
            T0,
            Duration::ZERO,
            Duration::MAX,
            Duration::MAX,
        ];
        for (i, &t) in times.iter().enumerate() {
            cum[0] = if i % 2 == 0 { u64::MAX } else { 0 };
            cum[1] = cum[1].wrapping_add(u64::MAX / 3);
            cum[65_535] = i as u64;
            det.step(t, &cum);
            assert_all_sane(&det);
            let _ = (det.top_ports(3), det.flagged_ports(), det.active_ports());
            let _ = det.warmup_remaining();
        }
        // Short and long slices.
        det.step(Duration::MAX, &[]);
        det.step(T0 + DAY, &[5; 10]);
        det.step(T0 + 2 * DAY, &vec![9; PORTS + 100]);
        assert_all_sane(&det);
        let restored = Detector::restore(config, det.snapshot());
        assert_all_sane(&restored);
    }
}

#[test]
fn short_slice_leaves_other_ports_unchanged() {
    let mut det = Detector::new(DetectorConfig::default());
    let mut cum = vec![0u64; PORTS];
    cum[1000] = 500;
    det.step(T0, &cum);
    cum[10] = 50;
    cum[1000] = 1000;
    // Only ports 0..100 given: port 1000 keeps its reference (500).
    det.step(T0 + Duration::from_secs(5), &cum[..100]);
    assert_eq!(det.status(10).rate, 10.0);
    assert_eq!(det.status(1000).rate, 0.0);
    det.step(T0 + Duration::from_secs(10), &cum);
    // 500 SYNs over the last 5 s, averaged with the 0 of the previous step.
    assert!(det.status(1000).rate > 40.0);
}

#[test]
fn restore_sanitizes_bad_values() {
    let state = DetectorState {
        version: STATE_VERSION,
        last_step: Some(T0),
        history: HOUR,
        short_weight: f64::NAN,
        baseline_weight: 7.0,
        ports: vec![
            PortSnapshot {
                port: 1,
                count: 5,
                rate: f64::NAN,
                baseline: -3.0,
            },
            PortSnapshot {
                port: 2,
                count: 5,
                rate: f64::INFINITY,
                baseline: 1.0,
            },
            PortSnapshot {
                port: 2,
                count: 6,
                rate: 1.0,
                baseline: 1.0,
            },
        ],
        profile_hour: Some(hour_of(T0.as_secs_f64())),
        profiles: vec![
            ProfileSnapshot {
                port: 2,
                adjust: f64::NAN,
                acc_syns: -1.0,
                acc_secs: f64::INFINITY,
                ref_before: f64::NAN,
                ref_at: 1.0,
                ref_after: -7.0,
                bins: vec![7; profile::WEEK_HOURS],
            },
            ProfileSnapshot {
                port: 3,
                adjust: 1.0,
                acc_syns: 0.0,
                acc_secs: 0.0,
                ref_before: 0.0,
                ref_at: 0.0,
                ref_after: 0.0,
                bins: vec![7; 3],
            },
        ],
        episodes: vec![EpisodeSnapshot {
            port: 2,
            start: T0,
            peak_ratio: f64::NAN,
        }],
    };
    assert!(state.check().is_err());
    let mut det = Detector::restore(DetectorConfig::default(), state);
    assert_all_sane(&det);
    let mut cum = vec![0u64; PORTS];
    cum[1] = 10;
    cum[2] = 10;
    det.step(T0 + Duration::from_secs(5), &cum);
    assert_all_sane(&det);
}

#[test]
fn state_check_finds_problems() {
    let mut det = Detector::new(DetectorConfig::default());
    det.step(T0, &[1, 2, 3]);
    det.step(T0 + Duration::from_secs(5), &[2, 4, 6]);
    let good = det.snapshot();
    assert_eq!(good.check(), Ok(()));
    assert_eq!(good.ports.len(), 3);
    let mut bad = good.clone();
    bad.version = STATE_VERSION + 1;
    assert!(bad.check().unwrap_err().contains("version"));
    let mut bad = good.clone();
    bad.ports.push(bad.ports[0]);
    assert!(bad.check().unwrap_err().contains("more than once"));
    let mut bad = good.clone();
    bad.ports[1].baseline = f64::NAN;
    assert!(bad.check().unwrap_err().contains("baseline"));
    let mut bad = good;
    bad.baseline_weight = 1.5;
    assert!(bad.check().unwrap_err().contains("baseline_weight"));
}

#[test]
fn idle_ports_return_to_zero_and_leave_the_snapshot() {
    let mut det = Detector::new(DetectorConfig::default());
    let mut cum = vec![0u64; PORTS];
    det.step(T0, &cum);
    cum[5] = 1;
    det.step(T0 + Duration::from_secs(5), &cum);
    assert_eq!(det.live.len(), 1);
    cum[5] = 0; // and the map is recreated, so the reference goes back to 0 as well
    det.step(T0 + Duration::from_secs(10), &cum);
    // Then silence: the rate is flushed to 0 after about 20 short windows, the baseline later.
    det.step(T0 + Duration::from_secs(10) + 30 * DAY, &cum);
    assert_eq!(det.status(5).rate, 0.0);
    assert_eq!(det.status(5).baseline, 0.0);
    assert!(det.live.is_empty());
    assert!(det.snapshot().ports.is_empty());
}

/// Monday 2023-11-13 00:00 UTC: the weekly scenarios start on a Monday at midnight.
const MONDAY: Duration = Duration::from_secs(1_699_833_600);

/// Business hours: night trough at a tenth of the weekday peak, a steep morning ramp (about
/// an hour, around 08:00, a few minutes earlier or later each day), an evening decline, quieter
/// weekends (35% of the weekday peak), days +-10% apart. `holiday`: a weekday (day index from
/// the start) that looks like a Sunday.
fn business(peak: f64, t: Duration, holiday: Option<u64>) -> f64 {
    let day = t.as_secs() / 86_400;
    let hour = (t.as_secs_f64() % 86_400.0) / 3_600.0;
    let jitter = (day.wrapping_mul(7_919) % 5) as f64 - 2.0; // -2..=2
    let shift = jitter * 0.1; // +-12 minutes
    let level = 1.0 + jitter * 0.05;
    let weekend = day % 7 >= 5 || holiday == Some(day);
    let night = peak / 10.0;
    let up = 1.0 / (1.0 + (-(hour - 8.0 - shift) / 0.25).exp());
    let down = 1.0 / (1.0 + ((hour - 18.0 - shift) / 0.6).exp());
    let top = if weekend { 0.35 * peak } else { peak * level };
    night + (top - night).max(0.0) * up * down
}

/// A gentler cycle: 3x between a 04:00 trough and a 16:00 peak.
fn gentle(mean: f64, t: Duration) -> f64 {
    let hour = (t.as_secs_f64() % 86_400.0) / 3_600.0;
    mean * (1.0 + 0.5 * (2.0 * std::f64::consts::PI * (hour - 10.0) / 24.0).sin())
}

/// Episodes seen by a run: (port, start, end) in time since the simulation start.
#[derive(Default)]
struct Episodes(Vec<(u16, Duration, Option<Duration>)>);

impl Episodes {
    fn collect(&mut self, sim: &Sim) {
        for e in sim.det.ended_episodes() {
            let slot = self
                .0
                .iter_mut()
                .rev()
                .find(|(p, _, end)| *p == e.port && end.is_none())
                .expect("an ended episode was open");
            slot.2 = Some(e.end - sim.start);
        }
        for s in sim.det.flagged_ports() {
            let start = s.episode_start.expect("flagged") - sim.start;
            if !self.0.iter().any(|&(p, st, _)| p == s.port && st == start) {
                self.0.push((s.port, start, None));
            }
        }
    }

    fn of(&self, port: u16) -> Vec<(Duration, Option<Duration>)> {
        self.0
            .iter()
            .filter(|e| e.0 == port)
            .map(|e| (e.1, e.2))
            .collect()
    }
}

/// The week: a busy business-hours port, a gentler cycle, flat background with
/// single-host bursts, and true surges of 5x-50x for 20-60 minutes during a ramp, at night and
/// on a weekend. From the second day on, the only episodes are the true surges, each one
/// episode, flagged within 2 minutes and ended within 10 minutes after it stops.
#[test]
fn a_business_week_flags_only_the_true_surges() {
    let ports: Vec<(u16, f64)> = vec![
        (443, 40.0), // business hours, peak 40 SYN/s
        (80, 20.0),  // business hours, peak 20 SYN/s: the surges happen here
        (22, 2.0),   // gentle 3x cycle
        (23, 0.2),   // flat background radiation
        (445, 0.3),  // flat background radiation
        (3389, 0.1), // flat background radiation
    ];
    // (port, factor, start, length) of the true surges.
    let surges = [
        (80, 5.0, DAY + 8 * HOUR, 20 * MINUTE), // Tuesday morning ramp
        (80, 10.0, 2 * DAY + 2 * HOUR, HOUR),   // Wednesday night
        (22, 5.0, 3 * DAY + 15 * HOUR, 30 * MINUTE),
        (80, 50.0, 4 * DAY + 12 * HOUR, 15 * MINUTE),
        (80, 5.0, 5 * DAY + 14 * HOUR, 20 * MINUTE), // Saturday afternoon
        (445, 10.0, 6 * DAY + 3 * HOUR, 20 * MINUTE), // Sunday night, flat port
    ];
    let rates = move |port: u16, base: f64, t: Duration| {
        let normal = match port {
            443 | 80 => business(base, t, None),
            22 => gentle(base, t),
            _ => base,
        };
        let factor = surges
            .iter()
            .find(|&&(p, _, from, len)| p == port && t >= from && t < from + len)
            .map_or(1.0, |s| s.1);
        normal * factor
    };
    let mut sim = Sim::at(DetectorConfig::default(), 77, &ports, MONDAY);
    sim.width = 8_192;
    let mut episodes = Episodes::default();
    let mut burst_rng = Rng::new(5);
    let mut learning_seen = false;
    while sim.elapsed() < 7 * DAY {
        // Single-host bursts: 100-160 SYNs within one step on a flat port, every ~2 hours.
        if burst_rng.uniform() < 5.0 / 7200.0 {
            let port = [23u16, 445, 3389][(burst_rng.next_u64() % 3) as usize];
            sim.cum[usize::from(port)] += 100 + burst_rng.next_u64() % 61;
        }
        sim.step(rates);
        episodes.collect(&sim);
        if sim.elapsed() > HOUR && sim.elapsed() < DAY {
            learning_seen |= sim.det.status(443).learning == LearningState::Learning;
        }
    }
    assert!(learning_seen, "the busy port is learning on its first day");
    assert_eq!(sim.det.status(443).learning, LearningState::Seasonal);
    assert_eq!(sim.det.status(3389).learning, LearningState::Baseline);
    for &(port, _) in &ports {
        let found: Vec<_> = episodes
            .of(port)
            .into_iter()
            .filter(|&(start, _)| start >= DAY)
            .collect();
        let expected: Vec<_> = surges.iter().filter(|s| s.0 == port).collect();
        assert_eq!(
            found.len(),
            expected.len(),
            "port {port}: episodes {found:?}, true surges {expected:?}"
        );
        for (&(start, end), &&(_, factor, from, len)) in found.iter().zip(&expected) {
            let end = end.expect("ended");
            assert!(
                start >= from && start <= from + 2 * MINUTE,
                "port {port} x{factor} at {from:?}: flagged at {start:?}"
            );
            assert!(
                end >= from + len && end <= from + len + 10 * MINUTE,
                "port {port} x{factor} at {from:?}: ended at {end:?}"
            );
        }
    }
}

/// A public holiday (a Wednesday that looks like a Sunday) raises nothing, and neither the
/// Thursday after it nor the Wednesday of the next week is a false alarm.
#[test]
fn a_holiday_does_not_poison_the_next_days() {
    let ports: Vec<(u16, f64)> = vec![(443, 40.0), (80, 8.0)];
    let mut sim = Sim::at(DetectorConfig::default(), 91, &ports, MONDAY);
    sim.width = 8_192;
    let mut episodes = Episodes::default();
    while sim.elapsed() < 10 * DAY {
        sim.step(|_, base, t| business(base, t, Some(2)));
        episodes.collect(&sim);
    }
    for &(port, _) in &ports {
        let late: Vec<_> = episodes
            .of(port)
            .into_iter()
            .filter(|&(start, _)| start >= DAY)
            .collect();
        assert_eq!(late, vec![], "port {port}");
    }
}

/// A new permanent level (a new service, 5x) is one episode that ends within hours; nothing is
/// flagged afterwards.
#[test]
fn a_new_level_on_a_cyclic_port_is_accepted_after_hours() {
    let ports: Vec<(u16, f64)> = vec![(443, 10.0)];
    let mut sim = Sim::at(DetectorConfig::default(), 93, &ports, MONDAY);
    sim.width = 8_192;
    let change = 2 * DAY + 11 * HOUR;
    let mut episodes = Episodes::default();
    while sim.elapsed() < 6 * DAY {
        sim.step(|_, base, t| business(base, t, None) * if t >= change { 5.0 } else { 1.0 });
        episodes.collect(&sim);
    }
    let late: Vec<_> = episodes
        .of(443)
        .into_iter()
        .filter(|&(start, _)| start >= DAY)
        .collect();
    assert_eq!(late.len(), 1, "{late:?}");
    let (start, end) = late[0];
    assert!(start >= change && start <= change + 2 * MINUTE, "{start:?}");
    let accepted = end.expect("accepted") - change;
    assert!(
        accepted > 2 * HOUR && accepted < 10 * HOUR,
        "accepted after {accepted:?}"
    );
}

/// Time the program was not attached is unobserved: an outage of three baseline windows, then
/// `resume`, changes no rate, baseline or profile level and flags nothing, even though the
/// counters restarted from zero (reboot); the warm-up is not credited with the outage.
#[test]
fn resume_after_an_outage_learns_nothing() {
    let mut sim = Sim::new(DetectorConfig::default(), 61, &BACKGROUND);
    sim.steady_until(2 * HOUR);
    let before = sim.det.snapshot();
    let history = sim.det.history();
    // Down for 3 baseline windows; after the reboot the counters start again from 0.
    sim.now += 3 * DEFAULT_BASELINE_WINDOW;
    for c in sim.cum.iter_mut() {
        *c = 0;
    }
    sim.det.resume(sim.now, &sim.cum);
    assert_eq!(sim.det.last_outcome(), StepOutcome::Resumed);
    assert_eq!(sim.det.history(), history, "no warm-up credit");
    assert_eq!(sim.det.counter_resets_total(), 0, "a resume is no reset");
    for &(port, _) in &BACKGROUND {
        let (s, old) = (
            sim.det.status(port),
            before
                .ports
                .iter()
                .find(|e| e.port == port)
                .expect("port in snapshot"),
        );
        assert_eq!((s.rate, s.baseline), (old.rate, old.baseline), "{port}");
    }
    // And the next steps are ordinary: no port flagged.
    for _ in 0..120 {
        sim.step(|_, base, _| base);
        assert_eq!(sim.det.flagged_ports(), vec![]);
    }
    let s = sim.det.status(445);
    let old = before.ports.iter().find(|e| e.port == 445).unwrap();
    assert!((s.baseline / old.baseline - 1.0).abs() < 0.05, "{s:?}");
}

/// Counter resets and clock steps are counted for the agent's self-metrics.
#[test]
fn resets_and_clock_steps_are_counted() {
    let mut det = Detector::new(DetectorConfig::default());
    let mut cum = vec![0u64; PORTS];
    cum[1] = 10;
    cum[2] = 10;
    det.step(T0, &cum);
    cum[1] = 3;
    cum[2] = 4;
    det.step(T0 + MINUTE, &cum);
    assert_eq!(det.counter_resets_total(), 2);
    det.step(T0, &cum);
    det.step(T0 - MINUTE, &cum);
    assert_eq!(det.clock_steps_total(), 2);
    det.step(T0, &cum);
    assert_eq!(det.clock_steps_total(), 2);
    assert_eq!(det.counter_resets_total(), 2);
}

/// A long gap is one step whatever its length, and a profile keeps only what was observed.
#[test]
fn a_restore_with_profiles_continues_exactly() {
    let ports: Vec<(u16, f64)> = vec![(443, 20.0), (80, 1.0)];
    let config = DetectorConfig::default();
    let mut a = Sim::at(config.clone(), 95, &ports, MONDAY);
    a.width = 8_192;
    while a.elapsed() < DAY + 9 * HOUR {
        a.step(|_, base, t| business(base, t, None));
    }
    assert_eq!(a.det.status(443).learning, LearningState::Seasonal);
    assert_eq!(a.det.profiled_ports(), 2);
    let state = a.det.snapshot();
    assert_eq!(state.check(), Ok(()));
    let json = serde_json::to_string(&state).expect("ser");
    let mut b = Detector::restore(config, serde_json::from_str(&json).expect("de"));
    assert_eq!(b.snapshot(), state);
    let end = a.elapsed() + 3 * HOUR;
    while a.elapsed() < end {
        a.step(|p, base, t| {
            business(base, t, None)
                * if p == 80 && t > DAY + 10 * HOUR {
                    8.0
                } else {
                    1.0
                }
        });
        b.step(a.now, &a.cum[..a.width]);
        for &(port, _) in &ports {
            assert_eq!(a.det.status(port), b.status(port));
        }
    }
    assert!(a.det.status(80).flagged);
    assert_eq!(a.det.snapshot(), b.snapshot());
}

/// Every port's status from a [`StatusView`] and the copied rates is exactly the detector's,
/// in every learning state and in an episode; `top_ports` (a bounded heap) ranks exactly as a
/// full sort of every active port's status.
#[test]
fn the_status_view_answers_exactly_as_the_detector() {
    let ports: Vec<(u16, f64)> = vec![(443, 20.0), (80, 4.0), (22, 0.3), (3389, 0.05)];
    let mut sim = Sim::at(DetectorConfig::default(), 17, &ports, MONDAY);
    let check = |det: &Detector, seen: &mut Vec<LearningState>| {
        let view = det.status_view();
        let (rate, baseline) = det.rates();
        for port in 0..=u16::MAX {
            let p = usize::from(port);
            let status = det.status(port);
            assert_eq!(view.status(port, rate[p], baseline[p]), status);
            if !seen.contains(&status.learning) && rate[p] > 0.0 {
                seen.push(status.learning);
            }
        }
        assert_eq!(view.warming_up(), det.warming_up());
        assert_eq!(view.warmup_remaining(), det.warmup_remaining());
        assert_eq!(view.active_ports(), det.active_ports());
        assert_eq!(view.profiled_ports(), det.profiled_ports());
        let mut all: Vec<PortStatus> = (0..=u16::MAX)
            .filter(|&port| rate[usize::from(port)] >= ACTIVE_RATE)
            .map(|port| det.status(port))
            .collect();
        all.sort_unstable_by(by_ratio);
        for k in [1, 3, all.len(), all.len() + 2] {
            assert_eq!(det.top_ports(k), all[..k.min(all.len())].to_vec());
        }
    };
    let mut seen = Vec::new();
    let mut flagged_seen = false;
    // A 10x surge on 80 on the second day (seasonal by then).
    let surge = |p: u16, base: f64, t: Duration| {
        let normal = if p == 22 || p == 3389 {
            base
        } else {
            business(base, t, None)
        };
        let on = p == 80 && t >= DAY + 10 * HOUR && t < DAY + 11 * HOUR;
        normal * if on { 10.0 } else { 1.0 }
    };
    let checkpoints = [
        5 * MINUTE,
        2 * HOUR,
        DAY + 9 * HOUR,
        DAY + 10 * HOUR + 10 * MINUTE,
    ];
    for at in checkpoints {
        while sim.elapsed() < at {
            sim.step(surge);
        }
        check(&sim.det, &mut seen);
        flagged_seen |= sim.det.status(80).flagged;
    }
    assert!(flagged_seen, "80 is in an episode at the last checkpoint");
    for state in LearningState::ALL {
        assert!(seen.contains(&state), "{state:?} not covered: {seen:?}");
    }
}
