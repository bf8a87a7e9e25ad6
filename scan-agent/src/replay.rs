//! `scan-agent replay FILE`: runs every frame of a capture through the real XDP program
//! and reports what it counted, and, on capture time, what the surge detector flagged.
//!
//! - The program is loaded with private maps ([`Sensor::load`] with no pin path), so a
//!   running agent and its pinned counters are not touched. This needs the same rights as
//!   the agent (root, or CAP_BPF + CAP_NET_ADMIN), but no interface.
//! - Each frame goes through `BPF_PROG_TEST_RUN` once. Frames shorter than an Ethernet
//!   header (14 bytes) are refused by the kernel (EINVAL) and could never reach XDP: they
//!   are counted as `skipped_short_frames` and not run. Frames longer than
//!   [`MAX_RUN_FRAME`] are cut to that length (the kernel refuses much longer test input;
//!   the program only ever sees the first, page-sized part of a frame anyway).
//! - `packets` is the number of frames in the capture (skipped ones included);
//!   `classes.seen` is the number the program ran on.
//!
//! # Detector on capture time
//!
//! With a [`DetectorConfig`], the detector is stepped as the live agent steps it, but on
//! the capture's clock: at the first frame's timestamp `t0` (the reference reading), then
//! at `t0 + k * interval` for every `k` until one step past the last frame. A step at
//! time `T` is fed the cumulative per-port counters after every frame stamped before `T`.
//! Frames stamped out of order are run in file order and count toward the next step.
//! A gap of more than [`MAX_IDLE_STEPS`] intervals with no frames is crossed in one step
//! after the first [`MAX_IDLE_STEPS`] steps, to the last grid time before the next frame (the
//! detector decays exactly over any step length), so the work per frame is bounded whatever
//! the timestamps say: a replay is O(frames).
//!
//! The surge *episodes* are the detector's (hysteresis and minimum length, see
//! [`crate::detector`]): from the step at which it flags the port to the step at which the
//! episode ends (`end` is `None` when the capture ends first). `peak_ratio` is the highest
//! ratio while flagged; `syns` counts the port's SYNs from one short window before `start`
//! (the surge's onset, which the short-term average takes up to about a window to confirm)
//! to `end` (or the end of the capture).
use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use scan_common::{ClassCounts, PORTS, PacketClass};
use serde::{Serialize, Serializer, ser::SerializeMap};

use crate::{
    breadth::Breadth,
    capture::{CaptureError, CaptureReader},
    detector::{Detector, DetectorConfig},
    sensor::{Hook, LinkKind, PortSketches, Sensor, SensorError},
    sketch::Distinct,
};

/// The shortest frame the kernel's test run accepts: an Ethernet header.
pub const MIN_RUN_FRAME: usize = 14;
/// Longer frames are cut to this length before the test run (see the module docs).
pub const MAX_RUN_FRAME: usize = 65_535;
/// Detector steps taken one by one per frame before the rest of a gap is crossed in one
/// step (bounds the work per frame).
pub const MAX_IDLE_STEPS: u64 = 8;

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("cannot replay {}: {source}", path.display())]
    Load {
        path: PathBuf,
        source: Box<SensorError>,
    },
    #[error("replaying packet {packet} of {} ({len} bytes) failed: {source}", path.display())]
    TestRun {
        path: PathBuf,
        packet: u64,
        len: usize,
        source: Box<SensorError>,
    },
    #[error("replaying {}: cannot read the class counters: {source}", path.display())]
    Counters {
        path: PathBuf,
        source: Box<SensorError>,
    },
    #[error("detector configuration: {0}")]
    Config(#[from] crate::detector::ConfigError),
}

/// One surge episode of one port, in capture time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SurgeEpisode {
    pub port: u16,
    /// First step at which the port was flagged (since the UNIX epoch).
    #[serde(serialize_with = "serialize_time")]
    pub start: Duration,
    /// First step at which it no longer was; `None`: still flagged at the end.
    #[serde(serialize_with = "serialize_optional_time")]
    pub end: Option<Duration>,
    /// Highest surge ratio while flagged.
    pub peak_ratio: f64,
    /// SYNs to the port from one short window before `start` to `end` (or the end).
    pub syns: u64,
    /// Distinct source addresses of those SYNs (estimate; exact up to 16).
    pub sources: u64,
    /// Distinct destination addresses of those SYNs.
    pub targets: u64,
    /// Highest short-window distinct sources (`scan_syn_sources`) while flagged.
    pub peak_sources: u64,
    /// Highest short-window distinct targets while flagged.
    pub peak_targets: u64,
}

