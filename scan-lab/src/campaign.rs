//! The mutated-capture campaign (issue 14): thousands of damaged pcap and pcapng files
//! (bit flips, truncations, huge lengths, bogus link types, bad pcapng blocks,
//! timestamps backwards or years apart, records past the snapshot length) replayed
//! through the real program with the detector on: no panic, no file over the time
//! limit, and the process's peak RSS under the limit.
//!
//! The damage is done while writing (this module writes the pcap and pcapng layouts
//! itself, so it can put a wrong value in any field), then some files also get
//! byte-level damage (bit flips, cuts, inserted noise).
use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use scan_agent::{
    capture::{CaptureReader, MAX_FRAME},
    detector::DetectorConfig,
    replay::replay_with,
    sensor::{Hook, LinkKind, Sensor},
};

use crate::{frames::corpus, rng::Rng};

/// What a campaign did.
#[derive(Debug, Default)]
pub struct CampaignReport {
    pub files: u64,
    /// Files replayed to the end / refused with an error, by error kind.
    pub outcomes: BTreeMap<String, u64>,
    /// Frames the replays read.
    pub frames: u64,
    /// Files whose replay panicked (kept in the work directory).
    pub panics: Vec<PathBuf>,
    /// Files whose replay took longer than the limit (kept).
    pub slow: Vec<(PathBuf, Duration)>,
    pub slowest: Duration,
    /// Peak resident set of this process (`ru_maxrss`), bytes.
    pub peak_rss: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for CampaignReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} files, {} frames read, in {:.1}s; slowest file {:.3}s; peak RSS {:.1} MiB; \
             {} panics, {} over the time limit",
            self.files,
            self.frames,
            self.elapsed.as_secs_f64(),
            self.slowest.as_secs_f64(),
            self.peak_rss as f64 / (1 << 20) as f64,
            self.panics.len(),
            self.slow.len()
        )?;
        for (outcome, n) in &self.outcomes {
            writeln!(f, "  {outcome}: {n}")?;
        }
        for p in &self.panics {
            writeln!(f, "  PANIC: {}", p.display())?;
        }
        for (p, t) in &self.slow {
            writeln!(f, "  SLOW ({:.1}s): {}", t.as_secs_f64(), p.display())?;
        }
        Ok(())
    }
}

/// Peak resident set size of this process, in bytes.
pub fn peak_rss() -> u64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024
}

/// A packet record before it is written: every field may be made wrong on purpose.
struct Record {
    secs: u64,
    frac: u32,
    incl: u32,
    orig: u32,
    data: Vec<u8>,
}

const START: u64 = 1_700_000_000;

/// Timestamps for `n` frames in one of the shapes that stress the replay clock.
fn timestamps(rng: &mut Rng, n: usize) -> (Vec<(u64, u32)>, &'static str) {
    let interval = 5; // the default --interval, seconds
    let shape = rng.below(7);
    let ts = (0..n as u64)
        .map(|i| match shape {
            0 => (START + i * rng.below(3), rng.u32() % 1_000_000),
            1 => (START + (n as u64 - i) * rng.range(1, 100_000), 0),
            2 => (START + i * rng.range(1, 20) * 365 * 86_400, 0),
            // The case: just under 100,000 intervals apart.
            3 => (START + i * (100_000 * interval - 1), 0),
            4 => {
                let any = u64::from(rng.u32());
                (*rng.pick(&[0, 1, u64::from(u32::MAX), any]), rng.u32())
            }
            5 => (START, 0),
            _ => (
                START + rng.below(1 << 20),
                *rng.pick(&[0, 999_999, 1_000_000, u32::MAX]),
            ),
        })
        .collect();
    let name = [
        "in order",
        "backwards",
        "years apart",
        "100,000 intervals apart",
        "extreme values",
        "all equal",
        "random",
    ][shape as usize];
    (ts, name)
}

