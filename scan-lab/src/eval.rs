//! Detection scorecard (`cargo xtask eval`): seeded scenarios of simulated traffic, counted by
//! the real XDP program and judged by the real detector.
//!
//! # How traffic reaches the program
//!
//! Scenarios last days to weeks of 5-second steps; running every SYN as its own frame would take
//! hours. Instead, for every step and every port with traffic, the step's SYN count `n` (Poisson
//! around the scenario's rate) is run through the program with `BPF_PROG_TEST_RUN` as one
//! prebuilt SYN frame to that port, `n` single runs (a run with `repeat` > 1 swaps the kernel's
//! XDP dispatcher, about 20 ms each): the counts the detector sees come from the program's own
//! per-CPU map, read by mmap exactly as the agent reads it. A single-host burst is one source's frame repeated. The detector is
//! stepped on simulated time (UNIX time from a Monday 00:00 UTC), with the default settings.
//!
//! # Scoring
//!
//! - A *true surge* is found when at least one episode of its port overlaps it (or the 10
//!   minutes after it); detection delay = first episode start - surge start; end delay = last
//!   episode end - surge end; it is *one episode* when exactly one overlaps.
//! - A *level change* (a new permanent level) must be flagged like a surge and then accepted:
//!   its episode must end within 12 hours; that time is reported.
//! - Every other episode is *false*. False episodes are counted on the first day (learning) and
//!   from the second day on, and given per port-week (ports with traffic x days / 7).
//! - *Pages*: a replica of the shipped `PortScanSurge` rule (ratio >= 5 and rate >= 1 SYN/s for
//!   15 minutes, not while warming up, not on a learning port unless ratio >= 20) applied to the
//!   detector's output at every step; the promtool tests check the rule itself.
//!
//! A scenario *passes* when every true surge of 5x or more lasting 15 minutes or more is one
//! episode, flagged within 2 minutes and ended within 10 minutes after it stops; every level
//! change is flagged within 2 minutes and accepted within 12 hours; there is no false episode
//! from the second day on; and no false page at all.
use std::time::Duration;

use anyhow::{Context, Result};
use scan_agent::{
    detector::{Detector, DetectorConfig, LearningState},
    sensor::Sensor,
};
use serde_json::{Value, json};

use crate::{
    frames::{Frame, tcp},
    rng::Rng,
};

/// Monday 2023-11-13 00:00 UTC.
pub const MONDAY: Duration = Duration::from_secs(1_699_833_600);
const MINUTE: u64 = 60;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

/// The normal traffic shape of a port.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// Constant rate (internet background radiation), SYN/s.
    Flat(f64),
    /// 3x daily cycle around a mean (04:00 trough, 16:00 peak) with +-10% hourly noise, as
    /// the promtool background test.
    Diurnal(f64),
    /// Business hours with this weekday peak: night a tenth of it, a steep ramp near 08:00
    /// (a few minutes earlier or later each day), decline near 18:00, weekends at 35%.
    /// `holiday`: a weekday (day index) that looks like a Sunday.
    Business { peak: f64, holiday: Option<u64> },
}

impl Shape {
    fn rate(self, t: u64, noise: f64) -> f64 {
        let hour = (t % DAY) as f64 / HOUR as f64;
        let day = t / DAY;
        match self {
            Self::Flat(rate) => rate,
            Self::Diurnal(mean) => {
                mean * (1.0 + 0.5 * (2.0 * std::f64::consts::PI * (hour - 10.0) / 24.0).sin())
                    * (1.0 + 0.1 * noise)
            }
            Self::Business { peak, holiday } => {
                let jitter = (day.wrapping_mul(7_919) % 5) as f64 - 2.0;
                let shift = jitter * 0.1;
                let weekend = day % 7 >= 5 || holiday == Some(day);
                let night = peak / 10.0;
                let up = 1.0 / (1.0 + (-(hour - 8.0 - shift) / 0.25).exp());
                let down = 1.0 / (1.0 + ((hour - 18.0 - shift) / 0.6).exp());
                let top = if weekend {
                    0.35 * peak
                } else {
                    peak * (1.0 + jitter * 0.05)
                };
                night + (top - night).max(0.0) * up * down
            }
        }
    }
}

