//! Our program behind libxdp's dispatcher, for test runs: libxdp's own
//! `xdp-dispatcher.o` (protocol version 2, one component enabled, our run priority
//! and chain-call actions, as `scan_agent::dispatcher` configures it) loaded with
//! aya, and our XDP program loaded as its `freplace` component in slot `prog0`.
//! A test run of the dispatcher then measures the path a packet takes when the
//! agent shares the XDP hook. Nothing is attached to an interface.
//!
//! Kernels that refuse `BPF_PROG_TYPE_EXT` (this one: EPERM, with lockdown=integrity)
//! cannot run it; the error is reported as the reason, never a figure.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Extension, TestRun as _, TestRunOptions, TestRunResult, Xdp},
};
use scan_common::{DEBUG_GLOBAL, PORT_SYNS_MAP, PORTS, SKETCH_SWITCH};

/// Where libxdp's packages install the dispatcher (the list `scan_agent::dispatcher` uses).
const DISPATCHER_OBJECTS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o",
    "/usr/lib/bpf/xdp-dispatcher.o",
    "/usr/local/lib/bpf/xdp-dispatcher.o",
];
const DISPATCHER_PROGRAM: &str = "xdp_dispatcher";
/// `struct xdp_dispatcher_config`: magic, version, programs enabled, frags flag; then
/// chain-call actions, run priorities and program flags, 10 `u32` each.
const SLOTS: usize = 10;
const CONFIG_SIZE: usize = 4 + 3 * 4 * SLOTS;
const MAGIC: u8 = 236;
const VERSION: u8 = 2;
const XDP_PASS: u32 = 2;
/// The stubs' return value: always a chain-call action.
const RETVAL: u32 = 31;

/// The dispatcher with our program as its one component.
pub struct DispatcherPath {
    dispatcher: Ebpf,
    // Kept loaded and attached (its link lives in the Ebpf) while the dispatcher runs.
    _ours: Ebpf,
}

impl DispatcherPath {
    /// Loads the dispatcher and our program (`sketches` on or off) into its slot 0.
    pub fn load(sketches: bool) -> Result<Self> {
        let object = DISPATCHER_OBJECTS
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .with_context(|| {
                format!(
                    "libxdp's xdp-dispatcher.o is not installed (looked in {}; `cargo xtask \
                     setup` installs libxdp1)",
                    DISPATCHER_OBJECTS.join(", ")
                )
            })?;
        let mut config = [0u8; CONFIG_SIZE];
        config[0] = MAGIC;
        config[1] = VERSION;
        config[2] = 1;
        let words = [
            (0, (1 << XDP_PASS) | (1 << RETVAL)),
            (1, scan_agent::dispatcher::PRIORITY),
            (2, 0),
        ];
        for (array, value) in words {
            let at = 4 + array * 4 * SLOTS;
            config[at..at + 4].copy_from_slice(&u32::to_ne_bytes(value));
        }
        let mut dispatcher = EbpfLoader::new()
            .override_global("conf", &config, true)
            .load_file(object)
            .with_context(|| format!("loading {}", object.display()))?;
        let program: &mut Xdp = dispatcher
            .program_mut(DISPATCHER_PROGRAM)
            .context("no xdp_dispatcher in libxdp's object")?
            .try_into()?;
        program.load().context("loading libxdp's dispatcher")?;
        let target = program.fd()?.try_clone()?;

        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))
            .context("counting possible CPUs")?;
        let name =
            scan_common::program_name(scan_common::Hook::Xdp, scan_common::LinkKind::Ethernet);
        let switch = u32::from(sketches);
        let mut loader = EbpfLoader::new();
        loader
            .extension(name)
            .map_max_entries(PORT_SYNS_MAP, cpus as u32 * PORTS)
            .override_global(DEBUG_GLOBAL, &0u32, true)
            .override_global(SKETCH_SWITCH, &switch, true);
        let mut ours = loader
            .load(scan_agent::sensor::PROGRAM_OBJECT)
            .context("loading our object as an extension")?;
        let extension: &mut Extension = ours
            .program_mut(name)
            .with_context(|| format!("no {name} in our object"))?
            .try_into()?;
        if let Err(e) = extension.load(target, "prog0") {
            // The file lists the modes with the active one in brackets.
            let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown")
                .ok()
                .and_then(|l| {
                    let (_, rest) = l.split_once('[')?;
                    Some(format!(" (kernel lockdown: {})", rest.split_once(']')?.0))
                })
                .unwrap_or_default();
            bail!(
                "the kernel refuses our program as a freplace (BPF_PROG_TYPE_EXT) component of \
                 libxdp's dispatcher{lockdown}: {:#}",
                anyhow::Error::from(e)
            );
        }
        extension
            .attach()
            .context("attaching our component to the dispatcher")?;
        Ok(Self {
            dispatcher,
            _ours: ours,
        })
    }

    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        let program: &Xdp = self
            .dispatcher
            .program(DISPATCHER_PROGRAM)
            .context("dispatcher vanished")?
            .try_into()?;
        program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN of the dispatcher")
    }
}
