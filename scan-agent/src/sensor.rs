//! The kernel side as the agent sees it: loads the embedded XDP program, pins and
//! reuses its maps, attaches it to interfaces (adopting a link kept from an earlier
//! run), and reads the counters.
use std::{
    fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    ptr::NonNull,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, MapInfo, MapType, PerCpuArray, RingBuf},
    programs::{
        ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use scan_common::{
    CLASSES_MAP, CONFIG_MAP, ClassCounts, PORT_SYNS_MAP, PORTS, PROGRAM_NAME, PacketClass,
    ProgramConfig, SAMPLES_MAP, SKETCH_MAP, SKETCH_PROBES, SKETCH_SLOTS, SKETCH_SWITCH, Sketch,
    SketchSlot, SourceSample, sketch_slot_home,
};

use crate::sketch::Distinct;

/// The XDP program, built by `build.rs` from `scan-ebpf` and embedded.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/scan-ebpf.o"));

const BPF_F_MMAPABLE: u32 = 1 << 10;

const LINK_PREFIX: &str = "link-";

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("cannot count possible CPUs ({0}): is /sys mounted?")]
    Cpus(String),
    #[error(
        "pinned map {path} does not match this program: {found}, expected {expected}. It was \
         made by another version of scan-agent or on another CPU count. To keep its counts, \
         run the version that made it; to start afresh, run `scan-agent detach --pin-path {dir}` \
         (this discards the pinned counts) or pass another --pin-path"
    )]
    PinMismatch {
        path: PathBuf,
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "--pin-path {0} is not on a bpffs, so counts would not survive a restart: mount one \
         there (`mount -t bpf bpf DIR`) or use a directory under /sys/fs/bpf"
    )]
    NotBpffs(PathBuf),
    #[error(
        "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({0}): run \
         `mount -t bpf bpf /sys/fs/bpf` as root, or let systemd mount it"
    )]
    MountBpffs(io::Error),
    #[error("cannot read pinned map {path}: {source}")]
    PinRead {
        path: PathBuf,
        source: Box<aya::maps::MapError>,
    },
    #[error(
        "cannot create pin directory {path}: {source}. Is bpffs mounted there? \
         (`mount -t bpf bpf /sys/fs/bpf`, or `scan-agent check`)"
    )]
    PinDir { path: PathBuf, source: io::Error },
    #[error(
        "loading the eBPF object failed: {}. Run `scan-agent check` to see whether this \
         kernel supports BPF, whether this process has CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON, and whether the pin path is on a writable bpffs",
        crate::error_chain(.0.as_ref())
    )]
    Load(Box<aya::EbpfError>),
    #[error("the kernel rejected the XDP program: {0:#}")]
    Verifier(Box<ProgramError>),
    #[error("map {0} is missing from the embedded object (a build problem)")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("mmap of {0} failed: {1}")]
    Mmap(&'static str, io::Error),
    #[error(
        "cannot attach to {interface} in {mode} mode: {source:#}. Does the interface exist \
         (`ip link`)? Does its driver support that mode? Try --xdp-mode skb"
    )]
    Attach {
        interface: String,
        mode: AttachMode,
        source: Box<ProgramError>,
    },
    #[error(
        "cannot keep the program attached to {interface}: {reason}. This needs bpf_link \
         support for XDP (Linux >= 5.9); run without --keep-attached"
    )]
    KeepAttached { interface: String, reason: String },
    #[error("cannot detach from {interface}: {source}")]
    Detach {
        interface: String,
        source: Box<ProgramError>,
    },
    #[error("no network interface named {0:?}: see `ip link` for the names")]
    NoInterface(String),
    #[error(
        "--pin-path {0:?} is not a directory on a bpffs, so it holds no pins of scan-agent; \
         detach removed nothing. Give the --pin-path the agent ran with (default \
         /sys/fs/bpf/scan-agent)"
    )]
    DetachNotBpffs(PathBuf),
    #[error("pinned link {path}: {reason}")]
    PinnedLink { path: PathBuf, reason: String },
    #[error("test run failed: {0:#}")]
    TestRun(Box<ProgramError>),
}

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver (XDP_FLAGS_DRV_MODE): before any sk_buff is built.
    Native,
    /// Generic XDP (XDP_FLAGS_SKB_MODE): after the sk_buff is built; works everywhere.
    Skb,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }

    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "native" => Some(Self::Native),
            "skb" => Some(Self::Skb),
            _ => None,
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `--xdp-mode` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeChoice {
    /// Native, falling back to SKB when the driver refuses.
    #[default]
    Auto,
    Native,
    Skb,
}

