//! Surge detector: per destination port, a short-term SYN rate, an *expected* rate for this
//! port at this time (a seasonal profile for busy ports, a learned baseline for quiet ones), a
//! surge ratio, and surge episodes with hysteresis.
//!
//! The module is pure: no I/O, no clock, no logging. Time is passed in by the caller (the live
//! poller passes the wall clock, `replay` passes capture time, the tests pass simulated time), so
//! the same code runs live, offline and over simulated weeks. Submodules: [`profile`] (the
//! seasonal profiles), `state` (the saved form).
//!
//! # Input
//!
//! At every step the caller passes the kernel's cumulative SYN counters `C[p]` (summed over CPUs,
//! index = destination port) read at time `t`. For the step from the previous accepted reading
//! at `t'`:
//!
//! ```text
//! dt   = t - t'                             seconds, > 0
//! x[p] = (C[p](t) - C[p](t')) / dt          mean SYN/s of port p over the step
//! ```
//!
//! # Short-term rate and plain baseline
//!
//! Both are exponentially weighted averages of `x` over time, with time constants
//! `tau_s = short_window` and `tau_b = baseline_window`. The decay is exact for the length of
//! each step, so irregular steps, late polls and long gaps weigh history by its duration, and a
//! gap of any length is one step:
//!
//! ```text
//! alpha = 1 - exp(-dt / tau)                weight of this step
//! W     = (1 - alpha) * W + alpha           weight of all history so far (W starts at 0)
//! g     = alpha / W                         gain of this step (1 at the first step)
//! r[p]  = r[p] + g_s * (min(x[p], cap) - r[p])   short-term rate, SYN/s (tau = short_window)
//! b[p]  = b[p] + g_b * (x[p] - b[p])             plain baseline, SYN/s  (tau = baseline_window)
//! ```
//!
//! Dividing by `W` (one value per average, shared by all ports) removes the start-up bias of an
//! average started at zero: until the agent has run for about `tau` the value is the plain
//! time-average of everything seen so far; after a few `tau`, `W = 1`.
//!
//! **Spike limit.** After warm-up the short-term rate is fed at most
//! `cap = SPIKE_LIMIT * (max(r, e) + floor)` per step (`e` the expectation below, `SPIKE_LIMIT =
//! 6`). This is the Huber-type cleaning of robust exponential smoothing (Gelper, Fried & Croux,
//! "Robust forecasting with exponential and Holt-Winters smoothing", J. Forecasting 2010),
//! one-sided: a single scanner's hundred-odd SYNs within seconds on a 0.1 SYN/s port move `r` by
//! about 0.09 SYN/s instead of 1.7 SYN/s (ratio 1.5, and about 2 if the burst straddles two
//! steps), so it is not a surge of the port; a surge of up to 6x is not limited at all, and a
//! larger one still grows `r` by up to `1 + 5 * g_s` (40% at the defaults) per step, so it is
//! flagged within seconds of the unlimited rate.
//!
//! # Expectation: seasonal profile for busy ports, plain baseline for quiet ones
//!
//! Traffic that follows business hours (night trough ten times below the midday peak, a steep
//! morning ramp, quiet weekends) makes any single moving average wrong twice a day: a 6-hour
//! average lags the morning ramp by a factor of up to 6.8. Ports with a shape get an expectation
//! that knows the time of day and the day of the week. The design follows three published
//! practices: multiplicative Holt-Winters (a level times a seasonal term; Winters 1960), the
//! hour-of-week profile, and the "same time yesterday / last week" comparison common in
//! Prometheus alerting (`rate(x[1h]) / max(rate(x[1h] offset 1d), rate(x[1h] offset 1w))`),
//! made robust to low days by taking a *maximum*:
//!
//! - **Profile.** A port gets one once its plain baseline reaches [`profile::PROFILE_MIN_RATE`]
//!   (0.5 SYN/s, 1,800 SYNs an hour: an hourly mean within about 2%), while not in an episode.
//!   At most [`profile::MAX_PROFILED`] (512) ports have one; when full, once an hour the busiest
//!   port without a profile replaces the quietest profiled one if it is twice as busy; a port
//!   whose baseline falls below 0.125 SYN/s loses it. The profile holds `V[h]`, the mean SYN rate
//!   of each of the last 168 absolute hours (UNIX hour modulo 168, so UTC and no calendar),
//!   log-quantized to `u16` (0.05% steps; 0 = unknown). An hour is recorded only if at least half
//!   of it was observed; hours not observed (agent down, program detached, a step longer than
//!   5 minutes) are unknown.
//! - **Reference.** For hour `H`: `R(H) = max(V[H-24], V[H-48], V[H-72], V[H-168])` over the
//!   known ones: the same hour 1, 2 and 3 days ago and a week ago. Within the hour it is
//!   interpolated linearly between hour centres, so a ramp is followed minute by minute. The
//!   maximum makes it robust to *low* days, which are never the danger: a holiday or a weekend
//!   day never lowers the reference of the next weekday (Monday still sees Friday 3 days back;
//!   the Tuesday after a holiday Monday sees last Tuesday), and a holiday does not poison next
//!   week (next Wednesday still sees the Tuesday and Monday before it).
//! - **Level.** `A` is a per-port adjustment, an exponential average (time constant
//!   [`ADJUST_WINDOW`], 3 hours) of `(x + floor) / (R + floor)`. It makes the expectation follow
//!   the day's level: on a quiet day (weekend, holiday) it falls within hours, so a surge there is
//!   still seen against that day's level; the night trough, alike on all days, brings it back
//!   before the next morning (from 0.4 to about 0.95 over a night). A new permanent level moves
//!   it up (guarded, see below).
//! - **Expectation.** `e + floor = A * (R(t) + floor)` for a port whose profile has a reference
//!   for this hour (state `seasonal`), `e = b` otherwise (state `learning` for a profiled port
//!   without a reference yet, typically its first day; `baseline` for a quiet port).
//!
//! # Surge ratio and episodes
//!
//! ```text
//! ratio[p] = (r[p] + floor) / (e[p] + floor)
//! ```
//!
//! The floor (SYN/s) keeps quiet ports from producing huge ratios out of a handful of SYNs: a
//! port with no baseline at all must sustain `(threshold - 1) * floor` SYN/s (0.2 SYN/s, twelve
//! SYNs a minute, with the defaults) to reach the threshold.
//!
//! A port *enters* a surge episode when `ratio >= surge_threshold` after the warm-up, and
//! *leaves* it when `ratio < exit` with `exit = 1 + (threshold - 1) / 2` (2 at the default
//! threshold 3) and the episode has lasted at least [`MIN_EPISODE_WINDOWS`] short windows
//! (2 minutes). This
//! hysteresis makes a surge hovering around the threshold one episode instead of dozens. A port
//! is *flagged* while in an episode; [`PortStatus::episode_start`] says since when, and
//! [`Detector::ended_episodes`] lists the episodes the last step closed. The same episodes
//! drive `scan_surge_flagged`, the replay's `surges` and the index page.
//!
//! # Warm-up and learning
//!
//! `warmup` is measured in accepted history (the sum of the `dt` of all steps, gaps included),
//! not in wall time since start, and it is part of the saved state, so a restart or a gap never
//! restarts it. While warming up, rates, baselines and ratios are computed and reported, but
//! nothing is flagged and the guard below is off.
//!
//! A profiled port is `learning` until its profile has a reference for the current hour (a day
//! after it got the profile); meanwhile its expectation is the plain baseline and its hours are
//! recorded as seen, episodes or not (there is no normal to protect yet, as in the warm-up). The
//! shipped alert rules do not page on a learning port below a high bar (ratio 20): the first
//! day's morning ramps give ratios of up to about 7.
//!
//! # Surge guard: a surge does not teach itself into the expectation
//!
//! While a port is in an episode (after warm-up):
//! - its baseline and its level `A` move toward the current rate with the much smaller gain
//!   `1 - exp(-dt / surge_adapt_window)` (12 hours by default) instead of the ordinary one (so
//!   do they at a step whose rate is above the spike limit);
//! - its profile books the hour at the *expected* rate, not the observed one (the cleaned
//!   value of robust Holt-Winters), so tomorrow's reference does not learn today's surge.
//!
//! This is neither a hard freeze nor a clamp of the input: a clamp lets the expectation grow
//! exponentially during a long surge, and a hard freeze keeps a port flagged forever once its
//! new level is the new normal (a new service published on that port). With the slow gain a
//! one-hour 5x surge moves the expectation by about a third (ratio about 3.8, far above the
//! exit level 2), while a level that stays 5x higher for good is accepted (ratio below 2) after
//! about `surge_adapt_window * ln(4 / 2.5)`, 5.6 hours (3x: 3.5 hours, 10x: 7 hours); after that
//! the ordinary learning takes over and the profile records the new level.
//!
//! # Timing at the defaults
//!
//! For a port with expectation `e` hit by a `k`-fold surge, the short-term rate follows
//! `e + (k - 1) * e * (1 - exp(-t / tau_s))`. With `m = threshold * (e + floor) - floor - e`
//! (how far above `e` the rate must be to be flagged) and `x = (k - 1) * e` (the excess):
//! - detection delay: `tau_s * ln(x / (x - m))`, e.g. 45 s for 5x on a 2 SYN/s port, 72 s for
//!   4x;
//! - end of the episode after the surge stops: `tau_s * ln(x / (e + floor))` (below the exit
//!   level), at least two short windows after its start: e.g. 83 s for 5x, 4 minutes for 50x,
//!   7 minutes for 1000x.
//!
//! Measured by `cargo xtask eval` (seeded, generated days and weeks whose every SYN runs through
//! the real XDP program, detector at its defaults; see `scan_lab::eval`), full run of
//! 2026-12-02:
//!
//! | scenario | surges found | >= 5x, >= 15 min: one episode, flagged <= 2 min, ended <= 10 min | detection delay | end delay | false episodes, day 1 | false episodes from day 2, cyclic / flat ports | false pages, day 1 / all |
//! |---|---:|---:|---:|---:|---:|---:|---:|
//! | diurnal-3day (3x cycle, 5x surge) | 1/1 | 1/1 | 50 s | 70 s | 0 | 0 / 0 | 0 / 0 |
//! | business-week (10x day/night, steep ramp, weekends; a 3x cycle) | - | - | - | - | 1 | 0 / 0 | 0 / 0 |
//! | background-bursts (flat, single-host bursts) | - | - | - | - | 0 | 0 / 0 | 0 / 0 |
//! | true-surges (3x-50x: ramp, night, midday, weekend) | 8/9 | 7/7 | 15-130 s | 30-170 s | 2 | 0 / 0 | 0 / 0 |
//! | level-change (5x for good; a new service) | - | - | - | - | 1 | 0 / 0 | 0 / 0 |
//! | holiday-week (a Wednesday like a Sunday) | - | - | - | - | 2 | 0 / 0 | 0 / 0 |
//! | **total** | **9/10** | **8/8** | **15-130 s** | **30-170 s** | **6** | **0 / 0** | **0 / 0** |
//!
//! Every surge of 5x or more is one episode, flagged 15-90 s after it starts and ended 50-170 s
//! after it stops. 3x surges are below that bar and at the threshold itself: `(3e + floor) /
//! (e + floor) < 3`, so one is flagged only where the expectation is below the port's normal
//! (the one during a ramp, after 130 s) and not at night. No false
//! episode from the second day on (0.00 per port-week), and no page from the shipped rules'
//! replica on any day: the 6 first-day episodes are ports still learning their profile, which
//! the rules do not page on. A 5x permanent level is accepted after 5.4 hours, a new service
//! after 6.1 hours.
//!
//! # Unobserved time, counter resets, clock steps
//!
//! - First step: the counters are only stored as the reference; rates stay 0 and no history is
//!   counted.
//! - [`Detector::resume`]: the time since the previous reading was *unobserved* (the program
//!   was not attached, or the machine rebooted and the counters restarted from 0). The reading
//!   becomes the reference; no rate, baseline, level, episode or warm-up changes, and the profile
//!   hours inside the outage become unknown. Time across which a kept link counted is an
//!   ordinary step.
//! - A counter lower than at the previous step (the map was recreated): the new value is taken as
//!   the delta, a lower bound, and counted ([`Detector::counter_resets_total`]).
//! - `now` equal to the previous step: the step is ignored; the SYNs go into the next step.
//! - `now` earlier than the previous step (clock stepped back): nothing is updated, the reading
//!   becomes the reference, and it is counted ([`Detector::clock_steps_total`]).
//! - A long gap with counting (agent down, program attached): one step; the delta is spread
//!   over the gap, the baseline moves toward the gap's mean with the exact weight of the gap, and
//!   the gap counts toward the warm-up; its hours are unknown to the profiles.
//! - `cumulative` shorter than [`PORTS`]: the missing ports are treated as unchanged; entries
//!   beyond [`PORTS`] are ignored.
//! - Values below [`ZERO_RATE`] SYN/s are flushed to exactly 0, so idle ports fall back to the
//!   all-zero state (skipped by the per-step loop, left out of the snapshot).
//!
//! # Cost
//!
//! Per port: one `u64` reference counter and two `f64` (1.5 MiB for all ports), plus a list of
//! the ports with any state. Per profile (at most 512): 168 `u16` bins and six `f64`, about
//! 400 bytes (200 KiB for all 512, plus a 128 KiB port-to-profile index); in the saved state
//! about 390 bytes each in a binary encoding (about 1.2 KB each as JSON). A step compares the counters with the
//! references in 4 KiB blocks (`memcmp`), then updates only the ports that changed or still have
//! state: O(PORTS) whatever the gap, plus O(profiles) for the hour bookkeeping (and at most
//! 168 bins per profile once when a gap is crossed).
//!
//! Measured by `cargo xtask bench` (full run of 2026-12-02, release build, 2 cores shared with
//! other builds; `BENCHMARKS.md`, section 4): with all 65,536 ports active and 512 profiled, a
//! step takes 0.68 ms of CPU (median of 39; wall time 0.70 ms), 0.99 ms across an hour
//! boundary, 1.42 ms at the slowest: within the 2 ms budget. The agent itself (attacher plus
//! worker, every port getting SYNs and clients scraping every endpoint) is resident at 33.5 MiB
//! summed over its two processes (11.2 MiB attacher, 23.1 MiB worker; 29.9 MiB idle in the same
//! run): the binary's text and libraries count in both processes (15.0 MiB together) and the
//! worker's mapping of the BPF maps (6.3 MiB of kernel memory) counts too; with shared pages
//! counted once (PSS) it is 22.0 MiB. The detector's own share is the 1.5 MiB of per-port
//! arrays, the profiles and the `PortTable`s HTTP answers from (two of 1.5 MiB, refilled in
//! place; see `api`); HTTP no longer holds a copy of the detector per poll. The agent's whole
//! poll (reading the counters, this step, the sketches, ranking the top ports) took 3.1 ms
//! of wall time on average on that loaded machine (0.35 ms idle).
pub mod profile;
mod state;