fn records(rng: &mut Rng, frames: &[(Duration, Vec<u8>)]) -> Vec<Record> {
    let n = rng.range(1, frames.len().min(40) as u64 + 1) as usize;
    let first = rng.below((frames.len() - n + 1) as u64) as usize;
    let (ts, _) = timestamps(rng, n);
    frames[first..first + n]
        .iter()
        .zip(ts)
        .map(|((_, data), (secs, frac))| Record {
            secs,
            frac,
            incl: data.len() as u32,
            orig: data.len() as u32,
            data: data.clone(),
        })
        .collect()
}

/// A huge or wrong length.
fn bad_length(rng: &mut Rng) -> u32 {
    let any = rng.u32();
    *rng.pick(&[
        u32::MAX,
        0x7FFF_FFFF,
        MAX_FRAME + 1,
        MAX_FRAME,
        0,
        1,
        13,
        any,
        65_536,
    ])
}

/// Damages some records' length fields and sizes.
fn damage_records(rng: &mut Rng, records: &mut [Record]) {
    if rng.chance(0.5) {
        return;
    }
    for r in records.iter_mut() {
        if rng.chance(0.05) {
            r.incl = bad_length(rng);
        }
        if rng.chance(0.05) {
            r.orig = bad_length(rng);
        }
        if rng.chance(0.03) {
            r.data.truncate(rng.below(r.data.len() as u64 + 1) as usize);
        }
        if rng.chance(0.02) {
            let extra = rng.range(1, 70_000) as usize;
            r.data.extend(std::iter::repeat_n(0xAB, extra));
            r.incl = r.data.len() as u32;
        }
    }
}

struct Writer {
    big: bool,
    out: Vec<u8>,
}

impl Writer {
    fn u16(&mut self, v: u16) {
        let b = if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.out.extend_from_slice(&b);
    }
    fn u32(&mut self, v: u32) {
        let b = if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.out.extend_from_slice(&b);
    }
    fn u64(&mut self, v: u64) {
        let b = if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.out.extend_from_slice(&b);
    }
}

fn pcap(rng: &mut Rng, frames: &[(Duration, Vec<u8>)]) -> (Vec<u8>, String) {
    let mut records = records(rng, frames);
    damage_records(rng, &mut records);
    let mut w = Writer {
        big: rng.chance(0.3),
        out: Vec::new(),
    };
    let nano = rng.chance(0.5);
    w.u32(if nano { 0xA1B2_3C4D } else { 0xA1B2_C3D4 });
    w.u16(2);
    w.u16(4);
    w.u32(0);
    w.u32(0);
    let mut what = vec!["pcap"];
    let snaplen = if rng.chance(0.15) {
        what.push("records past the snapshot length");
        rng.range(1, 64) as u32
    } else {
        65_535
    };
    w.u32(snaplen);
    let link = if rng.chance(0.1) {
        what.push("bogus link type");
        let any = rng.u32();
        *rng.pick(&[0, 101, 113, 276, 0xFFFF, any])
    } else {
        1
    };
    w.u32(link);
    for r in &records {
        w.u32(r.secs as u32);
        w.u32(r.frac);
        w.u32(r.incl);
        w.u32(r.orig);
        w.out.extend_from_slice(&r.data);
    }
    (w.out, what.join(", "))
}

/// One pcapng block: type, body, total length (possibly wrong), trailing length.
fn block(w: &mut Writer, rng: &mut Rng, kind: u32, body: &[u8], damage_chance: f64) {
    let damage = rng.chance(damage_chance);
    let padded = body.len().div_ceil(4) * 4;
    let total = (12 + padded) as u32;
    let (lead, trail) = if damage {
        match rng.below(4) {
            0 => (bad_length(rng), total),
            1 => (total, bad_length(rng)),
            2 => (total + 1 + rng.below(3) as u32, total),
            _ => (rng.below(12) as u32, total),
        }
    } else {
        (total, total)
    };
    w.u32(kind);
    w.u32(lead);
    w.out.extend_from_slice(body);
    w.out.extend(std::iter::repeat_n(0, padded - body.len()));
    w.u32(trail);
}

