//! Breadth of the traffic to each port: distinct sources and distinct targets of its
//! SYNs over the short window, and their learned baselines.
//!
//! Pure and time-injected like the detector. At every poll the caller passes the
//! per-interval sketches the sensor took (and reset) from the kernel; per port the last
//! `ceil(short_window / interval)` interval sketches are kept and merged (register-wise
//! maximum, or union of the exact lists), so `sources` is the distinct count over the
//! last short window of polls, not a sum of per-interval counts (a scanner seen in
//! every interval counts once).
//!
//! Baselines are exponentially weighted averages of those window counts over time,
//! with the detector's own weighting ([`step_weight`], [`debiased_gain`]; time constant
//! `baseline_window`), so they read "distinct sources in a normal short window".
//! The detector's surge guard too: once past the warm-up, a port whose count is at least
//! `surge_threshold` times its baseline (both plus [`FLOOR`]) moves its baseline with
//! the slow gain `1 - exp(-dt / surge_adapt_window)`, so a worm does not teach itself in
//! as the normal number of sources while it spreads.
//!
//! Only ports with a kernel slot are tracked (see `scan_common::SKETCH_SLOTS`); a port
//! whose window is empty has its slot freed (returned by [`Breadth::step`]) and keeps
//! only its baselines, until they decay to nothing.
use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use crate::{
    detector::{DetectorConfig, ZERO_RATE, debiased_gain, step_weight},
    sensor::PortSketches,
    sketch::Distinct,
};

/// Added to counts and baselines in the guard's ratio (and in the shipped
/// `PortScanDistributed` rule): a port with almost no sources is not "surging" on a few.
pub const FLOOR: f64 = 5.0;

/// Sources and targets of one port, as the metrics and the API show them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BreadthStatus {
    /// Distinct source addresses over the short window.
    pub sources: f64,
    /// Distinct destination addresses over the short window.
    pub targets: f64,
    /// Learned normal of `sources`.
    pub sources_baseline: f64,
    /// Learned normal of `targets`.
    pub targets_baseline: f64,
}

/// Tracked ports' statuses (see [`Breadth::view`]).
pub type BreadthView = HashMap<u16, BreadthStatus>;

#[derive(Clone, Debug, Default)]
struct PortBreadth {
    /// The last interval sketches, oldest first: (sources, targets).
    intervals: VecDeque<(Distinct, Distinct)>,
    status: BreadthStatus,
}

/// Per-port distinct sources and targets over windows; see the module docs.
/// `Clone` so that each poll can publish an immutable copy for HTTP.
#[derive(Clone, Debug)]
pub struct Breadth {
    window_intervals: usize,
    baseline_window: Duration,
    surge_adapt_window: Duration,
    surge_threshold: f64,
    warmup: Duration,
    /// Accepted history (sum of step lengths), for the warm-up.
    history: Duration,
    last_now: Option<Duration>,
    baseline_weight: f64,
    ports: HashMap<u16, PortBreadth>,
}

impl Breadth {
    /// Windows from the detector's settings: the short window in polls, the baseline
    /// time constant.
    pub fn new(config: &DetectorConfig) -> Self {
        let interval = config.interval.as_secs_f64().max(1e-3);
        let window_intervals =
            ((config.short_window.as_secs_f64() / interval).ceil() as usize).clamp(1, 1024);
        Self {
            window_intervals,
            baseline_window: config.baseline_window,
            surge_adapt_window: config.surge_adapt_window,
            surge_threshold: config.surge_threshold,
            warmup: config.warmup,
            history: Duration::ZERO,
            last_now: None,
            baseline_weight: 0.0,
            ports: HashMap::new(),
        }
    }

    /// Polls merged into the short window.
    pub fn window_intervals(&self) -> usize {
        self.window_intervals
    }

    /// One poll at `now` with the sketches taken since the previous one. Returns the
    /// ports whose window is now empty: the caller frees their kernel slots.
    pub fn step(&mut self, now: Duration, taken: Vec<PortSketches>) -> Vec<u16> {
        let dt = match self.last_now {
            Some(last) if now > last => (now - last).as_secs_f64(),
            // First poll or a clock step back: windows move, baselines do not.
            _ => 0.0,
        };
        self.last_now = Some(now);
        let gain = if dt > 0.0 {
            let (weight, gain) =
                debiased_gain(self.baseline_weight, step_weight(dt, self.baseline_window));
            self.baseline_weight = weight;
            gain
        } else {
            0.0
        };
        self.history += Duration::from_secs_f64(dt);
        let guard_gain = if self.history >= self.warmup {
            step_weight(dt, self.surge_adapt_window).min(gain)
        } else {
            gain
        };
        let threshold = self.surge_threshold;
        let learn = |value: f64, baseline: &mut f64| {
            let surging = (value + FLOOR) / (*baseline + FLOOR) >= threshold;
            let gain = if surging { guard_gain } else { gain };
            *baseline += gain * (value - *baseline);
        };
        let mut taken: HashMap<u16, (Distinct, Distinct)> = taken
            .into_iter()
            .map(|p| (p.port, (p.sources, p.targets)))
            .collect();
        for port in taken.keys() {
            self.ports.entry(*port).or_default();
        }
        let window = self.window_intervals;
        let mut idle = Vec::new();
        self.ports.retain(|&port, entry| {
            let interval = taken.remove(&port).unwrap_or_default();
            entry.intervals.push_back(interval);
            while entry.intervals.len() > window {
                entry.intervals.pop_front();
            }
            let (mut sources, mut targets) = (Distinct::default(), Distinct::default());
            for (s, t) in &entry.intervals {
                sources.merge(s);
                targets.merge(t);
            }
            let status = &mut entry.status;
            status.sources = sources.estimate();
            status.targets = targets.estimate();
            learn(status.sources, &mut status.sources_baseline);
            learn(status.targets, &mut status.targets_baseline);
            let empty = sources.is_empty() && targets.is_empty();
            if empty && entry.intervals.len() == window {
                idle.push(port);
                entry.intervals.clear();
            }
            !(empty && status.sources_baseline < ZERO_RATE && status.targets_baseline < ZERO_RATE)
        });
        idle.sort_unstable();
        idle
    }

