//! Distinct counts in the agent: the kernel's per-port sketches (see
//! `scan_common::Sketch`) as mergeable values, and their estimates.
//!
//! # Variant: HyperLogLog++-style, exact when small
//!
//! - Up to [`SKETCH_EXACT`] distinct addresses a sketch is an exact list of 32-bit
//!   fingerprints (the top 32 bits of a 64-bit hash; for IPv4 the hash is a bijection,
//!   so only a fingerprint collision, about 1 in 10^8 for 10 addresses, can merge two).
//!   Counts 1 to 16 are exact.
//! - Beyond that, 2^12 = 4,096 one-byte HyperLogLog registers, estimated with Ertl's
//!   improved raw estimator ("New cardinality estimation algorithms for HyperLogLog
//!   sketches", 2017, algorithm 6), which has no bias-correction tables and no
//!   switch-over point: relative standard error about 1.04 / sqrt(4096) = 1.6% over the
//!   whole range (the p95 of the relative error is measured in the program tests and
//!   stated in BENCHMARKS.md).
//! - Merging is a union of lists or a register-wise maximum, so per-interval sketches
//!   merge into windows exactly as if one sketch had seen all of them. A list that
//!   overflows in a merge becomes registers: a fingerprint carries its register index
//!   and rank ([`fingerprint_register`]).
//!
//! Why not per-CPU sketches: memory would grow with the CPU count (4 KiB x ports x 2 x
//! CPUs) and every read would merge them; one shared array with racy maxima costs a
//! lost raise now and then, far below the estimator's own error.
use scan_common::{
    SKETCH_EXACT, SKETCH_PRECISION, SKETCH_REGISTERS, Sketch, fingerprint_register,
    sketch_fingerprint, sketch_index, sketch_rank,
};

/// `q`: hash bits left after the index; register values are `0..=q + 1`.
const Q: usize = 64 - SKETCH_PRECISION as usize;

/// A distinct count that merges: an exact list while small, registers beyond.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Distinct {
    /// Sorted, deduplicated fingerprints; at most [`SKETCH_EXACT`].
    Exact(Vec<u32>),
    /// HyperLogLog registers.
    Dense(Box<[u8; SKETCH_REGISTERS]>),
}

impl Default for Distinct {
    fn default() -> Self {
        Self::Exact(Vec::new())
    }
}

impl Distinct {
    /// The value of a kernel sketch (a copy taken by the sensor).
    pub fn from_kernel(sketch: &Sketch) -> Self {
        let len = sketch.exact_len as usize;
        if len <= SKETCH_EXACT {
            let mut list = sketch.exact[..len].to_vec();
            // Racing CPUs may have appended one address twice.
            list.sort_unstable();
            list.dedup();
            Self::Exact(list)
        } else {
            Self::Dense(Box::new(sketch.registers))
        }
    }

    /// Adds one hashed address (as the program does; for tests and offline use).
    pub fn insert_hash(&mut self, hash: u64) {
        match self {
            Self::Exact(list) => {
                let fingerprint = sketch_fingerprint(hash);
                if let Err(at) = list.binary_search(&fingerprint) {
                    list.insert(at, fingerprint);
                    if list.len() > SKETCH_EXACT {
                        self.densify();
                    }
                }
            }
            Self::Dense(registers) => {
                let register = &mut registers[sketch_index(hash)];
                *register = (*register).max(sketch_rank(hash));
            }
        }
    }

    fn densify(&mut self) {
        if let Self::Exact(list) = self {
            let mut registers = Box::new([0u8; SKETCH_REGISTERS]);
            for &fingerprint in list.iter() {
                let (index, rank) = fingerprint_register(fingerprint);
                registers[index] = registers[index].max(rank);
            }
            *self = Self::Dense(registers);
        }
    }

