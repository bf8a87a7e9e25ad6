//! Prometheus exposition. The counters exported are the kernel's cumulative values.
//! Prefixes: `scan_` for what the sensor observes about traffic, `scan_agent_` for the
//! agent's own health. Per-port series are bounded: the watch list plus the top-K
//! ports by surge ratio, each held for `--export-hold` after it was last in that set.
//!
//! Each poll captures what it exports ([`Metrics::exposition`]: cheap, and the export
//! hold advances there, at every poll); the text is rendered only when a scrape asks
//! for it, once per poll ([`Exposition::text`]), so polls no one scrapes cost no render.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bytes::Bytes;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use scan_common::{ClassCounts, PacketClass};

use crate::{
    breadth::Breadth,
    detector::{ACTIVE_RATE, Detector, LearningState, PortStatus},
    sensor::Attachment,
};

pub struct Metrics {
    /// Shared with every [`Exposition`]: a render sets them and encodes under this lock.
    series: Arc<Mutex<Series>>,
    pub poll_duration: Histogram,
    pub poll_errors: IntCounter,
    pub state_save_errors: IntCounter,
    pub state_restore_failures: IntCounter,
    pub state_file_bytes: IntGauge,
    pub counter_resets: IntCounter,
    pub reattaches: IntCounter,
    pub syns_without_slot: IntCounter,
    pub clock_steps: IntCounter,
    /// HTTP connections closed to make room under the connection cap.
    pub http_evicted: IntCounter,
    /// HTTP connections refused because every open one was busy with a request.
    pub http_refused: IntCounter,
    /// Port -> detector time it was last in the watch list or the top set.
    held: HashMap<u16, Duration>,
}

/// The registry, and the series whose values are a poll's ([`PollValues`]): set from
/// the poll being rendered.
struct Series {
    registry: Registry,
    syn_total: IntCounterVec,
    syn_rate: GaugeVec,
    baseline: GaugeVec,
    ratio: GaugeVec,
    flagged: IntGaugeVec,
    expected: GaugeVec,
    episode_start: GaugeVec,
    learning: IntGaugeVec,
    profiled_ports: IntGauge,
    sources: GaugeVec,
    sources_baseline: GaugeVec,
    targets: GaugeVec,
    targets_baseline: GaugeVec,
    sketched_ports: IntGauge,
    threshold: Gauge,
    packets: IntCounterVec,
    packet_flags: IntCounterVec,
    attached: IntGaugeVec,
    last_poll: Gauge,
    warming_up: IntGauge,
    warmup_remaining: Gauge,
    ports_active: IntGauge,
    ports_exported: IntGauge,
    ports_left_out: IntGauge,
    render_duration: Histogram,
}

/// What one scrape renders: fresh kernel counters plus the detector's view.
pub struct Snapshot<'a> {
    pub ports: &'a [u64],
    /// Class counters per attached interface.
    pub classes: &'a [(String, ClassCounts)],
    pub detector: &'a Detector,
    /// Distinct sources and targets per port (absent for a port without a sketch).
    pub breadth: &'a Breadth,
    pub attachments: &'a [Attachment],
    /// `--iface` values: names and patterns.
    pub configured: &'a [String],
    pub watch_ports: &'a [u16],
    pub top_ports: usize,
    pub export_hold: Duration,
    /// Detector time of this poll (for `export_hold`).
    pub now: Duration,
    /// UNIX time of this poll, seconds (`scan_agent_last_poll_timestamp_seconds`).
    pub last_poll: f64,
}

/// What a poll exports, captured at the poll: a later render shows that poll although
/// the detector, the counters and the attachments have moved on.
struct PollValues {
    exported: Vec<ExportedPort>,
    sketched_ports: usize,
    classes: Vec<(String, ClassCounts)>,
    /// (interface, mode, hook, value) of every `scan_agent_attached` series.
    attached: Vec<(String, &'static str, &'static str, i64)>,
    threshold: f64,
    profiled_ports: usize,
    warming_up: bool,
    warmup_remaining: f64,
    active_ports: usize,
    last_poll: f64,
}

struct ExportedPort {
    status: PortStatus,
    /// The kernel's cumulative SYNs to the port.
    syns: u64,
    breadth: Option<crate::breadth::BreadthStatus>,
}