pub use state::{DetectorState, EpisodeSnapshot, PortSnapshot, ProfileSnapshot};

use profile::{PROFILE_DROP_RATE, PROFILE_MIN_RATE, Profiles, UNKNOWN, hour_of};
use std::collections::BTreeMap;
use std::time::Duration;

/// Number of TCP destination ports; the length of the cumulative counter slice.
pub const PORTS: usize = 65_536;

/// Format version of [`DetectorState`]; bump it on any change of the saved fields or of their
/// meaning. A state file of another version is refused, never reinterpreted.
pub const STATE_VERSION: u32 = 2;

/// A port whose short-term rate is at least this many SYN/s is *active* (see
/// [`Detector::active_ports`]). One SYN lifts the short-term rate of an idle port to about
/// `1 / 60` SYN/s with the default one-minute window, so a port stays active for about 30 s after
/// a single SYN, and for as long as it keeps receiving roughly one SYN a minute or more.
pub const ACTIVE_RATE: f64 = 0.01;

/// Rates and baselines below this many SYN/s (one SYN in about 30 years) are flushed to 0.
pub const ZERO_RATE: f64 = 1e-9;

/// Default step period: 5 s. Reading all counters costs microseconds and a step over all ports
/// well under a millisecond, while 5 s is 12 steps per short window, so the short-term rate is
/// smooth and a surge is seen within one or two steps of crossing the threshold.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default short-term window: 1 minute. Long enough that a 2 SYN/s port has about 120 SYNs in
/// its window (Poisson noise about 9%, so a 3x ratio is far out of reach of noise), short enough
/// to detect a 5x surge in under a minute and to fall back within a minute after it ends.
pub const DEFAULT_SHORT_WINDOW: Duration = Duration::from_secs(60);
/// Default baseline window: 6 hours. Much longer than any surge we want to see (minutes to
/// hours, which the guard also protects), short enough to follow the daily cycle of background
/// scanning: a smooth 3x day/night swing gives ratios of at most about 1.4, far below the
/// threshold.
pub const DEFAULT_BASELINE_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// Default warm-up: 15 minutes, fifteen short windows. By then the baseline is the mean of 15
/// minutes of traffic, whose Poisson noise is less than half that of the short-term rate, and the
/// short-term rate has long forgotten the start.
pub const DEFAULT_WARMUP: Duration = Duration::from_secs(15 * 60);
/// Default surge threshold: 3. About twice the largest ratio a smooth 3x daily cycle produces
/// (1.44), above the Poisson noise of any port once the floor is added (a week of simulated
/// 0.1-0.3 SYN/s traffic peaks at 1.9), and low enough that a 5x surge is flagged within a
/// minute.
pub const DEFAULT_SURGE_THRESHOLD: f64 = 3.0;
/// Default floor: 0.1 SYN/s (6 SYNs a minute). Below that, a one-minute window holds too few
/// SYNs for a meaningful rate (±40% noise at 6 SYNs); with the floor, an idle port needs a
/// sustained 0.2 SYN/s (12 SYNs a minute) to be flagged, while the ratio of ports above
/// about 1 SYN/s is barely affected.
pub const DEFAULT_FLOOR: f64 = 0.1;
/// Default surge adaptation window: 12 hours. While a port is in a surge episode its expectation
/// moves toward the surge with this time constant instead of `baseline_window`: a one-hour 5x
/// surge stays flagged (expectation about +33%, ratio about 3.8, far above the exit level 2), a
/// level that stays 5x higher for good is accepted as the new normal after about 5.6 hours
/// (expectation 2.5x, ratio below the exit level), 3x after about 3.5 hours, 10x after about
/// 7 hours.
pub const DEFAULT_SURGE_ADAPT_WINDOW: Duration = Duration::from_secs(12 * 3600);