    /// Union: afterwards `self` counts every address either counted.
    pub fn merge(&mut self, other: &Distinct) {
        match (&mut *self, other) {
            (_, Self::Exact(theirs)) if theirs.is_empty() => {}
            (Self::Exact(ours), Self::Exact(theirs)) => {
                ours.extend_from_slice(theirs);
                ours.sort_unstable();
                ours.dedup();
                if ours.len() > SKETCH_EXACT {
                    self.densify();
                }
            }
            (Self::Dense(ours), Self::Exact(theirs)) => {
                for &fingerprint in theirs {
                    let (index, rank) = fingerprint_register(fingerprint);
                    ours[index] = ours[index].max(rank);
                }
            }
            (Self::Exact(_), Self::Dense(theirs)) => {
                let mut merged = Self::Dense(theirs.clone());
                merged.merge(self);
                *self = merged;
            }
            (Self::Dense(ours), Self::Dense(theirs)) => {
                for (a, &b) in ours.iter_mut().zip(theirs.iter()) {
                    *a = (*a).max(b);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Exact(list) if list.is_empty())
    }

    /// Estimated number of distinct addresses (exact while the list holds).
    pub fn estimate(&self) -> f64 {
        match self {
            Self::Exact(list) => list.len() as f64,
            Self::Dense(registers) => ertl_estimate(&registers[..]),
        }
    }
}

/// Ertl's improved raw estimator (algorithm 6 of the paper cited in the module docs).
fn ertl_estimate(registers: &[u8]) -> f64 {
    let m = registers.len() as f64;
    let mut histogram = [0u32; Q + 2];
    for &value in registers {
        histogram[usize::from(value).min(Q + 1)] += 1;
    }
    let mut z = m * tau(1.0 - f64::from(histogram[Q + 1]) / m);
    for k in (1..=Q).rev() {
        z = 0.5 * (z + f64::from(histogram[k]));
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    if z.is_infinite() {
        // Every register is zero.
        return 0.0;
    }
    m * m / (2.0 * std::f64::consts::LN_2 * z)
}

/// `sigma(x) = x + sum_{k>=1} x^(2^k) 2^(k-1)`; infinite at 1.
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

/// `tau(x) = (1 - x - sum_{k>=1} (1 - x^(2^-k))^2 2^-k) / 3`; 0 at 0 and 1.
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scan_common::{hash_ipv4, hash_ipv6, mix64};

    fn sketch_of(range: std::ops::Range<u64>, seed: u64) -> Distinct {
        let mut d = Distinct::default();
        for i in range {
            let x = mix64(i ^ (seed << 40));
            if i.is_multiple_of(2) {
                d.insert_hash(hash_ipv4(x as u32));
            } else {
                d.insert_hash(hash_ipv6(x, i));
            }
        }
        d
    }

    #[test]
    fn small_counts_are_exact_and_repeats_count_once() {
        for n in 1..=SKETCH_EXACT as u64 {
            let mut d = sketch_of(0..n, 7);
            for i in 0..n {
                // The same addresses again.
                let x = mix64(i ^ (7 << 40));
                d.insert_hash(if i % 2 == 0 {
                    hash_ipv4(x as u32)
                } else {
                    hash_ipv6(x, i)
                });
            }
            assert_eq!(d.estimate(), n as f64);
        }
    }

    #[test]
    fn empty_is_zero_and_merge_is_a_union() {
        assert_eq!(Distinct::default().estimate(), 0.0);
        let mut dense = Distinct::Dense(Box::new([0; SKETCH_REGISTERS]));
        assert_eq!(dense.estimate(), 0.0);
        // Two exact halves that overflow the list when merged.
        let mut a = sketch_of(0..10, 1);
        a.merge(&sketch_of(5..20, 1));
        assert!(matches!(a, Distinct::Dense(_)));
        assert_eq!(a.estimate().round(), 20.0);
        // Merge order does not matter, and merging into dense matches.
        let mut b = sketch_of(5..20, 1);
        b.merge(&sketch_of(0..10, 1));
        assert_eq!(a, b);
        dense.merge(&a);
        assert_eq!(dense, a);
        // A union of large sketches equals the sketch of the union.
        let mut big = sketch_of(0..30_000, 2);
        big.merge(&sketch_of(20_000..50_000, 2));
        assert_eq!(big, sketch_of(0..50_000, 2));
    }

    #[test]
    fn error_stays_within_five_percent_at_p95() {
        for n in [100u64, 1_000, 10_000, 100_000] {
            let mut errors: Vec<f64> = (0..20)
                .map(|seed| (sketch_of(0..n, seed).estimate() / n as f64 - 1.0).abs())
                .collect();
            errors.sort_by(f64::total_cmp);
            let p95 = errors[(errors.len() * 95).div_ceil(100) - 1];
            assert!(p95 < 0.05, "n={n}: p95 relative error {p95:.4}");
        }
    }
}
