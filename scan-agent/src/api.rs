//! The JSON API (`/api/v1/ports`, `/api/v1/ports/{port}`): its types (shared with
//! `scan-agent top`, which reads them), the recent per-port history it serves (sparklines,
//! episode starts), the per-port table a poll publishes for it ([`PortTable`]), and the
//! rendering from the detector's view.
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    breadth::BreadthView,
    detector::{Detector, PORTS, PortStatus, StatusView},
    prefixes::{PrefixShare, PrefixView},
};

/// Version of the response layout; bumped when a field changes meaning or goes away
/// (new fields may appear without a bump).
pub const API_VERSION: u32 = 1;
/// How far back the per-port rate history goes (the `top` sparklines).
pub const HISTORY_SECONDS: f64 = 300.0;
/// Most samples kept per port, whatever the poll interval.
const HISTORY_MAX_SAMPLES: usize = 300;

/// `GET /api/v1/ports`: every exported port (watch list plus top-K), highest ratio first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortsResponse {
    pub version: u32,
    /// Agent version (`scan-agent --version`).
    pub agent_version: String,
    /// Detector time of the last poll, UNIX seconds.
    pub time: f64,
    /// Poll interval, seconds: also the spacing of `history` samples.
    pub interval_seconds: f64,
    pub surge_threshold: f64,
    pub warming_up: bool,
    pub warmup_remaining_seconds: f64,
    /// SYNs over all 65,536 ports (kernel cumulative).
    pub syn_total_all_ports: u64,
    /// Active ports not in `ports` (beyond the watch list and top-K).
    pub ports_left_out: usize,
    pub ports: Vec<PortView>,
}

/// One port, as `/api/v1/ports/{port}` returns it and as each entry of `/api/v1/ports`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortView {
    pub port: u16,
    /// SYNs to the port (kernel cumulative).
    pub syn_total: u64,
    /// Short-term SYN/s.
    pub rate: f64,
    /// Learned plain baseline SYN/s (no time of day).
    pub baseline: f64,
    /// Expected SYN/s for this port now (seasonal for busy ports, else the baseline).
    #[serde(default)]
    pub expected: f64,
    /// Where the expectation comes from: warming_up, learning, baseline or seasonal.
    #[serde(default)]
    pub learning: String,
    /// `(rate + floor) / (expected + floor)`.
    pub ratio: f64,
    pub flagged: bool,
    /// Start of the current surge episode (the detector's, with hysteresis), UNIX
    /// seconds; absent when the port is not flagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_start: Option<f64>,
    /// Distinct source addresses over the short window (estimate, exact up to 16);
    /// absent for a port without a sketch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<f64>,
    /// Learned normal of `sources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources_baseline: Option<f64>,
    /// Distinct destination addresses over the short window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<f64>,
    /// Learned normal of `targets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets_baseline: Option<f64>,
    /// While the port is flagged: the source prefixes (/24, /48) with the most sampled
    /// SYNs since it was, most first, at most ten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_prefixes: Vec<PrefixShare>,
    /// SYN/s at the last polls, oldest first, one per `interval_seconds`, up to
    /// [`HISTORY_SECONDS`] back (shorter after a start or when the port just appeared).
    #[serde(default)]
    pub history: Vec<f64>,
}

/// Per-port memory across polls: recent rates (episodes are the detector's).
/// Bounded: only ports exported at some poll are kept, and a port leaves once it is no
/// longer exported and its whole history is zero.
#[derive(Clone, Debug, Default)]
pub struct Recent {
    capacity: usize,
    rates: HashMap<u16, VecDeque<f64>>,
}

impl Recent {
    /// History for [`HISTORY_SECONDS`] at one sample per `interval`.
    pub fn new(interval: std::time::Duration) -> Self {
        let per_poll = interval.as_secs_f64().max(0.001);
        Self {
            capacity: ((HISTORY_SECONDS / per_poll).ceil() as usize).clamp(1, HISTORY_MAX_SAMPLES),
            ..Self::default()
        }
    }

    /// Records one poll: `exported` are the ports with series now, `now` UNIX seconds.
    pub fn record(&mut self, detector: &Detector, exported: &[PortStatus], _now: f64) {
        for status in exported {
            self.rates.entry(status.port).or_default();
        }
        let capacity = self.capacity;
        self.rates.retain(|&port, samples| {
            let rate = exported
                .iter()
                .find(|s| s.port == port)
                .map_or_else(|| detector.status(port).rate, |s| s.rate);
            samples.push_back(rate);
            while samples.len() > capacity {
                samples.pop_front();
            }
            exported.iter().any(|s| s.port == port) || samples.iter().any(|&r| r > 0.0)
        });
    }

    /// The view of one port; `syn_total` from the kernel counters.
    pub fn view(&self, status: &PortStatus, syn_total: u64) -> PortView {
        PortView {
            port: status.port,
            syn_total,
            rate: status.rate,
            baseline: status.baseline,
            expected: status.expected,
            learning: status.learning.name().to_string(),
            ratio: status.ratio,
            flagged: status.flagged,
            episode_start: status.episode_start.map(|t| t.as_secs_f64()),
            sources: None,
            sources_baseline: None,
            targets: None,
            targets_baseline: None,
            top_prefixes: Vec::new(),
            history: self
                .rates
                .get(&status.port)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        }
    }
}