/// One port of a scenario.
#[derive(Clone, Copy, Debug)]
pub struct PortSpec {
    pub port: u16,
    pub shape: Shape,
    /// From this time (seconds since the start) the rate is multiplied by `factor` for good.
    pub level_change: Option<(u64, f64)>,
    /// Cyclic (a port with a daily shape) or flat, for the table.
    pub cyclic: bool,
}

/// A true surge: `factor` times the normal rate of `port` from `start` for `length` seconds.
#[derive(Clone, Copy, Debug)]
pub struct TrueSurge {
    pub port: u16,
    pub factor: f64,
    pub start: u64,
    pub length: u64,
    pub label: &'static str,
}

/// A generated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub seconds: u64,
    pub seed: u64,
    pub ports: Vec<PortSpec>,
    pub surges: Vec<TrueSurge>,
    /// Single-host bursts (100-160 SYNs within one step from one source) per hour, on the
    /// flat ports.
    pub bursts_per_hour: f64,
    /// In the quick subset run by `cargo xtask test`.
    pub quick: bool,
}

fn port(port: u16, shape: Shape) -> PortSpec {
    PortSpec {
        port,
        shape,
        level_change: None,
        cyclic: !matches!(shape, Shape::Flat(_)),
    }
}

fn surge(port: u16, factor: f64, start: u64, length: u64, label: &'static str) -> TrueSurge {
    TrueSurge {
        port,
        factor,
        start,
        length,
        label,
    }
}

/// Flat background radiation on `n` ports from 1024 up, 0.02 to 0.5 SYN/s.
fn background(n: u16) -> Vec<PortSpec> {
    (0..n)
        .map(|i| {
            port(
                1024 + i * 97,
                Shape::Flat(0.02 + 0.48 * f64::from(i) / f64::from(n)),
            )
        })
        .collect()
}

