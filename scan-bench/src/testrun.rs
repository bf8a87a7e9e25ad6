//! Part 1: per-packet cost through BPF_PROG_TEST_RUN, ours against an empty
//! program and a C reference, for several packet mixes, and our entry points side
//! by side: plain XDP, TCX (against an empty TC program) and XDP behind libxdp's
//! dispatcher (where the kernel allows freplace).
//!
//! Each sample is (CPU time of the calling thread during one BPF_PROG_TEST_RUN of
//! `repeat` iterations) / `repeat`; thread CPU time has nanosecond resolution and
//! leaves out time the thread was preempted. Within one run every program runs once
//! on the mix, in an order that rotates from run to run; differences and ratios are
//! taken between programs of the same run (paired), and reported as the median over
//! runs with the 25th-75th percentile spread. The kernel's own mean (`duration`, an
//! integer number of ns) is kept beside the absolute figures.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::{MapData, PerCpuArray},
    programs::TestRunResult,
};
use scan_agent::sensor::{Hook, LinkKind, Sensor};

use crate::{
    cprog::{self, CObject, CObjects},
    cpu,
    dispatch::DispatcherPath,
    frames, proc,
};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1) as the kernel reports it: "next", what our TCX entry returns.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// `ours` and `c_reference` keep the distinct-address sketches (ours as shipped); the
/// `_no_sketch` variants are the same programs without them. `ours_tc` is our TCX
/// entry point (sketches on) and `empty_tc` its floor; `ours_dispatcher` is our XDP
/// program as the one component of libxdp's dispatcher. `compare` and
/// `compare_no_sketch` are another build of our program (`--compare-object`), loaded
/// the same way as `ours` and `ours_no_sketch`.
pub const PROGRAMS: [&str; 10] = [
    "ours",
    "ours_no_sketch",
    "empty",
    "c_reference",
    "c_reference_no_sketch",
    "ours_tc",
    "empty_tc",
    "ours_dispatcher",
    "compare",
    "compare_no_sketch",
];

pub struct Settings {
    pub repeat: u32,
    pub runs: usize,
}

/// Median and 25th-75th percentile of a figure over runs.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            // Linear interpolation between closest ranks.
            let pos = q * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        Some(Self {
            median: crate::stats::median(&v),
            p25: at(0.25),
            p75: at(0.75),
        })
    }
}

pub struct MixFigures {
    pub key: &'static str,
    pub label: &'static str,
    pub frame_len: usize,
    /// program -> median ns per packet (thread CPU time).
    pub ns: BTreeMap<&'static str, f64>,
    /// program -> median of the kernel's integer mean ns.
    pub kernel_ns: BTreeMap<&'static str, f64>,
    /// program -> ns per packet of each run, in run order.
    pub samples: BTreeMap<&'static str, Vec<f64>>,
}

impl MixFigures {
    /// `f(a, b)` over the runs where both programs ran.
    pub fn paired(&self, a: &str, b: &str, f: impl Fn(f64, f64) -> f64) -> Option<Spread> {
        let (a, b) = (self.samples.get(a)?, self.samples.get(b)?);
        let values: Vec<f64> = a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
        Spread::of(&values)
    }

    /// Per-run difference `a − b` in ns.
    pub fn minus(&self, a: &str, b: &str) -> Option<Spread> {
        self.paired(a, b, |x, y| x - y)
    }

    /// Per-run ratio `a / b`.
    pub fn ratio(&self, a: &str, b: &str) -> Option<Spread> {
        self.paired(a, b, |x, y| x / y)
    }
}

pub struct TestRunResults {
    pub repeat: u32,
    pub runs: usize,
    pub mixes: Vec<MixFigures>,
    /// Verifier instructions processed, per entry point loaded (sketches on).
    pub verified: Vec<(&'static str, Option<u32>)>,
    /// Why the dispatcher path was not measured, if it was not.
    pub dispatcher_error: Option<String>,
    /// Programs that could not be measured, and counting disagreements.
    pub errors: Vec<String>,
}

enum Program {
    Ours(Box<Sensor>),
    C(CObject),
    Dispatcher(Box<DispatcherPath>),
}

impl Program {
    fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        match self {
            Program::Ours(sensor) => Ok(sensor.test_run(frame, repeat)?),
            Program::C(object) => object.test_run(frame, repeat),
            Program::Dispatcher(path) => path.test_run(frame, repeat),
        }
    }
}