/// Every port's kernel counter, short-term rate and baseline at one poll: what
/// `/api/v1/ports/{port}` needs to answer for a port that is not exported (1.5 MiB).
pub struct PortTable {
    counts: Box<[u64]>,
    rate: Box<[f64]>,
    baseline: Box<[f64]>,
}

impl PortTable {
    fn zeroed() -> Self {
        Self {
            counts: vec![0; PORTS].into_boxed_slice(),
            rate: vec![0.0; PORTS].into_boxed_slice(),
            baseline: vec![0.0; PORTS].into_boxed_slice(),
        }
    }

    /// Kernel cumulative SYNs to `port`.
    pub fn count(&self, port: u16) -> u64 {
        self.counts[usize::from(port)]
    }

    /// SYNs over all ports (wrapping, as the kernel's counters do).
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |s, &v| s.wrapping_add(v))
    }

    /// `port`'s status in `view`, the detector's view of the same poll.
    pub fn status(&self, view: &StatusView, port: u16) -> PortStatus {
        let p = usize::from(port);
        view.status(port, self.rate[p], self.baseline[p])
    }
}

/// Tables kept for reuse: at most [`PortTables::KEEP`] (the published one and the one before),
/// so a poll refills the table of the view before last (which no request holds once the view
/// was replaced and its requests finished) instead of allocating: with all 65,536 ports active
/// two tables (3 MiB) exist, plus one per view a slow request still holds.
#[derive(Default)]
pub struct PortTables {
    tables: VecDeque<Arc<PortTable>>,
}

impl PortTables {
    /// Tables kept.
    pub const KEEP: usize = 2;

    /// A table of `counts` (kernel cumulative SYNs, index = port; missing ports are 0) and the
    /// detector's rates and baselines, in a kept table nobody else holds, or a new one.
    pub fn publish(&mut self, counts: &[u64], detector: &Detector) -> Arc<PortTable> {
        let free = self
            .tables
            .iter_mut()
            .position(|table| Arc::get_mut(table).is_some());
        let mut table = match free.and_then(|at| self.tables.remove(at)) {
            Some(table) => table,
            None => Arc::new(PortTable::zeroed()),
        };
        let fill = Arc::get_mut(&mut table).expect("a new or unshared table");
        let (rate, baseline) = detector.rates();
        let n = counts.len().min(PORTS);
        fill.counts[..n].copy_from_slice(&counts[..n]);
        fill.counts[n..].fill(0);
        fill.rate.copy_from_slice(rate);
        fill.baseline.copy_from_slice(baseline);
        self.tables.push_back(Arc::clone(&table));
        while self.tables.len() > Self::KEEP {
            self.tables.pop_front();
        }
        table
    }
}

/// What the API renders from.
pub struct ApiInput<'a> {
    pub detector: &'a StatusView,
    pub table: &'a PortTable,
    pub breadth: &'a BreadthView,
    pub prefixes: &'a PrefixView,
    pub recent: &'a Recent,
    pub exported: &'a [PortStatus],
    /// Detector time of the last poll, UNIX seconds.
    pub time: f64,
}

impl ApiInput<'_> {
    fn view(&self, status: &PortStatus) -> PortView {
        let mut view = self.recent.view(status, self.table.count(status.port));
        if let Some(b) = self.breadth.get(&status.port) {
            view.sources = Some(b.sources);
            view.sources_baseline = Some(b.sources_baseline);
            view.targets = Some(b.targets);
            view.targets_baseline = Some(b.targets_baseline);
        }
        view.top_prefixes = self.prefixes.get(&status.port).cloned().unwrap_or_default();
        view
    }

    /// `/api/v1/ports`.
    pub fn ports(&self) -> PortsResponse {
        let detector = self.detector;
        let mut ports: Vec<PortView> = self.exported.iter().map(|s| self.view(s)).collect();
        ports.sort_by(|a, b| b.ratio.total_cmp(&a.ratio).then(a.port.cmp(&b.port)));
        let active_exported = self
            .exported
            .iter()
            .filter(|s| s.rate >= crate::detector::ACTIVE_RATE)
            .count();
        PortsResponse {
            version: API_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            time: self.time,
            interval_seconds: detector.config().interval.as_secs_f64(),
            surge_threshold: detector.config().surge_threshold,
            warming_up: detector.warming_up(),
            warmup_remaining_seconds: detector.warmup_remaining().as_secs_f64(),
            syn_total_all_ports: self.table.total(),
            ports_left_out: detector.active_ports().saturating_sub(active_exported),
            ports,
        }
    }

    /// `/api/v1/ports/{port}`: any port, exported or not.
    pub fn port(&self, port: u16) -> PortView {
        self.view(&self.table.status(self.detector, port))
    }
}