fn pcapng(rng: &mut Rng, frames: &[(Duration, Vec<u8>)]) -> (Vec<u8>, String) {
    let mut records = records(rng, frames);
    damage_records(rng, &mut records);
    let big = rng.chance(0.3);
    let mut w = Writer {
        big,
        out: Vec::new(),
    };
    let mut what = vec!["pcapng"];
    let bad_blocks = rng.chance(0.3);
    if bad_blocks {
        what.push("bad blocks");
    }
    let body = |f: &dyn Fn(&mut Writer)| {
        let mut b = Writer {
            big,
            out: Vec::new(),
        };
        f(&mut b);
        b.out
    };
    // Section header.
    let shb = body(&|b| {
        b.u32(0x1A2B_3C4D);
        b.u16(1);
        b.u16(0);
        b.u64(u64::MAX);
    });
    block(
        &mut w,
        rng,
        0x0A0D_0D0A,
        &shb,
        if bad_blocks { 0.1 } else { 0.0 },
    );
    // Interfaces: the first Ethernet (or not), with a timestamp resolution.
    let interfaces = rng.range(1, 3);
    for _ in 0..interfaces {
        let link: u16 = if rng.chance(0.1) {
            what.push("bogus link type");
            *rng.pick(&[0, 101, 113, 0xFFFF])
        } else {
            1
        };
        let snaplen = if rng.chance(0.15) {
            what.push("records past the snapshot length");
            rng.range(1, 64) as u32
        } else {
            0
        };
        let resol = if rng.chance(0.3) {
            *rng.pick(&[
                0u8,
                3,
                6,
                9,
                12,
                19,
                20,
                63,
                0x80,
                0x80 | 10,
                0x80 | 64,
                0xFF,
            ])
        } else {
            9
        };
        let offset = if rng.chance(0.1) { rng.next_u64() } else { 0 };
        let idb = body(&|b| {
            b.u16(link);
            b.u16(0);
            b.u32(snaplen);
            b.u16(9); // if_tsresol
            b.u16(1);
            b.out.extend_from_slice(&[resol, 0, 0, 0]);
            b.u16(14); // if_tsoffset
            b.u16(8);
            b.u64(offset);
            b.u16(0); // opt_endofopt
            b.u16(0);
        });
        block(&mut w, rng, 1, &idb, if bad_blocks { 0.1 } else { 0.0 });
    }
    for r in &records {
        if bad_blocks && rng.chance(0.1) {
            // An unknown block, or a known type with a body of noise.
            let any = rng.u32();
            let kind = *rng.pick(&[any, 2, 3, 5, 6, 0x0A0D_0D0A, 0x8000_0001]);
            let len = rng.below(64) as usize;
            let noise = rng.bytes(len);
            block(&mut w, rng, kind, &noise, 0.3);
        }
        let raw = r.secs.saturating_mul(1_000_000_000) + u64::from(r.frac);
        let iface = if rng.chance(0.03) {
            rng.u32()
        } else {
            rng.below(interfaces) as u32
        };
        if rng.chance(0.1) {
            let spb = body(&|b| {
                b.u32(r.orig);
                b.out.extend_from_slice(&r.data);
            });
            block(&mut w, rng, 3, &spb, if bad_blocks { 0.1 } else { 0.0 });
        } else {
            let epb = body(&|b| {
                b.u32(iface);
                b.u32((raw >> 32) as u32);
                b.u32(raw as u32);
                b.u32(r.incl);
                b.u32(r.orig);
                b.out.extend_from_slice(&r.data);
            });
            block(&mut w, rng, 6, &epb, if bad_blocks { 0.1 } else { 0.0 });
        }
    }
    (w.out, what.join(", "))
}