/// What a replay counted. Serializes to
/// `{"packets", "ports": {"445": n}, "classes": {"seen": n, ...}, "surges": [...],
/// "skipped_short_frames"}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplayReport {
    /// Frames in the capture, skipped ones included.
    pub packets: u64,
    /// SYNs per destination port, only the ports with at least one.
    pub ports: BTreeMap<u16, u64>,
    /// Distinct source addresses per destination port over the whole capture, keyed
    /// like `ports` (estimate; exact up to 16).
    pub sources: BTreeMap<u16, u64>,
    /// Distinct destination addresses per destination port over the whole capture.
    pub targets: BTreeMap<u16, u64>,
    /// SYNs left out of `sources` and `targets` because their port found no free
    /// kernel sketch slot (0 unless a capture hits hundreds of ports within 128 frames).
    pub sketch_misses: u64,
    /// The program's class counters: every class, in [`PacketClass`] order.
    #[serde(serialize_with = "serialize_classes")]
    pub classes: ClassCounts,
    /// Surge episodes, by start time then port; empty without a detector.
    pub surges: Vec<SurgeEpisode>,
    /// Frames shorter than 14 bytes, not run (the kernel refuses them).
    pub skipped_short_frames: u64,
}

fn serialize_classes<S: Serializer>(
    classes: &ClassCounts,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(PacketClass::ALL.len()))?;
    for class in PacketClass::ALL {
        map.serialize_entry(class.name(), &classes.get(class))?;
    }
    map.end()
}

fn serialize_time<S: Serializer>(time: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339(*time))
}