/// Every scenario.
pub fn scenarios() -> Vec<Scenario> {
    let business = |peak| Shape::Business {
        peak,
        holiday: None,
    };
    vec![
        Scenario {
            name: "diurnal-3day",
            about: "3 days of a 3x daily cycle on 6 ports (the promtool background), then a 5x surge on 445",
            seconds: 75 * HOUR,
            seed: 1,
            ports: vec![
                port(445, Shape::Diurnal(8.0)),
                port(22, Shape::Diurnal(20.0)),
                port(23, Shape::Diurnal(5.0)),
                port(3389, Shape::Diurnal(6.0)),
                port(80, Shape::Diurnal(120.0)),
                port(5900, Shape::Flat(0.05)),
            ],
            surges: vec![surge(445, 5.0, 72 * HOUR, 30 * MINUTE, "day 4 00:00")],
            bursts_per_hour: 0.0,
            // 45 million SYNs: too many single test runs for the quick subset.
            quick: false,
        },
        Scenario {
            name: "business-week",
            about: "7 days: business hours on a busy port (peak 40 SYN/s, night 4, weekends 35%), a gentler 3x cycle on another, flat background",
            seconds: 7 * DAY,
            seed: 2,
            ports: {
                let mut p = vec![port(443, business(40.0)), port(80, Shape::Diurnal(5.0))];
                p.extend(background(8));
                p
            },
            surges: vec![],
            bursts_per_hour: 0.0,
            quick: true,
        },
        Scenario {
            name: "background-bursts",
            about: "7 days of flat background radiation on 40 ports with single-host bursts (100-160 SYNs in one step) twice an hour",
            seconds: 7 * DAY,
            seed: 3,
            ports: background(40),
            surges: vec![],
            bursts_per_hour: 2.0,
            quick: false,
        },
        Scenario {
            name: "true-surges",
            about: "7 days of business hours (peak 20) and flat background with true surges of 3x-50x during a ramp, at night, at midday and on a weekend",
            seconds: 7 * DAY,
            seed: 4,
            ports: {
                let mut p = vec![port(80, business(20.0)), port(8080, business(6.0))];
                p.extend(background(8));
                p
            },
            surges: vec![
                surge(
                    80,
                    5.0,
                    DAY + 8 * HOUR + 5 * MINUTE,
                    20 * MINUTE,
                    "Tue ramp",
                ),
                surge(80, 10.0, 2 * DAY + 2 * HOUR, HOUR, "Wed night"),
                surge(80, 50.0, 3 * DAY + 12 * HOUR, 15 * MINUTE, "Thu midday"),
                surge(80, 3.0, 4 * DAY + 3 * HOUR, 30 * MINUTE, "Fri night"),
                surge(80, 5.0, 5 * DAY + 14 * HOUR, 20 * MINUTE, "Sat afternoon"),
                surge(8080, 10.0, 6 * DAY + 8 * HOUR, 30 * MINUTE, "Sun morning"),
                surge(8080, 3.0, 3 * DAY + 9 * HOUR, 30 * MINUTE, "Thu ramp"),
                surge(
                    1024 + 97,
                    10.0,
                    2 * DAY + 23 * HOUR,
                    20 * MINUTE,
                    "flat, night",
                ),
                surge(
                    1024 + 3 * 97,
                    50.0,
                    6 * DAY + 15 * HOUR,
                    15 * MINUTE,
                    "flat, Sun",
                ),
            ],
            bursts_per_hour: 1.0,
            quick: true,
        },
        Scenario {
            name: "level-change",
            about: "7 days: a business port whose level goes 5x up for good on Wednesday 11:00, and a new service appearing on a silent port on Thursday 10:00",
            seconds: 7 * DAY,
            seed: 5,
            ports: {
                let mut p = vec![
                    PortSpec {
                        level_change: Some((2 * DAY + 11 * HOUR, 5.0)),
                        ..port(443, business(10.0))
                    },
                    PortSpec {
                        level_change: Some((3 * DAY + 10 * HOUR, 1e6)),
                        ..port(8443, Shape::Flat(2e-6))
                    },
                ];
                p.extend(background(4));
                p
            },
            surges: vec![],
            bursts_per_hour: 0.0,
            quick: false,
        },
        Scenario {
            name: "holiday-week",
            about: "10 days of business hours with a public holiday on the first Wednesday (it looks like a Sunday), through the next Wednesday",
            seconds: 10 * DAY,
            seed: 6,
            ports: vec![
                port(
                    443,
                    Shape::Business {
                        peak: 40.0,
                        holiday: Some(2),
                    },
                ),
                port(
                    25,
                    Shape::Business {
                        peak: 4.0,
                        holiday: Some(2),
                    },
                ),
                port(80, Shape::Diurnal(5.0)),
            ],
            surges: vec![],
            bursts_per_hour: 0.0,
            quick: false,
        },
    ]
}

/// An episode as the scorer sees it: seconds since the scenario start.
#[derive(Clone, Copy, Debug)]
struct Seen {
    port: u16,
    start: u64,
    end: Option<u64>,
}

/// What one scenario gave.
#[derive(Debug)]
pub struct Outcome {
    pub name: &'static str,
    pub json: Value,
    pub passed: bool,
    pub row: String,
}

fn secs_since(t: Duration, start: Duration) -> u64 {
    t.saturating_sub(start).as_secs()
}