/// An interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachMode,
    /// Whether the link was adopted from a pin left by an earlier run.
    pub adopted: bool,
}

impl Attachment {
    /// False once the interface is gone (the kernel then drops the link with it).
    pub fn interface_exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.interface).exists()
    }
}

/// Read-only `mmap` of the per-CPU port counters (see `scan_common::PORT_SYNS_MAP`).
struct PortCounterView {
    base: NonNull<u64>,
    entries: usize,
    // Keeps the map alive while mapped.
    _map: MapData,
}

// SAFETY: the mapping is read-only shared memory; reads are volatile u64 loads.
unsafe impl Send for PortCounterView {}
unsafe impl Sync for PortCounterView {}

impl PortCounterView {
    fn new(map: MapData, entries: usize) -> Result<Self, SensorError> {
        let len = entries * size_of::<u64>();
        // SAFETY: maps the BPF_F_MMAPABLE array read-only; the kernel lays the values
        // out from offset 0 at their 8-byte stride.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&map.fd().as_fd()),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(SensorError::Mmap(PORT_SYNS_MAP, io::Error::last_os_error()));
        }
        let base = NonNull::new(addr.cast::<u64>())
            .ok_or_else(|| SensorError::Mmap(PORT_SYNS_MAP, io::Error::other("null mapping")))?;
        Ok(Self {
            base,
            entries,
            _map: map,
        })
    }

    /// Sums the CPU slices into `out[port]`; no syscall.
    fn sum_into(&self, out: &mut [u64]) {
        let ports = PORTS as usize;
        out[..ports].fill(0);
        for slice in 0..self.entries / ports {
            let start = slice * ports;
            for (port, total) in out[..ports].iter_mut().enumerate() {
                // SAFETY: start + port < entries, inside the mapping; the kernel
                // writes these words concurrently, so read each one volatile.
                let value = unsafe { self.base.as_ptr().add(start + port).read_volatile() };
                *total = total.wrapping_add(value);
            }
        }
    }
}

impl Drop for PortCounterView {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.entries * size_of::<u64>()) };
    }
}

/// Read-write `mmap` of the sketch slots (see `scan_common::SKETCH_MAP`): the agent
/// copies each used slot out and resets it, once per poll.
struct SketchView {
    base: NonNull<SketchSlot>,
    // Keeps the map alive while mapped.
    _map: MapData,
}

// SAFETY: shared memory accessed only through volatile reads and writes.
unsafe impl Send for SketchView {}
unsafe impl Sync for SketchView {}

const SKETCH_VIEW_LEN: usize = SKETCH_SLOTS as usize * size_of::<SketchSlot>();