fn serialize_optional_time<S: Serializer>(
    time: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_str(&rfc3339(*time)),
        None => serializer.serialize_none(),
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-03-02T10:15:00.000Z`, for any time since
/// the epoch (no panic: years past 9999 just get more digits).
pub fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days, on days since 1970-01-01 (non-negative here).
    let z = days as i128 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// A surge episode still being tracked.
struct OpenEpisode {
    start: Duration,
    /// The port's count one short window before `start` (the onset).
    count_before: u64,
    /// Union of the interval sketches since one short window before `start`.
    sources: Distinct,
    targets: Distinct,
    peak_sources: f64,
    peak_targets: f64,
}

impl OpenEpisode {
    fn close(self, port: u16, end: Option<Duration>, peak_ratio: f64, count: u64) -> SurgeEpisode {
        SurgeEpisode {
            port,
            start: self.start,
            end,
            peak_ratio,
            syns: count.saturating_sub(self.count_before),
            sources: self.sources.estimate().round() as u64,
            targets: self.targets.estimate().round() as u64,
            peak_sources: self.peak_sources.round() as u64,
            peak_targets: self.peak_targets.round() as u64,
        }
    }
}

/// Frames run between two takes of the kernel sketches, so that ports take turns in
/// the kernel's slots however many a capture hits: at most this many ports claim slots
/// between takes, a quarter of the slots, so probes practically never miss (a miss is
/// reported as `sketch_misses`).
const SKETCH_TAKE_FRAMES: u32 = scan_common::SKETCH_SLOTS / 4;

/// The kernel sketches taken during a replay: the interval not yet stepped, and the
/// union over the whole capture.
#[derive(Default)]
struct Sketches {
    interval: BTreeMap<u16, (Distinct, Distinct)>,
    total: BTreeMap<u16, (Distinct, Distinct)>,
    frames: u32,
}

impl Sketches {
    fn take(&mut self, sensor: &Sensor) {
        let mut taken = Vec::new();
        sensor.take_sketches(&mut taken);
        sensor.release_sketch_slots();
        self.frames = 0;
        for p in taken {
            for map in [&mut self.interval, &mut self.total] {
                let (sources, targets) = map.entry(p.port).or_default();
                sources.merge(&p.sources);
                targets.merge(&p.targets);
            }
        }
    }

    /// Counts a frame run; takes the sketches every [`SKETCH_TAKE_FRAMES`].
    fn ran(&mut self, sensor: &Sensor) {
        self.frames += 1;
        if self.frames >= SKETCH_TAKE_FRAMES {
            self.take(sensor);
        }
    }

    /// The sketches of the interval up to now, as the live agent takes them at a poll.
    fn interval(&mut self, sensor: &Sensor) -> Vec<PortSketches> {
        self.take(sensor);
        std::mem::take(&mut self.interval)
            .into_iter()
            .map(|(port, (sources, targets))| PortSketches {
                port,
                sources,
                targets,
            })
            .collect()
    }
}

/// `start + k * interval`, saturating.
fn grid_time(start: Duration, interval: Duration, k: u128) -> Duration {
    let nanos = start
        .as_nanos()
        .saturating_add(interval.as_nanos().saturating_mul(k));
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

/// Drives the detector on capture time and tracks its episodes.
struct CaptureClock {
    detector: Detector,
    breadth: Breadth,
    interval: Duration,
    /// Next grid time to step at; `None` before the first frame.
    next: Option<Duration>,
    counts: Vec<u64>,
    /// The counts after the last steps, newest last, covering one short window (for
    /// `count_before`); buffers are reused.
    recent: VecDeque<Vec<u64>>,
    recent_len: usize,
    /// Frames run since `counts` was last read.
    dirty: bool,
    open: BTreeMap<u16, OpenEpisode>,
    closed: Vec<SurgeEpisode>,
}

impl CaptureClock {
    fn new(config: DetectorConfig) -> Self {
        let per_window = config.short_window.as_nanos() / config.interval.as_nanos().max(1);
        Self {
            interval: config.interval,
            // One short window of steps, at least one, at most an hour of 1-s steps.
            recent_len: usize::try_from(per_window)
                .unwrap_or(usize::MAX)
                .clamp(1, 3_600),
            breadth: Breadth::new(&config),
            detector: Detector::new(config),
            next: None,
            counts: vec![0; PORTS as usize],
            recent: VecDeque::new(),
            dirty: true,
            open: BTreeMap::new(),
            closed: Vec::new(),
        }
    }

    /// Steps at the grid times up to and including `now`: one by one for the first
    /// [`MAX_IDLE_STEPS`], then once at the last grid time <= `now` (the detector's exact
    /// decay crosses any gap in one step), so the work per frame is bounded whatever the
    /// timestamps say.
    fn advance_to(&mut self, sensor: &Sensor, sketches: &mut Sketches, now: Duration) {
        let next = *self.next.get_or_insert(now);
        if now < next {
            return;
        }
        let pending = (now - next).as_nanos() / self.interval.as_nanos() + 1;
        let mut at = next;
        let mut taken = 0u64;
        while at <= now {
            if taken == MAX_IDLE_STEPS && pending > u128::from(MAX_IDLE_STEPS) {
                at = grid_time(next, self.interval, pending - 1);
            }
            self.step(sensor, sketches, at);
            taken += 1;
            match at.checked_add(self.interval) {
                Some(later) => at = later,
                None => {
                    at = Duration::MAX;
                    break;
                }
            }
        }
        self.next = Some(at);
    }

    fn step(&mut self, sensor: &Sensor, sketches: &mut Sketches, at: Duration) {
        // Keep the counts of the last short window of steps.
        let mut spare = if self.recent.len() >= self.recent_len {
            self.recent.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        spare.clear();
        spare.extend_from_slice(&self.counts);
        self.recent.push_back(spare);
        if self.dirty {
            sensor.read_ports(&mut self.counts);
            self.dirty = false;
        }
        self.detector.step(at, &self.counts);
        let interval = sketches.interval(sensor);
        // Idle ports' kernel slots are already released by `Sketches::take`.
        self.breadth.step(at, interval.clone());
        for ended in self.detector.ended_episodes() {
            if let Some(open) = self.open.remove(&ended.port) {
                let count = self.counts[usize::from(ended.port)];
                self.closed
                    .push(open.close(ended.port, Some(ended.end), ended.peak_ratio, count));
            }
        }
        for status in self.detector.flagged_ports() {
            let Some(start) = status.episode_start else {
                continue;
            };
            let port = status.port;
            let episode = match self.open.entry(port) {
                std::collections::btree_map::Entry::Occupied(open) => {
                    let episode = open.into_mut();
                    if let Some(p) = interval.iter().find(|p| p.port == port) {
                        episode.sources.merge(&p.sources);
                        episode.targets.merge(&p.targets);
                    }
                    episode
                }
                std::collections::btree_map::Entry::Vacant(vacant) => {
                    // The breadth window is the short window up to now: the onset.
                    let (sources, targets) = self.breadth.window(port).unwrap_or_default();
                    let oldest = self.recent.front().unwrap_or(&self.counts);
                    vacant.insert(OpenEpisode {
                        start,
                        count_before: oldest[usize::from(port)],
                        sources,
                        targets,
                        peak_sources: 0.0,
                        peak_targets: 0.0,
                    })
                }
            };
            if let Some(b) = self.breadth.status(port) {
                episode.peak_sources = episode.peak_sources.max(b.sources);
                episode.peak_targets = episode.peak_targets.max(b.targets);
            }
        }
    }

    /// Takes the final step (one grid step past the last frame) and returns the episodes.
    fn finish(mut self, sensor: &Sensor, sketches: &mut Sketches) -> Vec<SurgeEpisode> {
        if let Some(next) = self.next {
            self.advance_to(sensor, sketches, next);
        }
        let mut episodes = self.closed;
        let peaks: BTreeMap<u16, f64> = self
            .detector
            .open_episodes()
            .map(|(port, _, peak)| (port, peak))
            .collect();
        for (port, episode) in self.open {
            let peak = peaks.get(&port).copied().unwrap_or(0.0);
            episodes.push(episode.close(port, None, peak, self.counts[usize::from(port)]));
        }
        episodes.sort_by_key(|e| (e.start, e.port));
        episodes
    }
}

/// Replays the capture at `path` through the real program (private maps); with a
/// detector configuration, also drives the detector on capture time. See the module
/// documentation.
pub fn replay(path: &Path, detector: Option<DetectorConfig>) -> Result<ReplayReport, ReplayError> {
    if let Some(config) = &detector {
        config.validate()?;
    }
    // Open the capture first: a bad file is reported even where BPF is not available.
    let mut reader = CaptureReader::open(path)?;
    // pcapng says its link kind at the first packet (an empty capture replays as
    // Ethernet), so the first frame is read before the program is loaded; the input
    // may be a pipe, read once.
    let first = reader.next_frame().transpose()?;
    let kind = reader.link_kind().unwrap_or(LinkKind::Ethernet);
    let sensor = Sensor::unattached(Hook::Xdp, kind).map_err(|source| ReplayError::Load {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    replay_with(&sensor, reader, first, detector)
}

/// Replays `reader` through an already loaded `sensor` (private maps). What it reports
/// is counted from the counters' values when it starts, so one loaded program serves
/// many captures (the mutated-capture campaign replays thousands; loading and
/// verifying the program for each would dominate).
/// `first` is a frame already read from `reader` (to learn its link kind), if any.
pub fn replay_with(
    sensor: &Sensor,
    mut reader: CaptureReader,
    first: Option<(Duration, Vec<u8>)>,
    detector: Option<DetectorConfig>,
) -> Result<ReplayReport, ReplayError> {
    if let Some(config) = &detector {
        config.validate()?;
    }
    let path = reader.path().to_path_buf();
    let path = path.as_path();
    let counters_error = |source| ReplayError::Counters {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let mut ports_before = vec![0u64; PORTS as usize];
    sensor.read_ports(&mut ports_before);
    let classes_before = sensor.read_classes().map_err(counters_error)?;
    let misses_before = sensor.sketch_misses();
    // Whatever an earlier replay that stopped at an error left in the sketch slots.
    Sketches::default().take(sensor);
    let mut clock = detector.map(CaptureClock::new);
    let mut sketches = Sketches::default();
    let mut packets = 0u64;
    let mut skipped_short_frames = 0u64;
    let frames = first
        .map(Ok)
        .into_iter()
        .chain(std::iter::from_fn(|| reader.next_frame()));
    for next in frames {
        let (timestamp, frame) = next?;
        packets += 1;
        if let Some(clock) = &mut clock {
            clock.advance_to(sensor, &mut sketches, timestamp);
        }
        if frame.len() < MIN_RUN_FRAME {
            skipped_short_frames += 1;
            continue;
        }
        let frame = &frame[..frame.len().min(MAX_RUN_FRAME)];
        sensor
            .test_run(frame, 1)
            .map_err(|source| ReplayError::TestRun {
                path: path.to_path_buf(),
                packet: packets,
                len: frame.len(),
                source: Box::new(source),
            })?;
        sketches.ran(sensor);
        if let Some(clock) = &mut clock {
            clock.dirty = true;
        }
    }
    let surges = clock
        .map(|clock| clock.finish(sensor, &mut sketches))
        .unwrap_or_default();
    sketches.take(sensor);
    let estimate = |d: &Distinct| d.estimate().round() as u64;
    let sources = sketches
        .total
        .iter()
        .map(|(&port, (s, _))| (port, estimate(s)))
        .collect();
    let targets = sketches
        .total
        .iter()
        .map(|(&port, (_, t))| (port, estimate(t)))
        .collect();
    let mut counts = vec![0u64; PORTS as usize];
    sensor.read_ports(&mut counts);
    let ports = counts
        .iter()
        .zip(&ports_before)
        .map(|(&after, &before)| after.wrapping_sub(before))
        .enumerate()
        .filter(|&(_, n)| n != 0)
        .map(|(port, n)| (port as u16, n))
        .collect();
    let mut classes = sensor.read_classes().map_err(counters_error)?;
    for (after, before) in classes.0.iter_mut().zip(classes_before.0) {
        *after = after.wrapping_sub(before);
    }
    Ok(ReplayReport {
        packets,
        ports,
        sources,
        targets,
        sketch_misses: sensor.sketch_misses().wrapping_sub(misses_before),
        classes,
        surges,
        skipped_short_frames,
    })
}

/// Ports listed by [`ReplayReport::render_table`]; the JSON output lists all.
pub const TABLE_PORTS: usize = 20;

impl ReplayReport {
    /// A human-readable summary: packets, classes, the busiest ports and the episodes.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "packets: {}", self.packets);
        if self.skipped_short_frames > 0 {
            let _ = writeln!(
                out,
                "skipped: {} frames shorter than an Ethernet header (14 bytes)",
                self.skipped_short_frames
            );
        }
        let _ = writeln!(out, "\n{:<16} {:>12}", "class", "packets");
        for class in PacketClass::ALL {
            let _ = writeln!(out, "{:<16} {:>12}", class.name(), self.classes.get(class));
        }
        let total: u64 = self.ports.values().sum();
        let mut busiest: Vec<(u16, u64)> = self.ports.iter().map(|(&p, &n)| (p, n)).collect();
        busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let _ = writeln!(
            out,
            "\nSYNs: {total} to {} port{}",
            self.ports.len(),
            if self.ports.len() == 1 { "" } else { "s" }
        );
        if !busiest.is_empty() {
            let _ = writeln!(
                out,
                "{:>6} {:>12} {:>7} {:>10} {:>10}",
                "port", "SYNs", "share", "sources", "targets"
            );
            for &(port, n) in busiest.iter().take(TABLE_PORTS) {
                let share = 100.0 * n as f64 / total as f64;
                let distinct = |map: &BTreeMap<u16, u64>| {
                    map.get(&port)
                        .map_or_else(|| "-".to_string(), u64::to_string)
                };
                let (sources, targets) = (distinct(&self.sources), distinct(&self.targets));
                let _ = writeln!(
                    out,
                    "{port:>6} {n:>12} {share:>6.1}% {sources:>10} {targets:>10}"
                );
            }
            if busiest.len() > TABLE_PORTS {
                let rest: u64 = busiest[TABLE_PORTS..].iter().map(|&(_, n)| n).sum();
                let _ = writeln!(
                    out,
                    "{:>6} {rest:>12}  ({} more ports; --format json lists all)",
                    "...",
                    busiest.len() - TABLE_PORTS
                );
            }
        }
        let _ = writeln!(out, "\nsurge episodes: {}", self.surges.len());
        if !self.surges.is_empty() {
            let _ = writeln!(
                out,
                "{:>6}  {:<24}  {:<24}  {:>10}  {:>10}  {:>10}  {:>10}",
                "port", "start", "end", "peak ratio", "SYNs", "sources", "targets"
            );
            for e in &self.surges {
                let end = e.end.map_or_else(|| "(still flagged)".to_string(), rfc3339);
                let _ = writeln!(
                    out,
                    "{:>6}  {:<24}  {:<24}  {:>10.1}  {:>10}  {:>10}  {:>10}",
                    e.port,
                    rfc3339(e.start),
                    end,
                    e.peak_ratio,
                    e.syns,
                    e.sources,
                    e.targets
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(Duration::from_millis(1_772_445_600_250)),
            "2026-03-02T10:00:00.250Z"
        );
        assert_eq!(
            rfc3339(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(Duration::from_secs(4_107_542_399)),
            "2100-02-28T23:59:59.000Z"
        );
        let _ = rfc3339(Duration::MAX);
    }
}
