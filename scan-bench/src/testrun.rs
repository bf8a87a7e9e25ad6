//! Part 1: per-packet cost through BPF_PROG_TEST_RUN, ours against an empty
//! XDP_PASS program and a C reference, for several packet mixes.
//!
//! Each figure is the median over runs of (CPU time of the calling thread during
//! one BPF_PROG_TEST_RUN of `repeat` iterations) / `repeat`. Thread CPU time has
//! nanosecond resolution and leaves out time the thread was preempted; the
//! kernel's own mean (`duration`, an integer number of ns) is kept beside it.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::{MapData, PerCpuArray},
    programs::TestRunResult,
};
use scan_agent::sensor::{Hook, LinkKind, Sensor};

use crate::{
    cprog::{self, CObjects, XdpObject},
    cpu, frames, proc,
};

const XDP_PASS: u32 = 2;

/// `ours` and `c_reference` keep the distinct-address sketches (ours as shipped); the
/// `_no_sketch` variants are the same programs without them.
pub const PROGRAMS: [&str; 5] = [
    "ours",
    "ours_no_sketch",
    "empty",
    "c_reference",
    "c_reference_no_sketch",
];

pub struct Settings {
    pub repeat: u32,
    pub runs: usize,
}

pub struct MixFigures {
    pub key: &'static str,
    pub label: &'static str,
    pub frame_len: usize,
    /// program -> median ns per packet (thread CPU time).
    pub ns: BTreeMap<&'static str, f64>,
    /// program -> median of the kernel's integer mean ns.
    pub kernel_ns: BTreeMap<&'static str, f64>,
}

pub struct TestRunResults {
    pub repeat: u32,
    pub runs: usize,
    pub mixes: Vec<MixFigures>,
    /// Programs that could not be measured, and counting disagreements.
    pub errors: Vec<String>,
}

enum Program {
    Ours(Box<Sensor>),
    C(XdpObject),
}

impl Program {
    fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        match self {
            Program::Ours(sensor) => Ok(sensor.test_run(frame, repeat)?),
            Program::C(object) => object.test_run(frame, repeat),
        }
    }
}

/// (ns per packet by thread CPU time, kernel's ns per packet).
fn measure(program: &Program, frame: &[u8], repeat: u32) -> Result<(f64, f64)> {
    let start = cpu::thread_cpu_ns();
    let result = program.test_run(frame, repeat)?;
    let spent = cpu::thread_cpu_ns() - start;
    if result.return_value != XDP_PASS {
        bail!("returned {} instead of XDP_PASS", result.return_value);
    }
    Ok((
        spent as f64 / f64::from(repeat),
        result.duration.as_nanos() as f64,
    ))
}

pub fn run(settings: &Settings, objects: Result<&CObjects, String>) -> Result<TestRunResults> {
    let mut errors = Vec::new();
    let mut programs: Vec<(&'static str, Program)> = Vec::new();
    programs.push((
        "ours",
        Program::Ours(Box::new(
            Sensor::unattached(Hook::Xdp, LinkKind::Ethernet).context("loading our program")?,
        )),
    ));
    programs.push((
        "ours_no_sketch",
        Program::Ours(Box::new(
            Sensor::unattached_with(Hook::Xdp, LinkKind::Ethernet, false)
                .context("loading our program without sketches")?,
        )),
    ));
    match objects {
        Ok(objects) => {
            for (name, path, program) in [
                ("empty", &objects.pass, cprog::PASS_PROGRAM),
                (
                    "c_reference",
                    &objects.reference_sketch,
                    cprog::REFERENCE_PROGRAM,
                ),
                (
                    "c_reference_no_sketch",
                    &objects.reference,
                    cprog::REFERENCE_PROGRAM,
                ),
            ] {
                match XdpObject::load(path, program) {
                    Ok(object) => programs.push((name, Program::C(object))),
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
        for (_, program) in &programs {
            measure(program, &mix.frame, 10_000)?;
        }
    }
    // samples[mix][program] = Vec<(cpu ns, kernel ns)>
    let mut samples: Vec<BTreeMap<&'static str, Vec<(f64, f64)>>> =
        (0..mixes.len()).map(|_| BTreeMap::new()).collect();
    for run in 0..settings.runs {
        for (m, mix) in mixes.iter().enumerate() {
            // Rotate the order so no program always runs first or last.
            for i in 0..programs.len() {
                proc::check_stop()?;
                let (name, program) = &programs[(i + run) % programs.len()];
                let sample = measure(program, &mix.frame, settings.repeat)
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
            for (name, s) in by_program {
                let cpu: Vec<f64> = s.iter().map(|x| x.0).collect();
                let kernel: Vec<f64> = s.iter().map(|x| x.1).collect();
                ns.insert(name, crate::stats::median(&cpu));
                kernel_ns.insert(name, crate::stats::median(&kernel));
            }
            MixFigures {
                key: mix.key,
                label: mix.label,
                frame_len: mix.frame.len(),
                ns,
                kernel_ns,
            }
        })
        .collect();
    Ok(TestRunResults {
        repeat: settings.repeat,
        runs: settings.runs,
        mixes,
        errors,
    })
}

fn port_total(map: &PerCpuArray<&MapData, u64>, port: u16) -> Result<u64> {
    Ok(map.get(&u32::from(port), 0)?.iter().sum())
}

/// Runs every mix once through ours and the C reference and checks that both
/// count the same SYN ports, so the reference does the same job.
fn check_counts_agree(
    programs: &[(&'static str, Program)],
    mixes: &[frames::Mix],
    errors: &mut Vec<String>,
) -> Result<()> {
    let ours = programs.iter().find_map(|(_, p)| match p {
        Program::Ours(s) => Some(s),
        Program::C(_) => None,
    });
    let reference = programs.iter().find_map(|(n, p)| match p {
        Program::C(o) if *n == "c_reference" => Some(o),
        _ => None,
    });
    let (Some(ours), Some(reference)) = (ours, reference) else {
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
        ours.read_ports(&mut ports);
        let ours_before = ports[probe as usize];
        let ref_before = port_total(&map, probe)?;
        ours.test_run(&mix.frame, 1)?;
        reference.test_run(&mix.frame, 1)?;
        ours.read_ports(&mut ports);
        let ours_delta = ports[probe as usize] - ours_before;
        let ref_delta = port_total(&map, probe)? - ref_before;
        let expected = u64::from(mix.syn_port.is_some());
        if ours_delta != expected || ref_delta != expected {
            errors.push(format!(
                "{}: port {probe} counted {ours_delta} by ours and {ref_delta} by the C \
                 reference, expected {expected}",
                mix.key
            ));
        }
    }
    Ok(())
}