    /// A port's breadth; `None` for a port never sketched (or forgotten after idling).
    pub fn status(&self, port: u16) -> Option<BreadthStatus> {
        self.ports.get(&port).map(|p| p.status)
    }

    /// The union of a port's interval sketches over the short window: (sources, targets).
    pub fn window(&self, port: u16) -> Option<(Distinct, Distinct)> {
        let entry = self.ports.get(&port)?;
        let (mut sources, mut targets) = (Distinct::default(), Distinct::default());
        for (s, t) in &entry.intervals {
            sources.merge(s);
            targets.merge(t);
        }
        Some((sources, targets))
    }

    /// Every tracked port's status: what the poll publishes for HTTP (small, unlike
    /// the interval sketches).
    pub fn view(&self) -> BreadthView {
        self.ports
            .iter()
            .map(|(&port, p)| (port, p.status))
            .collect()
    }

    /// Ports tracked (with a window or a baseline).
    pub fn tracked_ports(&self) -> usize {
        self.ports.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scan_common::{hash_ipv4, mix64};

    fn config() -> DetectorConfig {
        DetectorConfig {
            interval: Duration::from_secs(5),
            short_window: Duration::from_secs(60),
            baseline_window: Duration::from_secs(3600),
            ..DetectorConfig::default()
        }
    }

    fn sketch(addresses: impl IntoIterator<Item = u32>) -> Distinct {
        let mut d = Distinct::default();
        for a in addresses {
            d.insert_hash(hash_ipv4(a));
        }
        d
    }

    fn interval(port: u16, sources: std::ops::Range<u32>, targets: u32) -> PortSketches {
        PortSketches {
            port,
            sources: sketch(sources),
            targets: sketch((0..targets).map(|t| mix64(u64::from(t)) as u32)),
        }
    }

    #[test]
    fn window_is_a_union_of_intervals_not_a_sum() {
        let mut b = Breadth::new(&config());
        assert_eq!(b.window_intervals(), 12);
        // The same 5 sources in every interval: 5, not 5 per interval.
        for k in 0..12u64 {
            assert!(
                b.step(Duration::from_secs(5 * k), vec![interval(445, 0..5, 1)])
                    .is_empty()
            );
        }
        let s = b.status(445).unwrap();
        assert_eq!((s.sources, s.targets), (5.0, 1.0));
        // 3 new sources per interval: after 4 intervals 5 + 12 = 17 distinct (beyond the list).
        for k in 12..16u32 {
            b.step(
                Duration::from_secs(5 * u64::from(k)),
                vec![interval(445, 100 + 3 * k..103 + 3 * k, 1)],
            );
        }
        assert_eq!(b.status(445).unwrap().sources.round(), 17.0);
        // Quiet for a whole window: empty, the slot is freed once, the baseline stays.
        let mut freed = Vec::new();
        for k in 16..29u64 {
            freed.extend(b.step(Duration::from_secs(5 * k), vec![]));
        }
        assert_eq!(freed, vec![445]);
        let s = b.status(445).unwrap();
        assert_eq!((s.sources, s.targets), (0.0, 0.0));
        assert!(s.sources_baseline > 4.0, "{s:?}");
        assert_eq!(b.status(80), None);
    }

    #[test]
    fn baseline_learns_the_normal_and_a_surge_stands_out() {
        let mut b = Breadth::new(&config());
        // Two hours of 3 sources per window, then a window of 500.
        let mut t = 0;
        for _ in 0..1440 {
            b.step(Duration::from_secs(t), vec![interval(445, 0..3, 2)]);
            t += 5;
        }
        let normal = b.status(445).unwrap();
        assert!((normal.sources_baseline - 3.0).abs() < 1e-6, "{normal:?}");
        assert!((normal.targets_baseline - 2.0).abs() < 1e-6, "{normal:?}");
        for k in 0..12u32 {
            b.step(
                Duration::from_secs(t),
                vec![interval(445, 1000 + 50 * k..1050 + 50 * k, 2)],
            );
            t += 5;
        }
        let surge = b.status(445).unwrap();
        assert!((surge.sources / 600.0 - 1.0).abs() < 0.05, "{surge:?}");
        assert!(surge.sources_baseline < 10.0, "{surge:?}");
        assert_eq!(surge.targets, 2.0);
        // An hour more of it: the guard keeps the baseline far below the surge (the
        // ordinary one-hour learning would have taken it past 350).
        for k in 12..732u32 {
            b.step(
                Duration::from_secs(t),
                vec![interval(445, 1000 + 50 * k..1050 + 50 * k, 2)],
            );
            t += 5;
        }
        let later = b.status(445).unwrap();
        assert!(later.sources_baseline < 80.0, "{later:?}");
        assert!((later.targets_baseline - 2.0).abs() < 1e-6, "{later:?}");
    }
}
