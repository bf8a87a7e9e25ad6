//! Seasonal profiles: for a bounded set of busy ports, the SYN rate of every hour of the last
//! week (168 log-quantized bins), and the seasonal reference derived from them. Pure
//! bookkeeping; the maths is described in the parent module's documentation.

use super::PORTS;

/// Hours in a week: bins per profile, indexed by absolute hour (UNIX hour) modulo this.
pub const WEEK_HOURS: usize = 168;
/// Most ports that get a profile (memory and state size bound; see the module docs).
pub const MAX_PROFILED: usize = 512;
/// A port gets a profile once its learned baseline reaches this many SYN/s (1,800 SYNs an
/// hour: an hourly mean with about 2% Poisson noise). Quieter ports keep the plain baseline.
pub const PROFILE_MIN_RATE: f64 = 0.5;
/// A profiled port whose baseline falls below this loses its profile (at an hour boundary).
pub const PROFILE_DROP_RATE: f64 = PROFILE_MIN_RATE / 4.0;
/// Offsets (hours back) of the bins the reference is the maximum of: the same hour 1, 2 and 3
/// days ago and a week ago.
pub const REFERENCE_OFFSETS: [u64; 4] = [24, 48, 72, 168];
/// An hour is recorded only if at least this fraction of it was observed.
pub const MIN_COVERAGE: f64 = 0.5;

/// Quantization: `q = 1 + round((ln v - LN_MIN) * SCALE)`, `q = 0` is "unknown". 1/2048 in
/// the log is a 0.05% step; the range is 1e-6 to about 8e7 SYN/s.
const LN_MIN: f64 = -13.815_510_557_964_274; // ln(1e-6)
const SCALE: f64 = 2048.0;
/// `refs` entry of an hour with no reference.
pub const UNKNOWN: f64 = -1.0;
/// No profile slot.
const NO_SLOT: u16 = u16::MAX;

/// Encodes a rate (SYN/s) as a non-zero bin value.
pub fn quantize(rate: f64) -> u16 {
    if !(rate.is_finite() && rate > 0.0) {
        return 1;
    }
    let q = ((rate.ln() - LN_MIN) * SCALE).round() + 1.0;
    // Clamped to 1..=u16::MAX first, so the cast is exact.
    q.clamp(1.0, f64::from(u16::MAX)) as u16
}

/// Decodes a bin value; `UNKNOWN` for 0.
pub fn dequantize(q: u16) -> f64 {
    if q == 0 {
        UNKNOWN
    } else {
        (f64::from(q - 1) / SCALE + LN_MIN).exp()
    }
}

/// The profile of one port.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub port: u16,
    /// Hourly mean SYN rate of the last week, quantized, index `hour % WEEK_HOURS`.
    pub bins: Box<[u16; WEEK_HOURS]>,
    /// Multiplicative adjustment `A` of the reference (guarded level, 1 = as the reference).
    pub adjust: f64,
    /// SYNs (or, while in an episode, expected SYNs) counted so far in the current hour.
    pub acc_syns: f64,
    /// Seconds of the current hour observed for this port.
    pub acc_secs: f64,
    /// This step's contribution to `acc_syns` (set by the port loop, consumed by `account`).
    pub step_syns: f64,
    /// References of the hours before, at and after the cached hour (`UNKNOWN` if none).
    pub refs: [f64; 3],
}

impl Slot {
    fn new(port: u16) -> Self {
        Self {
            port,
            bins: Box::new([0; WEEK_HOURS]),
            adjust: 1.0,
            acc_syns: 0.0,
            acc_secs: 0.0,
            step_syns: 0.0,
            refs: [UNKNOWN; 3],
        }
    }

    /// Reference of absolute hour `hour`: the maximum of the known bins `REFERENCE_OFFSETS`
    /// hours back.
    fn reference(&self, hour: u64) -> f64 {
        REFERENCE_OFFSETS
            .iter()
            .filter_map(|&back| hour.checked_sub(back))
            .map(|h| dequantize(self.bins[ring(h)]))
            .fold(UNKNOWN, f64::max)
    }

    fn refresh(&mut self, hour: u64) {
        self.refs = [
            hour.checked_sub(1).map_or(UNKNOWN, |h| self.reference(h)),
            self.reference(hour),
            hour.checked_add(1).map_or(UNKNOWN, |h| self.reference(h)),
        ];
    }

    /// The reference at time `t` (seconds) inside the cached hour, interpolated linearly
    /// between hour centres; `None` when the hour itself has no reference (learning).
    pub fn reference_at(&self, t: f64) -> Option<f64> {
        let [before, at, after] = self.refs;
        if at < 0.0 {
            return None;
        }
        let phase = (t / 3600.0).fract(); // 0..1 within the hour
        let (other, weight) = if phase < 0.5 {
            (before, 0.5 - phase)
        } else {
            (after, phase - 0.5)
        };
        let other = if other < 0.0 { at } else { other };
        Some(at + weight * (other - at))
    }
}

