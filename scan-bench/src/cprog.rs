//! The C programs in bench/: built with clang into target/bench/ and loaded with aya.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions, TestRunResult, Xdp, XdpMode},
};

use crate::proc;

/// The empty XDP_PASS program and its section/function name.
pub const PASS_SOURCE: &str = "xdp_pass.c";
pub const PASS_PROGRAM: &str = "xdp_pass";
/// The empty TC (TCX) program: the floor for our TCX entry point.
pub const TC_PASS_SOURCE: &str = "tc_pass.c";
pub const TC_PASS_PROGRAM: &str = "tc_pass";
/// The C reference counter.
pub const REFERENCE_SOURCE: &str = "syn_counter.c";
pub const REFERENCE_PROGRAM: &str = "ref_syn_counter";
/// Its per-port map: a PERCPU_ARRAY of 65,536 u64.
pub const REFERENCE_PORT_MAP: &str = "REF_PORT_SYNS";

/// The C compiler: `$SCAN_BENCH_CLANG`, else clang-22.
pub fn clang() -> String {
    std::env::var("SCAN_BENCH_CLANG").unwrap_or_else(|_| "clang-22".into())
}

/// Paths of the built objects.
pub struct CObjects {
    pub pass: PathBuf,
    pub tc_pass: PathBuf,
    pub reference: PathBuf,
    /// The reference built with `-DSKETCH`: the same sketch work as ours.
    pub reference_sketch: PathBuf,
}

/// Compiles bench/*.c with `clang -O2 -g -target bpf -c` into `out_dir`.
pub fn build(source_dir: &Path, out_dir: &Path) -> Result<CObjects> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let compile = |source: &str, defines: &[&str], object: &str| -> Result<PathBuf> {
        let src = source_dir.join(source);
        let obj = out_dir.join(object);
        proc::run(
            Command::new(clang())
                .args(["-O2", "-g", "-target", "bpf", "-c"])
                .args(defines)
                .arg(&src)
                .arg("-o")
                .arg(&obj),
            Duration::from_secs(60),
        )
        .with_context(|| format!("compiling {} (is clang-22 installed?)", src.display()))?;
        Ok(obj)
    };
    Ok(CObjects {
        pass: compile(PASS_SOURCE, &[], "xdp_pass.o")?,
        tc_pass: compile(TC_PASS_SOURCE, &[], "tc_pass.o")?,
        reference: compile(REFERENCE_SOURCE, &[], "syn_counter.o")?,
        reference_sketch: compile(REFERENCE_SOURCE, &["-DSKETCH"], "syn_counter_sketch.o")?,
    })
}

/// A loaded XDP program from a C object (not attached anywhere).
pub struct XdpObject {
    pub ebpf: Ebpf,
    program: &'static str,
}

impl XdpObject {
    pub fn load(object: &Path, program: &'static str) -> Result<Self> {
        let bytes =
            std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
        let mut ebpf =
            Ebpf::load(&bytes).with_context(|| format!("loading {} with aya", object.display()))?;
        let xdp: &mut Xdp = ebpf
            .program_mut(program)
            .with_context(|| format!("no program {program} in {}", object.display()))?
            .try_into()
            .with_context(|| format!("{program} is not an XDP program"))?;
        xdp.load()
            .with_context(|| format!("the kernel rejected {program}"))?;
        Ok(Self { ebpf, program })
    }

    /// Attaches to `interface`; detached when `self` is dropped.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<()> {
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(self.program)
            .context("program vanished")?
            .try_into()?;
        xdp.attach(interface, mode)
            .with_context(|| format!("attaching {} to {interface} ({mode:?})", self.program))?;
        Ok(())
    }

    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        let xdp: &Xdp = self
            .ebpf
            .program(self.program)
            .context("program vanished")?
            .try_into()?;
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        xdp.test_run(options)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", self.program))
    }
}

/// A loaded sched_cls program from a C object (attached nowhere), for test runs.
pub struct TcObject {
    ebpf: Ebpf,
    program: &'static str,
}

impl TcObject {
    pub fn load(object: &Path, program: &'static str) -> Result<Self> {
        let bytes =
            std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
        let mut ebpf =
            Ebpf::load(&bytes).with_context(|| format!("loading {} with aya", object.display()))?;
        let tc: &mut SchedClassifier = ebpf
            .program_mut(program)
            .with_context(|| format!("no program {program} in {}", object.display()))?
            .try_into()
            .with_context(|| format!("{program} is not a sched_cls program"))?;
        tc.load()
            .with_context(|| format!("the kernel rejected {program}"))?;
        Ok(Self { ebpf, program })
    }

    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        let tc: &SchedClassifier = self
            .ebpf
            .program(self.program)
            .context("program vanished")?
            .try_into()?;
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        tc.test_run(options)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", self.program))
    }
}
