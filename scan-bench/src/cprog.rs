//! The C programs in bench/: built with clang into target/bench/ and loaded with aya.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{Program, TestRun as _, TestRunOptions, TestRunResult, Xdp, XdpMode},
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

/// A loaded XDP or sched_cls program from a C object (attached nowhere until
/// [`CObject::attach`]).
pub struct CObject {
    pub ebpf: Ebpf,
    program: &'static str,
}

impl CObject {
    pub fn load(object: &Path, program: &'static str) -> Result<Self> {
        let bytes =
            std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
        let mut ebpf =
            Ebpf::load(&bytes).with_context(|| format!("loading {} with aya", object.display()))?;
        let loaded = match ebpf
            .program_mut(program)
            .with_context(|| format!("no program {program} in {}", object.display()))?
        {
            Program::Xdp(xdp) => xdp.load(),
            Program::SchedClassifier(tc) => tc.load(),
            other => bail!(
                "{program} is a {:?} program, neither XDP nor sched_cls",
                other.prog_type()
            ),
        };
        loaded.with_context(|| format!("the kernel rejected {program}"))?;
        Ok(Self { ebpf, program })
    }

    /// Attaches an XDP program to `interface`; detached when `self` is dropped.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<()> {
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(self.program)
            .context("program vanished")?
            .try_into()
            .with_context(|| format!("{} is not an XDP program", self.program))?;
        xdp.attach(interface, mode)
            .with_context(|| format!("attaching {} to {interface} ({mode:?})", self.program))?;
        Ok(())
    }

    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        let result = match self
            .ebpf
            .program(self.program)
            .context("program vanished")?
        {
            Program::Xdp(xdp) => xdp.test_run(options),
            Program::SchedClassifier(tc) => tc.test_run(options),
            other => bail!("{} is a {:?} program", self.program, other.prog_type()),
        };
        result.with_context(|| format!("BPF_PROG_TEST_RUN of {}", self.program))
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::{MapData, PerCpuArray};
    use scan_lab::frames::{Frame, tcp};

    use super::*;

    /// One loader for both program types: the XDP objects and the sched_cls one load and
    /// run with their own verdicts, the reference counts what it ran on, and only an XDP
    /// program can be attached. Needs root (BPF) and clang, as the benchmark does.
    #[test]
    fn loads_and_runs_xdp_and_sched_cls_objects() {
        let out = std::env::temp_dir().join(format!("scan-bench-cprog-{}", std::process::id()));
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench");
        let objects = build(&source, &out).unwrap();
        let frame =
            Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 40_000, 445, tcp::SYN).build();
        // XDP_PASS, and TC_ACT_UNSPEC (-1) for the TC one.
        for (object, program, verdict) in [
            (&objects.pass, PASS_PROGRAM, 2),
            (&objects.reference, REFERENCE_PROGRAM, 2),
            (&objects.tc_pass, TC_PASS_PROGRAM, u32::MAX),
        ] {
            let loaded = CObject::load(object, program).unwrap();
            let result = loaded.test_run(&frame, 3).unwrap();
            assert_eq!(result.return_value, verdict, "{program}");
            if program == REFERENCE_PROGRAM {
                let map: PerCpuArray<&MapData, u64> = loaded
                    .ebpf
                    .map(REFERENCE_PORT_MAP)
                    .unwrap()
                    .try_into()
                    .unwrap();
                let counted: u64 = map.get(&445, 0).unwrap().iter().sum();
                assert_eq!(counted, 3);
            }
        }
        let mut tc = CObject::load(&objects.tc_pass, TC_PASS_PROGRAM).unwrap();
        // Refused for its type before any interface is looked up.
        let error = tc.attach("scb-none0", XdpMode::Skb).unwrap_err();
        assert!(
            format!("{error:#}").contains("not an XDP program"),
            "{error:#}"
        );
        assert!(CObject::load(&objects.pass, "no_such_program").is_err());
        std::fs::remove_dir_all(&out).unwrap();
    }
}
