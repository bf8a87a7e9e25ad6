//! The prefixes behind a surge: sampled SYN sources of flagged ports (see
//! `Sensor::set_sample_budgets`), aggregated to /24 (IPv4) and /48 (IPv6), and the top
//! prefixes of each port by sampled SYNs with their share.
//!
//! Per port the counts are kept with the Space-Saving algorithm (Metwally, Agrawal and
//! El Abbadi, 2005) in at most [`MAX_PREFIXES`] counters: memory is bounded however many
//! prefixes a worm spreads over, and every prefix with more than `1 / MAX_PREFIXES` of
//! the port's samples is kept with a count overestimated by at most its `error`.
//! A port's counts start when it is flagged and are dropped when it no longer is.
//!
//! The program sends up to a budget of sources per port per poll (the rate cap,
//! [`SAMPLES_PER_SECOND`]); past it, the shares are those of the first SYNs of each
//! poll interval, which for a steady surge are those of all its SYNs.
use std::{
    collections::HashMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

use scan_common::SourceSample;

/// Counters per port (Space-Saving capacity).
pub const MAX_PREFIXES: usize = 1024;
/// Prefixes listed per port by the API.
pub const TOP_PREFIXES: usize = 10;
/// Rate cap of the kernel sampling, per flagged port.
pub const SAMPLES_PER_SECOND: f64 = 1000.0;

/// A source prefix: an IPv4 /24 or an IPv6 /48.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    V4([u8; 3]),
    V6([u8; 6]),
}

impl Prefix {
    /// The prefix of a sample's source, `None` for an unknown family.
    pub fn of(sample: &SourceSample) -> Option<Self> {
        let a = sample.address;
        match sample.family {
            4 => Some(Self::V4([a[0], a[1], a[2]])),
            6 => Some(Self::V6([a[0], a[1], a[2], a[3], a[4], a[5]])),
            _ => None,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4([a, b, c]) => write!(f, "{}/24", Ipv4Addr::new(a, b, c, 0)),
            Self::V6(p) => {
                let mut octets = [0u8; 16];
                octets[..6].copy_from_slice(&p);
                write!(f, "{}/48", Ipv6Addr::from(octets))
            }
        }
    }
}

/// One line of a port's top prefixes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefixShare {
    /// `198.18.7.0/24` or `2001:db8:1::/48`.
    pub prefix: String,
    /// Sampled SYNs from the prefix since the port was flagged (Space-Saving count).
    pub syns: u64,
    /// `syns` over all sampled SYNs of the port.
    pub share: f64,
    /// Most by which `syns` may be overestimated (0 while the port has fewer than
    /// [`MAX_PREFIXES`] prefixes).
    pub error: u64,
}

#[derive(Debug, Default)]
struct PortCounts {
    total: u64,
    /// prefix -> (count, overestimate)
    counters: HashMap<Prefix, (u64, u64)>,
}

impl PortCounts {
    fn add(&mut self, prefix: Prefix) {
        self.total += 1;
        if let Some((count, _)) = self.counters.get_mut(&prefix) {
            *count += 1;
            return;
        }
        if self.counters.len() < MAX_PREFIXES {
            self.counters.insert(prefix, (1, 0));
            return;
        }
        // Space-Saving: the new prefix takes over the smallest counter.
        let Some((&victim, &(min, _))) = self.counters.iter().min_by_key(|(p, (c, _))| (*c, **p))
        else {
            return;
        };
        self.counters.remove(&victim);
        self.counters.insert(prefix, (min + 1, min));
    }

    fn top(&self, k: usize) -> Vec<PrefixShare> {
        let mut all: Vec<(&Prefix, &(u64, u64))> = self.counters.iter().collect();
        all.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        all.into_iter()
            .take(k)
            .map(|(prefix, &(syns, error))| PrefixShare {
                prefix: prefix.to_string(),
                syns,
                share: syns as f64 / self.total.max(1) as f64,
                error,
            })
            .collect()
    }
}