/// Parameters of the detector. Every field has a documented default (the `DEFAULT_*` constants).
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorConfig {
    /// Step period: how often the agent reads the counters and calls [`Detector::step`].
    /// The detector itself accepts any spacing of steps; the agent uses this value.
    /// Default [`DEFAULT_INTERVAL`].
    pub interval: Duration,
    /// Time constant of the short-term rate. Default [`DEFAULT_SHORT_WINDOW`].
    pub short_window: Duration,
    /// Time constant of the learned baseline. Default [`DEFAULT_BASELINE_WINDOW`].
    pub baseline_window: Duration,
    /// No port is flagged before this much history (sum of step lengths, gaps included, kept
    /// across restarts through the state). Default [`DEFAULT_WARMUP`].
    pub warmup: Duration,
    /// Ratio at or above which a port is flagged. Default [`DEFAULT_SURGE_THRESHOLD`].
    pub surge_threshold: f64,
    /// SYN/s added to the numerator and denominator of the ratio. Default [`DEFAULT_FLOOR`].
    pub floor: f64,
    /// Time constant with which the baseline of a port at or above the threshold still moves
    /// toward its current rate, so that a lasting new level eventually becomes the new normal.
    /// Use a very large value (e.g. 100 years) to freeze flagged baselines completely.
    /// Default [`DEFAULT_SURGE_ADAPT_WINDOW`].
    pub surge_adapt_window: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            short_window: DEFAULT_SHORT_WINDOW,
            baseline_window: DEFAULT_BASELINE_WINDOW,
            warmup: DEFAULT_WARMUP,
            surge_threshold: DEFAULT_SURGE_THRESHOLD,
            floor: DEFAULT_FLOOR,
            surge_adapt_window: DEFAULT_SURGE_ADAPT_WINDOW,
        }
    }
}

