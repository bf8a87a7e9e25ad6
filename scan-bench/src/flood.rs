//! Part 2: a bounded SYN flood over veth from a namespace of ours to the root
//! namespace, at a fixed offered rate over all ports, with each counter in turn.
//!
//! CPU per delivered SYN is the softirq and hardirq time of every CPU (from
//! /proc/stat) plus this process's own user and system time (getrusage), divided
//! by the SYNs delivered to the root end of the veth. The XDP program (native or
//! generic), the nftables hook and the AF_PACKET filter all run in softirq; the
//! AF_PACKET counter's reading thread is this process. The generator (trafgen,
//! another process) is left out, as is its system time for sending: it is the
//! same for every counter.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::XdpMode;
use scan_agent::sensor::{AttachRequest, HookChoice, ModeChoice, MultiprogChoice, Sensor};
use scan_common::PORTS;
use scan_lab::Lab;

use crate::{
    afpacket::AfPacketCounter,
    cprog::{self, CObject, CObjects},
    cpu,
    nft::NftCounter,
    proc, progstats, stats, trafgen,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    None,
    /// Not a counter: the empty XDP_PASS program in native mode, to separate the
    /// cost of veth's native XDP path from the cost of our program.
    EmptyXdp,
    Ours,
    OursSkb,
    Nftables,
    AfPacket,
}

impl Counter {
    pub const ALL: [Counter; 6] = [
        Counter::None,
        Counter::EmptyXdp,
        Counter::Ours,
        Counter::OursSkb,
        Counter::Nftables,
        Counter::AfPacket,
    ];

    /// Whether it counts SYNs (and so has an accuracy).
    pub fn counts(self) -> bool {
        !matches!(self, Counter::None | Counter::EmptyXdp)
    }

    pub fn key(self) -> &'static str {
        match self {
            Counter::None => "none",
            Counter::EmptyXdp => "empty_xdp",
            Counter::Ours => "ours",
            Counter::OursSkb => "ours_skb",
            Counter::Nftables => "nftables",
            Counter::AfPacket => "af_packet",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Counter::None => "no sensor",
            Counter::EmptyXdp => "empty XDP_PASS program, native (veth's XDP path alone)",
            Counter::Ours => "ours, native XDP",
            Counter::OursSkb => "ours, SKB (generic) XDP",
            Counter::Nftables => "nftables netdev ingress, dynamic set with per-port counters",
            Counter::AfPacket => "AF_PACKET + classic BPF SYN filter, userspace counting",
        }
    }
}

pub struct Settings {
    pub rate_pps: u64,
    pub seconds: f64,
    pub rounds: usize,
    /// Length of the extra flood that reads the XDP programs' run-time statistics.
    pub stats_seconds: f64,
}

/// One flood with one counter.
#[derive(Clone, Debug)]
pub struct Sample {
    pub sent: u64,
    pub delivered: u64,
    pub counted: Option<u64>,
    pub irq_ns: u64,
    pub process_ns: u64,
    pub achieved_pps: f64,
}

impl Sample {
    pub fn cpu_ns_per_syn(&self) -> f64 {
        (self.irq_ns + self.process_ns) as f64 / self.delivered.max(1) as f64
    }

    pub fn accuracy(&self) -> Option<f64> {
        self.counted.map(|c| c as f64 / self.sent.max(1) as f64)
    }
}

pub struct CounterFigures {
    pub counter: Counter,
    /// Medians over rounds.
    pub cpu_ns_per_syn: f64,
    pub softirq_ns_per_syn: f64,
    pub process_ns_per_syn: f64,
    /// Counted / sent, summed over rounds (None for no sensor).
    pub accuracy: Option<f64>,
    pub samples: Vec<Sample>,
    pub note: String,
    /// For XDP programs: the kernel's run-time statistics over a separate,
    /// shorter flood (ns in the program per run).
    pub program_ns: Option<f64>,
}

pub struct FloodResults {
    pub rate_pps: u64,
    pub seconds: f64,
    pub stats_seconds: f64,
    pub rounds: usize,
    pub interface: String,
    pub figures: Vec<CounterFigures>,
    pub errors: Vec<String>,
}

enum Active {
    None,
    Empty(Box<CObject>),
    Ours(Box<Sensor>),
    Nft(NftCounter),
    AfPacket(AfPacketCounter),
}