impl SketchView {
    fn new(map: MapData) -> Result<Self, SensorError> {
        // SAFETY: maps the BPF_F_MMAPABLE array; values sit at their 8-byte stride,
        // which is the struct's size (asserted in scan-common).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SKETCH_VIEW_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&map.fd().as_fd()),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(SensorError::Mmap(SKETCH_MAP, io::Error::last_os_error()));
        }
        let base = NonNull::new(addr.cast::<SketchSlot>())
            .ok_or_else(|| SensorError::Mmap(SKETCH_MAP, io::Error::other("null mapping")))?;
        Ok(Self { base, _map: map })
    }

    fn slot(&self, index: usize) -> *mut SketchSlot {
        debug_assert!(index < SKETCH_SLOTS as usize);
        // SAFETY: index < SKETCH_SLOTS, inside the mapping.
        unsafe { self.base.as_ptr().add(index) }
    }

    /// Copies a sketch out and resets it. The program writes concurrently: every
    /// access is volatile, and an insert landing between the copy and the reset is
    /// lost (a window of microseconds per poll).
    fn take(sketch: *mut Sketch) -> Distinct {
        // SAFETY: `sketch` points into the mapping; volatile 4-byte accesses only.
        unsafe {
            let len_ptr = &raw mut (*sketch).exact_len;
            let len = len_ptr.read_volatile();
            if len == 0 {
                return Distinct::default();
            }
            let mut copy = Sketch {
                exact_len: len,
                exact: [0; scan_common::SKETCH_EXACT],
                registers: [0; scan_common::SKETCH_REGISTERS],
            };
            let exact = (&raw mut (*sketch).exact).cast::<u32>();
            for (i, value) in copy.exact.iter_mut().enumerate() {
                *value = exact.add(i).read_volatile();
            }
            if len as usize > scan_common::SKETCH_EXACT {
                let registers = (&raw mut (*sketch).registers).cast::<u32>();
                let words = scan_common::SKETCH_REGISTERS / 4;
                for i in 0..words {
                    let word = registers.add(i).read_volatile();
                    copy.registers[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
                    registers.add(i).write_volatile(0);
                }
            } else {
                // Registers of a list-sized sketch hold only what the list holds.
                let registers = (&raw mut (*sketch).registers).cast::<u32>();
                for i in 0..scan_common::SKETCH_REGISTERS / 4 {
                    registers.add(i).write_volatile(0);
                }
            }
            len_ptr.write_volatile(0);
            Distinct::from_kernel(&copy)
        }
    }
}

impl Drop for SketchView {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), SKETCH_VIEW_LEN) };
    }
}

/// One port's sketches since the previous [`Sensor::take_sketches`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSketches {
    pub port: u16,
    pub sources: Distinct,
    pub targets: Distinct,
}

/// The loaded program and its maps.
pub struct Sensor {
    ebpf: Ebpf,
    ports: PortCounterView,
    sketches: Option<SketchView>,
    /// Sampled SYN sources of flagged ports (with the sketches on).
    samples: Option<RingBuf<MapData>>,
    classes: PerCpuArray<MapData, u64>,
    config: Array<MapData, ProgramConfig>,
    pin_dir: Option<PathBuf>,
    attachments: Vec<Attachment>,
    /// Links this process owns (not kept): detached by [`Sensor::detach`] or at exit.
    owned_links: Vec<(String, aya::programs::xdp::XdpLinkId)>,
}

/// Whether `path` (or its deepest existing ancestor) is on a bpffs mount.
pub fn on_bpffs(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
        return false;
    };
    // The longest mount point that contains `path` decides.
    let mut best: Option<(usize, bool)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(mount_point), Some(fs_type)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path.starts_with(mount_point) && best.is_none_or(|(len, _)| mount_point.len() >= len) {
            best = Some((mount_point.len(), fs_type == "bpf"));
        }
    }
    best.is_some_and(|(_, bpf)| bpf)
}

/// Makes sure `pin_dir` is on a bpffs, mounting the standard one at /sys/fs/bpf
/// if that is where the pins go and nothing is mounted there yet.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), SensorError> {
    if on_bpffs(pin_dir) {
        return Ok(());
    }
    let standard = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(standard) {
        return Err(SensorError::NotBpffs(pin_dir.to_path_buf()));
    }
    // SAFETY: plain mount(2) with static, NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(SensorError::MountBpffs(io::Error::last_os_error()));
    }
    log::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Possible CPUs: the number of per-CPU slices of the port map.
pub fn possible_cpus() -> Result<usize, SensorError> {
    aya::util::nr_cpus().map_err(|(what, e)| SensorError::Cpus(format!("{what}: {e}")))
}