/// Runs one scenario through `sensor` (fresh private maps each time: the caller loads a new
/// sensor) and the default detector.
pub fn run(scenario: &Scenario, sensor: &Sensor) -> Result<Outcome> {
    let config = DetectorConfig::default();
    let step = config.interval.as_secs();
    let mut detector = Detector::new(config);
    let mut rng = Rng::new(scenario.seed);
    let frames: Vec<Vec<u8>> = scenario
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Frame::ipv4_tcp(
                [198, 18, 0, (i % 250) as u8 + 1],
                [198, 19, 0, 1],
                40_000,
                p.port,
                tcp::SYN,
            )
            .build()
        })
        .collect();
    let burst_frame =
        |port| Frame::ipv4_tcp([198, 18, 7, 7], [198, 19, 0, 2], 50_000, port, tcp::SYN).build();
    let flat: Vec<u16> = scenario
        .ports
        .iter()
        .filter(|p| !p.cyclic)
        .map(|p| p.port)
        .collect();
    let mut counts = vec![0u64; scan_agent::detector::PORTS];
    let mut episodes: Vec<Seen> = Vec::new();
    // Rule replica: when each port's page condition started to hold.
    let mut pending: std::collections::HashMap<u16, u64> = Default::default();
    let mut pages: Vec<(u16, u64)> = Vec::new();
    let mut noise = vec![0.0; scenario.ports.len()];
    let mut sent = 0u64;
    sensor.read_ports(&mut counts);
    detector.step(MONDAY, &counts);
    let mut t = 0;
    while t < scenario.seconds {
        if t % HOUR == 0 {
            for n in noise.iter_mut() {
                *n = 2.0 * rng.uniform() - 1.0;
            }
        }
        for (i, p) in scenario.ports.iter().enumerate() {
            let mut rate = p.shape.rate(t, noise[i]);
            if let Some((at, factor)) = p.level_change
                && t >= at
            {
                rate *= factor;
            }
            if let Some(s) = scenario
                .surges
                .iter()
                .find(|s| s.port == p.port && t >= s.start && t < s.start + s.length)
            {
                rate *= s.factor;
            }
            let n = rng.poisson(rate * step as f64);
            if n > 0 {
                run_frame(sensor, &frames[i], n)?;
                sent += n;
            }
        }
        if !flat.is_empty() && rng.uniform() < scenario.bursts_per_hour * step as f64 / HOUR as f64
        {
            let port = flat[(rng.next_u64() % flat.len() as u64) as usize];
            let n = 100 + rng.next_u64() % 61;
            run_frame(sensor, &burst_frame(port), n)?;
            sent += n;
        }
        t += step;
        let now = MONDAY + Duration::from_secs(t);
        sensor.read_ports(&mut counts);
        detector.step(now, &counts);
        for ended in detector.ended_episodes() {
            if let Some(e) = episodes
                .iter_mut()
                .rev()
                .find(|e| e.port == ended.port && e.end.is_none())
            {
                e.end = Some(secs_since(ended.end, MONDAY));
            }
        }
        for status in detector.flagged_ports() {
            let start = secs_since(status.episode_start.unwrap_or(now), MONDAY);
            if !episodes
                .iter()
                .any(|e| e.port == status.port && e.start == start)
            {
                episodes.push(Seen {
                    port: status.port,
                    start,
                    end: None,
                });
            }
        }
        // The shipped PortScanSurge rule, replicated on every port with traffic.
        for p in &scenario.ports {
            let s = detector.status(p.port);
            let pages_now = !detector.warming_up()
                && s.rate >= 1.0
                && (s.ratio >= 20.0 || (s.ratio >= 5.0 && s.learning != LearningState::Learning));
            if pages_now {
                let since = *pending.entry(p.port).or_insert(t);
                if t - since == 15 * MINUTE {
                    pages.push((p.port, since));
                }
            } else {
                pending.remove(&p.port);
            }
        }
    }
    let total: u64 = counts.iter().sum();
    anyhow::ensure!(
        total == sent,
        "{}: the program counted {total} SYNs, {sent} were run",
        scenario.name
    );
    Ok(score(scenario, &episodes, &pages))
}

/// Runs `frame` through the program `n` times, one test run each: a run with `repeat` > 1
/// makes the kernel swap its XDP dispatcher around it (two RCU grace periods, about 20 ms),
/// while a single run costs a few microseconds.
fn run_frame(sensor: &Sensor, frame: &[u8], n: u64) -> Result<()> {
    for _ in 0..n {
        sensor
            .test_run(frame, 1)
            .context("BPF_PROG_TEST_RUN of a SYN frame")?;
    }
    Ok(())
}