/// Top prefixes per flagged port (see [`Prefixes::view`]).
pub type PrefixView = HashMap<u16, Vec<PrefixShare>>;

/// Top source prefixes of the flagged ports.
#[derive(Debug, Default)]
pub struct Prefixes {
    ports: HashMap<u16, PortCounts>,
}

impl Prefixes {
    /// Counts `samples`, then forgets every port not in `flagged`.
    pub fn record(&mut self, samples: &[SourceSample], flagged: &[u16]) {
        for sample in samples {
            if let Some(prefix) = Prefix::of(sample) {
                self.ports.entry(sample.port).or_default().add(prefix);
            }
        }
        self.ports.retain(|port, _| flagged.contains(port));
    }

    /// The top [`TOP_PREFIXES`] of every flagged port: what the poll publishes for HTTP.
    pub fn view(&self) -> PrefixView {
        self.ports
            .iter()
            .map(|(&port, counts)| (port, counts.top(TOP_PREFIXES)))
            .collect()
    }

    /// The `k` prefixes with the most sampled SYNs to `port`, most first (empty for a
    /// port that is not flagged).
    pub fn top(&self, port: u16, k: usize) -> Vec<PrefixShare> {
        self.ports.get(&port).map(|p| p.top(k)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], port: u16) -> SourceSample {
        let mut address = [0; 16];
        address[..4].copy_from_slice(&a);
        SourceSample {
            port,
            family: 4,
            address,
        }
    }

    fn v6(a: Ipv6Addr, port: u16) -> SourceSample {
        SourceSample {
            port,
            family: 6,
            address: a.octets(),
        }
    }

    #[test]
    fn sources_aggregate_to_24_and_48_with_shares() {
        let mut p = Prefixes::default();
        let mut samples = Vec::new();
        for host in 0..60 {
            samples.push(v4([198, 18, 7, host], 445));
        }
        for host in 0..30u16 {
            samples.push(v6(
                Ipv6Addr::new(0x2001, 0xdb8, 1, 0xffff, 0, 0, 0, host),
                445,
            ));
        }
        for host in 0..10 {
            samples.push(v4([198, 19, 200, host], 445));
        }
        samples.push(v4([198, 18, 0, 1], 80));
        p.record(&samples, &[445]);
        let top = p.top(445, 10);
        let got: Vec<(&str, u64, f64)> = top
            .iter()
            .map(|s| (s.prefix.as_str(), s.syns, s.share))
            .collect();
        assert_eq!(
            got,
            [
                ("198.18.7.0/24", 60, 0.6),
                ("2001:db8:1::/48", 30, 0.3),
                ("198.19.200.0/24", 10, 0.1)
            ]
        );
        assert!(top.iter().all(|s| s.error == 0));
        // 80 is not flagged: not kept.
        assert!(p.top(80, 10).is_empty());
        // 445 no longer flagged: forgotten.
        p.record(&[], &[]);
        assert!(p.top(445, 10).is_empty());
    }

    #[test]
    fn memory_is_bounded_and_heavy_prefixes_survive() {
        let mut p = Prefixes::default();
        let mut samples = Vec::new();
        // 5,000 one-off /48s, and one /24 with 5% of the samples, interleaved.
        for i in 0..5_000u16 {
            samples.push(v6(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 1), 445));
            if i % 19 == 0 {
                samples.push(v4([198, 18, 9, 9], 445));
            }
        }
        p.record(&samples, &[445]);
        assert!(p.ports[&445].counters.len() <= MAX_PREFIXES);
        let top = p.top(445, 10);
        assert_eq!(top[0].prefix, "198.18.9.0/24");
        // True count 264; Space-Saving never underestimates and errs by at most `error`.
        assert!(
            top[0].syns >= 264 && top[0].syns - top[0].error <= 264,
            "{top:?}"
        );
    }
}