/// One poll's exposition: rendered by the first scrape that asks for it, then served as
/// is until the next poll's.
pub struct Exposition {
    values: PollValues,
    series: Arc<Mutex<Series>>,
    text: OnceLock<Bytes>,
}

impl Exposition {
    /// The text exposition of this poll, rendered at the first call.
    pub fn text(&self) -> Bytes {
        self.text
            .get_or_init(|| render(&self.series, &self.values).into())
            .clone()
    }
}

/// Packet classes counted once per packet: they sum to the packets seen.
const OUTCOMES: [PacketClass; 7] = PacketClass::OUTCOMES;
/// Packet classes counted on the way through (any number per packet).
const FLAGS: [PacketClass; 5] = [
    PacketClass::Vlan,
    PacketClass::Pppoe,
    PacketClass::Ipv4,
    PacketClass::Ipv6,
    PacketClass::Syn,
];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let port = &["port"];
        let series = Series {
            syn_total: IntCounterVec::new(
                Opts::new(
                    "scan_syn_packets_total",
                    "TCP SYNs (SYN set, ACK clear) to this destination port, as counted by the kernel",
                ),
                port,
            )?,
            syn_rate: GaugeVec::new(
                Opts::new("scan_syn_rate", "SYN/s to this port over the short window"),
                port,
            )?,
            baseline: GaugeVec::new(
                Opts::new(
                    "scan_syn_baseline_rate",
                    "Learned normal SYN/s to this port",
                ),
                port,
            )?,
            ratio: GaugeVec::new(
                Opts::new(
                    "scan_surge_ratio",
                    "(rate + floor) / (expected + floor): how far above normal for this port at this time it is now",
                ),
                port,
            )?,
            flagged: IntGaugeVec::new(
                Opts::new(
                    "scan_surge_flagged",
                    "1 while the port is in a surge episode: entered when the ratio reaches the threshold after warm-up, left when it is below the exit level (halfway between 1 and the threshold) and the episode has lasted two short windows",
                ),
                port,
            )?,
            expected: GaugeVec::new(
                Opts::new(
                    "scan_syn_expected_rate",
                    "Expected SYN/s to this port now: from its seasonal profile (time of day, day of week) when scan_port_learning_state{state=\"seasonal\"} is 1, else the learned baseline",
                ),
                port,
            )?,
            episode_start: GaugeVec::new(
                Opts::new(
                    "scan_surge_started_timestamp_seconds",
                    "UNIX time at which the port's current surge episode started (only ports in an episode)",
                ),
                port,
            )?,
            learning: IntGaugeVec::new(
                Opts::new(
                    "scan_port_learning_state",
                    "Where the port's expectation comes from, 1 for the current state: warming_up (agent warm-up, nothing flagged), learning (busy port whose daily profile is not usable yet: expectation is the plain baseline), baseline (quiet port: plain baseline), seasonal (profile)",
                ),
                &["port", "state"],
            )?,
            profiled_ports: IntGauge::with_opts(Opts::new(
                "scan_agent_profiled_ports",
                "Ports with a seasonal profile (learning or in use); at most 512",
            ))?,
            sources: GaugeVec::new(
                Opts::new(
                    "scan_syn_sources",
                    "Distinct source addresses of the SYNs to this port over the short window (estimate; exact up to 16)",
                ),
                port,
            )?,
            sources_baseline: GaugeVec::new(
                Opts::new(
                    "scan_syn_sources_baseline",
                    "Learned normal of scan_syn_sources for this port",
                ),
                port,
            )?,
            targets: GaugeVec::new(
                Opts::new(
                    "scan_syn_targets",
                    "Distinct destination addresses of the SYNs to this port over the short window (estimate; exact up to 16)",
                ),
                port,
            )?,
            targets_baseline: GaugeVec::new(
                Opts::new(
                    "scan_syn_targets_baseline",
                    "Learned normal of scan_syn_targets for this port",
                ),
                port,
            )?,
            sketched_ports: IntGauge::with_opts(Opts::new(
                "scan_agent_sketched_ports",
                "Ports with distinct-address sketches (kernel slots in use or baselines kept)",
            ))?,
            threshold: Gauge::with_opts(Opts::new(
                "scan_surge_threshold",
                "Configured surge ratio threshold",
            ))?,
            packets: IntCounterVec::new(
                Opts::new(
                    "scan_packets_total",
                    "Packets seen by the program on this interface, by outcome (exactly one per packet: the outcomes sum to the packets seen)",
                ),
                &["interface", "outcome"],
            )?,
            packet_flags: IntCounterVec::new(
                Opts::new(
                    "scan_packet_flags_total",
                    "Packets on this interface that carried a VLAN tag, were in a PPPoE session, were IPv4 or IPv6, or were a TCP SYN (counted in scan_syn_packets_total by port, over every interface)",
                ),
                &["interface", "flag"],
            )?,
            attached: IntGaugeVec::new(
                Opts::new(
                    "scan_agent_attached",
                    "1 for each interface the program is attached to, with its hook (xdp, \
                     tcx) and mode (native, skb, tcx); 0 (mode none) for a configured \
                     interface it is not attached to",
                ),
                &["interface", "mode", "hook"],
            )?,
            last_poll: Gauge::with_opts(Opts::new(
                "scan_agent_last_poll_timestamp_seconds",
                "UNIX time of the last successful poll",
            ))?,
            warming_up: IntGauge::with_opts(Opts::new(
                "scan_agent_warming_up",
                "1 while the detector is still learning baselines (no port is flagged)",
            ))?,
            warmup_remaining: Gauge::with_opts(Opts::new(
                "scan_agent_warmup_remaining_seconds",
                "Seconds of warm-up left",
            ))?,
            ports_active: IntGauge::with_opts(Opts::new(
                "scan_agent_ports_active",
                "Ports with a non-negligible short-term SYN rate",
            ))?,
            ports_exported: IntGauge::with_opts(Opts::new(
                "scan_agent_ports_exported",
                "Ports with per-port series in this scrape",
            ))?,
            ports_left_out: IntGauge::with_opts(Opts::new(
                "scan_agent_ports_left_out",
                "Active ports not exported (beyond the watch list, top-K and hold); see scan_packet_flags_total{flag=\"syn\"}",
            ))?,
            render_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "scan_agent_render_duration_seconds",
                    "Time to render a poll's exposition, at the first scrape after the poll (served as is until the next poll; a poll no one scrapes is not rendered)",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]),
            )?,
            registry,
        };
        let m = Self {
            poll_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "scan_agent_poll_duration_seconds",
                    "Time to read all counters and step the detector",
                )
                // 0.002: the detector's budget for a step with all 65,536 ports active.
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                ]),
            )?,
            poll_errors: IntCounter::with_opts(Opts::new(
                "scan_agent_poll_errors_total",
                "Failed reads of the kernel maps",
            ))?,
            state_save_errors: IntCounter::with_opts(Opts::new(
                "scan_agent_state_save_errors_total",
                "Failed writes of the state file",
            ))?,
            state_restore_failures: IntCounter::with_opts(Opts::new(
                "scan_agent_state_restore_failures_total",
                "State files that could not be loaded at start (moved aside; learning started afresh)",
            ))?,
            state_file_bytes: IntGauge::with_opts(Opts::new(
                "scan_agent_state_file_bytes",
                "Size of the state file at its last successful save",
            ))?,
            syns_without_slot: IntCounter::with_opts(Opts::new(
                "scan_agent_syns_without_slot_total",
                "SYNs the program saw but could not count by port (their CPU id has no slice in the port map); expected 0",
            ))?,
            reattaches: IntCounter::with_opts(Opts::new(
                "scan_agent_reattaches_total",
                "Attaches after the start: interfaces created, or deleted and recreated, while running",
            ))?,
            counter_resets: IntCounter::with_opts(Opts::new(
                "scan_agent_count_resets_total",
                "Port counters found lower than at the previous reading (maps recreated, e.g. pins removed), summed over ports",
            ))?,
            clock_steps: IntCounter::with_opts(Opts::new(
                "scan_agent_clock_steps_total",
                "Readings whose time was before the previous one (clock stepped back); nothing is learned from them",
            ))?,
            http_evicted: IntCounter::with_opts(Opts::new(
                "scan_agent_http_connections_evicted_total",
                "HTTP connections closed (the longest idle first) to make room for a new one at the connection cap",
            ))?,
            http_refused: IntCounter::with_opts(Opts::new(
                "scan_agent_http_connections_refused_total",
                "HTTP connections refused at the connection cap because every open one was busy",
            ))?,
            series: Arc::new(Mutex::new(series)),
            held: HashMap::new(),
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "scan_agent_build_info",
                "Agent version, git revision, compiler and aya versions; always 1",
            ),
            &["version", "revision", "rustc_version", "aya_version"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("SCAN_GIT_REVISION"),
                env!("SCAN_RUSTC_VERSION"),
                env!("SCAN_AYA_VERSION"),
            ])
            .set(1);
        let series = lock(&m.series);
        let r = &series.registry;
        r.register(Box::new(build_info))?;
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        r.register(Box::new(series.syn_total.clone()))?;
        r.register(Box::new(series.syn_rate.clone()))?;
        r.register(Box::new(series.baseline.clone()))?;
        r.register(Box::new(series.ratio.clone()))?;
        r.register(Box::new(series.flagged.clone()))?;
        r.register(Box::new(series.expected.clone()))?;
        r.register(Box::new(series.episode_start.clone()))?;
        r.register(Box::new(series.learning.clone()))?;
        r.register(Box::new(series.profiled_ports.clone()))?;
        r.register(Box::new(series.sources.clone()))?;
        r.register(Box::new(series.sources_baseline.clone()))?;
        r.register(Box::new(series.targets.clone()))?;
        r.register(Box::new(series.targets_baseline.clone()))?;
        r.register(Box::new(series.sketched_ports.clone()))?;
        r.register(Box::new(series.threshold.clone()))?;
        r.register(Box::new(series.packets.clone()))?;
        r.register(Box::new(series.packet_flags.clone()))?;
        r.register(Box::new(series.attached.clone()))?;
        r.register(Box::new(m.poll_duration.clone()))?;
        r.register(Box::new(m.poll_errors.clone()))?;
        r.register(Box::new(series.last_poll.clone()))?;
        r.register(Box::new(series.warming_up.clone()))?;
        r.register(Box::new(series.warmup_remaining.clone()))?;
        r.register(Box::new(series.ports_active.clone()))?;
        r.register(Box::new(series.ports_exported.clone()))?;
        r.register(Box::new(series.ports_left_out.clone()))?;
        r.register(Box::new(m.state_save_errors.clone()))?;
        r.register(Box::new(series.render_duration.clone()))?;
        r.register(Box::new(m.http_evicted.clone()))?;
        r.register(Box::new(m.http_refused.clone()))?;
        r.register(Box::new(m.state_restore_failures.clone()))?;
        r.register(Box::new(m.state_file_bytes.clone()))?;
        r.register(Box::new(m.counter_resets.clone()))?;
        r.register(Box::new(m.reattaches.clone()))?;
        r.register(Box::new(m.syns_without_slot.clone()))?;
        r.register(Box::new(m.clock_steps.clone()))?;
        drop(series);
        Ok(m)
    }

    /// Ports that get per-port series, by port number: the watch list, plus the
    /// top-K active ports by ratio.
    pub fn exported_ports(detector: &Detector, watch: &[u16], top: usize) -> Vec<PortStatus> {
        let mut ports: Vec<PortStatus> = detector.top_ports(top);
        ports.extend(watch.iter().map(|&port| detector.status(port)));
        ports.sort_unstable_by_key(|status| status.port);
        ports.dedup_by_key(|status| status.port);
        ports
    }

    /// [`Self::exported_ports`] plus the ports that were in that set within
    /// `hold` before `now`; forgets the ports held longer.
    fn exported_with_hold(&mut self, snapshot: &Snapshot<'_>) -> Vec<PortStatus> {
        let detector = snapshot.detector;
        let mut ports = Self::exported_ports(detector, snapshot.watch_ports, snapshot.top_ports);
        for status in &ports {
            self.held.insert(status.port, snapshot.now);
        }
        let (now, hold) = (snapshot.now, snapshot.export_hold);
        self.held
            .retain(|_, last| now.saturating_sub(*last) <= hold);
        ports.extend(self.held.keys().map(|&port| detector.status(port)));
        ports.sort_unstable_by_key(|status| status.port);
        ports.dedup_by_key(|status| status.port);
        ports
    }

    /// What this poll exports, captured for a render at a scrape; advances the export
    /// hold, so a poll no one scrapes still counts as the last time a port was in the
    /// exported set.
    pub fn exposition(&mut self, snapshot: &Snapshot<'_>) -> Exposition {
        Exposition {
            values: self.poll_values(snapshot),
            series: Arc::clone(&self.series),
            text: OnceLock::new(),
        }
    }

    /// [`Self::exposition`] rendered now: sets every series from `snapshot` and renders
    /// the text exposition format.
    pub fn render(&mut self, snapshot: &Snapshot<'_>) -> String {
        let values = self.poll_values(snapshot);
        render(&self.series, &values)
    }

    /// Renders so far (each observed in `scan_agent_render_duration_seconds`).
    pub fn renders(&self) -> u64 {
        lock(&self.series).render_duration.get_sample_count()
    }

    fn poll_values(&mut self, snapshot: &Snapshot<'_>) -> PollValues {
        let detector = snapshot.detector;
        let exported = self
            .exported_with_hold(snapshot)
            .into_iter()
            .map(|status| ExportedPort {
                status,
                syns: snapshot
                    .ports
                    .get(usize::from(status.port))
                    .copied()
                    .unwrap_or(0),
                breadth: snapshot.breadth.status(status.port),
            })
            .collect();
        let mut attached: Vec<_> = snapshot
            .attachments
            .iter()
            .map(|a| {
                (
                    a.interface.clone(),
                    a.mode.name(),
                    a.hook_name(),
                    a.interface_exists().into(),
                )
            })
            .collect();
        // A configured name (not a pattern) with no program on it: 0, so the alert
        // fires per interface.
        for name in snapshot.configured {
            if !crate::interfaces::is_pattern(name)
                && !snapshot.attachments.iter().any(|a| a.interface == *name)
            {
                attached.push((name.clone(), "none", "none", 0));
            }
        }
        PollValues {
            exported,
            sketched_ports: snapshot.breadth.tracked_ports(),
            classes: snapshot.classes.to_vec(),
            attached,
            threshold: detector.config().surge_threshold,
            profiled_ports: detector.profiled_ports(),
            warming_up: detector.warming_up(),
            warmup_remaining: detector.warmup_remaining().as_secs_f64(),
            active_ports: detector.active_ports(),
            last_poll: snapshot.last_poll,
        }
    }
}