/// A detector parameter that makes no sense; the message names the parameter and the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("detector {name} must be longer than zero; give a duration such as {example}")]
    ZeroDuration {
        /// Parameter name.
        name: &'static str,
        /// A sensible value to suggest.
        example: &'static str,
    },
    /// The short window is not shorter than the baseline window.
    #[error(
        "detector short window ({short}) must be shorter than the baseline window ({baseline}), \
         otherwise the ratio is always about 1; e.g. 1m and 6h"
    )]
    WindowsOrder {
        /// Short window, human readable.
        short: String,
        /// Baseline window, human readable.
        baseline: String,
    },
    /// The surge threshold is not a finite number above 1.
    #[error(
        "detector surge threshold must be a finite number above 1 (got {0}); e.g. 3 flags ports \
         at three times their baseline"
    )]
    Threshold(f64),
    /// The floor is not a finite positive number.
    #[error(
        "detector floor must be a finite number of SYN/s above 0 and at most 1e12 (got {0}); \
         e.g. 0.1"
    )]
    Floor(f64),
}

impl DetectorConfig {
    /// Checks that the parameters make sense. The detector never panics and never produces
    /// NaN even with a config that fails this check, but its output would be meaningless: call
    /// this when reading flags and the config file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value, example) in [
            ("interval", self.interval, "5s"),
            ("short window", self.short_window, "1m"),
            ("baseline window", self.baseline_window, "6h"),
            ("surge adapt window", self.surge_adapt_window, "12h"),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { name, example });
            }
        }
        if self.short_window >= self.baseline_window {
            return Err(ConfigError::WindowsOrder {
                short: humantime::format_duration(self.short_window).to_string(),
                baseline: humantime::format_duration(self.baseline_window).to_string(),
            });
        }
        if !(self.surge_threshold.is_finite() && self.surge_threshold > 1.0) {
            return Err(ConfigError::Threshold(self.surge_threshold));
        }
        if !(self.floor.is_finite() && self.floor > 0.0 && self.floor <= MAX_FLOOR) {
            return Err(ConfigError::Floor(self.floor));
        }
        Ok(())
    }

    /// The floor actually used: finite, in `0..=MAX_FLOOR` (0 for NaN).
    fn effective_floor(&self) -> f64 {
        if self.floor.is_finite() {
            self.floor.clamp(0.0, MAX_FLOOR)
        } else {
            0.0
        }
    }
}

/// Largest floor used; keeps `baseline + floor` far from overflow.
const MAX_FLOOR: f64 = 1e12;
/// Smallest denominator of the ratio (only reached with a floor of 0).
const MIN_DENOMINATOR: f64 = 1e-12;
/// Ports compared per block when looking for changed counters (4 KiB of `u64`).
const BLOCK: usize = 512;
/// Ports compared per sub-block of a block that changed (256 bytes).
const SUB_BLOCK: usize = 32;

/// An episode lasts at least this many short windows (2 minutes at the default), so a surge
/// hovering around the threshold is one episode, not one per crossing.
pub const MIN_EPISODE_WINDOWS: u32 = 2;
/// Spike limit: after warm-up, one step's rate feeds the short-term rate at most this many
/// times `max(rate, expected) + floor`. One scanner's burst of a hundred SYNs in a few seconds
/// moves the short-term rate of a quiet port by a tenth of a SYN/s instead of a few SYN/s; a
/// surge of up to 6x is not limited, a larger one still grows the rate by up to `1 + 5 * g`
/// (40% at the defaults) per step.
pub const SPIKE_LIMIT: f64 = 6.0;
/// A step longer than this (seconds) is not booked into any hour of the profiles: a mean over a
/// long gap has no shape.
const MAX_PROFILE_STEP: f64 = 300.0;
/// Time constant of the profile adjustment `A`: 3 hours. Short enough that a quiet day (a
/// weekend, a holiday) lowers the expectation within hours, so a surge on it is still seen, and
/// that the night trough (alike on all days) brings it back before the next morning; long
/// enough that a 3-hour outage of a service (input near 0) leaves `A` at about 0.4, so its
/// return is not a surge.
pub const ADJUST_WINDOW: Duration = Duration::from_secs(3 * 3600);
/// Bounds of the profile adjustment `A`.
const ADJUST_RANGE: (f64, f64) = (1e-3, 1e6);

/// The level below which an open episode ends (after [`MIN_EPISODE_WINDOWS`] short windows): halfway between 1 and
/// the threshold (2 at the default threshold 3).
pub fn exit_ratio(threshold: f64) -> f64 {
    1.0 + (threshold - 1.0) / 2.0
}

/// Where a port's expectation comes from. Exported as a state set
/// (`scan_port_learning_state{port,state}`, 1 for the current state, 0 for the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LearningState {
    /// The agent's warm-up is not over: nothing is flagged.
    WarmingUp,
    /// The port is busy enough for a seasonal profile, but the profile has no reference for
    /// this hour yet (typically its first day): the expectation is the plain baseline, which
    /// does not know the daily cycle. Alerts should not page on it, except for large surges.
    Learning,
    /// Too quiet for a profile: the expectation is the plain learned baseline.
    Baseline,
    /// The expectation comes from the port's seasonal profile.
    Seasonal,
}

impl LearningState {
    /// Every state, in export order.
    pub const ALL: [Self; 4] = [
        Self::WarmingUp,
        Self::Learning,
        Self::Baseline,
        Self::Seasonal,
    ];

    /// The `state` label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::WarmingUp => "warming_up",
            Self::Learning => "learning",
            Self::Baseline => "baseline",
            Self::Seasonal => "seasonal",
        }
    }
}

/// What one port looks like after the last step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PortStatus {
    /// Destination port.
    pub port: u16,
    /// Short-term SYN rate, SYN/s.
    pub rate: f64,
    /// Learned plain baseline SYN rate (no seasonality), SYN/s.
    pub baseline: f64,
    /// Expected SYN rate for this port now, SYN/s: seasonal when the port has a usable
    /// profile, else the baseline.
    pub expected: f64,
    /// `(rate + floor) / (expected + floor)`; computed during warm-up too.
    pub ratio: f64,
    /// The port is in a surge episode (never during warm-up).
    pub flagged: bool,
    /// When the current episode started (detector time), if in one.
    pub episode_start: Option<Duration>,
    /// Where the expectation comes from.
    pub learning: LearningState,
}

/// A surge episode that ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Episode {
    pub port: u16,
    /// The step at which the port was first flagged.
    pub start: Duration,
    /// The step at which it was no longer flagged.
    pub end: Duration,
    /// Highest ratio at the steps in between.
    pub peak_ratio: f64,
}

/// What the last call to [`Detector::step`] or [`Detector::resume`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// No step yet since the detector was created or restored.
    NotStepped,
    /// First reading: stored as the reference, nothing updated.
    First,
    /// Rates and baselines updated. `counter_resets`: ports whose counter went backwards (map
    /// recreated); their new value was taken as the delta.
    Updated {
        /// Number of ports whose counter was lower than at the previous step.
        counter_resets: u32,
    },
    /// `now` equal to the previous step: ignored, the SYNs go into the next step.
    RepeatedTime,
    /// `now` earlier than the previous step: nothing updated, the new reading is the reference.
    TimeWentBackwards {
        /// How far back the clock went.
        by: Duration,
    },
    /// [`Detector::resume`]: the reading became the reference; the time since the previous
    /// reading was unobserved.
    Resumed,
}