/// (ns per packet by thread CPU time, kernel's ns per packet).
fn measure(program: &Program, verdict: u32, frame: &[u8], repeat: u32) -> Result<(f64, f64)> {
    let start = cpu::thread_cpu_ns();
    let result = program.test_run(frame, repeat)?;
    let spent = cpu::thread_cpu_ns() - start;
    if result.return_value != verdict {
        bail!(
            "returned {} instead of {verdict}",
            result.return_value as i32
        );
    }
    Ok((
        spent as f64 / f64::from(repeat),
        result.duration.as_nanos() as f64,
    ))
}

/// `compare`: another build of our eBPF object, measured beside ours (see [`PROGRAMS`]).
pub fn run(
    settings: &Settings,
    objects: Result<&CObjects, String>,
    compare: Option<&'static [u8]>,
) -> Result<TestRunResults> {
    let mut errors = Vec::new();
    // (name, program, verdict it must return)
    let mut programs: Vec<(&'static str, Program, u32)> = Vec::new();
    let mut verified = Vec::new();
    let ours = Sensor::unattached(Hook::Xdp, LinkKind::Ethernet).context("loading our program")?;
    verified.push(("XDP, Ethernet", ours.verified_instructions()));
    programs.push(("ours", Program::Ours(Box::new(ours)), XDP_PASS));
    programs.push((
        "ours_no_sketch",
        Program::Ours(Box::new(
            Sensor::unattached_with(Hook::Xdp, LinkKind::Ethernet, false)
                .context("loading our program without sketches")?,
        )),
        XDP_PASS,
    ));
    if let Some(object) = compare {
        for (name, sketches) in [("compare", true), ("compare_no_sketch", false)] {
            let sensor = Sensor::unattached_object(object, Hook::Xdp, LinkKind::Ethernet, sketches)
                .with_context(|| format!("loading --compare-object as {name}"))?;
            programs.push((name, Program::Ours(Box::new(sensor)), XDP_PASS));
        }
    }
    let ours_tc =
        Sensor::unattached(Hook::Tc, LinkKind::Ethernet).context("loading our TCX program")?;
    verified.push(("TCX, Ethernet", ours_tc.verified_instructions()));
    programs.push(("ours_tc", Program::Ours(Box::new(ours_tc)), TC_ACT_UNSPEC));
    for (label, hook) in [("XDP, raw IP", Hook::Xdp), ("TCX, raw IP", Hook::Tc)] {
        match Sensor::unattached(hook, LinkKind::RawIp) {
            Ok(sensor) => verified.push((label, sensor.verified_instructions())),
            Err(e) => errors.push(format!("loading the {label} entry point: {e}")),
        }
    }
    let dispatcher_error = match DispatcherPath::load(true) {
        Ok(path) => {
            programs.push((
                "ours_dispatcher",
                Program::Dispatcher(Box::new(path)),
                XDP_PASS,
            ));
            None
        }
        Err(e) => Some(format!("{e:#}")),
    };
    match objects {
        Ok(objects) => {
            for (name, path, program, verdict) in [
                ("empty", &objects.pass, cprog::PASS_PROGRAM, XDP_PASS),
                (
                    "c_reference",
                    &objects.reference_sketch,
                    cprog::REFERENCE_PROGRAM,
                    XDP_PASS,
                ),
                (
                    "c_reference_no_sketch",
                    &objects.reference,
                    cprog::REFERENCE_PROGRAM,
                    XDP_PASS,
                ),
                (
                    "empty_tc",
                    &objects.tc_pass,
                    cprog::TC_PASS_PROGRAM,
                    TC_ACT_UNSPEC,
                ),
            ] {
                match CObject::load(path, program) {
                    Ok(object) => programs.push((name, Program::C(object), verdict)),
                    Err(e) => errors.push(format!("{name}: {e:#}")),
                }
            }
        }
        Err(e) => errors.push(format!("empty and c_reference not built: {e}")),
    }
    let mixes = frames::mixes();
    check_counts_agree(&programs, &mixes, &mut errors)?;

    // Warm up every program on every frame (JIT image, maps, caches).
    for mix in &mixes {
        for (name, program, verdict) in &programs {
            measure(program, *verdict, &mix.frame, 10_000)
                .with_context(|| format!("{name} on {}", mix.key))?;
        }
    }
    // samples[mix][program] = Vec<(cpu ns, kernel ns)>, one per run
    let mut samples: Vec<BTreeMap<&'static str, Vec<(f64, f64)>>> =
        (0..mixes.len()).map(|_| BTreeMap::new()).collect();
    for run in 0..settings.runs {
        for (m, mix) in mixes.iter().enumerate() {
            // Rotate the order so no program always runs first or last.
            for i in 0..programs.len() {
                proc::check_stop()?;
                let (name, program, verdict) = &programs[(i + run) % programs.len()];
                let sample = measure(program, *verdict, &mix.frame, settings.repeat)
                    .with_context(|| format!("{name} on {}", mix.key))?;
                samples[m].entry(name).or_default().push(sample);
            }
        }
    }
    let mixes = mixes
        .iter()
        .zip(samples)
        .map(|(mix, by_program)| {
            let mut ns = BTreeMap::new();
            let mut kernel_ns = BTreeMap::new();
            let mut cpu_samples = BTreeMap::new();
            for (name, s) in by_program {
                let cpu: Vec<f64> = s.iter().map(|x| x.0).collect();
                let kernel: Vec<f64> = s.iter().map(|x| x.1).collect();
                ns.insert(name, crate::stats::median(&cpu));
                kernel_ns.insert(name, crate::stats::median(&kernel));
                cpu_samples.insert(name, cpu);
            }
            MixFigures {
                key: mix.key,
                label: mix.label,
                frame_len: mix.frame.len(),
                ns,
                kernel_ns,
                samples: cpu_samples,
            }
        })
        .collect();
    Ok(TestRunResults {
        repeat: settings.repeat,
        runs: settings.runs,
        mixes,
        verified,
        dispatcher_error,
        errors,
    })
}

fn port_total(map: &PerCpuArray<&MapData, u64>, port: u16) -> Result<u64> {
    Ok(map.get(&u32::from(port), 0)?.iter().sum())
}

/// Runs every mix once through ours (each entry point) and the C reference and
/// checks that all count the same SYN ports, so they do the same job.
fn check_counts_agree(
    programs: &[(&'static str, Program, u32)],
    mixes: &[frames::Mix],
    errors: &mut Vec<String>,
) -> Result<()> {
    let ours: Vec<(&str, &Sensor)> = programs
        .iter()
        .filter_map(|(n, p, _)| match p {
            Program::Ours(s) => Some((*n, s.as_ref())),
            _ => None,
        })
        .collect();
    let reference = programs.iter().find_map(|(n, p, _)| match p {
        Program::C(o) if *n == "c_reference" => Some(o),
        _ => None,
    });
    let Some(reference) = reference else {
        return Ok(());
    };
    let map: PerCpuArray<&MapData, u64> = reference
        .ebpf
        .map(cprog::REFERENCE_PORT_MAP)
        .context("C reference has no port map")?
        .try_into()?;
    let mut ports = vec![0u64; scan_common::PORTS as usize];
    for mix in mixes {
        let probe = mix.syn_port.unwrap_or(445);
        let expected = u64::from(mix.syn_port.is_some());
        for (name, sensor) in &ours {
            sensor.read_ports(&mut ports);
            let before = ports[probe as usize];
            sensor.test_run(&mix.frame, 1)?;
            sensor.read_ports(&mut ports);
            let delta = ports[probe as usize] - before;
            if delta != expected {
                errors.push(format!(
                    "{}: port {probe} counted {delta} by {name}, expected {expected}",
                    mix.key
                ));
            }
        }
        let before = port_total(&map, probe)?;
        reference.test_run(&mix.frame, 1)?;
        let delta = port_total(&map, probe)? - before;
        if delta != expected {
            errors.push(format!(
                "{}: port {probe} counted {delta} by the C reference, expected {expected}",
                mix.key
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_are_quartiles() {
        let s = Spread::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.median, s.p25, s.p75), (3.0, 2.0, 4.0));
        let s = Spread::of(&[1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.p25, s.p75), (1.5, 1.25, 1.75));
        assert!(Spread::of(&[]).is_none());
    }
}