fn lock(series: &Mutex<Series>) -> std::sync::MutexGuard<'_, Series> {
    // A panic while rendering is a bug; the series are set afresh at every render.
    series
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sets every series from `values` and renders the text exposition format.
fn render(series: &Mutex<Series>, values: &PollValues) -> String {
    let series = lock(series);
    let timer = series.render_duration.start_timer();
    series.set(values);
    let mut out = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail on I/O; a metric-family error is a bug.
    if let Err(e) = TextEncoder::new().encode(&series.registry.gather(), &mut out) {
        log::error!("rendering metrics: {e}");
    }
    // Observed after the render: it shows in the next render's exposition.
    timer.observe_duration();
    String::from_utf8(out).unwrap_or_default()
}

impl Series {
    fn set(&self, values: &PollValues) {
        for vec in [
            &self.syn_rate,
            &self.baseline,
            &self.ratio,
            &self.expected,
            &self.episode_start,
            &self.sources,
            &self.sources_baseline,
            &self.targets,
            &self.targets_baseline,
        ] {
            vec.reset();
        }
        self.syn_total.reset();
        self.flagged.reset();
        self.learning.reset();
        for port in &values.exported {
            let status = &port.status;
            let label = status.port.to_string();
            let labels = [label.as_str()];
            self.syn_total.with_label_values(&labels).inc_by(port.syns);
            self.syn_rate.with_label_values(&labels).set(status.rate);
            self.baseline
                .with_label_values(&labels)
                .set(status.baseline);
            self.ratio.with_label_values(&labels).set(status.ratio);
            self.flagged
                .with_label_values(&labels)
                .set(status.flagged.into());
            self.expected
                .with_label_values(&labels)
                .set(status.expected);
            if let Some(start) = status.episode_start {
                self.episode_start
                    .with_label_values(&labels)
                    .set(start.as_secs_f64());
            }
            for state in LearningState::ALL {
                self.learning
                    .with_label_values(&[label.as_str(), state.name()])
                    .set((status.learning == state).into());
            }
            if let Some(breadth) = &port.breadth {
                self.sources.with_label_values(&labels).set(breadth.sources);
                self.sources_baseline
                    .with_label_values(&labels)
                    .set(breadth.sources_baseline);
                self.targets.with_label_values(&labels).set(breadth.targets);
                self.targets_baseline
                    .with_label_values(&labels)
                    .set(breadth.targets_baseline);
            }
        }
        self.sketched_ports.set(values.sketched_ports as i64);
        self.packets.reset();
        self.packet_flags.reset();
        for (interface, classes) in &values.classes {
            for class in OUTCOMES {
                self.packets
                    .with_label_values(&[interface.as_str(), class.name()])
                    .inc_by(classes.get(class));
            }
            for class in FLAGS {
                self.packet_flags
                    .with_label_values(&[interface.as_str(), class.name()])
                    .inc_by(classes.get(class));
            }
        }
        self.attached.reset();
        for (interface, mode, hook, value) in &values.attached {
            self.attached
                .with_label_values(&[interface.as_str(), mode, hook])
                .set(*value);
        }
        self.threshold.set(values.threshold);
        self.profiled_ports.set(values.profiled_ports as i64);
        self.warming_up.set(values.warming_up.into());
        self.warmup_remaining.set(values.warmup_remaining);
        self.last_poll.set(values.last_poll);
        let active_exported = values
            .exported
            .iter()
            .filter(|p| p.status.rate >= ACTIVE_RATE)
            .count();
        self.ports_active.set(values.active_ports as i64);
        self.ports_exported.set(values.exported.len() as i64);
        self.ports_left_out
            .set(values.active_ports.saturating_sub(active_exported) as i64);
    }
}