/// Byte-level damage: bit flips, cuts, 0xFF runs, inserted noise.
fn damage_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) -> &'static str {
    let kind = rng.below(5);
    for _ in 0..rng.range(1, 7) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len() as u64) as usize;
        match kind {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes.truncate(at),
            2 => {
                let end = (at + 4).min(bytes.len());
                bytes[at..end].fill(0xFF);
            }
            3 => {
                let len = rng.below(16) as usize;
                let noise = rng.bytes(len);
                bytes.splice(at..at, noise);
            }
            _ => bytes[at] = rng.u8(),
        }
    }
    [
        "bit flips",
        "truncated",
        "0xFF runs",
        "inserted noise",
        "random bytes",
    ][kind as usize]
}

/// Runs `files` damaged captures (from `seed`) through `replay_with` on one loaded
/// program, each written to `dir`; a file that panics or takes longer than
/// `time_limit` is kept there, the rest are removed.
pub fn run(files: u64, seed: u64, dir: &Path, time_limit: Duration) -> Result<CampaignReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // One loaded program per link kind, as replay would load for each capture.
    let mut sensors: HashMap<LinkKind, Sensor> = HashMap::new();
    let mut sources: Vec<(Duration, Vec<u8>)> = corpus::web_traffic(seed).frames;
    sources.extend(corpus::masscan_sweep(seed).frames.into_iter().take(200));
    let mut rng = Rng::new(seed);
    let mut report = CampaignReport::default();
    let started = Instant::now();
    for i in 0..files {
        let (mut bytes, mut what) = if rng.chance(0.5) {
            pcap(&mut rng, &sources)
        } else {
            pcapng(&mut rng, &sources)
        };
        if rng.chance(0.5) {
            what = format!("{what}, {}", damage_bytes(&mut rng, &mut bytes));
        }
        let path = dir.join(format!("capture-{seed}-{i}.bin"));
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        let t0 = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut reader = CaptureReader::open(&path)?;
            let first = reader.next_frame().transpose()?;
            let kind = reader.link_kind().unwrap_or(LinkKind::Ethernet);
            let sensor = match sensors.entry(kind) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(Sensor::unattached(Hook::Xdp, kind).context(
                    "loading the XDP program (the campaign replays through it: root, or \
                     CAP_BPF + CAP_NET_ADMIN)",
                )?),
            };
            replay_with(sensor, reader, first, Some(DetectorConfig::default()))
                .map_err(anyhow::Error::from)
        }));
        let took = t0.elapsed();
        report.files += 1;
        report.slowest = report.slowest.max(took);
        let mut keep = false;
        let label = match outcome {
            Ok(Ok(replayed)) => {
                report.frames += replayed.packets;
                "replayed".to_string()
            }
            Ok(Err(e)) => {
                // The error's kind: its Debug variant name.
                use scan_agent::{capture::CaptureError, replay::ReplayError};
                let kind = match (
                    e.downcast_ref::<CaptureError>(),
                    e.downcast_ref::<ReplayError>(),
                ) {
                    (Some(c), _) | (_, Some(ReplayError::Capture(c))) => format!("{c:?}"),
                    (_, Some(r)) => format!("{r:?}"),
                    _ => format!("{e:?}"),
                };
                let kind: String = kind
                    .split([' ', '{', '('])
                    .next()
                    .unwrap_or_default()
                    .into();
                format!("refused: {kind}")
            }
            Err(_) => {
                keep = true;
                report.panics.push(path.clone());
                "PANIC".to_string()
            }
        };
        if took > time_limit {
            keep = true;
            report.slow.push((path.clone(), took));
            eprintln!(
                "slow ({:.1}s): {} ({what})",
                took.as_secs_f64(),
                path.display()
            );
        }
        *report.outcomes.entry(label).or_default() += 1;
        if !keep {
            let _ = std::fs::remove_file(&path);
        }
    }
    report.elapsed = started.elapsed();
    report.peak_rss = peak_rss();
    Ok(report)
}