struct ExpectedMap {
    name: &'static str,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

fn expected_maps(cpus: usize) -> [ExpectedMap; 4] {
    [
        ExpectedMap {
            name: SKETCH_MAP,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<SketchSlot>() as u32,
            max_entries: SKETCH_SLOTS,
            flags: BPF_F_MMAPABLE,
        },
        ExpectedMap {
            name: PORT_SYNS_MAP,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: port_entries(cpus),
            flags: BPF_F_MMAPABLE,
        },
        ExpectedMap {
            name: CLASSES_MAP,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: PacketClass::COUNT,
            flags: 0,
        },
        ExpectedMap {
            name: CONFIG_MAP,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<ProgramConfig>() as u32,
            max_entries: 1,
            flags: 0,
        },
    ]
}

fn port_entries(cpus: usize) -> u32 {
    (cpus as u32).saturating_mul(PORTS)
}

/// Checks every pinned map in `dir` against what this program expects, so a pin
/// left by another version or CPU count is an error, never a silent reuse or reset.
fn validate_pins(dir: &Path, cpus: usize) -> Result<(), SensorError> {
    for expected in expected_maps(cpus) {
        let path = dir.join(expected.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| SensorError::PinRead {
            path: path.clone(),
            source: source.into(),
        })?;
        let map_type = info.map_type().map_err(|source| SensorError::PinRead {
            path: path.clone(),
            source: source.into(),
        })?;
        let describe = |t: MapType, k: u32, v: u32, n: u32, f: u32| {
            format!("{t:?} key {k} B, value {v} B, {n} entries, flags {f:#x}")
        };
        let found = describe(
            map_type,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        );
        let wanted = describe(
            expected.map_type,
            expected.key_size,
            expected.value_size,
            expected.max_entries,
            expected.flags,
        );
        if found != wanted {
            return Err(SensorError::PinMismatch {
                path,
                dir: dir.to_path_buf(),
                found,
                expected: wanted,
            });
        }
    }
    Ok(())
}

impl Sensor {
    /// Loads the program. With `pin_dir`, its maps are pinned there (or reused from
    /// there after validation) so counts outlive the agent; without, they are private.
    pub fn load(pin_dir: Option<&Path>) -> Result<Self, SensorError> {
        Self::load_with(pin_dir, true)
    }