fn score(scenario: &Scenario, episodes: &[Seen], pages: &[(u16, u64)]) -> Outcome {
    let mut passed = true;
    let mut used = vec![false; episodes.len()];
    let mut surges = Vec::new();
    let mut detail = String::new();
    let (mut found, mut required, mut required_ok) = (0, 0, 0);
    let mut delays = Vec::new();
    let mut end_delays = Vec::new();
    for s in &scenario.surges {
        let window_end = s.start + s.length + 10 * MINUTE;
        let overlapping: Vec<usize> = episodes
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.port == s.port && e.start < window_end && e.end.is_none_or(|end| end > s.start)
            })
            .map(|(i, _)| i)
            .collect();
        for &i in &overlapping {
            used[i] = true;
        }
        let delay = overlapping
            .first()
            .map(|&i| episodes[i].start as i64 - s.start as i64);
        let end_delay = overlapping
            .last()
            .and_then(|&i| episodes[i].end)
            .map(|end| end as i64 - (s.start + s.length) as i64);
        let ok = overlapping.len() == 1
            && delay.is_some_and(|d| (0..=120).contains(&d))
            && end_delay.is_some_and(|d| (0..=600).contains(&d));
        let must = s.factor >= 5.0 && s.length >= 15 * MINUTE;
        if !overlapping.is_empty() {
            found += 1;
        }
        if let Some(d) = delay {
            delays.push(d);
        }
        if let Some(d) = end_delay {
            end_delays.push(d);
        }
        if must {
            required += 1;
            if ok {
                required_ok += 1;
            } else {
                passed = false;
            }
        }
        detail.push_str(&format!(
            "\n    surge {:>5}x {:>3} min on {:<5} {:<14} episodes {} detect {} end {}{}",
            s.factor,
            s.length / MINUTE,
            s.port,
            s.label,
            overlapping.len(),
            delay.map_or("-".into(), |d| format!("{d} s")),
            end_delay.map_or("-".into(), |d| format!("{d} s")),
            if must && !ok { "  FAILED" } else { "" }
        ));
        surges.push(json!({
            "port": s.port, "factor": s.factor, "start_s": s.start, "length_s": s.length,
            "label": s.label, "episodes": overlapping.len(), "detection_delay_s": delay,
            "end_delay_s": end_delay, "required": must, "ok": ok,
        }));
    }
    let mut changes = Vec::new();
    for p in &scenario.ports {
        let Some((at, factor)) = p.level_change else {
            continue;
        };
        let overlapping: Vec<usize> = episodes
            .iter()
            .enumerate()
            .filter(|(_, e)| e.port == p.port && e.start >= at && e.start < at + 12 * HOUR)
            .map(|(i, _)| i)
            .collect();
        for &i in &overlapping {
            used[i] = true;
        }
        let delay = overlapping.first().map(|&i| episodes[i].start - at);
        let accepted = overlapping
            .last()
            .and_then(|&i| episodes[i].end)
            .map(|e| e - at);
        let ok = overlapping.len() == 1
            && delay.is_some_and(|d| d <= 120)
            && accepted.is_some_and(|a| a <= 12 * HOUR);
        passed &= ok;
        let what = if factor >= 1_000.0 {
            "new service".to_string()
        } else {
            format!("level x{factor}")
        };
        detail.push_str(&format!(
            "\n    {what} on {} at {} h: episodes {}, detect {}, accepted after {}{}",
            p.port,
            at / HOUR,
            overlapping.len(),
            delay.map_or("-".into(), |d| format!("{d} s")),
            accepted.map_or("-".into(), |a| format!("{:.1} h", a as f64 / HOUR as f64)),
            if ok { "" } else { "  FAILED" }
        ));
        changes.push(json!({
            "port": p.port, "factor": factor, "at_s": at, "episodes": overlapping.len(),
            "detection_delay_s": delay, "accepted_after_s": accepted, "ok": ok,
        }));
    }
    let false_eps: Vec<&Seen> = episodes
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(e, _)| e)
        .collect();
    let false_day1 = false_eps.iter().filter(|e| e.start < DAY).count();
    let false_later: Vec<&&Seen> = false_eps.iter().filter(|e| e.start >= DAY).collect();
    let cyclic: Vec<u16> = scenario
        .ports
        .iter()
        .filter(|p| p.cyclic)
        .map(|p| p.port)
        .collect();
    let false_cyclic = false_later
        .iter()
        .filter(|e| cyclic.contains(&e.port))
        .count();
    let false_flat = false_later.len() - false_cyclic;
    let port_weeks = scenario.ports.len() as f64 * (scenario.seconds.saturating_sub(DAY)) as f64
        / (7 * DAY) as f64;
    let per_port_week = false_later.len() as f64 / port_weeks.max(1e-9);
    let false_pages: Vec<&(u16, u64)> = pages
        .iter()
        .filter(|(port, since)| {
            !scenario.surges.iter().any(|s| {
                s.port == *port && *since + 15 * MINUTE >= s.start && *since < s.start + s.length
            }) && !scenario.ports.iter().any(|p| {
                p.port == *port
                    && p.level_change
                        .is_some_and(|(at, _)| *since >= at && *since < at + 12 * HOUR)
            })
        })
        .collect();
    let false_pages_day1 = false_pages.iter().filter(|p| p.1 < DAY).count();
    passed &= false_later.is_empty() && false_pages.is_empty();
    let fmt_delays = |d: &[i64]| {
        if d.is_empty() {
            "-".to_string()
        } else {
            format!("{}-{} s", d.iter().min().unwrap(), d.iter().max().unwrap())
        }
    };
    for e in false_eps.iter().filter(|e| e.start >= DAY) {
        detail.push_str(&format!(
            "\n    false episode on {} from {:.2} h to {}",
            e.port,
            e.start as f64 / HOUR as f64,
            e.end.map_or("the end".into(), |end| format!(
                "{:.2} h",
                end as f64 / HOUR as f64
            ))
        ));
    }
    let row = format!(
        "{:<18} {:>5} {:>9} {:>12} {:>12} {:>6} {:>7} {:>6} {:>9} {:>6} {:>5}",
        scenario.name,
        format!("{found}/{}", scenario.surges.len()),
        format!("{required_ok}/{required}"),
        fmt_delays(&delays),
        fmt_delays(&end_delays),
        false_day1,
        false_cyclic,
        false_flat,
        format!("{per_port_week:.2}"),
        format!("{}/{}", false_pages_day1, false_pages.len()),
        if passed { "yes" } else { "NO" }
    ) + &detail;
    let json = json!({
        "name": scenario.name,
        "about": scenario.about,
        "days": scenario.seconds as f64 / DAY as f64,
        "ports": scenario.ports.len(),
        "surges": surges,
        "level_changes": changes,
        "true_surges": scenario.surges.len(),
        "surges_found": found,
        "required_surges": required,
        "required_surges_ok": required_ok,
        "false_episodes_day1": false_day1,
        "false_episodes_after_day1_cyclic": false_cyclic,
        "false_episodes_after_day1_flat": false_flat,
        "false_episodes_per_port_week": per_port_week,
        "port_weeks_after_day1": port_weeks,
        "false_pages": false_pages.len(),
        "false_pages_day1": false_pages_day1,
        "false_episode_list": false_eps.iter().map(|e| json!({"port": e.port, "start_s": e.start, "end_s": e.end})).collect::<Vec<_>>(),
        "passed": passed,
    });
    Outcome {
        name: scenario.name,
        json,
        passed,
        row,
    }
}

