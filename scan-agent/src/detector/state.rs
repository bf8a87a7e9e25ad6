//! The saved form of a [`Detector`](super::Detector): what the state file holds, and its checks.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::{PORTS, STATE_VERSION, profile::WEEK_HOURS};

/// The saved state of a [`Detector`](super::Detector) (serde, for the state file).
///
/// Floating-point values are stored as strings in Rust's shortest round-trip notation
/// (`"2.0134"`, `"1e-7"`), which parse back to the identical bits; JSON numbers would not
/// (serde_json's default float parser can be off by one unit in the last place), and a restart
/// must continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorState {
    /// Format version, [`STATE_VERSION`] when written by this build.
    pub version: u32,
    /// Time of the last accepted reading (the reference of the counters below).
    pub last_step: Option<Duration>,
    /// Accepted history (drives the warm-up).
    pub history: Duration,
    /// Total weight of the short-term average, `0..=1`.
    #[serde(with = "exact_f64")]
    pub short_weight: f64,
    /// Total weight of the baseline average, `0..=1`.
    #[serde(with = "exact_f64")]
    pub baseline_weight: f64,
    /// Ports with any state, in port order. Binary formats store them by column
    /// (`crate::state::port_columns`), which compresses to a fraction of the rows.
    #[serde(with = "crate::state::port_columns")]
    pub ports: Vec<PortSnapshot>,
    /// Absolute hour (UNIX time / 3600) the profile accumulators belong to.
    pub profile_hour: Option<u64>,
    /// Seasonal profiles (at most [`MAX_PROFILED`](super::profile::MAX_PROFILED)), by port.
    pub profiles: Vec<ProfileSnapshot>,
    /// Open surge episodes, by port.
    pub episodes: Vec<EpisodeSnapshot>,
}

/// One port in a [`DetectorState`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortSnapshot {
    /// Destination port.
    pub port: u16,
    /// Cumulative kernel counter at `last_step` (the reference of the next delta).
    pub count: u64,
    /// Short-term rate, SYN/s.
    #[serde(with = "exact_f64")]
    pub rate: f64,
    /// Baseline, SYN/s.
    #[serde(with = "exact_f64")]
    pub baseline: f64,
}

/// The seasonal profile of one port (672 bytes of bins plus a few numbers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileSnapshot {
    pub port: u16,
    /// Adjustment `A` of the reference.
    #[serde(with = "exact_f64")]
    pub adjust: f64,
    /// SYNs accumulated in `profile_hour`.
    #[serde(with = "exact_f64")]
    pub acc_syns: f64,
    /// Seconds of `profile_hour` observed.
    #[serde(with = "exact_f64")]
    pub acc_secs: f64,
    /// Cached references of the hours before, at and after `profile_hour` (-1: none).
    #[serde(with = "exact_f64")]
    pub ref_before: f64,
    #[serde(with = "exact_f64")]
    pub ref_at: f64,
    #[serde(with = "exact_f64")]
    pub ref_after: f64,
    /// [`WEEK_HOURS`] quantized hourly means (0 = unknown), index `hour % 168`.
    pub bins: Vec<u16>,
}

/// An open surge episode.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeSnapshot {
    pub port: u16,
    /// When it started (detector time).
    pub start: Duration,
    /// Highest ratio so far.
    #[serde(with = "exact_f64")]
    pub peak_ratio: f64,
}

impl DetectorState {
    /// Checks the version and the values; the message says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.version != STATE_VERSION {
            return Err(format!(
                "format version {} (this build reads version {STATE_VERSION})",
                self.version
            ));
        }
        for (name, weight) in [
            ("short_weight", self.short_weight),
            ("baseline_weight", self.baseline_weight),
        ] {
            if !(0.0..=1.0).contains(&weight) {
                return Err(format!("{name} is {weight}, not between 0 and 1"));
            }
        }
        let mut seen = vec![false; PORTS];
        for entry in &self.ports {
            let p = usize::from(entry.port);
            if seen[p] {
                return Err(format!("port {} appears more than once", entry.port));
            }
            seen[p] = true;
            for (name, value) in [("rate", entry.rate), ("baseline", entry.baseline)] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(format!(
                        "port {} has {name} {value}, not a finite number >= 0",
                        entry.port
                    ));
                }
            }
        }
        if self.profiles.len() > super::profile::MAX_PROFILED {
            return Err(format!(
                "{} profiles (at most {})",
                self.profiles.len(),
                super::profile::MAX_PROFILED
            ));
        }
        let mut seen = vec![false; PORTS];
        for profile in &self.profiles {
            let p = usize::from(profile.port);
            if seen[p] {
                return Err(format!("profile of port {} appears more than once", p));
            }
            seen[p] = true;
            if profile.bins.len() != WEEK_HOURS {
                return Err(format!(
                    "profile of port {p} has {} bins, not {WEEK_HOURS}",
                    profile.bins.len()
                ));
            }
            for (name, value) in [
                ("adjust", profile.adjust),
                ("acc_syns", profile.acc_syns),
                ("acc_secs", profile.acc_secs),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(format!(
                        "profile of port {p} has {name} {value}, not a finite number >= 0"
                    ));
                }
            }
        }
        let mut seen = vec![false; PORTS];
        for episode in &self.episodes {
            let p = usize::from(episode.port);
            if seen[p] {
                return Err(format!("episode of port {} appears more than once", p));
            }
            seen[p] = true;
            if !episode.peak_ratio.is_finite() {
                return Err(format!("episode of port {p} has a non-finite peak ratio"));
            }
        }
        Ok(())
    }
}

/// Serde helpers: `f64` as a string that parses back to the identical value (JSON), or as
/// its 8 bytes (binary formats).
mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::borrow::Cow;

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        // Binary formats (the state file's postcard) store the 8 bytes, exact and compact.
        if !serializer.is_human_readable() {
            return serializer.serialize_f64(*value);
        }
        // `Debug` prints the shortest string that parses back to the same bits, switching to
        // exponent notation for very small and very large values.
        serializer.collect_str(&format_args!("{value:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        if !deserializer.is_human_readable() {
            return f64::deserialize(deserializer);
        }
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        text.parse::<f64>()
            .map_err(|e| D::Error::custom(format!("{text:?} is not a number: {e}")))
    }
}