    /// [`Sensor::load`], choosing whether the program keeps the distinct-address
    /// sketches (off, the verifier removes their code: the benchmark's baseline).
    pub fn load_with(pin_dir: Option<&Path>, sketches: bool) -> Result<Self, SensorError> {
        let cpus = possible_cpus()?;
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(PORT_SYNS_MAP, port_entries(cpus));
        let switch = u32::from(sketches);
        loader.override_global(SKETCH_SWITCH, &switch, true);
        if let Some(dir) = pin_dir {
            ensure_bpffs(dir)?;
            fs::create_dir_all(dir).map_err(|source| SensorError::PinDir {
                path: dir.to_path_buf(),
                source,
            })?;
            validate_pins(dir, cpus)?;
            for name in [PORT_SYNS_MAP, CLASSES_MAP, CONFIG_MAP, SKETCH_MAP] {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(PROGRAM_OBJECT)
            .map_err(|e| SensorError::Load(Box::new(e)))?;
        program_mut(&mut ebpf)
            .load()
            .map_err(|e| SensorError::Verifier(Box::new(e)))?;

        let ports_map = take_map_data(&mut ebpf, PORT_SYNS_MAP)?;
        let ports = PortCounterView::new(ports_map, port_entries(cpus) as usize)?;
        let (sketches, samples) = if sketches {
            let samples = ebpf
                .take_map(SAMPLES_MAP)
                .ok_or(SensorError::MissingMap(SAMPLES_MAP))?
                .try_into()
                .map_err(|source| SensorError::Map {
                    name: SAMPLES_MAP,
                    source: Box::new(source),
                })?;
            (
                Some(SketchView::new(take_map_data(&mut ebpf, SKETCH_MAP)?)?),
                Some(samples),
            )
        } else {
            (None, None)
        };
        let classes = ebpf
            .take_map(CLASSES_MAP)
            .ok_or(SensorError::MissingMap(CLASSES_MAP))?
            .try_into()
            .map_err(|source| SensorError::Map {
                name: CLASSES_MAP,
                source: Box::new(source),
            })?;
        let config = ebpf
            .take_map(CONFIG_MAP)
            .ok_or(SensorError::MissingMap(CONFIG_MAP))?
            .try_into()
            .map_err(|source| SensorError::Map {
                name: CONFIG_MAP,
                source: Box::new(source),
            })?;
        Ok(Self {
            ebpf,
            ports,
            sketches,
            samples,
            classes,
            config,
            pin_dir: pin_dir.map(Path::to_path_buf),
            attachments: Vec::new(),
            owned_links: Vec::new(),
        })
    }

    /// Instructions the verifier processed for the loaded program, if the kernel says.
    pub fn verified_instructions(&self) -> Option<u32> {
        program(&self.ebpf)
            .info()
            .ok()?
            .verified_instruction_count()
    }

    /// Forwards the program's aya-log records to this process's `log` logger.
    pub fn logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, aya_log::Error> {
        aya_log::EbpfLogger::init(&mut self.ebpf)
    }

    /// Turns the program's per-packet debug logging on or off.
    pub fn set_debug(&mut self, on: bool) -> Result<(), SensorError> {
        self.config
            .set(0, ProgramConfig { debug: on.into() }, 0)
            .map_err(|source| SensorError::Map {
                name: CONFIG_MAP,
                source: Box::new(source),
            })
    }

    /// Attaches to `interface`. A link pinned by an earlier run with
    /// `--keep-attached` is adopted: the new program replaces the old one in place
    /// (`bpf_link_update`), so no packet goes uncounted. With `keep`, the link is
    /// pinned so the program stays attached after this process exits.
    pub fn attach(
        &mut self,
        interface: &str,
        choice: ModeChoice,
        keep: bool,
    ) -> Result<Attachment, SensorError> {
        if !Path::new("/sys/class/net").join(interface).exists() {
            return Err(SensorError::NoInterface(interface.to_string()));
        }
        let adopted = self.adopt_pinned_link(interface)?;
        let was_adopted = adopted.is_some();
        let (link_id, mode) = match adopted {
            Some(found) => found,
            None => {
                let modes: &[AttachMode] = match choice {
                    ModeChoice::Auto => &[AttachMode::Native, AttachMode::Skb],
                    ModeChoice::Native => &[AttachMode::Native],
                    ModeChoice::Skb => &[AttachMode::Skb],
                };
                let mut last_error = None;
                let mut attached = None;
                for &mode in modes {
                    match program_mut(&mut self.ebpf).attach(interface, mode.xdp_mode()) {
                        Ok(id) => {
                            attached = Some((id, mode));
                            break;
                        }
                        Err(source) => {
                            if choice == ModeChoice::Auto && mode == AttachMode::Native {
                                log::warn!(
                                    "native XDP on {interface} refused ({source}); falling \
                                     back to SKB (generic) mode"
                                );
                            }
                            last_error = Some(SensorError::Attach {
                                interface: interface.to_string(),
                                mode,
                                source: Box::new(source),
                            });
                        }
                    }
                }
                match (attached, last_error) {
                    (Some(found), _) => found,
                    (None, Some(error)) => return Err(error),
                    (None, None) => unreachable!("at least one mode is tried"),
                }
            }
        };
        if keep {
            self.pin_link(interface, mode, link_id)?;
        } else {
            self.owned_links.push((interface.to_string(), link_id));
        }
        let attachment = Attachment {
            interface: interface.to_string(),
            mode,
            adopted: was_adopted,
        };
        self.attachments.push(attachment.clone());
        Ok(attachment)
    }

    fn adopt_pinned_link(
        &mut self,
        interface: &str,
    ) -> Result<Option<(aya::programs::xdp::XdpLinkId, AttachMode)>, SensorError> {
        let Some(dir) = &self.pin_dir else {
            return Ok(None);
        };
        for mode in [AttachMode::Native, AttachMode::Skb] {
            let path = link_pin_path(dir, interface, mode);
            if !path.exists() {
                continue;
            }
            let link_error = |reason: String| SensorError::PinnedLink {
                path: path.clone(),
                reason: format!(
                    "{reason}; remove it with `scan-agent detach --pin-path {}`",
                    dir.display()
                ),
            };
            let pinned = PinnedLink::from_pin(&path).map_err(|e| link_error(e.to_string()))?;
            // Unpinning hands us the only reference; we re-pin below if asked to keep it.
            let fd_link: FdLink = pinned.unpin().map_err(|e| link_error(e.to_string()))?;
            let xdp_link = XdpLink::try_from(fd_link).map_err(|e| link_error(e.to_string()))?;
            let id = program_mut(&mut self.ebpf)
                .attach_to_link(xdp_link)
                .map_err(|e| link_error(format!("cannot replace its program: {e}")))?;
            return Ok(Some((id, mode)));
        }
        Ok(None)
    }

    fn pin_link(
        &mut self,
        interface: &str,
        mode: AttachMode,
        link_id: aya::programs::xdp::XdpLinkId,
    ) -> Result<(), SensorError> {
        let keep_error = |reason: String| SensorError::KeepAttached {
            interface: interface.to_string(),
            reason,
        };
        let dir = self
            .pin_dir
            .clone()
            .ok_or_else(|| keep_error("no --pin-path".into()))?;
        let program = program_mut(&mut self.ebpf);
        let link = program
            .take_link(link_id)
            .map_err(|e| keep_error(e.to_string()))?;
        let fd_link = FdLink::try_from(link).map_err(|e: LinkError| {
            keep_error(format!("attached through netlink, not bpf_link ({e})"))
        })?;
        let path = link_pin_path(&dir, interface, mode);
        let pinned = fd_link.pin(&path).map_err(|e| keep_error(e.to_string()))?;
        // Dropping the PinnedLink closes our fd; the pin keeps the link alive.
        drop(pinned);
        Ok(())
    }

    /// Detaches every link this process owns; kept (pinned) links stay attached.
    pub fn detach(&mut self) -> Result<(), SensorError> {
        for (interface, link_id) in std::mem::take(&mut self.owned_links) {
            program_mut(&mut self.ebpf)
                .detach(link_id)
                .map_err(|source| SensorError::Detach {
                    interface: interface.clone(),
                    source: Box::new(source),
                })?;
            self.attachments.retain(|a| a.interface != interface);
        }
        Ok(())
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Per-port SYN totals summed over CPUs into `out` (length >= 65,536).
    pub fn read_ports(&self, out: &mut [u64]) {
        self.ports.sum_into(out);
    }

    /// Whether the program was loaded with the sketches on.
    pub fn sketches_on(&self) -> bool {
        self.sketches.is_some()
    }

    /// Appends the sketches of every port that has a slot and saw a SYN since the
    /// last call, and resets them: each call returns one interval's sketches.
    pub fn take_sketches(&self, out: &mut Vec<PortSketches>) {
        let Some(view) = &self.sketches else {
            return;
        };
        for index in 0..SKETCH_SLOTS as usize {
            let slot = view.slot(index);
            // SAFETY: inside the mapping; volatile read of the tag.
            let tag = unsafe { (&raw const (*slot).port).read_volatile() };
            if tag == 0 || tag > PORTS {
                continue;
            }
            // SAFETY: as above.
            let (sources, targets) = unsafe {
                (
                    SketchView::take(&raw mut (*slot).sources),
                    SketchView::take(&raw mut (*slot).targets),
                )
            };
            if sources.is_empty() && targets.is_empty() {
                continue;
            }
            let port = (tag - 1) as u16;
            // A port may hold two slots (see `SKETCH_PROBES`): one entry per port.
            match out.iter_mut().find(|p| p.port == port) {
                Some(entry) => {
                    entry.sources.merge(&sources);
                    entry.targets.merge(&targets);
                }
                None => out.push(PortSketches {
                    port,
                    sources,
                    targets,
                }),
            }
        }
    }

    /// Lets each of `ports` send up to `budget` SYN sources to the sample ring until
    /// the next call; every other port sends none. Only ports holding a sketch slot
    /// can be sampled (a flagged port has one: it received SYNs).
    pub fn set_sample_budgets(&self, ports: &[u16], budget: u32) {
        let Some(view) = &self.sketches else {
            return;
        };
        for index in 0..SKETCH_SLOTS as usize {
            let slot = view.slot(index);
            // SAFETY: inside the mapping; volatile accesses.
            unsafe {
                let tag = (&raw const (*slot).port).read_volatile();
                let sampled = tag != 0 && ports.contains(&((tag - 1) as u16));
                let want = if sampled { budget } else { 0 };
                let current = &raw mut (*slot).sample_budget;
                if current.read_volatile() != want {
                    current.write_volatile(want);
                }
            }
        }
    }

    /// Appends the SYN sources sampled since the last call (see
    /// [`Sensor::set_sample_budgets`]).
    pub fn drain_samples(&mut self, out: &mut Vec<SourceSample>) {
        let Some(ring) = &mut self.samples else {
            return;
        };
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<SourceSample>() {
                // SAFETY: the program writes whole `SourceSample`s (plain integers);
                // the read is unaligned-safe.
                out.push(unsafe { item.as_ptr().cast::<SourceSample>().read_unaligned() });
            }
        }
    }

    /// SYNs not sketched because every slot their port probed was taken (cumulative).
    pub fn sketch_misses(&self) -> u64 {
        let Some(view) = &self.sketches else {
            return 0;
        };
        (0..SKETCH_SLOTS as usize)
            .map(|index| {
                // SAFETY: inside the mapping; volatile read.
                u64::from(unsafe { (&raw const (*view.slot(index)).misses).read_volatile() })
            })
            .sum()
    }

    /// Frees `port`'s slot (if it has one) for other ports, discarding what it holds.
    /// The agent frees the slots of ports idle for a whole short window.
    pub fn free_sketch_slot(&self, port: u16) {
        let Some(view) = &self.sketches else {
            return;
        };
        let home = sketch_slot_home(port);
        for probe in 0..SKETCH_PROBES {
            let slot = view.slot(((home + probe) & (SKETCH_SLOTS - 1)) as usize);
            // SAFETY: inside the mapping; volatile accesses.
            unsafe {
                if (&raw const (*slot).port).read_volatile() == u32::from(port) + 1 {
                    SketchView::take(&raw mut (*slot).sources);
                    SketchView::take(&raw mut (*slot).targets);
                    (&raw mut (*slot).port).write_volatile(0);
                }
            }
        }
    }

    /// Frees every slot, discarding what they hold: for a reader (replay) that takes
    /// the sketches often and keeps its own union, so any number of ports take turns.
    pub fn release_sketch_slots(&self) {
        let Some(view) = &self.sketches else {
            return;
        };
        for index in 0..SKETCH_SLOTS as usize {
            let slot = view.slot(index);
            // SAFETY: inside the mapping; volatile accesses.
            unsafe {
                if (&raw const (*slot).port).read_volatile() != 0 {
                    SketchView::take(&raw mut (*slot).sources);
                    SketchView::take(&raw mut (*slot).targets);
                    (&raw mut (*slot).port).write_volatile(0);
                }
            }
        }
    }

    /// Ports holding a sketch slot now.
    pub fn sketched_ports(&self) -> usize {
        let Some(view) = &self.sketches else {
            return 0;
        };
        (0..SKETCH_SLOTS as usize)
            .filter(|&index| {
                // SAFETY: inside the mapping; volatile read of the tag.
                unsafe { (&raw const (*view.slot(index)).port).read_volatile() != 0 }
            })
            .count()
    }

    /// Packet-class totals summed over CPUs.
    pub fn read_classes(&self) -> Result<ClassCounts, SensorError> {
        let mut counts = ClassCounts::default();
        for class in PacketClass::ALL {
            let values =
                self.classes
                    .get(&class.index(), 0)
                    .map_err(|source| SensorError::Map {
                        name: CLASSES_MAP,
                        source: Box::new(source),
                    })?;
            counts.0[class as usize] = values.iter().copied().fold(0, u64::wrapping_add);
        }
        Ok(counts)
    }

    /// Runs the program once per `repeat` on `frame` through `BPF_PROG_TEST_RUN`.
    pub fn test_run(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<aya::programs::TestRunResult, SensorError> {
        // The kernel refuses (EINVAL) input shorter than an Ethernet header; no
        // driver delivers such a frame either.
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        program(&self.ebpf)
            .test_run(options)
            .map_err(|e| SensorError::TestRun(Box::new(e)))
    }
}

fn program(ebpf: &Ebpf) -> &Xdp {
    ebpf.program(PROGRAM_NAME)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the XDP program (checked at build)")
}

fn program_mut(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(PROGRAM_NAME)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the XDP program (checked at build)")
}

fn take_map_data(ebpf: &mut Ebpf, name: &'static str) -> Result<MapData, SensorError> {
    match ebpf.take_map(name) {
        Some(Map::Array(data)) => Ok(data),
        Some(_) => Err(SensorError::Map {
            name,
            source: Box::new(aya::maps::MapError::InvalidMapType { map_type: 0 }),
        }),
        None => Err(SensorError::MissingMap(name)),
    }
}

fn link_pin_path(dir: &Path, interface: &str, mode: AttachMode) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{interface}-{}", mode.name()))
}

/// Interfaces with a kept (pinned) link in `dir`, with their modes.
fn pinned_links(dir: &Path) -> io::Result<Vec<(String, AttachMode, PathBuf)>> {
    let mut links = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(links),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(LINK_PREFIX) else {
            continue;
        };
        if let Some((interface, mode)) = rest.rsplit_once('-')
            && let Some(mode) = AttachMode::from_name(mode)
        {
            links.push((interface.to_string(), mode, entry.path()));
        }
    }
    Ok(links)
}

/// `statfs` magic of bpffs (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: u32 = 0xCAFE_4A11;

/// Whether `dir` itself is on a bpffs (not just a path under one).
fn statfs_is_bpffs(dir: &Path) -> io::Result<bool> {
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type is a signed word; the magic is its low 32 bits.
    Ok(st.f_type as u32 == BPF_FS_MAGIC)
}

/// Whether the pin at `path` is a map of this program's: named `name` (the kernel keeps
/// the first 15 bytes) and of its type.
fn is_our_map_pin(path: &Path, expected: &ExpectedMap) -> bool {
    let kernel_name = &expected.name.as_bytes()[..expected.name.len().min(15)];
    MapInfo::from_pin(path).is_ok_and(|info| {
        info.name() == kernel_name && info.map_type().is_ok_and(|t| t == expected.map_type)
    })
}

/// Removes every kept link (detaching the program) and every pinned map of this
/// program in `dir`, then `dir` if that left it empty. Only a directory on a bpffs is
/// touched, and in it only pins of this program's names and types: anything else is
/// left, with a warning. Returns what was removed, for the operator.
pub fn detach_all(dir: &Path) -> Result<Vec<String>, SensorError> {
    let mut removed = Vec::new();
    let io_error = |path: &Path, e: &dyn std::fmt::Display| SensorError::PinnedLink {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(io_error(dir, &e)),
        Ok(m) if !m.is_dir() => return Err(SensorError::DetachNotBpffs(dir.to_path_buf())),
        Ok(_) => {}
    }
    if !statfs_is_bpffs(dir).map_err(|e| io_error(dir, &e))? {
        return Err(SensorError::DetachNotBpffs(dir.to_path_buf()));
    }
    for (interface, mode, path) in pinned_links(dir).map_err(|e| io_error(dir, &e))? {
        let Ok(pinned) = PinnedLink::from_pin(&path) else {
            log::warn!("left {}: not a pinned link", path.display());
            continue;
        };
        // Dropping the last reference to the link detaches the program.
        drop(pinned.unpin().map_err(|e| io_error(&path, &e))?);
        removed.push(format!("link on {interface} ({mode})"));
    }
    // Names and types do not depend on the CPU count.
    for expected in expected_maps(1) {
        let name = expected.name;
        let path = dir.join(name);
        if fs::symlink_metadata(&path).is_err() {
            continue;
        }
        if !is_our_map_pin(&path, &expected) {
            log::warn!(
                "left {}: not a pinned {name} map of scan-agent",
                path.display()
            );
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => removed.push(format!("map pin {}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, &e)),
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => removed.push(format!("directory {}", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
            let others: Vec<String> = fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            log::warn!(
                "left {}: it also holds what is not scan-agent's ({})",
                dir.display(),
                others.join(", ")
            );
        }
        Err(e) => return Err(io_error(dir, &e)),
    }
    Ok(removed)
}