impl Active {
    fn start(counter: Counter, lab: &Lab, dir: &Path, objects: Objects<'_>) -> Result<Self> {
        Ok(match counter {
            Counter::None => Active::None,
            Counter::EmptyXdp => {
                let objects = objects.map_err(|e| anyhow!("C objects not built: {e}"))?;
                let mut pass = CObject::load(&objects.pass, cprog::PASS_PROGRAM)?;
                pass.attach(&lab.host_if, XdpMode::Driver)?;
                Active::Empty(Box::new(pass))
            }
            Counter::Ours | Counter::OursSkb => {
                let mut sensor = Sensor::load(None)?;
                let mode = if counter == Counter::Ours {
                    ModeChoice::Native
                } else {
                    ModeChoice::Skb
                };
                let request = AttachRequest {
                    hook: HookChoice::Xdp,
                    xdp_mode: mode,
                    multiprog: MultiprogChoice::Off,
                };
                sensor.attach(&lab.host_if, request, false)?;
                Active::Ours(Box::new(sensor))
            }
            Counter::Nftables => Active::Nft(NftCounter::create(&lab.host_if, dir)?),
            Counter::AfPacket => Active::AfPacket(AfPacketCounter::start(lab.host_ifindex)?),
        })
    }

    /// Waits until a counter that lags (the AF_PACKET reader) has caught up.
    fn drain(&self, sent: u64) -> Result<()> {
        match self {
            Active::AfPacket(c) => {
                let mut last = c.counted();
                for _ in 0..30 {
                    proc::sleep(Duration::from_millis(100))?;
                    let now = c.counted();
                    if now >= sent || now == last {
                        break;
                    }
                    last = now;
                }
                Ok(())
            }
            // Counted synchronously in softirq: done when the packets are in.
            _ => proc::sleep(Duration::from_millis(200)),
        }
    }

    /// (counted, note) once the flood is over; stops the counter.
    fn finish(self) -> Result<(Option<u64>, String)> {
        Ok(match self {
            Active::None => (None, String::new()),
            Active::Empty(pass) => {
                // Detach before the next counter is set up.
                drop(pass);
                (None, "attached in native mode".into())
            }
            Active::Ours(sensor) => {
                let mut ports = vec![0u64; PORTS as usize];
                sensor.read_ports(&mut ports);
                let mode = sensor
                    .attachments()
                    .first()
                    .map(|a| a.mode.name())
                    .unwrap_or("?");
                let active = ports.iter().filter(|&&c| c > 0).count();
                (
                    Some(ports.iter().sum()),
                    format!("attached in {mode} mode; {active} ports counted"),
                )
            }
            Active::Nft(nft) => {
                let (total, elements) = nft.counted()?;
                (Some(total), format!("{elements} set elements"))
            }
            Active::AfPacket(c) => {
                let counts = c.finish()?;
                (
                    Some(counts.counted),
                    format!(
                        "{} ports; socket saw {} and dropped {}",
                        counts.ports, counts.kernel_packets, counts.kernel_drops
                    ),
                )
            }
        })
    }
}

type Objects<'a> = Result<&'a CObjects, String>;

/// SYNs to ports 1-65535 in turn at `rate_pps` for `seconds`.
fn sweep(rate_pps: u64, seconds: f64) -> trafgen::Flood {
    trafgen::Flood {
        packets: (rate_pps as f64 * seconds) as u64,
        rate_pps,
        first_port: 1,
        last_port: 65535,
    }
}

/// ns per run of the XDP program attached for `counter`, from the kernel's
/// run-time statistics during a flood of its own (statistics cost two clock reads
/// per run, so they are off during the CPU measurements).
fn program_ns(
    lab: &Lab,
    dir: &Path,
    counter: Counter,
    settings: &Settings,
    objects: Objects<'_>,
) -> Result<f64> {
    let active = Active::start(counter, lab, dir, objects)?;
    let id = progstats::attached_program(&lab.host_if)?;
    let stats = progstats::enable()?;
    proc::sleep(Duration::from_millis(200))?;
    let (time_before, runs_before) = progstats::run_stats(id)?;
    let sent = sweep(settings.rate_pps, settings.stats_seconds).run(lab, dir)?;
    proc::sleep(Duration::from_millis(200))?;
    let (time_after, runs_after) = progstats::run_stats(id)?;
    drop(stats);
    drop(active);
    let runs = runs_after - runs_before;
    if runs < sent.packets {
        anyhow::bail!("program {id} ran {runs} times for {} SYNs", sent.packets);
    }
    Ok((time_after - time_before).as_nanos() as f64 / runs as f64)
}