/// The total over scenarios (from their JSON): a table row and its JSON. Delays are the
/// range over every surge found; false episodes per port-week are over all port-weeks.
pub fn total(scenarios: &[Value]) -> (String, Value) {
    let sum = |key: &str| -> u64 { scenarios.iter().filter_map(|s| s[key].as_u64()).sum() };
    let delays = |key: &str| -> Vec<i64> {
        scenarios
            .iter()
            .filter_map(|s| s["surges"].as_array())
            .flatten()
            .filter_map(|surge| surge[key].as_i64())
            .collect()
    };
    let range = |d: &[i64]| match (d.iter().min(), d.iter().max()) {
        (Some(min), Some(max)) => format!("{min}-{max} s"),
        _ => "-".into(),
    };
    let (detect, end) = (delays("detection_delay_s"), delays("end_delay_s"));
    let port_weeks: f64 = scenarios
        .iter()
        .filter_map(|s| s["port_weeks_after_day1"].as_f64())
        .sum();
    let false_later =
        sum("false_episodes_after_day1_cyclic") + sum("false_episodes_after_day1_flat");
    let per_port_week = false_later as f64 / port_weeks.max(1e-9);
    let passed = scenarios.iter().all(|s| s["passed"] == true);
    let row = format!(
        "{:<18} {:>5} {:>9} {:>12} {:>12} {:>6} {:>7} {:>6} {:>9} {:>6} {:>5}",
        "TOTAL",
        format!("{}/{}", sum("surges_found"), sum("true_surges")),
        format!("{}/{}", sum("required_surges_ok"), sum("required_surges")),
        range(&detect),
        range(&end),
        sum("false_episodes_day1"),
        sum("false_episodes_after_day1_cyclic"),
        sum("false_episodes_after_day1_flat"),
        format!("{per_port_week:.2}"),
        format!("{}/{}", sum("false_pages_day1"), sum("false_pages")),
        if passed { "yes" } else { "NO" }
    );
    let json = json!({
        "scenarios": scenarios.len(),
        "true_surges": sum("true_surges"),
        "surges_found": sum("surges_found"),
        "required_surges": sum("required_surges"),
        "required_surges_ok": sum("required_surges_ok"),
        "detection_delay_s": {"min": detect.iter().min(), "max": detect.iter().max()},
        "end_delay_s": {"min": end.iter().min(), "max": end.iter().max()},
        "false_episodes_day1": sum("false_episodes_day1"),
        "false_episodes_after_day1_cyclic": sum("false_episodes_after_day1_cyclic"),
        "false_episodes_after_day1_flat": sum("false_episodes_after_day1_flat"),
        "port_weeks_after_day1": port_weeks,
        "false_episodes_per_port_week": per_port_week,
        "false_pages": sum("false_pages"),
        "false_pages_day1": sum("false_pages_day1"),
        "passed": passed,
    });
    (row, json)
}

