//! The last poll's immutable view, and the pages rendered from it.
//!
//! The poll loop builds one [`View`] after every poll and publishes it with one atomic
//! pointer swap ([`Published`]); HTTP handlers load the current one and render from it.
//! No lock is shared between the poll loop and HTTP, and no request reads the kernel:
//! a client can neither slow the sensor down nor make it do more than render each poll's
//! exposition once (at the first scrape of the view).
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use crate::{
    api::{ApiInput, PortTable, PortTables, PortView, PortsResponse, Recent},
    breadth::BreadthView,
    detector::{Detector, PortStatus, StatusView},
    metrics::Exposition,
    prefixes::PrefixView,
    sensor::Attachment,
};

/// What every page is rendered from: one poll's results, never changed once published.
pub struct View {
    /// When the poll that made this view finished.
    pub taken: Instant,
    /// The poll interval (a view older than three of them is stale).
    pub interval: Duration,
    /// The text exposition, rendered by the first scrape of this view.
    pub metrics: Exposition,
    /// What is wrong with the sensor at this poll (not attached, interface gone, a failed
    /// map read); `None` when healthy.
    pub problem: Option<String>,
    /// `interface (mode)` for each attachment.
    pub attachments: Vec<String>,
    pub telemetry_path: String,
    pub api: ApiData,
}

/// Ports on the index page.
pub const INDEX_PORTS: usize = 10;

/// The detector's view and the kernel counters at the poll, for the JSON API and the
/// index page. Not a copy of the detector: its summary ([`StatusView`], a few KiB), the
/// per-port table (`PortTable`, refilled in place from poll to poll) and the rows of the
/// exported ports.
pub struct ApiData {
    detector: StatusView,
    table: Arc<PortTable>,
    breadth: BreadthView,
    /// Top source prefixes of the flagged ports.
    prefixes: PrefixView,
    recent: Recent,
    exported: Vec<PortStatus>,
    /// The index page's ports ([`Detector::top_ports`] of [`INDEX_PORTS`]).
    top: Vec<PortStatus>,
    /// Detector time of the poll, UNIX seconds.
    time: f64,
}

/// What a poll hands to [`ApiData::new`] besides the detector and the counters.
pub struct ApiParts {
    pub breadth: BreadthView,
    pub prefixes: PrefixView,
    pub recent: Recent,
    /// The exported ports' statuses (the `/api/v1/ports` rows).
    pub exported: Vec<PortStatus>,
    /// Detector time of the poll, UNIX seconds.
    pub time: f64,
}

impl ApiData {
    /// The API's data after a poll: `counts` are the kernel's cumulative SYNs per port read
    /// at it; the per-port table is taken from (and kept in) `tables`.
    pub fn new(
        detector: &Detector,
        counts: &[u64],
        tables: &mut PortTables,
        parts: ApiParts,
    ) -> Self {
        Self {
            detector: detector.status_view(),
            table: tables.publish(counts, detector),
            top: detector.top_ports(INDEX_PORTS),
            breadth: parts.breadth,
            prefixes: parts.prefixes,
            recent: parts.recent,
            exported: parts.exported,
            time: parts.time,
        }
    }

    fn input(&self) -> ApiInput<'_> {
        ApiInput {
            detector: &self.detector,
            table: &self.table,
            breadth: &self.breadth,
            prefixes: &self.prefixes,
            recent: &self.recent,
            exported: &self.exported,
            time: self.time,
        }
    }

    pub fn ports(&self) -> PortsResponse {
        self.input().ports()
    }

    pub fn port(&self, port: u16) -> PortView {
        self.input().port(port)
    }
}

/// The current view, swapped atomically by the poll loop and read by HTTP.
#[derive(Clone)]
pub struct Published(Arc<ArcSwap<View>>);

impl Published {
    pub fn new(first: View) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(first)))
    }

    pub fn publish(&self, view: View) {
        self.0.store(Arc::new(view));
    }

    pub fn load(&self) -> Arc<View> {
        self.0.load_full()
    }
}

impl View {
    /// `attachments` as shown on the index page.
    pub fn describe_attachments(attachments: &[Attachment]) -> Vec<String> {
        attachments
            .iter()
            .map(|a| format!("{} ({})", a.interface, a.mode))
            .collect()
    }

    /// Why the agent is unhealthy now, or `None`: this view's problem, or that the
    /// view is older than three poll intervals (the poll loop is stuck).
    pub fn health(&self) -> Option<String> {
        if let Some(problem) = &self.problem {
            return Some(problem.clone());
        }
        // Saturating: a config bug must never turn a health check into a panic.
        let stale_after = self.interval.saturating_mul(3);
        let age = self.taken.elapsed();
        (age > stale_after).then(|| {
            format!(
                "last poll {:.0}s ago (interval {})",
                age.as_secs_f64(),
                humantime::format_duration(self.interval)
            )
        })
    }