/// An episode still open.
#[derive(Clone, Copy, Debug, PartialEq)]
struct OpenEpisode {
    start: Duration,
    peak_ratio: f64,
}

/// Per-port surge detector. See the module documentation for the maths. (HTTP renders from a
/// [`StatusView`] and a copy of [`Detector::rates`], not from a clone of this.)
#[derive(Clone)]
pub struct Detector {
    config: DetectorConfig,
    /// Time of the last accepted reading (the reference).
    last_now: Option<Duration>,
    /// Accepted history: sum of the step lengths.
    history: Duration,
    /// Total weight `W` of the short-term average.
    short_weight: f64,
    /// Total weight `W` of the baseline average.
    baseline_weight: f64,
    /// Reference counters, one per port.
    last: Box<[u64]>,
    /// Short-term rate per port, SYN/s.
    rate: Box<[f64]>,
    /// Baseline per port, SYN/s.
    baseline: Box<[f64]>,
    /// Ports with a non-zero rate or baseline, a profile or an episode, in no particular order.
    live: Vec<u16>,
    /// Membership of `live`.
    is_live: Box<[bool]>,
    profiles: Profiles,
    episodes: BTreeMap<u16, OpenEpisode>,
    /// Episodes that ended at the last step.
    ended: Vec<Episode>,
    counter_resets: u64,
    clock_steps: u64,
    outcome: StepOutcome,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("config", &self.config)
            .field("last_now", &self.last_now)
            .field("history", &self.history)
            .field("live_ports", &self.live.len())
            .field("profiles", &self.profiles.slots.len())
            .field("episodes", &self.episodes.len())
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

/// `1 - exp(-dt / tau)` in `0..=1`, accurate for tiny `dt / tau`; 1 for a zero `tau`.
pub(crate) fn step_weight(dt: f64, tau: Duration) -> f64 {
    let tau = tau.as_secs_f64();
    if tau > 0.0 {
        (-(-dt / tau).exp_m1()).clamp(0.0, 1.0)
    } else {
        1.0
    }
}

/// Updates a total weight `W` and returns the new `(W, gain)`.
pub(crate) fn debiased_gain(weight: f64, alpha: f64) -> (f64, f64) {
    let weight = (1.0 - alpha) * weight + alpha;
    let gain = if weight > 0.0 {
        (alpha / weight).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (weight, gain)
}

/// Flushes negligible, negative or non-finite values to 0.
fn flush(value: f64) -> f64 {
    if value >= ZERO_RATE && value.is_finite() {
        value
    } else {
        0.0
    }
}

/// `expected + floor` (the denominator of the ratio), at least [`MIN_DENOMINATOR`].
fn expected_floor(adjust: f64, reference: Option<f64>, baseline: f64, floor: f64) -> f64 {
    let e = match reference {
        Some(reference) => adjust * (reference + floor),
        None => baseline + floor,
    };
    if e.is_finite() {
        e.max(MIN_DENOMINATOR)
    } else {
        MIN_DENOMINATOR
    }
}

/// Highest ratio first, ties by port number.
fn by_ratio(a: &PortStatus, b: &PortStatus) -> std::cmp::Ordering {
    b.ratio.total_cmp(&a.ratio).then(a.port.cmp(&b.port))
}

fn secs(t: Duration) -> f64 {
    t.as_secs_f64()
}

/// A port's ratio ordered by rank as [`by_ratio`] orders statuses: the highest ratio (ties:
/// the lowest port) is the *smallest*, so a max-heap of them pops the lowest-ranked first and
/// sorts highest-ranked first.
#[derive(Clone, Copy)]
struct Ranked {
    ratio: f64,
    port: u16,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .ratio
            .total_cmp(&self.ratio)
            .then(self.port.cmp(&other.port))
    }
}

/// The status of `port` from its rate and baseline, its profile's adjustment and reference
/// (`None`: no profile), its open episode's start and the warm-up: the one definition behind
/// [`Detector::status`] and [`StatusView::status`].
fn port_status(
    port: u16,
    rate: f64,
    baseline: f64,
    seasonal: Option<(f64, Option<f64>)>,
    episode_start: Option<Duration>,
    warming_up: bool,
    floor: f64,
) -> PortStatus {
    let (adjust, reference) = seasonal.unwrap_or((1.0, None));
    let e = expected_floor(adjust, reference, baseline, floor);
    let episode_start = if warming_up { None } else { episode_start };
    PortStatus {
        port,
        rate,
        baseline,
        expected: (e - floor).max(0.0),
        ratio: (rate + floor) / e,
        flagged: episode_start.is_some(),
        episode_start,
        learning: if warming_up {
            LearningState::WarmingUp
        } else if reference.is_some() {
            LearningState::Seasonal
        } else if seasonal.is_some() {
            LearningState::Learning
        } else {
            LearningState::Baseline
        },
    }
}

/// The detector after a step, minus its per-port arrays: see [`Detector::status_view`].
/// Small (config, the profiled ports' level and reference, the open episodes), immutable.
#[derive(Clone, Debug)]
pub struct StatusView {
    config: DetectorConfig,
    history: Duration,
    active_ports: usize,
    profiled_ports: usize,
    /// `(port, adjust, reference now)` of every profiled port, by port.
    seasonal: Vec<(u16, f64, Option<f64>)>,
    /// `(port, start)` of every open episode, by port.
    episodes: Vec<(u16, Duration)>,
}

impl StatusView {
    /// What [`Detector::status`] returned for `port` at the step this view was taken, given
    /// the port's `rate` and `baseline` then ([`Detector::rates`]).
    pub fn status(&self, port: u16, rate: f64, baseline: f64) -> PortStatus {
        let seasonal = self
            .seasonal
            .binary_search_by_key(&port, |entry| entry.0)
            .ok()
            .map(|at| (self.seasonal[at].1, self.seasonal[at].2));
        let episode_start = self
            .episodes
            .binary_search_by_key(&port, |entry| entry.0)
            .ok()
            .map(|at| self.episodes[at].1);
        port_status(
            port,
            rate,
            baseline,
            seasonal,
            episode_start,
            self.warming_up(),
            self.config.effective_floor(),
        )
    }

    /// As [`Detector::warming_up`].
    pub fn warming_up(&self) -> bool {
        self.history < self.config.warmup
    }

    /// As [`Detector::warmup_remaining`].
    pub fn warmup_remaining(&self) -> Duration {
        self.config.warmup.saturating_sub(self.history)
    }

    /// As [`Detector::active_ports`].
    pub fn active_ports(&self) -> usize {
        self.active_ports
    }

    /// As [`Detector::profiled_ports`].
    pub fn profiled_ports(&self) -> usize {
        self.profiled_ports
    }

    /// As [`Detector::config`].
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }
}

