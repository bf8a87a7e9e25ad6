//! Part 3: reading every port counter. Ours by mmap (`Sensor::read_ports`)
//! against a plain memcpy of the same number of bytes (the physical floor) and a
//! PERCPU_ARRAY of 65,536 u64 (the C reference's port map) read with
//! BPF_MAP_LOOKUP_BATCH and key by key.
use std::{
    hint::black_box,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData, PerCpuArray};
use scan_agent::sensor::{Hook, LinkKind, Sensor, possible_cpus};
use scan_common::PORTS;

use crate::{
    cprog::{self, CObject, CObjects},
    proc,
    stats::median_ms,
};

pub struct Settings {
    /// Iterations of the fast reads (mmap, memcpy).
    pub fast_iterations: usize,
    pub batch_iterations: usize,
    pub per_key_iterations: usize,
}

pub struct MapReadResults {
    pub cpus: usize,
    pub bytes: usize,
    pub ours_ms: f64,
    pub memcpy_ms: f64,
    pub batch_ms: Option<f64>,
    pub per_key_ms: Option<f64>,
    pub errors: Vec<String>,
}

pub fn run(settings: &Settings, objects: Result<&CObjects, String>) -> Result<MapReadResults> {
    let cpus = possible_cpus()?;
    let entries = cpus * PORTS as usize;
    let bytes = entries * size_of::<u64>();
    let mut out = vec![0u64; PORTS as usize];

    let sensor =
        Sensor::unattached(Hook::Xdp, LinkKind::Ethernet).context("loading our program")?;
    sensor.read_ports(&mut out);
    let ours_ms = median_ms(settings.fast_iterations, || {
        sensor.read_ports(black_box(&mut out));
    });
    drop(sensor);

    let src: Vec<u64> = (0..entries as u64).collect();
    let mut dst = vec![0u64; entries];
    let memcpy_ms = median_ms(settings.fast_iterations, || {
        black_box(&mut dst).copy_from_slice(black_box(&src));
    });
    proc::check_stop()?;

    let mut errors = Vec::new();
    let (mut batch_ms, mut per_key_ms) = (None, None);
    match objects {
        Err(e) => errors.push(format!(
            "no PERCPU_ARRAY to read (C objects not built): {e}"
        )),
        Ok(objects) => match percpu_reads(settings, objects, cpus) {
            Ok((batch, per_key)) => {
                batch_ms = Some(batch);
                per_key_ms = Some(per_key);
            }
            Err(e) => errors.push(format!("{e:#}")),
        },
    }
    Ok(MapReadResults {
        cpus,
        bytes,
        ours_ms,
        memcpy_ms,
        batch_ms,
        per_key_ms,
        errors,
    })
}

fn percpu_reads(settings: &Settings, objects: &CObjects, cpus: usize) -> Result<(f64, f64)> {
    let object = CObject::load(&objects.reference, cprog::REFERENCE_PROGRAM)?;
    let map = object
        .ebpf
        .map(cprog::REFERENCE_PORT_MAP)
        .context("the C reference has no port map")?;
    let Map::PerCpuArray(data) = map else {
        bail!("{} is not a PERCPU_ARRAY", cprog::REFERENCE_PORT_MAP);
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let mut out = vec![0u64; PORTS as usize];
    let mut batch = BatchBuffers::new(PORTS as usize, cpus);
    // One read first, to fail early with the syscall's error.
    batch
        .read_all(fd, &mut out)
        .context("BPF_MAP_LOOKUP_BATCH")?;
    let mut failure = None;
    let batch_ms = median_ms(settings.batch_iterations, || {
        if let Err(e) = batch.read_all(fd, black_box(&mut out)) {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e).context("BPF_MAP_LOOKUP_BATCH");
    }
    proc::check_stop()?;

    let array: PerCpuArray<&MapData, u64> = map.try_into()?;
    let mut failure = None;
    let per_key_ms = median_ms(settings.per_key_iterations, || {
        for port in 0..PORTS {
            match array.get(&port, 0) {
                Ok(values) => out[port as usize] = values.iter().sum(),
                Err(e) => failure = Some(e),
            }
        }
    });
    if let Some(e) = failure {
        return Err(e).context("per-key lookup");
    }
    Ok((batch_ms, per_key_ms))
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr` as used by the BPF_MAP_*_BATCH commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

struct BatchBuffers {
    entries: usize,
    cpus: usize,
    keys: Vec<u32>,
    values: Vec<u64>,
}

impl BatchBuffers {
    fn new(entries: usize, cpus: usize) -> Self {
        Self {
            entries,
            cpus,
            keys: vec![0; entries],
            values: vec![0; entries * cpus],
        }
    }

    /// Reads every element with as few BPF_MAP_LOOKUP_BATCH calls as the kernel
    /// allows (aya 0.14 has no batch API) and sums the CPUs into `out[key]`.
    fn read_all(&mut self, fd: i32, out: &mut [u64]) -> io::Result<()> {
        let mut done = 0usize;
        let mut in_batch = 0u32;
        let mut out_batch = 0u32;
        let mut first = true;
        while done < self.entries {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { &raw const in_batch as u64 },
                out_batch: &raw mut out_batch as u64,
                keys: self.keys[done..].as_mut_ptr() as u64,
                values: self.values[done * self.cpus..].as_mut_ptr() as u64,
                count: (self.entries - done) as u32,
                map_fd: fd as u32,
                ..Default::default()
            };
            // SAFETY: the attr points at buffers sized for `count` keys and
            // `count * cpus` values, which outlive the call.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>() as u32,
                )
            };
            done += attr.count as usize;
            if ret < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOENT) {
                    break; // no more elements
                }
                return Err(e);
            }
            if attr.count == 0 {
                break;
            }
            in_batch = out_batch;
            first = false;
        }
        if done != self.entries {
            return Err(io::Error::other(format!(
                "batch read {done} of {} elements",
                self.entries
            )));
        }
        for (i, &key) in self.keys.iter().enumerate() {
            let values = &self.values[i * self.cpus..(i + 1) * self.cpus];
            out[key as usize] = values.iter().sum();
        }
        Ok(())
    }
}