    /// The index page: attachments, warm-up and the top ports; every name escaped.
    pub fn index_html(&self) -> String {
        let detector = &self.api.detector;
        let mut rows = String::new();
        for p in &self.api.top {
            let breadth = self.api.breadth.get(&p.port).map_or_else(
                || "<td>-</td><td>-</td>".to_string(),
                |b| {
                    format!(
                        "<td>{:.0} (normal {:.0})</td><td>{:.0} (normal {:.0})</td>",
                        b.sources, b.sources_baseline, b.targets, b.targets_baseline
                    )
                },
            );
            let surge = p.episode_start.map_or_else(String::new, |start| {
                let prefixes: Vec<String> = self
                    .api
                    .prefixes
                    .get(&p.port)
                    .map(|top| {
                        top.iter()
                            .map(|s| format!("{} {:.0}%", s.prefix, 100.0 * s.share))
                            .collect()
                    })
                    .unwrap_or_default();
                format!(
                    "SURGE since {}{}",
                    crate::replay::rfc3339(Duration::from_secs(start.as_secs())),
                    if prefixes.is_empty() {
                        String::new()
                    } else {
                        format!("<br>from {}", html_escape(&prefixes.join(", ")))
                    }
                )
            });
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{:.2}</td>{breadth}<td>{surge}</td></tr>",
                p.port,
                p.rate,
                p.expected,
                p.learning.name(),
                p.ratio,
            ));
        }
        let attached = if self.attachments.is_empty() {
            "none".to_string()
        } else {
            html_escape(&self.attachments.join(", "))
        };
        let warmup = if detector.warming_up() {
            format!(
                "{} left",
                humantime::format_duration(Duration::from_secs(
                    detector.warmup_remaining().as_secs()
                ))
            )
        } else {
            "done".into()
        };
        let path = html_escape(&self.telemetry_path);
        format!(
            "<!doctype html><title>scan-agent</title><h1>scan-agent {}</h1>\
             <p>Attached: {attached}. Warm-up: {warmup}.</p>\
             <p><a href=\"{path}\">{path}</a> &middot; <a href=\"/healthz\">/healthz</a> \
             &middot; <a href=\"/api/v1/ports\">/api/v1/ports</a></p>\
             <table border=1><tr><th>port</th><th>SYN/s</th><th>expected</th>\
             <th>expectation from</th><th>ratio</th><th>sources</th><th>targets</th><th></th>\
             </tr>{rows}</table>",
            env!("CARGO_PKG_VERSION"),
        )
    }
}

/// Text for HTML: interface names may hold any byte but '/' and whitespace.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::DetectorConfig;

    fn view(attachments: Vec<String>, problem: Option<String>) -> View {
        let config = DetectorConfig::default();
        let detector = Detector::new(config.clone());
        let metrics =
            crate::metrics::Metrics::new()
                .unwrap()
                .exposition(&crate::metrics::Snapshot {
                    ports: &[],
                    classes: &[],
                    detector: &detector,
                    breadth: &crate::breadth::Breadth::new(&config),
                    attachments: &[],
                    configured: &[],
                    watch_ports: &[],
                    top_ports: 0,
                    export_hold: Duration::ZERO,
                    now: Duration::ZERO,
                    last_poll: 0.0,
                });
        View {
            taken: Instant::now(),
            interval: config.interval,
            metrics,
            problem,
            attachments,
            telemetry_path: "/metrics".into(),
            api: ApiData::new(
                &detector,
                &[],
                &mut PortTables::default(),
                ApiParts {
                    recent: Recent::new(config.interval),
                    breadth: Default::default(),
                    prefixes: Default::default(),
                    exported: vec![],
                    time: 0.0,
                },
            ),
        }
    }

    #[test]
    fn interface_names_are_escaped_on_the_index_page() {
        let page = view(vec!["<script>x</script> (skb)".into()], None).index_html();
        assert!(!page.contains("<script>"), "{page}");
        assert!(
            page.contains("&lt;script&gt;x&lt;/script&gt; (skb)"),
            "{page}"
        );
    }

    #[test]
    fn health_is_the_problem_or_staleness() {
        assert_eq!(view(vec![], None).health(), None);
        assert_eq!(
            view(vec![], Some("gone".into())).health().as_deref(),
            Some("gone")
        );
        let mut old = view(vec![], None);
        old.interval = Duration::from_millis(1);
        std::thread::sleep(Duration::from_millis(5));
        assert!(old.health().unwrap().starts_with("last poll"));
    }
}