impl Detector {
    /// A detector with no history (it will warm up).
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            last_now: None,
            history: Duration::ZERO,
            short_weight: 0.0,
            baseline_weight: 0.0,
            last: vec![0; PORTS].into_boxed_slice(),
            rate: vec![0.0; PORTS].into_boxed_slice(),
            baseline: vec![0.0; PORTS].into_boxed_slice(),
            live: Vec::new(),
            is_live: vec![false; PORTS].into_boxed_slice(),
            profiles: Profiles::default(),
            episodes: BTreeMap::new(),
            ended: Vec::new(),
            counter_resets: 0,
            clock_steps: 0,
            outcome: StepOutcome::NotStepped,
        }
    }

    fn set_reference(&mut self, now: Duration, cumulative: &[u64]) {
        self.last[..cumulative.len()].copy_from_slice(cumulative);
        self.last_now = Some(now);
    }

    /// Feeds the kernel's cumulative per-port SYN counters (summed over CPUs, index = port,
    /// length [`PORTS`]) read at `now` (time since the UNIX epoch, or capture time in replay).
    ///
    /// - First call: the counters become the reference; nothing else changes.
    /// - A counter lower than its reference (map recreated): its new value is the delta.
    /// - `now` equal to the previous step: ignored; `now` earlier: nothing is updated and the
    ///   reading becomes the new reference (see the module documentation).
    /// - A long gap: the delta is spread over the gap in one step (O(1) in the gap's length);
    ///   the gap counts toward the warm-up. For time the program was *not* counting, call
    ///   [`Detector::resume`] instead.
    /// - A shorter slice: the missing ports are unchanged; entries beyond [`PORTS`] are ignored.
    ///
    /// See [`Detector::last_outcome`] for what the call did and [`Detector::ended_episodes`]
    /// for the episodes it closed.
    pub fn step(&mut self, now: Duration, cumulative: &[u64]) {
        let cumulative = &cumulative[..cumulative.len().min(PORTS)];
        self.ended.clear();
        let Some(last_now) = self.last_now else {
            self.set_reference(now, cumulative);
            self.profiles.restart(hour_of(secs(now)));
            self.outcome = StepOutcome::First;
            return;
        };
        if now == last_now {
            self.outcome = StepOutcome::RepeatedTime;
            return;
        }
        if now < last_now {
            self.set_reference(now, cumulative);
            self.profiles.restart(hour_of(secs(now)));
            self.clock_steps = self.clock_steps.saturating_add(1);
            self.outcome = StepOutcome::TimeWentBackwards { by: last_now - now };
            return;
        }

        let dt = now - last_now;
        let dt_secs = dt.as_secs_f64();
        let (from, to) = (secs(last_now), secs(now));
        self.last_now = Some(now);
        self.history = self.history.saturating_add(dt);
        let guard_on = !self.warming_up();

        let (short_weight, short_gain) = debiased_gain(
            self.short_weight,
            step_weight(dt_secs, self.config.short_window),
        );
        let (baseline_weight, baseline_gain) = debiased_gain(
            self.baseline_weight,
            step_weight(dt_secs, self.config.baseline_window),
        );
        self.short_weight = short_weight;
        self.baseline_weight = baseline_weight;
        let guard_gain = step_weight(dt_secs, self.config.surge_adapt_window).min(baseline_gain);
        let adjust_gain = step_weight(dt_secs, ADJUST_WINDOW);
        let adjust_guard = step_weight(dt_secs, self.config.surge_adapt_window).min(adjust_gain);
        let floor = self.config.effective_floor();
        let threshold = self.config.surge_threshold;
        let exit = exit_ratio(threshold);
        let min_episode = self.config.short_window.saturating_mul(MIN_EPISODE_WINDOWS);
        self.profiles.refresh(hour_of(to));

        // Ports whose counter changed join the live list: compare 4 KiB blocks, then 256-byte
        // sub-blocks of the blocks that differ, then the ports of the sub-blocks that differ.
        for (block, (new, old)) in cumulative
            .chunks(BLOCK)
            .zip(self.last.chunks(BLOCK))
            .enumerate()
        {
            if new == old {
                continue;
            }
            for (sub, (new, old)) in new.chunks(SUB_BLOCK).zip(old.chunks(SUB_BLOCK)).enumerate() {
                if new == old {
                    continue;
                }
                for (i, (n, o)) in new.iter().zip(old).enumerate() {
                    let port = block * BLOCK + sub * SUB_BLOCK + i;
                    if n != o && !self.is_live[port] {
                        self.is_live[port] = true;
                        // `port < PORTS = 2^16`, so the cast is exact.
                        self.live.push(port as u16);
                    }
                }
            }
        }

        let mut counter_resets = 0u32;
        let Self {
            live,
            is_live,
            last,
            rate,
            baseline,
            profiles,
            episodes,
            ended,
            ..
        } = self;
        live.retain(|&port| {
            let p = usize::from(port);
            let current = cumulative.get(p).copied().unwrap_or(last[p]);
            let delta = if current >= last[p] {
                current - last[p]
            } else {
                counter_resets = counter_resets.saturating_add(1);
                current
            };
            last[p] = current;
            // At most u64::MAX / 1 ns: about 1.8e28, finite.
            let x = delta as f64 / dt_secs;

            let slot = profiles.slot(p);
            let (adjust, reference) = match slot {
                Some(s) => (profiles.slots[s].adjust, profiles.slots[s].reference_at(to)),
                None => (1.0, None),
            };
            let b = baseline[p];
            let e = expected_floor(adjust, reference, b, floor);
            // Spike limit (after warm-up): one step feeds at most SPIKE_LIMIT times the larger
            // of the current rate and the expectation.
            let cap = SPIKE_LIMIT * (rate[p].max(e - floor) + floor);
            let spiking = guard_on && x > cap;
            let xr = if spiking { cap } else { x };
            let r = flush(rate[p] + short_gain * (xr - rate[p]));
            let ratio = (r + floor) / e;

            let in_episode = if !guard_on {
                false
            } else if let Some(open) = episodes.get_mut(&port) {
                open.peak_ratio = open.peak_ratio.max(ratio);
                if ratio < exit && now.saturating_sub(open.start) >= min_episode {
                    ended.push(Episode {
                        port,
                        start: open.start,
                        end: now,
                        peak_ratio: open.peak_ratio,
                    });
                    episodes.remove(&port);
                    false
                } else {
                    true
                }
            } else if ratio >= threshold {
                episodes.insert(
                    port,
                    OpenEpisode {
                        start: now,
                        peak_ratio: ratio,
                    },
                );
                true
            } else {
                false
            };

            // A step above the spike limit is guarded like an episode: it is either a burst
            // (not normal) or the start of a surge that the limit is still catching up with.
            let guarded = in_episode || spiking;
            let gain = if guarded { guard_gain } else { baseline_gain };
            let b = flush(b + gain * (x - b));
            rate[p] = r;
            baseline[p] = b;

            let mut profiled = false;
            if let Some(s) = slot {
                profiled = true;
                let slot = &mut profiles.slots[s];
                if let Some(reference) = reference {
                    let u = (x + floor) / (reference + floor).max(MIN_DENOMINATOR);
                    let g = if guarded { adjust_guard } else { adjust_gain };
                    let a = slot.adjust + g * (u - slot.adjust);
                    slot.adjust = if a.is_finite() {
                        a.clamp(ADJUST_RANGE.0, ADJUST_RANGE.1)
                    } else {
                        1.0
                    };
                }
                // A surge does not teach itself into the profile: while in an episode the hour
                // is booked at the expected rate. While learning (no reference yet) everything
                // is booked as seen, like the warm-up.
                slot.step_syns = if in_episode && reference.is_some() {
                    (e - floor).max(0.0) * dt_secs
                } else {
                    delta as f64
                };
            } else if b >= PROFILE_MIN_RATE && !in_episode && !profiles.is_full() {
                profiles.admit(port);
                profiled = true;
            }

            let keep = r != 0.0 || b != 0.0 || profiled || in_episode;
            if !keep {
                is_live[p] = false;
            }
            keep
        });
        self.profiles.account(from, to, MAX_PROFILE_STEP);
        if hour_of(from) != hour_of(to) {
            self.rebalance_profiles();
        }
        self.counter_resets = self
            .counter_resets
            .saturating_add(u64::from(counter_resets));
        self.outcome = StepOutcome::Updated { counter_resets };
    }

    /// Once an hour: ports gone quiet lose their profile; when the set is full, the busiest
    /// port without one takes the place of the quietest profiled port if it is at least twice
    /// as busy (so the set follows the traffic without churning).
    fn rebalance_profiles(&mut self) {
        let quiet: Vec<u16> = self
            .profiles
            .slots
            .iter()
            .map(|slot| slot.port)
            .filter(|&port| self.baseline[usize::from(port)] < PROFILE_DROP_RATE)
            .collect();
        for port in quiet {
            self.profiles.remove(port);
        }
        if !self.profiles.is_full() {
            return;
        }
        let busiest = self
            .live
            .iter()
            .copied()
            .filter(|&port| {
                self.profiles.slot(usize::from(port)).is_none()
                    && !self.episodes.contains_key(&port)
            })
            .max_by(|&a, &b| {
                self.baseline[usize::from(a)].total_cmp(&self.baseline[usize::from(b)])
            });
        let quietest = self
            .profiles
            .slots
            .iter()
            .map(|slot| slot.port)
            .min_by(|&a, &b| {
                self.baseline[usize::from(a)].total_cmp(&self.baseline[usize::from(b)])
            });
        if let (Some(busiest), Some(quietest)) = (busiest, quietest)
            && self.baseline[usize::from(busiest)]
                > 2.0 * self.baseline[usize::from(quietest)].max(PROFILE_MIN_RATE / 2.0)
        {
            self.profiles.remove(quietest);
            self.profiles.admit(busiest);
        }
    }

    /// Takes `cumulative` read at `now` as the new reference without learning anything from
    /// the time since the previous reading: that time was *unobserved* (the program was not
    /// attached, the machine rebooted and the counters restarted from 0). Rates, baselines,
    /// profiles' levels, episodes and the warm-up are unchanged; the profile hours inside the
    /// outage become unknown (at most a week of them: O(1) in the outage's length). The next
    /// [`Detector::step`] is an ordinary step from here.
    pub fn resume(&mut self, now: Duration, cumulative: &[u64]) {
        let cumulative = &cumulative[..cumulative.len().min(PORTS)];
        self.ended.clear();
        match self.last_now {
            Some(previous) => {
                if now < previous {
                    self.clock_steps = self.clock_steps.saturating_add(1);
                }
                self.profiles.skip(secs(previous), secs(now));
            }
            None => self.profiles.restart(hour_of(secs(now))),
        }
        self.set_reference(now, cumulative);
        self.outcome = StepOutcome::Resumed;
    }

    /// What the last call to [`Detector::step`] did.
    pub fn last_outcome(&self) -> StepOutcome {
        self.outcome
    }

    /// Ports whose counter went backwards (map recreated), summed over all steps of this
    /// process (not saved).
    pub fn counter_resets_total(&self) -> u64 {
        self.counter_resets
    }

    /// Times the clock went backwards between two readings, over this process (not saved).
    pub fn clock_steps_total(&self) -> u64 {
        self.clock_steps
    }

    /// Time of the last accepted reading, if any.
    pub fn last_step(&self) -> Option<Duration> {
        self.last_now
    }

    /// Accepted history so far (sum of step lengths, gaps included).
    pub fn history(&self) -> Duration {
        self.history
    }

    /// The state of one port after the last step.
    pub fn status(&self, port: u16) -> PortStatus {
        let p = usize::from(port);
        port_status(
            port,
            self.rate[p],
            self.baseline[p],
            self.seasonal(p),
            self.episodes.get(&port).map(|open| open.start),
            self.warming_up(),
            self.config.effective_floor(),
        )
    }

    /// A profiled port's adjustment `A` and its reference at the last step (`None` while
    /// learning); `None` for a port without a profile.
    fn seasonal(&self, p: usize) -> Option<(f64, Option<f64>)> {
        self.profiles.get(p).map(|slot| {
            (
                slot.adjust,
                self.last_now.and_then(|t| slot.reference_at(secs(t))),
            )
        })
    }

    /// Everything [`Detector::status`] needs besides the per-port short-term rates and
    /// baselines ([`Detector::rates`]), as an immutable value: readers such as the HTTP view
    /// answer for any port from it and a copy of those two arrays, without a copy of the
    /// whole detector (whose counters, live list and profile bins they never need).
    pub fn status_view(&self) -> StatusView {
        let mut seasonal: Vec<(u16, f64, Option<f64>)> = self
            .profiles
            .slots
            .iter()
            .filter_map(|slot| {
                let (adjust, reference) = self.seasonal(usize::from(slot.port))?;
                Some((slot.port, adjust, reference))
            })
            .collect();
        seasonal.sort_unstable_by_key(|entry| entry.0);
        StatusView {
            config: self.config.clone(),
            history: self.history,
            active_ports: self.active_ports(),
            profiled_ports: self.profiles.slots.len(),
            seasonal,
            // A BTreeMap iterates in port order.
            episodes: self
                .episodes
                .iter()
                .map(|(&port, open)| (port, open.start))
                .collect(),
        }
    }

    /// Short-term rates and baselines (SYN/s) of every port, index = port.
    pub fn rates(&self) -> (&[f64], &[f64]) {
        (&self.rate, &self.baseline)
    }

    /// Episodes that ended at the last step, by port.
    pub fn ended_episodes(&self) -> &[Episode] {
        &self.ended
    }

    /// Open episodes (also during warm-up, when none is flagged): port, start, peak ratio.
    pub fn open_episodes(&self) -> impl Iterator<Item = (u16, Duration, f64)> + '_ {
        self.episodes
            .iter()
            .map(|(&port, open)| (port, open.start, open.peak_ratio))
    }

    /// Number of ports with a seasonal profile (learning or in use).
    pub fn profiled_ports(&self) -> usize {
        self.profiles.slots.len()
    }

    /// True until `warmup` of history has been seen; nothing is flagged meanwhile.
    pub fn warming_up(&self) -> bool {
        self.history < self.config.warmup
    }

    /// History still needed before ports can be flagged (zero once warmed up).
    pub fn warmup_remaining(&self) -> Duration {
        self.config.warmup.saturating_sub(self.history)
    }

    /// Number of ports whose short-term rate is at least [`ACTIVE_RATE`] SYN/s.
    pub fn active_ports(&self) -> usize {
        self.live
            .iter()
            .filter(|&&port| self.rate[usize::from(port)] >= ACTIVE_RATE)
            .count()
    }

    /// Up to `k` active ports (short-term rate at least [`ACTIVE_RATE`]) with the highest ratio,
    /// highest first, ties by port number. Memory O(k), not O(active ports): a bounded heap of
    /// ratios (computed as [`Detector::status`] computes them), and the full status only for
    /// the `k` kept: with every port active that is 0.5 ms instead of 3.5 ms.
    pub fn top_ports(&self, k: usize) -> Vec<PortStatus> {
        if k == 0 {
            return Vec::new();
        }
        let floor = self.config.effective_floor();
        let mut heap = std::collections::BinaryHeap::with_capacity(k.min(self.live.len()) + 1);
        for &port in &self.live {
            let p = usize::from(port);
            if self.rate[p] < ACTIVE_RATE {
                continue;
            }
            let (adjust, reference) = self.seasonal(p).unwrap_or((1.0, None));
            let e = expected_floor(adjust, reference, self.baseline[p], floor);
            let ranked = Ranked {
                ratio: (self.rate[p] + floor) / e,
                port,
            };
            if heap.len() == k && heap.peek().is_some_and(|worst| ranked >= *worst) {
                continue;
            }
            heap.push(ranked);
            if heap.len() > k {
                // The lowest-ranked of k + 1.
                heap.pop();
            }
        }
        heap.into_sorted_vec()
            .into_iter()
            .map(|r| self.status(r.port))
            .collect()
    }

    /// All ports in a surge episode, highest ratio first, ties by port number (empty while
    /// warming up).
    pub fn flagged_ports(&self) -> Vec<PortStatus> {
        if self.warming_up() {
            return Vec::new();
        }
        let mut ports: Vec<PortStatus> = self
            .episodes
            .keys()
            .map(|&port| self.status(port))
            .collect();
        ports.sort_unstable_by(by_ratio);
        ports
    }

    /// The parameters in use.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Everything needed to continue exactly where this detector is, for the state file. Sparse:
    /// only ports with a non-zero reference counter, rate or baseline, in port order; profiles
    /// and open episodes in port order.
    pub fn snapshot(&self) -> DetectorState {
        let ports = (0..PORTS)
            .filter(|&p| self.last[p] != 0 || self.rate[p] != 0.0 || self.baseline[p] != 0.0)
            .map(|p| PortSnapshot {
                // `p < PORTS = 2^16`, so the cast is exact.
                port: p as u16,
                count: self.last[p],
                rate: self.rate[p],
                baseline: self.baseline[p],
            })
            .collect();
        let mut profiles: Vec<ProfileSnapshot> = self
            .profiles
            .slots
            .iter()
            .map(|slot| ProfileSnapshot {
                port: slot.port,
                adjust: slot.adjust,
                acc_syns: slot.acc_syns,
                acc_secs: slot.acc_secs,
                ref_before: slot.refs[0],
                ref_at: slot.refs[1],
                ref_after: slot.refs[2],
                bins: slot.bins.to_vec(),
            })
            .collect();
        profiles.sort_unstable_by_key(|profile| profile.port);
        DetectorState {
            version: STATE_VERSION,
            last_step: self.last_now,
            history: self.history,
            short_weight: self.short_weight,
            baseline_weight: self.baseline_weight,
            ports,
            profile_hour: self.profiles.hour,
            profiles,
            episodes: self
                .episodes
                .iter()
                .map(|(&port, open)| EpisodeSnapshot {
                    port,
                    start: open.start,
                    peak_ratio: open.peak_ratio,
                })
                .collect(),
        }
    }

    /// A detector that continues from `state` with `config`: fed the same inputs, it gives exactly
    /// the same outputs as the detector the state was taken from (with the same config).
    ///
    /// Never panics. Values that [`DetectorState::check`] would reject are made safe (non-finite
    /// or negative rates and baselines become 0, weights are clamped to `0..=1`, malformed
    /// profiles are dropped; a later entry of a repeated port wins); the version is not checked
    /// here (`state::load` does it).
    pub fn restore(config: DetectorConfig, state: DetectorState) -> Self {
        let mut detector = Self::new(config);
        detector.last_now = state.last_step;
        detector.history = state.history;
        detector.short_weight = clamp_weight(state.short_weight);
        detector.baseline_weight = clamp_weight(state.baseline_weight);
        for entry in &state.ports {
            let p = usize::from(entry.port);
            detector.last[p] = entry.count;
            detector.rate[p] = flush(entry.rate);
            detector.baseline[p] = flush(entry.baseline);
        }
        detector.profiles.hour = state.profile_hour;
        let known = |v: f64| {
            if v.is_finite() && v >= 0.0 {
                v
            } else {
                UNKNOWN
            }
        };
        for profile in state.profiles {
            let Ok(bins) = <Box<[u16; profile::WEEK_HOURS]>>::try_from(profile.bins) else {
                continue;
            };
            let adjust = if profile.adjust.is_finite() {
                profile.adjust.clamp(ADJUST_RANGE.0, ADJUST_RANGE.1)
            } else {
                1.0
            };
            detector.profiles.remove(profile.port);
            detector.profiles.insert(profile::Slot {
                port: profile.port,
                bins,
                adjust,
                acc_syns: flush(profile.acc_syns),
                acc_secs: flush(profile.acc_secs),
                step_syns: 0.0,
                refs: [
                    known(profile.ref_before),
                    known(profile.ref_at),
                    known(profile.ref_after),
                ],
            });
        }
        for episode in state.episodes {
            detector.episodes.insert(
                episode.port,
                OpenEpisode {
                    start: episode.start,
                    peak_ratio: if episode.peak_ratio.is_finite() {
                        episode.peak_ratio
                    } else {
                        0.0
                    },
                },
            );
        }
        for p in 0..PORTS {
            if detector.rate[p] != 0.0
                || detector.baseline[p] != 0.0
                || detector.profiles.slot(p).is_some()
                // `p < PORTS = 2^16`, so the cast is exact.
                || detector.episodes.contains_key(&(p as u16))
            {
                detector.is_live[p] = true;
                detector.live.push(p as u16);
            }
        }
        detector
    }
}

fn clamp_weight(weight: f64) -> f64 {
    if weight.is_finite() {
        weight.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests;
