//! Prometheus exposition. Like cloudflare's ebpf_exporter, the kernel counters are
//! read at scrape time: the counters exported are the kernel's cumulative values.
//! Per-port series are bounded: the watch list plus the top-K ports by surge ratio.
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use scan_common::{ClassCounts, PORTS, PacketClass};

use crate::{
    detector::{ACTIVE_RATE, Detector, PortStatus},
    sensor::Attachment,
};

pub struct Metrics {
    registry: Registry,
    syn_total: IntCounterVec,
    syn_rate: GaugeVec,
    baseline: GaugeVec,
    ratio: GaugeVec,
    flagged: IntGaugeVec,
    threshold: Gauge,
    syn_all_ports: IntCounter,
    packets: IntCounterVec,
    attached: IntGaugeVec,
    pub poll_duration: Histogram,
    pub poll_errors: IntCounter,
    pub last_poll: Gauge,
    warming_up: IntGauge,
    warmup_remaining: Gauge,
    ports_active: IntGauge,
    ports_exported: IntGauge,
    ports_left_out: IntGauge,
    pub state_save_errors: IntCounter,
    pub scrape_duration: Histogram,
}

/// What one scrape renders: fresh kernel counters plus the detector's view.
pub struct Snapshot<'a> {
    pub ports: &'a [u64],
    pub classes: &'a ClassCounts,
    pub detector: &'a Detector,
    pub attachments: &'a [Attachment],
    pub watch_ports: &'a [u16],
    pub top_ports: usize,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let port = &["port"];
        let m = Self {
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
                    "(rate + floor) / (baseline + floor): how far above normal this port is now",
                ),
                port,
            )?,
            flagged: IntGaugeVec::new(
                Opts::new(
                    "scan_surge_flagged",
                    "1 when the port's ratio is at or above the threshold after warm-up",
                ),
                port,
            )?,
            threshold: Gauge::with_opts(Opts::new(
                "scan_surge_threshold",
                "Configured surge ratio threshold",
            ))?,
            syn_all_ports: IntCounter::with_opts(Opts::new(
                "scan_syn_packets_all_ports_total",
                "TCP SYNs over all 65,536 destination ports, as counted by the kernel",
            ))?,
            packets: IntCounterVec::new(
                Opts::new(
                    "scan_packets_total",
                    "Packets seen by the XDP program, by class (see README: classes and invariants)",
                ),
                &["class"],
            )?,
            attached: IntGaugeVec::new(
                Opts::new(
                    "scan_agent_attached",
                    "1 for each interface the program is attached to, with its XDP mode",
                ),
                &["interface", "mode"],
            )?,
            poll_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "scan_agent_poll_duration_seconds",
                    "Time to read all counters and step the detector",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                ]),
            )?,
            poll_errors: IntCounter::with_opts(Opts::new(
                "scan_agent_poll_errors_total",
                "Failed reads of the kernel maps",
            ))?,
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
                "Active ports not exported (beyond the watch list and top-K); see scan_syn_packets_all_ports_total",
            ))?,
            state_save_errors: IntCounter::with_opts(Opts::new(
                "scan_agent_state_save_errors_total",
                "Failed writes of the state file",
            ))?,
            scrape_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "scan_agent_scrape_duration_seconds",
                    "Time to read the kernel counters and render /metrics",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]),
            )?,
            registry,
        };
        let build_info = IntGaugeVec::new(
            Opts::new("scan_agent_build_info", "Agent version; always 1"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let r = &m.registry;
        r.register(Box::new(build_info))?;
        r.register(Box::new(m.syn_total.clone()))?;
        r.register(Box::new(m.syn_rate.clone()))?;
        r.register(Box::new(m.baseline.clone()))?;
        r.register(Box::new(m.ratio.clone()))?;
        r.register(Box::new(m.flagged.clone()))?;
        r.register(Box::new(m.threshold.clone()))?;
        r.register(Box::new(m.syn_all_ports.clone()))?;
        r.register(Box::new(m.packets.clone()))?;
        r.register(Box::new(m.attached.clone()))?;
        r.register(Box::new(m.poll_duration.clone()))?;
        r.register(Box::new(m.poll_errors.clone()))?;
        r.register(Box::new(m.last_poll.clone()))?;
        r.register(Box::new(m.warming_up.clone()))?;
        r.register(Box::new(m.warmup_remaining.clone()))?;
        r.register(Box::new(m.ports_active.clone()))?;
        r.register(Box::new(m.ports_exported.clone()))?;
        r.register(Box::new(m.ports_left_out.clone()))?;
        r.register(Box::new(m.state_save_errors.clone()))?;
        r.register(Box::new(m.scrape_duration.clone()))?;
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

    /// Sets every series from `snapshot` and renders the text exposition format.
    pub fn render(&self, snapshot: &Snapshot<'_>) -> String {
        let detector = snapshot.detector;
        let exported = Self::exported_ports(detector, snapshot.watch_ports, snapshot.top_ports);
        for vec in [&self.syn_rate, &self.baseline, &self.ratio] {
            vec.reset();
        }
        self.syn_total.reset();
        self.flagged.reset();
        for status in &exported {
            let label = status.port.to_string();
            let labels = [label.as_str()];
            self.syn_total.with_label_values(&labels).inc_by(
                snapshot
                    .ports
                    .get(usize::from(status.port))
                    .copied()
                    .unwrap_or(0),
            );
            self.syn_rate.with_label_values(&labels).set(status.rate);
            self.baseline
                .with_label_values(&labels)
                .set(status.baseline);
            self.ratio.with_label_values(&labels).set(status.ratio);
            self.flagged
                .with_label_values(&labels)
                .set(status.flagged.into());
        }
        self.syn_all_ports.reset();
        self.syn_all_ports.inc_by(
            snapshot.ports[..PORTS as usize]
                .iter()
                .fold(0u64, |sum, &v| sum.wrapping_add(v)),
        );
        self.packets.reset();
        for class in PacketClass::ALL {
            self.packets
                .with_label_values(&[class.name()])
                .inc_by(snapshot.classes.get(class));
        }
        self.attached.reset();
        for a in snapshot.attachments {
            self.attached
                .with_label_values(&[a.interface.as_str(), a.mode.name()])
                .set(a.interface_exists().into());
        }
        self.threshold.set(detector.config().surge_threshold);
        self.warming_up.set(detector.warming_up().into());
        self.warmup_remaining
            .set(detector.warmup_remaining().as_secs_f64());
        let active = detector.active_ports();
        let active_exported = exported.iter().filter(|s| s.rate >= ACTIVE_RATE).count();
        self.ports_active.set(active as i64);
        self.ports_exported.set(exported.len() as i64);
        self.ports_left_out
            .set(active.saturating_sub(active_exported) as i64);
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a metric-family error is a bug.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("rendering metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