fn ring(hour: u64) -> usize {
    // The remainder is below 168, so the cast is exact.
    (hour % WEEK_HOURS as u64) as usize
}

/// Absolute hour of a time in seconds since the epoch.
pub fn hour_of(t: f64) -> u64 {
    // Saturating float-to-int cast; times are non-negative.
    (t / 3600.0) as u64
}

/// The bounded set of profiles.
#[derive(Clone, Debug)]
pub struct Profiles {
    slot_of: Box<[u16]>,
    pub slots: Vec<Slot>,
    /// Absolute hour the accumulators and the cached references belong to.
    pub hour: Option<u64>,
}

impl Default for Profiles {
    fn default() -> Self {
        Self {
            slot_of: vec![NO_SLOT; PORTS].into_boxed_slice(),
            slots: Vec::new(),
            hour: None,
        }
    }
}

impl Profiles {
    pub fn slot(&self, port: usize) -> Option<usize> {
        match self.slot_of.get(port) {
            Some(&s) if s != NO_SLOT => Some(usize::from(s)),
            _ => None,
        }
    }

    pub fn get(&self, port: usize) -> Option<&Slot> {
        self.slot(port).map(|s| &self.slots[s])
    }

    pub fn is_full(&self) -> bool {
        self.slots.len() >= MAX_PROFILED
    }

    /// Gives `port` an empty profile (no-op if it has one or the set is full).
    pub fn admit(&mut self, port: u16) {
        if self.is_full() || self.slot(usize::from(port)).is_some() {
            return;
        }
        let mut slot = Slot::new(port);
        if let Some(hour) = self.hour {
            slot.refresh(hour);
        }
        // At most MAX_PROFILED < u16::MAX slots.
        self.slot_of[usize::from(port)] = self.slots.len() as u16;
        self.slots.push(slot);
    }

    /// Adds a restored slot (ignored if the port already has one or the set is full).
    pub fn insert(&mut self, slot: Slot) {
        let port = slot.port;
        if self.is_full() || self.slot(usize::from(port)).is_some() {
            return;
        }
        self.slot_of[usize::from(port)] = self.slots.len() as u16;
        self.slots.push(slot);
    }

    pub fn remove(&mut self, port: u16) {
        let Some(s) = self.slot(usize::from(port)) else {
            return;
        };
        self.slot_of[usize::from(port)] = NO_SLOT;
        self.slots.swap_remove(s);
        if let Some(moved) = self.slots.get(s) {
            self.slot_of[usize::from(moved.port)] = s as u16;
        }
    }

    /// Recomputes the cached references for `hour` if it is not the cached one.
    pub fn refresh(&mut self, hour: u64) {
        if self.hour == Some(hour) {
            return;
        }
        for slot in &mut self.slots {
            slot.refresh(hour);
        }
        self.hour = Some(hour);
    }

    /// Recomputes the cached references unconditionally (after a restore).
    pub fn refresh_all(&mut self) {
        if let Some(hour) = self.hour {
            for slot in &mut self.slots {
                slot.refresh(hour);
            }
        }
    }

    /// Books this step (`from` to `to`, seconds) into the hourly accumulators: each slot's
    /// `step_syns` is split between the hours the step spans in proportion to time; an hour
    /// that ends is recorded (if observed enough) and its accumulators restart. A step longer
    /// than `max_step` is not attributed to any hour (its hours become unknown).
    pub fn account(&mut self, from: f64, to: f64, max_step: f64) {
        let start = hour_of(from);
        let end = hour_of(to);
        let dt = to - from;
        if dt > max_step {
            self.close(start);
            self.forget(start + 1, end);
            self.restart(end);
            for slot in &mut self.slots {
                slot.step_syns = 0.0;
            }
            return;
        }
        if start == end {
            for slot in &mut self.slots {
                slot.acc_syns += std::mem::take(&mut slot.step_syns);
                slot.acc_secs += dt;
            }
            return;
        }
        // A short step across one boundary (or more, if max_step > 1 h).
        let boundary = (start + 1) as f64 * 3600.0;
        let before = if dt > 0.0 {
            ((boundary - from) / dt).clamp(0.0, 1.0)
        } else {
            0.0
        };
        for slot in &mut self.slots {
            slot.acc_syns += slot.step_syns * before;
            slot.acc_secs += boundary - from;
        }
        self.close(start);
        self.forget(start + 1, end);
        let after_start = (end as f64 * 3600.0).max(from);
        for slot in &mut self.slots {
            let syns = std::mem::take(&mut slot.step_syns);
            slot.acc_syns = syns * (1.0 - before);
            slot.acc_secs = to - after_start;
        }
    }