fn one_flood(
    lab: &Lab,
    dir: &Path,
    counter: Counter,
    settings: &Settings,
    objects: Objects<'_>,
) -> Result<(Sample, String)> {
    let active = Active::start(counter, lab, dir, objects)
        .with_context(|| format!("setting up {}", counter.key()))?;
    proc::sleep(Duration::from_millis(300))?;
    let flood = sweep(settings.rate_pps, settings.seconds);
    let rx_before = lab.host_rx_packets()?;
    let sys_before = cpu::system_times()?;
    let self_before = cpu::self_cpu_ns();
    let sent = flood.run(lab, dir)?;
    active.drain(sent.packets)?;
    let self_after = cpu::self_cpu_ns();
    let sys_after = cpu::system_times()?;
    let rx_after = lab.host_rx_packets()?;
    let (counted, note) = active.finish()?;
    let sample = Sample {
        sent: sent.packets,
        delivered: rx_after - rx_before,
        counted,
        irq_ns: sys_before.irq_ns_until(&sys_after),
        process_ns: self_after.saturating_sub(self_before),
        achieved_pps: sent.packets as f64 / sent.seconds,
    };
    Ok((sample, note))
}

pub fn run(settings: &Settings, dir: &Path, objects: Objects<'_>) -> Result<FloodResults> {
    let lab = Lab::create_quiet()?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Counter::ALL.len()];
    let mut notes = vec![String::new(); Counter::ALL.len()];
    let mut errors = Vec::new();
    for round in 0..settings.rounds {
        for i in 0..Counter::ALL.len() {
            // Rotate the order from round to round so drift spreads evenly.
            let index = (i + round) % Counter::ALL.len();
            let counter = Counter::ALL[index];
            proc::check_stop()?;
            match one_flood(&lab, dir, counter, settings, objects.clone()) {
                Ok((sample, note)) => {
                    eprintln!(
                        "  flood round {} {:<9} {:>8.0} ns/SYN  sent {} delivered {} counted {:?}",
                        round + 1,
                        counter.key(),
                        sample.cpu_ns_per_syn(),
                        sample.sent,
                        sample.delivered,
                        sample.counted
                    );
                    samples[index].push(sample);
                    notes[index] = note;
                }
                Err(e) => errors.push(format!("{} (round {}): {e:#}", counter.key(), round + 1)),
            }
        }
    }
    let mut program = [None; Counter::ALL.len()];
    for (i, &counter) in Counter::ALL.iter().enumerate() {
        if matches!(
            counter,
            Counter::EmptyXdp | Counter::Ours | Counter::OursSkb
        ) {
            proc::check_stop()?;
            match program_ns(&lab, dir, counter, settings, objects.clone()) {
                Ok(ns) => {
                    eprintln!("  flood program time {:<9} {ns:>6.1} ns/run", counter.key());
                    program[i] = Some(ns);
                }
                Err(e) => errors.push(format!("{} run-time statistics: {e:#}", counter.key())),
            }
        }
    }
    let figures = Counter::ALL
        .iter()
        .zip(samples)
        .zip(notes)
        .zip(program)
        .filter(|(((_, s), _), _)| !s.is_empty())
        .map(|(((&counter, samples), note), program_ns)| {
            let per = |f: &dyn Fn(&Sample) -> f64| {
                stats::median(&samples.iter().map(f).collect::<Vec<_>>())
            };
            let sent: u64 = samples.iter().map(|s| s.sent).sum();
            let counted: Option<u64> = samples.iter().map(|s| s.counted).sum();
            CounterFigures {
                counter,
                cpu_ns_per_syn: per(&Sample::cpu_ns_per_syn),
                softirq_ns_per_syn: per(&|s| s.irq_ns as f64 / s.delivered.max(1) as f64),
                process_ns_per_syn: per(&|s| s.process_ns as f64 / s.delivered.max(1) as f64),
                accuracy: counted.map(|c| c as f64 / sent.max(1) as f64),
                samples,
                note,
                program_ns,
            }
        })
        .collect();
    Ok(FloodResults {
        rate_pps: settings.rate_pps,
        seconds: settings.seconds,
        stats_seconds: settings.stats_seconds,
        rounds: settings.rounds,
        interface: format!(
            "veth {} (root) <- {} (namespace {})",
            lab.host_if, lab.peer_if, lab.namespace
        ),
        figures,
        errors,
    })
}