/// Parses the `{port}` of `/api/v1/ports/{port}`; the error is the response text.
pub fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>().map_err(|_| {
        format!("'{text}' is not a TCP port: use a number from 0 to 65535, e.g. /api/v1/ports/445")
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::detector::DetectorConfig;

    fn config() -> DetectorConfig {
        DetectorConfig {
            interval: Duration::from_secs(1),
            short_window: Duration::from_secs(5),
            baseline_window: Duration::from_secs(600),
            warmup: Duration::from_secs(10),
            ..DetectorConfig::default()
        }
    }

    #[test]
    fn episode_starts_when_flagged_and_ends_when_not() {
        let mut detector = Detector::new(config());
        let mut recent = Recent::new(Duration::from_secs(1));
        let mut counts = vec![0u64; 65536];
        let mut episode = Vec::new();
        for t in 0..60u64 {
            // 1 SYN/s on 445 for 30 s, then 100 SYN/s for 10 s, then nothing.
            counts[445] += match t {
                0..30 => 1,
                30..40 => 100,
                _ => 0,
            };
            detector.step(Duration::from_secs(1_000 + t), &counts);
            let exported = [detector.status(445)];
            recent.record(&detector, &exported, (1_000 + t) as f64);
            let view = recent.view(&detector.status(445), counts[445]);
            episode.push((view.flagged, view.episode_start));
        }
        let first = episode.iter().position(|e| e.0).expect("445 flagged");
        assert!((30..33).contains(&first), "flagged at {first}");
        // One episode: the start is the first flagged poll for every flagged poll.
        for (flagged, start) in &episode {
            assert_eq!(start.is_some(), *flagged);
            if *flagged {
                assert_eq!(*start, Some((1_000 + first) as f64));
            }
        }
        assert!(!episode.last().unwrap().0, "the surge ends");
        let view = recent.view(&detector.status(445), counts[445]);
        assert_eq!(view.syn_total, 30 + 1000);
        assert_eq!(view.history.len(), 60);
    }

    #[test]
    fn history_is_bounded_and_idle_ports_leave() {
        let mut detector = Detector::new(config());
        let mut recent = Recent::new(Duration::from_secs(100));
        assert_eq!(recent.capacity, 3);
        let mut counts = vec![0u64; 65536];
        counts[80] = 5;
        detector.step(Duration::from_secs(1), &counts);
        for t in 2..10 {
            counts[80] += if t < 4 { 50 } else { 0 };
            detector.step(Duration::from_secs(t * 100), &counts);
            let exported = if t < 4 {
                vec![detector.status(80)]
            } else {
                vec![]
            };
            recent.record(&detector, &exported, t as f64);
            assert!(recent.rates.get(&80).is_none_or(|h| h.len() <= 3));
        }
        assert!(
            !recent.rates.contains_key(&80),
            "idle, unexported port dropped"
        );
    }

    #[test]
    fn port_tables_are_reused_once_no_view_holds_them() {
        let mut detector = Detector::new(config());
        let mut counts = vec![0u64; 65536];
        let mut tables = PortTables::default();
        let mut published = Vec::new();
        for t in 0..20u64 {
            counts[445] += 3;
            counts[usize::from(t as u16 * 3000)] += 1;
            detector.step(Duration::from_secs(1_000 + t), &counts);
            let table = tables.publish(&counts, &detector);
            let view = detector.status_view();
            for port in [0, 445, 3000, 57_000, 65_535] {
                assert_eq!(table.count(port), counts[usize::from(port)]);
                assert_eq!(table.status(&view, port), detector.status(port));
            }
            assert_eq!(table.total(), counts.iter().sum::<u64>());
            published.push(table);
            // What the published view does: the one before is released.
            if published.len() > 1 {
                published.remove(0);
            }
        }
        // Only two tables ever existed: the current one and the one before, refilled.
        let current = Arc::as_ptr(&published[0]);
        counts[80] = 1;
        detector.step(Duration::from_secs(2_000), &counts);
        let next = tables.publish(&counts, &detector);
        assert_ne!(Arc::as_ptr(&next), current);
        drop(published);
        let again = tables.publish(&counts, &detector);
        assert_eq!(
            Arc::as_ptr(&again),
            current,
            "the released table is refilled"
        );
        // A table still held by a slow request is never refilled under it.
        let held = again;
        counts[80] = 5;
        for _ in 0..4 {
            let t = tables.publish(&counts, &detector);
            assert_ne!(Arc::as_ptr(&t), Arc::as_ptr(&held));
        }
        assert_eq!(held.count(80), 1);
        // A shorter counter slice: the rest are 0.
        assert_eq!(tables.publish(&[7; 3], &detector).count(80), 0);
    }

    #[test]
    fn port_parse_errors_name_the_fix() {
        assert_eq!(parse_port("445"), Ok(445));
        assert!(parse_port("70000").unwrap_err().contains("0 to 65535"));
        assert!(parse_port("ssh").unwrap_err().contains("'ssh'"));
    }
}