    /// Records the hour `hour` from the accumulators, or marks it unknown if too little of
    /// it was observed.
    fn close(&mut self, hour: u64) {
        for slot in &mut self.slots {
            slot.bins[ring(hour)] = if slot.acc_secs >= MIN_COVERAGE * 3600.0 {
                quantize(slot.acc_syns / slot.acc_secs)
            } else {
                0
            };
        }
    }

    /// Marks the hours `from..to` unknown (at most a week of them: O(1) for any gap).
    pub fn forget(&mut self, from: u64, to: u64) {
        let count = to.saturating_sub(from).min(WEEK_HOURS as u64);
        for slot in &mut self.slots {
            for h in from..from + count {
                slot.bins[ring(h)] = 0;
            }
        }
    }

    /// Empties the accumulators (the time so far in `hour` is unobserved).
    pub fn restart(&mut self, hour: u64) {
        for slot in &mut self.slots {
            slot.acc_syns = 0.0;
            slot.acc_secs = 0.0;
        }
        self.hour = None;
        self.refresh(hour);
    }

    /// Crossing unobserved time from `from` to `to`: the hour being accumulated is recorded
    /// if observed enough, the hours fully inside are forgotten, the new hour starts empty.
    pub fn skip(&mut self, from: f64, to: f64) {
        let (start, end) = (hour_of(from), hour_of(to));
        if start != end {
            self.close(start);
            self.forget(start + 1, end);
        }
        if start != end || to < from {
            self.restart(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_is_fine_and_bounded() {
        for v in [1e-6, 1e-3, 0.1, 1.0, 2.5, 1234.5, 5e7] {
            let back = dequantize(quantize(v));
            assert!((back / v - 1.0).abs() < 3e-4, "{v} -> {back}");
        }
        assert_eq!(quantize(0.0), 1);
        assert_eq!(quantize(f64::NAN), 1);
        assert_eq!(quantize(f64::INFINITY), 1);
        assert_eq!(quantize(1e300), u16::MAX);
        assert_eq!(dequantize(0), UNKNOWN);
    }

    #[test]
    fn hours_are_recorded_split_and_referenced() {
        let mut p = Profiles::default();
        let h0 = 1_000_000u64;
        p.refresh(h0);
        p.admit(80);
        // Two hours of 5-s steps at 2 SYN/s, then 1 SYN/s.
        let mut t = h0 as f64 * 3600.0;
        for hour in 0..2u64 {
            let rate = if hour == 0 { 2.0 } else { 1.0 };
            for _ in 0..720 {
                p.slots[0].step_syns = rate * 5.0;
                p.account(t, t + 5.0, 300.0);
                t += 5.0;
                p.refresh(hour_of(t));
            }
        }
        let slot = p.get(80).unwrap();
        assert!((dequantize(slot.bins[ring(h0)]) - 2.0).abs() < 1e-3);
        assert!((dequantize(slot.bins[ring(h0 + 1)]) - 1.0).abs() < 1e-3);
        // The reference of the same hours a day later.
        p.refresh(h0 + 24);
        let slot = p.get(80).unwrap();
        assert!((slot.refs[1] - 2.0).abs() < 1e-3);
        assert_eq!(slot.refs[0], UNKNOWN);
        assert!((slot.refs[2] - 1.0).abs() < 1e-3);
        // At the start of the hour, halfway to the (unknown -> same) hour before.
        let at = (h0 + 24) as f64 * 3600.0;
        assert!((slot.reference_at(at).unwrap() - 2.0).abs() < 1e-3);
        // At the end of the hour, halfway to the next one.
        let r = slot.reference_at(at + 3599.0).unwrap();
        assert!((r - 1.5).abs() < 1e-3, "{r}");
        // A long gap forgets the hours inside it.
        p.skip(t, t + 10.0 * 86_400.0);
        assert!(p.slots[0].bins.iter().all(|&q| q == 0));
    }

    #[test]
    fn slots_are_bounded_and_removed() {
        let mut p = Profiles::default();
        for port in 0..(MAX_PROFILED as u16 + 10) {
            p.admit(port);
        }
        assert_eq!(p.slots.len(), MAX_PROFILED);
        p.remove(3);
        assert!(p.get(3).is_none());
        let last = (MAX_PROFILED - 1) as u16;
        assert_eq!(p.get(usize::from(last)).unwrap().port, last);
        assert_eq!(p.slots.len(), MAX_PROFILED - 1);
    }
}