/// The table header matching [`Outcome::row`].
pub fn header() -> String {
    format!(
        "{:<18} {:>5} {:>9} {:>12} {:>12} {:>6} {:>7} {:>6} {:>9} {:>6} {:>5}\n{}",
        "scenario",
        "found",
        ">=5x ok",
        "detect",
        "end",
        "F day1",
        "F cycl",
        "F flat",
        "F/port-wk",
        "pages",
        "pass",
        "-".repeat(108)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_sums_scenarios_and_spans_their_delays() {
        let a = json!({
            "surges": [{"detection_delay_s": 50, "end_delay_s": 70}],
            "true_surges": 1, "surges_found": 1, "required_surges": 1, "required_surges_ok": 1,
            "false_episodes_day1": 2, "false_episodes_after_day1_cyclic": 0,
            "false_episodes_after_day1_flat": 1, "port_weeks_after_day1": 3.0,
            "false_pages": 0, "false_pages_day1": 0, "passed": true,
        });
        let b = json!({
            "surges": [
                {"detection_delay_s": 15, "end_delay_s": 170},
                {"detection_delay_s": null, "end_delay_s": null},
            ],
            "true_surges": 2, "surges_found": 1, "required_surges": 1, "required_surges_ok": 1,
            "false_episodes_day1": 1, "false_episodes_after_day1_cyclic": 0,
            "false_episodes_after_day1_flat": 0, "port_weeks_after_day1": 1.0,
            "false_pages": 1, "false_pages_day1": 1, "passed": false,
        });
        let (row, total) = total(&[a, b]);
        assert_eq!(total["surges_found"], 2);
        assert_eq!(total["true_surges"], 3);
        assert_eq!(total["false_episodes_day1"], 3);
        assert_eq!(total["false_episodes_per_port_week"], 0.25);
        assert_eq!(total["detection_delay_s"]["min"], 15);
        assert_eq!(total["end_delay_s"]["max"], 170);
        assert_eq!(total["passed"], false);
        assert!(row.starts_with("TOTAL"), "{row}");
        assert!(row.contains("15-50 s") && row.contains("70-170 s") && row.ends_with("NO"));
    }
}