#[cfg(test)]
mod tests {
    use scan_common::PORTS;

    use super::*;
    use crate::detector::DetectorConfig;

    fn render(metrics: &mut Metrics, detector: &Detector, now: u64) -> String {
        render_with(
            metrics,
            detector,
            &crate::breadth::Breadth::new(detector.config()),
            now,
        )
    }

    fn render_with(
        metrics: &mut Metrics,
        detector: &Detector,
        breadth: &crate::breadth::Breadth,
        now: u64,
    ) -> String {
        let mut classes = ClassCounts::default();
        classes.0[PacketClass::Seen as usize] = 10;
        classes.0[PacketClass::Tcp as usize] = 7;
        classes.0[PacketClass::NonIp as usize] = 3;
        classes.0[PacketClass::Ipv4 as usize] = 7;
        classes.0[PacketClass::Syn as usize] = 5;
        metrics.render(&snapshot(
            detector,
            breadth,
            &[("eth0".to_string(), classes)],
            &vec![0; PORTS as usize],
            now,
        ))
    }

    /// A poll at detector time `now` (watch list 22, top 1, a hold of 100 s).
    fn snapshot<'a>(
        detector: &'a Detector,
        breadth: &'a crate::breadth::Breadth,
        classes: &'a [(String, ClassCounts)],
        ports: &'a [u64],
        now: u64,
    ) -> Snapshot<'a> {
        Snapshot {
            ports,
            classes,
            detector,
            breadth,
            attachments: &[],
            configured: &[],
            watch_ports: &[22],
            top_ports: 1,
            export_hold: Duration::from_secs(100),
            now: Duration::from_secs(now),
            last_poll: 1_700_000_000.0 + now as f64,
        }
    }

    fn exported(text: &str) -> Vec<u16> {
        text.lines()
            .filter_map(|l| l.strip_prefix("scan_surge_ratio{port=\""))
            .filter_map(|l| l.split('"').next()?.parse().ok())
            .collect()
    }

    #[test]
    fn outcomes_and_flags_are_two_metrics_with_no_duplicate_total() {
        let mut metrics = Metrics::new().unwrap();
        let detector = Detector::new(DetectorConfig::default());
        let text = render(&mut metrics, &detector, 0);
        let outcomes: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("scan_packets_total{"))
            .collect();
        assert_eq!(outcomes.len(), OUTCOMES.len(), "{text}");
        assert!(text.contains("scan_packets_total{interface=\"eth0\",outcome=\"tcp\"} 7"));
        assert!(text.contains("scan_packets_total{interface=\"eth0\",outcome=\"non_ip\"} 3"));
        assert!(!text.contains("outcome=\"seen\""), "{text}");
        assert!(text.contains("scan_packet_flags_total{flag=\"syn\",interface=\"eth0\"} 5"));
        assert!(text.contains("scan_packet_flags_total{flag=\"ipv4\",interface=\"eth0\"} 7"));
        assert!(text.contains("scan_packet_flags_total{flag=\"pppoe\",interface=\"eth0\"} 0"));
        assert!(!text.contains("all_ports"), "{text}");
        assert!(
            text.contains("scan_agent_build_info{aya_version=\""),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }

    #[test]
    fn a_port_stays_exported_for_the_hold_after_leaving_the_top_set() {
        let config = DetectorConfig::default();
        let interval = config.interval.as_secs();
        let mut detector = Detector::new(config);
        let mut metrics = Metrics::new().unwrap();
        let mut ports = vec![0u64; PORTS as usize];
        let mut t = 0;
        let step = |detector: &mut Detector, ports: &[u64], t: &mut u64| {
            *t += interval;
            detector.step(Duration::from_secs(*t), ports);
        };
        step(&mut detector, &ports, &mut t);
        // 7000 leads the top set (K = 1) ...
        for _ in 0..5 {
            ports[7000] += 100;
            step(&mut detector, &ports, &mut t);
        }
        assert_eq!(
            exported(&render(&mut metrics, &detector, t)),
            vec![22, 7000]
        );
        let last_in_top = t;
        // ... then 8000 takes the lead: 7000 stays exported for the hold (100 s) ...
        for _ in 0..5 {
            ports[8000] += 10_000;
            step(&mut detector, &ports, &mut t);
        }
        assert_eq!(detector.top_ports(1)[0].port, 8000);
        assert_eq!(
            exported(&render(&mut metrics, &detector, t)),
            vec![22, 7000, 8000]
        );
        assert_eq!(
            exported(&render(&mut metrics, &detector, last_in_top + 100)),
            vec![22, 7000, 8000]
        );
        // ... and no longer.
        assert_eq!(
            exported(&render(&mut metrics, &detector, last_in_top + 101)),
            vec![22, 8000]
        );
    }

    /// The learning state is a state set (exactly one 1 per exported port), the expected rate
    /// is exported, and a port in an episode says since when.
    #[test]
    fn learning_state_expected_rate_and_episode_start() {
        let config = DetectorConfig {
            warmup: Duration::from_secs(60),
            ..DetectorConfig::default()
        };
        let mut detector = Detector::new(config);
        let mut metrics = Metrics::new().unwrap();
        let mut ports = vec![0u64; PORTS as usize];
        let mut t = 1_000;
        detector.step(Duration::from_secs(t), &ports);
        let text = render(&mut metrics, &detector, t);
        assert!(
            text.contains("scan_port_learning_state{port=\"22\",state=\"warming_up\"} 1"),
            "{text}"
        );
        // Port 22 at 2 SYN/s (busy enough for a profile: learning), then 100 SYN/s.
        for i in 0..60 {
            ports[22] += if i < 40 { 10 } else { 500 };
            t += 5;
            detector.step(Duration::from_secs(t), &ports);
        }
        let status = detector.status(22);
        assert!(status.flagged, "{status:?}");
        let start = status.episode_start.unwrap().as_secs();
        let text = render(&mut metrics, &detector, t);
        let states: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("scan_port_learning_state{port=\"22\""))
            .collect();
        assert_eq!(states.len(), 4, "{text}");
        assert_eq!(states.iter().filter(|l| l.ends_with(" 1")).count(), 1);
        assert!(
            text.contains("scan_port_learning_state{port=\"22\",state=\"learning\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "scan_surge_started_timestamp_seconds{{port=\"22\"}} {start}"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "scan_syn_expected_rate{{port=\"22\"}} {}",
                status.expected
            )),
            "{text}"
        );
        assert!(text.contains("scan_agent_profiled_ports 1"), "{text}");
    }

    #[test]
    fn exported_ports_carry_their_sources_and_targets() {
        use crate::{breadth::Breadth, sensor::PortSketches, sketch::Distinct};
        let mut metrics = Metrics::new().unwrap();
        let detector = Detector::new(DetectorConfig::default());
        let mut breadth = Breadth::new(detector.config());
        let sketch = |n: u32| {
            let mut d = Distinct::default();
            for a in 0..n {
                d.insert_hash(scan_common::hash_ipv4(a));
            }
            d
        };
        breadth.step(
            Duration::from_secs(1),
            vec![
                PortSketches {
                    port: 22,
                    sources: sketch(3),
                    targets: sketch(7),
                },
                // Not exported: no series.
                PortSketches {
                    port: 9999,
                    sources: sketch(2),
                    targets: sketch(2),
                },
            ],
        );
        let text = render_with(&mut metrics, &detector, &breadth, 0);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("scan_syn_sources") || l.starts_with("scan_syn_targets"))
            .collect();
        assert_eq!(
            lines,
            [
                "scan_syn_sources{port=\"22\"} 3",
                "scan_syn_sources_baseline{port=\"22\"} 0",
                "scan_syn_targets{port=\"22\"} 7",
                "scan_syn_targets_baseline{port=\"22\"} 0",
            ],
            "{text}"
        );
        assert!(text.contains("scan_agent_sketched_ports 2"), "{text}");
    }

    /// Polls capture, scrapes render: a poll no one scrapes renders nothing (yet it still
    /// advances the export hold), a second scrape of a poll gets the first one's text, and
    /// the first scrape after a new poll renders that poll.
    #[test]
    fn an_exposition_is_rendered_once_by_its_first_scrape_and_never_unscraped() {
        let config = DetectorConfig::default();
        let interval = config.interval.as_secs();
        let mut detector = Detector::new(config);
        let breadth = crate::breadth::Breadth::new(detector.config());
        let mut metrics = Metrics::new().unwrap();
        let mut ports = vec![0u64; PORTS as usize];
        let classes = |syns: u64| {
            let mut counts = ClassCounts::default();
            counts.0[PacketClass::Syn as usize] = syns;
            vec![("eth0".to_string(), counts)]
        };
        let mut t = interval;
        detector.step(Duration::from_secs(t), &ports);
        // 7000 leads the top set (K = 1) at polls no one scrapes ...
        for _ in 0..5 {
            ports[7000] += 100;
            t += interval;
            detector.step(Duration::from_secs(t), &ports);
            let c = classes(ports[7000]);
            drop(metrics.exposition(&snapshot(&detector, &breadth, &c, &ports, t)));
        }
        assert_eq!(metrics.renders(), 0);
        let last_in_top = t;
        // ... then 8000 takes the lead.
        for _ in 0..5 {
            ports[8000] += 10_000;
            t += interval;
            detector.step(Duration::from_secs(t), &ports);
        }
        assert_eq!(detector.top_ports(1)[0].port, 8000);
        let c = classes(500);
        let exposition = metrics.exposition(&snapshot(&detector, &breadth, &c, &ports, t));
        assert_eq!(metrics.renders(), 0);
        let first = exposition.text();
        let second = exposition.text();
        assert_eq!(metrics.renders(), 1);
        assert_eq!(first.as_ptr(), second.as_ptr(), "the same text, not a copy");
        let text = std::str::from_utf8(&first).unwrap();
        // Held from the polls no one scraped.
        assert!(t - last_in_top <= 100);
        assert_eq!(exported(text), vec![22, 7000, 8000]);
        assert!(
            text.contains("scan_packet_flags_total{flag=\"syn\",interface=\"eth0\"} 500"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "scan_agent_last_poll_timestamp_seconds {}",
                1_700_000_000 + t
            )),
            "{text}"
        );
        // The next poll: its first scrape renders it, not the previous one again.
        t += interval;
        let c = classes(501);
        let next = metrics.exposition(&snapshot(&detector, &breadth, &c, &ports, t));
        assert_eq!(metrics.renders(), 1);
        let text = String::from_utf8(next.text().to_vec()).unwrap();
        assert_eq!(metrics.renders(), 2);
        assert!(
            text.contains("scan_packet_flags_total{flag=\"syn\",interface=\"eth0\"} 501"),
            "{text}"
        );
        // The render count shows in the next render: one before this one.
        assert!(
            text.contains("scan_agent_render_duration_seconds_count 1"),
            "{text}"
        );
        // The earlier poll's text is unchanged by the later render.
        assert_eq!(exposition.text(), first);
        assert_eq!(metrics.renders(), 2);
    }
}
