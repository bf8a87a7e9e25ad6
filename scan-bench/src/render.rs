//! Part 4b: /metrics render time and size, in process, with the real detector and
//! metrics code at full activity (every port has SYNs in every step).
use std::time::Duration;

use anyhow::Result;
use scan_agent::{
    config::{DEFAULT_TOP_PORTS, DEFAULT_WATCH_PORTS},
    detector::{Detector, DetectorConfig},
    metrics::{Metrics, Snapshot},
    sensor::{AttachMode, Attachment, LinkKind},
};
use scan_common::{ClassCounts, PORTS};

use crate::stats::median_ms;

pub struct RenderFigures {
    pub exported_ports: usize,
    pub ms: f64,
    pub bytes: usize,
}

pub struct RenderResults {
    pub default: RenderFigures,
    pub ports_1000: RenderFigures,
    pub steps: usize,
    /// Profiled ports at the end (at most 512).
    pub profiled: usize,
    /// Median time of one detector step over all 65,536 active ports (thread CPU time, so
    /// preemption on a shared machine does not count; the wall time is reported too).
    pub step_ms: f64,
    /// The slowest of those steps.
    pub step_max_ms: f64,
    /// The step that crosses an hour boundary (the seasonal profiles record the hour and
    /// look for quiet or busier ports).
    pub step_hour_ms: f64,
    /// Median wall time of the same steps.
    pub step_wall_ms: f64,
}

pub fn run(iterations: usize) -> Result<RenderResults> {
    let config = DetectorConfig::default();
    let interval = config.interval;
    let mut detector = Detector::new(config);
    let mut cumulative = vec![0u64; PORTS as usize];
    // Enough steps for every port to have a rate and for 512 to be profiled; a few ports
    // surge at the end.
    let steps = 40;
    // Starts 100 s before an hour boundary, so step 20 crosses it.
    let first = Duration::from_secs(1_700_002_700);
    let boundary_step = 20;
    let mut step_times = Vec::new();
    let mut wall_times = Vec::new();
    for step in 0..steps {
        for (port, total) in cumulative.iter_mut().enumerate() {
            *total += 1 + (port % 7) as u64;
            if step == steps - 1 && port % 997 == 0 {
                *total += 5_000;
            }
        }
        let now = first + interval * step as u32;
        let (cpu, wall) = (crate::cpu::thread_cpu_ns(), std::time::Instant::now());
        detector.step(now, &cumulative);
        wall_times.push(wall.elapsed().as_secs_f64() * 1e3);
        step_times.push((crate::cpu::thread_cpu_ns() - cpu) as f64 / 1e6);
    }
    let classes = [("eth0".to_string(), ClassCounts::default())];
    let attachments = [Attachment {
        interface: "eth0".into(),
        ifindex: 2,
        mode: AttachMode::Native,
        kind: LinkKind::Ethernet,
        adopted: false,
        dispatcher: false,
    }];
    let breadth = scan_agent::breadth::Breadth::new(detector.config());
    let measure = |watch: &[u16], top: usize| -> Result<RenderFigures> {
        let mut metrics = Metrics::new()?;
        let snapshot = Snapshot {
            ports: &cumulative,
            classes: &classes,
            detector: &detector,
            breadth: &breadth,
            attachments: &attachments,
            configured: &[],
            watch_ports: watch,
            top_ports: top,
            export_hold: scan_agent::config::DEFAULT_EXPORT_HOLD,
            now: Duration::from_secs(1_700_000_000) + interval * steps as u32,
            last_poll: 0.0,
        };
        let bytes = metrics.render(&snapshot).len();
        let ms = median_ms(iterations, || {
            std::hint::black_box(metrics.render(&snapshot));
        });
        Ok(RenderFigures {
            exported_ports: Metrics::exported_ports(&detector, watch, top).len(),
            ms,
            bytes,
        })
    };
    let default = measure(DEFAULT_WATCH_PORTS, DEFAULT_TOP_PORTS)?;
    let ports_1000 = measure(&[], 1000)?;
    // The first step only stores the reference.
    Ok(RenderResults {
        default,
        ports_1000,
        steps,
        profiled: detector.profiled_ports(),
        step_ms: crate::stats::median(&step_times[1..]),
        step_max_ms: step_times[1..].iter().copied().fold(0.0, f64::max),
        step_hour_ms: step_times[boundary_step],
        step_wall_ms: crate::stats::median(&wall_times[1..]),
    })
}
