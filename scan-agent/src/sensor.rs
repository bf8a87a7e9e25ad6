//! The programs side of the sensor: loads the embedded program once per interface
//! (entry point chosen by hook and link type), pins and reuses its maps, attaches it
//! (XDP alone, as a libxdp dispatcher component, or TCX; adopting a link kept from an
//! earlier run). Everything here needs capabilities. The maps it loads are read
//! through [`Counters`] (the maps side, `crate::counters`), which a [`Sensor`]
//! dereferences to; `scan-agent run` hands those maps to its unprivileged worker
//! ([`crate::privsep`]).
//!
//! One load per interface: each load has its own class-counter map, so the
//! counters are per interface with one constant-key lookup per packet (no
//! ifindex-to-slot lookup), and the link kind is the entry point, not a branch.
//! The port map is shared through its pin unless `--per-interface-ports`.
use std::{
    fs, io,
    ops::{Deref, DerefMut},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, MapInfo, MapType},
    programs::{
        Extension, LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun as _,
        TestRunOptions, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
        xdp::{XdpLink, XdpLinkId},
    },
};
use scan_common::{
    CLASS_SLOT_CPUS, CLASS_SLOTS_MAP, ClassCounts, ClassSlotTable, DEBUG_GLOBAL,
    LEGACY_CLASSES_MAP, PORT_SYNS_MAP, PORTS, SAMPLES_BYTES, SAMPLES_MAP, SKETCH_MAP, SKETCH_SLOTS,
    SKETCH_SWITCH, SYN_NO_SLOT_MAP, SketchSlot, program_name, single_buffer_program_name,
};

pub use crate::counters::{Counters, PortSketches};
use crate::{
    counters::{
        ClassSlotsView, LegacyClasses, LoadMaps, PortCounterView, SampleRing, SketchView, map_error,
    },
    dispatcher, xdp_hook,
};
pub use scan_common::{Hook, LinkKind};

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
        "this machine has {0} possible CPU ids ({possible}); the program keeps class counters \
         for at most {CLASS_SLOT_CPUS}: rebuild with a larger scan_common::CLASS_SLOT_CPUS",
        possible = crate::cpus::POSSIBLE
    )]
    TooManyCpus(usize),
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
    #[error("the kernel rejected the program: {0:#}")]
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
        "{interface}'s XDP hook is held by another program (id {prog_id}, {name}) that is not a \
         libxdp dispatcher: scan-agent never replaces it. Use --attach tc (TCX ingress, \
         Linux >= 6.6) or --attach auto, or load that program through libxdp (xdp-loader) so \
         both can share the hook"
    )]
    ForeignXdp {
        interface: String,
        prog_id: u32,
        name: String,
    },
    #[error(
        "{interface}'s XDP hook is held by another program (id {prog_id}, {name}) that is not a \
         libxdp dispatcher, and TCX ingress, where --attach auto would go beside it, is not \
         available ({source:#}; TCX needs Linux >= 6.6): scan-agent never replaces that \
         program. Load it through libxdp (xdp-loader) so both can share the hook"
    )]
    ForeignXdpNoTcx {
        interface: String,
        prog_id: u32,
        name: String,
        source: Box<ProgramError>,
    },
    #[error(
        "{interface} has link type {arphrd} (see /sys/class/net/{interface}/type), which the \
         parser does not know: it reads Ethernet (1, loopback 772) and raw IP links (none \
         65534, ppp 512, tunnels 768/769/776/778/823, rawip 519)"
    )]
    UnsupportedLink { interface: String, arphrd: u32 },
    #[error("libxdp dispatcher on {interface}: {source}")]
    Dispatcher {
        interface: String,
        source: Box<crate::dispatcher::DispatcherError>,
    },
    #[error("removing the agent's kept component from a libxdp dispatcher: {0}")]
    KeptComponent(Box<crate::dispatcher::DispatcherError>),
    #[error("cannot read the XDP hook of {interface} through netlink: {source}")]
    Netlink {
        interface: String,
        source: io::Error,
    },
    #[error(
        "cannot attach to {interface} at TCX ingress: {source:#}. TCX needs Linux >= 6.6; \
         on older kernels use --attach xdp"
    )]
    AttachTc {
        interface: String,
        source: Box<ProgramError>,
    },
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
         support (Linux >= 5.9 for XDP, >= 6.6 for TCX); run without --keep-attached"
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
    #[error(
        "several interfaces share the counters through pinned maps: give a --pin-path on a \
         bpffs to attach to {0} as well"
    )]
    SharedMapsNeedPins(String),
    #[error("pinned link {path}: {reason}")]
    PinnedLink { path: PathBuf, reason: String },
    #[error("test run failed: {0:#}")]
    TestRun(Box<ProgramError>),
    #[error("no program is loaded for test runs (a bug: use Sensor::unattached)")]
    NoTestProgram,
    #[error("the maps handed over by the attacher do not add up: {0} (a bug)")]
    Layout(String),
}

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver (XDP_FLAGS_DRV_MODE): before any sk_buff is built.
    Native,
    /// Generic XDP (XDP_FLAGS_SKB_MODE): after the sk_buff is built; works everywhere.
    Skb,
    /// TCX ingress (`sched_cls` through a `bpf_link`, Linux >= 6.6).
    Tcx,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
            Self::Tcx => "tcx",
        }
    }

    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb | Self::Tcx => XdpMode::Skb,
        }
    }

    fn hook(self) -> Hook {
        match self {
            Self::Native | Self::Skb => Hook::Xdp,
            Self::Tcx => Hook::Tc,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "native" => Some(Self::Native),
            "skb" => Some(Self::Skb),
            "tcx" => Some(Self::Tcx),
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

/// What `--attach` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookChoice {
    /// XDP where the hook is free (or holds a libxdp dispatcher), TCX ingress where
    /// another program holds the XDP hook.
    #[default]
    Auto,
    /// XDP only; an error if another program (not a dispatcher) holds the hook.
    Xdp,
    /// TCX ingress only (Linux >= 6.6).
    Tc,
}

/// What `--xdp-multiprog` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultiprogChoice {
    /// XDP through a libxdp dispatcher: join the one on the interface, or make one
    /// that others (xdp-filter, xdp-loader) can join later.
    On,
    /// XDP alone on the hook (a bpf_link no other program can share). The default until
    /// the dispatcher path has run on a kernel that allows freplace programs (this
    /// project's test kernel refuses them), and because it needs /sys/fs/bpf/xdp
    /// writable, which the hardened unit does not grant.
    #[default]
    Off,
}

/// How to attach: the hook, the XDP mode and whether to share the XDP hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachRequest {
    pub hook: HookChoice,
    pub xdp_mode: ModeChoice,
    pub multiprog: MultiprogChoice,
}

/// An interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    /// The interface's index when attached: a recreated interface has a new one.
    pub ifindex: u32,
    pub mode: AttachMode,
    /// What the frames start with on this interface.
    pub kind: LinkKind,
    /// Whether the link was adopted from a pin left by an earlier run.
    pub adopted: bool,
    /// A component of a libxdp dispatcher (mode is then the dispatcher's).
    pub dispatcher: bool,
}

impl Attachment {
    /// The `hook` label of `scan_agent_attached`.
    pub fn hook_name(&self) -> &'static str {
        if self.dispatcher {
            return "xdp_dispatcher";
        }
        match self.mode {
            AttachMode::Native | AttachMode::Skb => "xdp",
            AttachMode::Tcx => "tcx",
        }
    }

    /// False once the interface is gone (the kernel then drops the link with it), also
    /// when another interface took its name.
    pub fn interface_exists(&self) -> bool {
        ifindex(&self.interface).is_ok_and(|index| index == self.ifindex)
    }
}

/// The link a loaded instance holds.
enum OwnedLink {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
    /// A component of the interface's libxdp dispatcher (pinned in its directory).
    Dispatcher {
        ifindex: u32,
    },
}

/// One load of the program: one entry point; its maps are the [`LoadMaps`] of the
/// same `id` in the sensor's [`Counters`].
struct Instance {
    id: u64,
    /// `None` for a program loaded only for test runs.
    interface: Option<String>,
    ebpf: Ebpf,
    hook: Hook,
    /// The entry point loaded: [`program_name`]'s, or an XDP program's single-buffer
    /// twin on a kernel that refuses multi-buffer programs.
    program: &'static str,
    /// The link this process owns and detaches at stop (not kept ones).
    owned: Option<OwnedLink>,
    /// A kept (pinned) link, with this process's own reference: removing its pin under
    /// a running agent does not detach the program, and [`Sensor::repin`] puts it back.
    kept: Option<(AttachMode, FdLink)>,
}

/// Where an interface's program goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Xdp,
    Dispatcher,
    Tc,
}

/// The loaded program instances and their maps.
pub struct Sensor {
    /// The eBPF object programs are loaded from: [`PROGRAM_OBJECT`], or another build
    /// of it that a benchmark compares ([`Sensor::unattached_object`]).
    object: &'static [u8],
    /// Slices of the port map.
    cpus: usize,
    /// CPU ids whose class slots are read: the possible ones.
    class_cpus: usize,
    pin_dir: Option<PathBuf>,
    debug: bool,
    /// Whether the programs keep the distinct-address sketches.
    sketches_on: bool,
    per_interface_ports: bool,
    /// Whether XDP programs are loaded multi-buffer aware: until the kernel refuses it
    /// (before Linux 5.18), then their single-buffer twins.
    xdp_multi_buffer: bool,
    instances: Vec<Instance>,
    /// The maps of every instance, and the shared ones.
    counters: Counters,
    /// The id of the next instance.
    next_id: u64,
    attachments: Vec<Attachment>,
    /// Every map pin this process made or reused, with its own reference to the map, so a
    /// pin removed under the running agent is put back ([`Sensor::repin`]).
    map_pins: Vec<(PathBuf, std::os::fd::OwnedFd)>,
    /// Pins that could not be restored (logged once each, retried at every call).
    repin_failed: Vec<PathBuf>,
}

/// The sensor reads its counters through the maps side.
impl Deref for Sensor {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        &self.counters
    }
}

impl DerefMut for Sensor {
    fn deref_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }
}

/// Reads an interface's link type (ARPHRD_*) and says how its frames start.
pub fn link_kind(interface: &str) -> Result<(u32, LinkKind), SensorError> {
    let path = Path::new("/sys/class/net").join(interface).join("type");
    let arphrd: u32 = fs::read_to_string(&path)
        .map_err(|_| SensorError::NoInterface(interface.to_string()))?
        .trim()
        .parse()
        .map_err(|_| SensorError::UnsupportedLink {
            interface: interface.to_string(),
            arphrd: u32::MAX,
        })?;
    let kind = match arphrd {
        // ARPHRD_ETHER, ARPHRD_LOOPBACK (an all-zero Ethernet header).
        1 | 772 => LinkKind::Ethernet,
        // ARPHRD_NONE (tun, wireguard), PPP, RAWIP, TUNNEL, TUNNEL6, SIT, IPGRE, IP6GRE.
        65534 | 512 | 519 | 768 | 769 | 776 | 778 | 823 => LinkKind::RawIp,
        _ => {
            return Err(SensorError::UnsupportedLink {
                interface: interface.to_string(),
                arphrd,
            });
        }
    };
    Ok((arphrd, kind))
}

/// Human name of a link type, for `check`.
pub fn link_type_name(arphrd: u32) -> &'static str {
    match arphrd {
        1 => "ethernet",
        772 => "loopback",
        65534 => "none (tun, wireguard)",
        512 => "ppp",
        519 => "rawip",
        768 => "ipip",
        769 => "ip6tnl",
        776 => "sit",
        778 => "gre",
        823 => "ip6gre",
        _ => "unknown",
    }
}

/// The index of `interface` in this network namespace.
pub fn ifindex(interface: &str) -> Result<u32, SensorError> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| SensorError::NoInterface(interface.to_string()))?;
    // SAFETY: NUL-terminated string, no other precondition.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(SensorError::NoInterface(interface.to_string())),
        index => Ok(index),
    }
}

/// Name of the program with id `id`, for messages.
fn program_name_by_id(id: u32) -> String {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown name".into())
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

/// Per-CPU slices of the port map: highest possible CPU id + 1 (see [`crate::cpus`]).
pub fn possible_cpus() -> Result<usize, SensorError> {
    crate::cpus::port_map_slices().map_err(SensorError::Cpus)
}

struct ExpectedMap {
    /// The map's name in the object (pins of per-interface maps add `-<interface>`).
    name: &'static str,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

/// What a pinned map named `name` must look like, if it is one of ours.
fn expected_map(name: &str, cpus: usize) -> Option<ExpectedMap> {
    let ours = |base: &str| name == base || name.starts_with(&format!("{base}-"));
    if name == SAMPLES_MAP {
        Some(ExpectedMap {
            name: SAMPLES_MAP,
            map_type: MapType::RingBuf,
            key_size: 0,
            value_size: 0,
            max_entries: SAMPLES_BYTES,
            flags: 0,
        })
    } else if name == SKETCH_MAP {
        Some(ExpectedMap {
            name: SKETCH_MAP,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<SketchSlot>() as u32,
            max_entries: SKETCH_SLOTS,
            flags: BPF_F_MMAPABLE,
        })
    } else if ours(PORT_SYNS_MAP) {
        Some(ExpectedMap {
            name: PORT_SYNS_MAP,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: port_entries(cpus),
            flags: BPF_F_MMAPABLE,
        })
    } else if ours(CLASS_SLOTS_MAP) {
        Some(ExpectedMap {
            name: CLASS_SLOTS_MAP,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<ClassSlotTable>() as u32,
            max_entries: 1,
            flags: BPF_F_MMAPABLE,
        })
    } else if ours(LEGACY_CLASSES_MAP) {
        Some(ExpectedMap {
            name: LEGACY_CLASSES_MAP,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: size_of::<ClassCounts>() as u32,
            max_entries: 1,
            flags: 0,
        })
    } else {
        None
    }
}

/// Pin name of a map of `interface` (shared maps have no interface part).
fn map_pin_name(map: &str, interface: Option<&str>) -> String {
    match interface {
        Some(interface) => format!("{map}-{interface}"),
        None => map.to_string(),
    }
}

fn port_entries(cpus: usize) -> u32 {
    (cpus as u32).saturating_mul(PORTS)
}

/// aya's name for the map of an object's `.bss` section.
const BSS_SECTION: &str = ".bss";

fn syscall_error(name: &'static str, call: &'static str, io_error: io::Error) -> SensorError {
    map_error(name)(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
        call,
        io_error,
    }))
}

/// The map pinned at `path` (validated at load by [`validate_pins`]).
fn open_pin(path: &Path) -> Result<MapData, SensorError> {
    MapData::from_pin(path).map_err(|source| SensorError::PinRead {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// A new, zeroed map for a load's class slots (see `scan_common::CLASS_SLOTS_MAP`).
fn new_class_slots() -> Result<MapData, SensorError> {
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let definition = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_ARRAY,
        size_of::<u32>() as u32,
        size_of::<ClassSlotTable>() as u32,
        1,
        BPF_F_MMAPABLE,
    );
    // Named as pinned: `detach` tells its own pins by name and type.
    MapData::create(definition, CLASS_SLOTS_MAP, None).map_err(map_error(CLASS_SLOTS_MAP))
}

/// Makes the program bind its global data `global` (a map aya made at load) to
/// `ours` instead.
///
/// aya 0.14 writes a global-data map's initial bytes into it when it loads the object,
/// also into a map reused from a pin (`MapData::finalize` after
/// `create_pinned_by_name`): the pinned class slots would be zeroed at every restart.
/// So aya keeps its own (fresh, zeroed) map, and its fd number, which relocation has
/// already written into the program's instructions, is pointed at ours (`dup3`) before
/// the program is loaded: the kernel resolves the number at load, to our map.
fn bind_global_data(global: &MapData, ours: &MapData) -> Result<(), SensorError> {
    use std::os::fd::AsRawFd as _;
    let target = global.fd().as_fd().as_raw_fd();
    // SAFETY: both fds are open maps owned by this process; `target` stays owned by
    // aya's MapData, now referring to our map (same type and size, checked by the
    // kernel when the program loads).
    let rc = unsafe { libc::dup3(ours.fd().as_fd().as_raw_fd(), target, libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(syscall_error(
            CLASS_SLOTS_MAP,
            "dup3",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Checks every pinned map in `dir` against what this program expects, so a pin
/// left by another version or CPU count is an error, never a silent reuse or reset.
fn validate_pins(dir: &Path, cpus: usize) -> Result<(), SensorError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SensorError::PinDir {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(expected) = expected_map(&name, cpus) else {
            continue;
        };
        let path = entry.path();
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
    /// Prepares loading. With `pin_dir`, maps are pinned there (or reused from
    /// there after validation) so counts outlive the agent; without, they are
    /// private to each load.
    pub fn load(pin_dir: Option<&Path>) -> Result<Self, SensorError> {
        Self::load_with(pin_dir, true)
    }

    /// [`Sensor::load`], choosing whether the programs keep the distinct-address
    /// sketches (off, the verifier removes their code: the benchmark's baseline).
    pub fn load_with(pin_dir: Option<&Path>, sketches: bool) -> Result<Self, SensorError> {
        Self::load_sized(pin_dir, sketches, possible_cpus()?)
    }

    /// [`Sensor::load_with`] with `cpus` slices in the port map instead of the highest
    /// possible CPU id + 1 (the test of the no-slot counter makes it too small).
    pub fn load_sized(
        pin_dir: Option<&Path>,
        sketches: bool,
        cpus: usize,
    ) -> Result<Self, SensorError> {
        // The class slots cover every CPU id, whatever the port map's test sizing.
        let class_cpus = possible_cpus()?;
        if class_cpus > CLASS_SLOT_CPUS {
            return Err(SensorError::TooManyCpus(class_cpus));
        }
        if let Some(dir) = pin_dir {
            ensure_bpffs(dir)?;
            fs::create_dir_all(dir).map_err(|source| SensorError::PinDir {
                path: dir.to_path_buf(),
                source,
            })?;
            validate_pins(dir, cpus)?;
        }
        Ok(Self {
            object: PROGRAM_OBJECT,
            cpus,
            class_cpus,
            pin_dir: pin_dir.map(Path::to_path_buf),
            debug: false,
            sketches_on: sketches,
            per_interface_ports: false,
            xdp_multi_buffer: true,
            instances: Vec::new(),
            counters: Counters::default(),
            next_id: 0,
            attachments: Vec::new(),
            map_pins: Vec::new(),
            repin_failed: Vec::new(),
        })
    }

    /// A sensor with one program loaded for `hook` and `kind`, attached nowhere,
    /// with private maps: for test runs (program tests, replay, benchmarks).
    pub fn unattached(hook: Hook, kind: LinkKind) -> Result<Self, SensorError> {
        Self::unattached_with(hook, kind, true)
    }

    /// One program loaded for `hook` and `kind` with its maps pinned in `pin_dir`
    /// (the shared names), attached nowhere: for tests of the pins.
    pub fn unattached_pinned(
        pin_dir: &Path,
        hook: Hook,
        kind: LinkKind,
    ) -> Result<Self, SensorError> {
        Self::load(Some(pin_dir))?.with_instance(hook, kind)
    }

    /// [`Sensor::unattached`] with `cpus` port-map slices (see [`Sensor::load_sized`]).
    pub fn unattached_sized(hook: Hook, kind: LinkKind, cpus: usize) -> Result<Self, SensorError> {
        Self::load_sized(None, false, cpus)?.with_instance(hook, kind)
    }

    /// [`Sensor::unattached`], choosing whether the program keeps the sketches.
    pub fn unattached_with(
        hook: Hook,
        kind: LinkKind,
        sketches: bool,
    ) -> Result<Self, SensorError> {
        Self::unattached_object(PROGRAM_OBJECT, hook, kind, sketches)
    }

    /// The single-buffer twin of the XDP program for `kind` (what a kernel before 5.18
    /// runs), attached nowhere, with private maps: for tests that it counts alike.
    pub fn unattached_single_buffer(kind: LinkKind) -> Result<Self, SensorError> {
        let mut sensor = Self::load(None)?;
        sensor.xdp_multi_buffer = false;
        sensor.with_instance(Hook::Xdp, kind)
    }

    /// [`Sensor::unattached_with`] from `object`, another build of this program (e.g.
    /// an earlier commit's), loaded exactly as ours: to compare the two in one run.
    pub fn unattached_object(
        object: &'static [u8],
        hook: Hook,
        kind: LinkKind,
        sketches: bool,
    ) -> Result<Self, SensorError> {
        let mut sensor = Self::load_with(None, sketches)?;
        sensor.object = object;
        sensor.with_instance(hook, kind)
    }

    /// This sensor with one program loaded for `hook` and `kind`, attached nowhere.
    fn with_instance(mut self, hook: Hook, kind: LinkKind) -> Result<Self, SensorError> {
        let instance = self.load_instance(None, hook, kind)?;
        self.instances.push(instance);
        Ok(self)
    }

    /// Per-packet debug logging for the programs loaded from now on (a load-time
    /// constant of the program).
    pub fn set_debug(&mut self, on: bool) {
        self.debug = on;
    }

    /// One port map per interface for the interfaces attached from now on.
    pub fn set_per_interface_ports(&mut self, on: bool) {
        self.per_interface_ports = on;
    }

    /// Remembers the pin of `map` at `path`, with a reference of this process's own,
    /// so [`Sensor::repin`] can put it back.
    fn keep_pin(
        &mut self,
        name: &'static str,
        path: PathBuf,
        map: &MapData,
    ) -> Result<(), SensorError> {
        if self.map_pins.iter().any(|(pinned, _)| *pinned == path) {
            return Ok(());
        }
        let fd = map
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|io_error| syscall_error(name, "dup", io_error))?;
        self.map_pins.push((path, fd));
        Ok(())
    }

    /// The class counters of a load, set up before its program is loaded: its `.bss`
    /// class slots bound to this interface's pinned map (made and pinned the first
    /// time) or to a private one; and the per-CPU class map of an older version, if
    /// one is pinned for this interface (or if `ebpf` is itself an older build, which
    /// the benchmark compares).
    fn class_maps(
        &mut self,
        ebpf: &mut Ebpf,
        interface: Option<&str>,
    ) -> Result<(Option<ClassSlotsView>, Option<LegacyClasses>), SensorError> {
        let pin = |name| {
            self.pin_dir
                .as_ref()
                .map(|dir| dir.join(map_pin_name(name, interface)))
        };
        let slots_pin = pin(CLASS_SLOTS_MAP);
        let legacy_pin = pin(LEGACY_CLASSES_MAP);
        let classes = match ebpf.map(BSS_SECTION) {
            Some(Map::Array(bss)) => {
                let slots = match &slots_pin {
                    Some(path) if path.exists() => open_pin(path)?,
                    Some(path) => {
                        let slots = new_class_slots()?;
                        slots.pin(path).map_err(|error| {
                            map_error(CLASS_SLOTS_MAP)(aya::maps::MapError::PinError {
                                name: Some(CLASS_SLOTS_MAP.into()),
                                error,
                            })
                        })?;
                        slots
                    }
                    None => new_class_slots()?,
                };
                bind_global_data(bss, &slots)?;
                if let Some(path) = slots_pin {
                    self.keep_pin(CLASS_SLOTS_MAP, path, &slots)?;
                }
                Some(ClassSlotsView::new(slots, self.class_cpus)?)
            }
            _ => None,
        };
        let legacy = match (ebpf.take_map(LEGACY_CLASSES_MAP), legacy_pin) {
            (Some(own), _) => Some(own),
            (None, Some(path)) if path.exists() => {
                let map = open_pin(&path)?;
                self.keep_pin(LEGACY_CLASSES_MAP, path, &map)?;
                Some(Map::PerCpuArray(map))
            }
            _ => None,
        };
        let legacy = legacy
            .map(|map| LegacyClasses::try_from(map).map_err(map_error(LEGACY_CLASSES_MAP)))
            .transpose()?;
        if classes.is_none() && legacy.is_none() {
            return Err(SensorError::MissingMap(CLASS_SLOTS_MAP));
        }
        Ok((classes, legacy))
    }

    /// Loads the XDP program for `kind`: multi-buffer aware, or its single-buffer twin
    /// where the kernel refuses the flag. Linux before 5.18 refuses BPF_F_XDP_HAS_FRAGS
    /// with EINVAL before the verifier runs, so with an empty verifier log; a program the
    /// verifier rejects has a log and is not tried again.
    fn load_xdp(
        &mut self,
        ebpf: &mut Ebpf,
        kind: LinkKind,
    ) -> (&'static str, Result<(), ProgramError>) {
        if self.xdp_multi_buffer {
            let name = program_name(Hook::Xdp, kind);
            match xdp_mut(ebpf, name).load() {
                Err(e) if refuses_multi_buffer(&e) => {
                    log::warn!(
                        "this kernel refuses multi-buffer XDP programs ({e}), so XDP runs \
                         single-buffer: drivers refuse it on interfaces with an MTU above \
                         about 3.5 KB or with header/data split (Linux >= 5.18 takes both)"
                    );
                    self.xdp_multi_buffer = false;
                }
                result => return (name, result),
            }
        }
        let name = single_buffer_program_name(kind);
        (name, xdp_mut(ebpf, name).load())
    }

    fn load_instance(
        &mut self,
        interface: Option<&str>,
        hook: Hook,
        kind: LinkKind,
    ) -> Result<Instance, SensorError> {
        self.load_instance_as(interface, hook, kind, false)
    }

    /// With `extension`, the XDP program is left unloaded as an `Extension`, to be
    /// loaded against a libxdp dispatcher.
    fn load_instance_as(
        &mut self,
        interface: Option<&str>,
        hook: Hook,
        kind: LinkKind,
        extension: bool,
    ) -> Result<Instance, SensorError> {
        let mut loader = EbpfLoader::new();
        if extension {
            loader.extension(program_name(hook, kind));
        }
        loader.map_max_entries(PORT_SYNS_MAP, port_entries(self.cpus));
        let debug = u32::from(self.debug);
        loader.override_global(DEBUG_GLOBAL, &debug, true);
        let switch = u32::from(self.sketches_on);
        loader.override_global(SKETCH_SWITCH, &switch, true);
        let ports_interface = interface.filter(|_| self.per_interface_ports);
        let pins: Vec<(&'static str, PathBuf)> = match &self.pin_dir {
            Some(dir) => vec![
                (
                    PORT_SYNS_MAP,
                    dir.join(map_pin_name(PORT_SYNS_MAP, ports_interface)),
                ),
                (SKETCH_MAP, dir.join(SKETCH_MAP)),
                (SAMPLES_MAP, dir.join(SAMPLES_MAP)),
            ],
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path);
        }
        let mut ebpf = loader
            .load(self.object)
            .map_err(|e| SensorError::Load(Box::new(e)))?;
        for (name, path) in pins {
            let map = match ebpf.map(name) {
                Some(Map::Array(data) | Map::PerCpuArray(data) | Map::RingBuf(data)) => data,
                _ => return Err(SensorError::MissingMap(name)),
            };
            self.keep_pin(name, path, map)?;
        }
        let (classes, legacy_classes) = self.class_maps(&mut ebpf, interface)?;
        let (program, loaded) = match hook {
            // A dispatcher component is an extension: the dispatcher's own load
            // decides whether the chain takes multi-buffer frames.
            Hook::Xdp if extension => (program_name(hook, kind), Ok(())),
            Hook::Xdp => self.load_xdp(&mut ebpf, kind),
            Hook::Tc => {
                let name = program_name(hook, kind);
                (name, tc_mut(&mut ebpf, name).load())
            }
        };
        loaded.map_err(|e| SensorError::Verifier(Box::new(e)))?;

        // A pinned port map is shared: mapped once, by the first load, and kept while
        // the sensor lives (also when that load's interface goes away). With pins (the
        // attacher of `scan-agent run`, whose worker reads the counters) the views map
        // at their first read, which the attacher never makes: a BPF array's mapping is
        // resident in full, 6 MiB of RSS for nothing. Private maps (test runs, replay)
        // are mapped now.
        let shared_ports = self.pin_dir.is_some() && ports_interface.is_none();
        let defer = self.pin_dir.is_some();
        let ports_map = take_map_data(&mut ebpf, PORT_SYNS_MAP)?;
        let entries = port_entries(self.cpus) as usize;
        let port_view = |map| -> Result<PortCounterView, SensorError> {
            if defer {
                Ok(PortCounterView::deferred(map, entries))
            } else {
                PortCounterView::new(map, entries)
            }
        };
        let ports = if !shared_ports {
            Some(port_view(ports_map)?)
        } else {
            if self.counters.shared_ports.is_none() {
                self.counters.shared_ports = Some(port_view(ports_map)?);
            }
            None
        };
        // The first load maps the sketches; the others share that map through its pin.
        if self.sketches_on && self.counters.sketches.is_none() {
            let sketches = take_map_data(&mut ebpf, SKETCH_MAP)?;
            self.counters.sketches = Some(if defer {
                SketchView::deferred(sketches)
            } else {
                SketchView::new(sketches)?
            });
            let samples = match ebpf.take_map(SAMPLES_MAP) {
                Some(Map::RingBuf(map)) => map,
                Some(_) => {
                    return Err(map_error(SAMPLES_MAP)(
                        aya::maps::MapError::InvalidMapType { map_type: 0 },
                    ));
                }
                None => return Err(SensorError::MissingMap(SAMPLES_MAP)),
            };
            self.counters.samples = Some(if defer {
                SampleRing::Unmapped(samples)
            } else {
                SampleRing::Mapped(
                    aya::maps::RingBuf::try_from(Map::RingBuf(samples))
                        .map_err(map_error(SAMPLES_MAP))?,
                )
            });
        }
        let syn_no_slot = ebpf
            .take_map(SYN_NO_SLOT_MAP)
            .ok_or(SensorError::MissingMap(SYN_NO_SLOT_MAP))?
            .try_into()
            .map_err(map_error(SYN_NO_SLOT_MAP))?;
        let id = self.next_id;
        self.next_id += 1;
        self.counters.loads.push(LoadMaps {
            id,
            interface: interface.map(str::to_string),
            classes,
            legacy_classes,
            syn_no_slot,
            ports,
        });
        Ok(Instance {
            id,
            interface: interface.map(str::to_string),
            ebpf,
            hook,
            program,
            owned: None,
            kept: None,
        })
    }

    /// Instructions the verifier processed for the first loaded program, if the kernel says.
    pub fn verified_instructions(&self) -> Option<u32> {
        let instance = self.instances.first()?;
        let name = instance.program;
        // Any program type: a dispatcher component is an `Extension`, not an `Xdp`.
        let info = instance.ebpf.program(name)?.info();
        info.ok()?.verified_instruction_count()
    }

    /// Forwards the aya-log records of every loaded program to this process's
    /// `log` logger (only the programs loaded with debug on write any).
    pub fn loggers(&mut self) -> Vec<aya_log::EbpfLogger<&'static dyn log::Log>> {
        let mut loggers = Vec::new();
        for instance in &mut self.instances {
            match aya_log::EbpfLogger::init(&mut instance.ebpf) {
                Ok(logger) => loggers.push(logger),
                Err(e) => log::warn!("program logs will not be forwarded: {e}"),
            }
        }
        loggers
    }

    /// Attaches to `interface`: the entry point follows its link type; the hook
    /// follows `request` and who holds the XDP hook. A link pinned by an earlier
    /// run with `--keep-attached` is adopted: the new program replaces the old one
    /// in place (`bpf_link_update`), so no packet goes uncounted. With `keep`, the
    /// link is pinned so the program stays attached after this process exits.
    pub fn attach(
        &mut self,
        interface: &str,
        request: AttachRequest,
        keep: bool,
    ) -> Result<Attachment, SensorError> {
        let result = self.attach_loaded(interface, request, keep);
        // Loads that failed to attach (or a refused dispatcher mode) leave their maps.
        self.drop_unused_maps();
        result
    }

    /// The maps of instances that are gone are closed.
    fn drop_unused_maps(&mut self) {
        let instances = &self.instances;
        self.counters
            .loads
            .retain(|load| instances.iter().any(|i| i.id == load.id));
    }

    fn attach_loaded(
        &mut self,
        interface: &str,
        request: AttachRequest,
        keep: bool,
    ) -> Result<Attachment, SensorError> {
        let index = ifindex(interface)?;
        let (_, kind) = link_kind(interface)?;
        if self.pin_dir.is_none() && !self.instances.is_empty() {
            return Err(SensorError::SharedMapsNeedPins(interface.to_string()));
        }
        let (mut instance, mode, link, adopted) = match self
            .adopt_pinned_link(interface, kind, keep)?
        {
            Some((instance, mode, link)) => (instance, mode, link, true),
            None => {
                let mut route = self.choose_route(interface, request)?;
                if route == Route::Dispatcher {
                    match self.attach_dispatcher(interface, kind, request.xdp_mode, keep) {
                        Ok(attachment) => return Ok(attachment),
                        // Whatever failed (freplace refused, /sys/fs/bpf/xdp not
                        // writable under a sandbox, a mode the driver refuses): when the
                        // hook is still free, XDP alone, as libxdp falls back too. A
                        // dispatcher that is there is never replaced.
                        Err(SensorError::Dispatcher { source, .. })
                            if xdp_hook::query(index).is_ok_and(|h| h.is_none()) =>
                        {
                            log::warn!(
                                "{interface}: {source}; attaching XDP alone (other programs \
                                 cannot join it; --xdp-multiprog=off says so up front)"
                            );
                            route = Route::Xdp;
                        }
                        Err(e) => return Err(e),
                    }
                }
                let hook = if route == Route::Tc {
                    Hook::Tc
                } else {
                    Hook::Xdp
                };
                let mut instance = self.load_instance(Some(interface), hook, kind)?;
                let (mode, link) = match hook {
                    Hook::Xdp => {
                        let (id, mode) = attach_xdp(&mut instance, interface, request.xdp_mode)?;
                        (mode, OwnedLink::Xdp(id))
                    }
                    Hook::Tc => {
                        let link = attach_tcx(&mut instance, interface).map_err(|e| {
                            // `auto` came here because a foreign program holds the XDP hook.
                            match (e, request.hook, xdp_hook::query(index)) {
                                (
                                    SensorError::AttachTc { source, .. },
                                    HookChoice::Auto,
                                    Ok(Some(holder)),
                                ) => SensorError::ForeignXdpNoTcx {
                                    interface: interface.to_string(),
                                    prog_id: holder.prog_id,
                                    name: program_name_by_id(holder.prog_id),
                                    source,
                                },
                                (e, ..) => e,
                            }
                        })?;
                        (AttachMode::Tcx, OwnedLink::Tc(link))
                    }
                };
                (instance, mode, link, false)
            }
        };
        if keep {
            self.keep_link(&mut instance, interface, mode, link, adopted)?;
        } else {
            instance.owned = Some(link);
        }
        self.instances.push(instance);
        let attachment = Attachment {
            interface: interface.to_string(),
            ifindex: index,
            mode,
            kind,
            adopted,
            dispatcher: false,
        };
        self.attachments.push(attachment.clone());
        Ok(attachment)
    }

    /// Joins (or makes) the interface's libxdp dispatcher; a component the agent
    /// left there with --keep-attached is replaced in the same atomic swap.
    fn attach_dispatcher(
        &mut self,
        interface: &str,
        kind: LinkKind,
        choice: ModeChoice,
        keep: bool,
    ) -> Result<Attachment, SensorError> {
        let index = ifindex(interface)?;
        let modes: &[Option<bool>] = match choice {
            ModeChoice::Auto => &[Some(false), Some(true)],
            ModeChoice::Native => &[Some(false)],
            ModeChoice::Skb => &[Some(true)],
        };
        let mut last_error = None;
        // A race with a libxdp user that swapped the hook meanwhile is tried again in
        // the same mode (a loaded extension cannot be loaded again: a new instance).
        let tries = modes
            .iter()
            .flat_map(|&skb| (1..=dispatcher::RACE_ATTEMPTS).map(move |attempt| (skb, attempt)));
        let mut raced_mode = None;
        for (skb, attempt) in tries {
            if attempt > 1 && raced_mode != Some(skb) {
                continue;
            }
            let mut instance = self.load_instance_as(Some(interface), Hook::Xdp, kind, true)?;
            let name = instance.program;
            let extension: &mut Extension = instance
                .ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .expect("the embedded object has the XDP programs (checked at build)");
            match dispatcher::update(index, skb, Some(extension)) {
                Err(e @ dispatcher::DispatcherError::NoFreplace(_)) => {
                    return Err(SensorError::Dispatcher {
                        interface: interface.to_string(),
                        source: Box::new(e),
                    });
                }
                Ok(skb) => {
                    if !keep {
                        instance.owned = Some(OwnedLink::Dispatcher { ifindex: index });
                    }
                    self.instances.push(instance);
                    let attachment = Attachment {
                        interface: interface.to_string(),
                        ifindex: index,
                        mode: if skb {
                            AttachMode::Skb
                        } else {
                            AttachMode::Native
                        },
                        kind,
                        adopted: false,
                        dispatcher: true,
                    };
                    self.attachments.push(attachment.clone());
                    return Ok(attachment);
                }
                Err(dispatcher::DispatcherError::Raced(e))
                    if attempt < dispatcher::RACE_ATTEMPTS =>
                {
                    log::warn!("{interface}: {e}; building the dispatcher again");
                    raced_mode = Some(skb);
                }
                Err(e) => {
                    raced_mode = None;
                    if choice == ModeChoice::Auto && skb == Some(false) {
                        log::warn!(
                            "a native-mode dispatcher on {interface} was refused ({e}); trying \
                             SKB (generic) mode"
                        );
                    }
                    last_error = Some(SensorError::Dispatcher {
                        interface: interface.to_string(),
                        source: Box::new(e),
                    });
                }
            }
        }
        Err(last_error.expect("at least one mode is tried"))
    }

    /// XDP (alone or through a libxdp dispatcher) or TCX for `interface`: never
    /// takes an XDP hook another program holds.
    fn choose_route(&self, interface: &str, request: AttachRequest) -> Result<Route, SensorError> {
        if request.hook == HookChoice::Tc {
            return Ok(Route::Tc);
        }
        let multiprog = request.multiprog == MultiprogChoice::On;
        let index = ifindex(interface)?;
        let holder = xdp_hook::query(index).map_err(|source| SensorError::Netlink {
            interface: interface.to_string(),
            source,
        })?;
        let Some(holder) = holder else {
            return Ok(if multiprog {
                Route::Dispatcher
            } else {
                Route::Xdp
            });
        };
        let shared =
            dispatcher::is_dispatcher(holder.prog_id).map_err(|e| SensorError::Dispatcher {
                interface: interface.to_string(),
                source: Box::new(e),
            })?;
        if shared && multiprog {
            return Ok(Route::Dispatcher);
        }
        let name = program_name_by_id(holder.prog_id);
        let what = if shared {
            "a libxdp dispatcher (--xdp-multiprog=off does not join it)"
        } else {
            "not a libxdp dispatcher"
        };
        if request.hook == HookChoice::Auto {
            log::warn!(
                "{interface}: the XDP hook is held by another program (id {}, {name}), {what}; \
                 attaching at TCX ingress instead, beside it",
                holder.prog_id
            );
            return Ok(Route::Tc);
        }
        Err(SensorError::ForeignXdp {
            interface: interface.to_string(),
            prog_id: holder.prog_id,
            name,
        })
    }

    /// Adopts a link kept by an earlier run: the link is updated to this program first
    /// (`bpf_link_update`, no packet missed) and only then unpinned, if it is not to be
    /// kept, so a failure never drops the only reference to a working link. A pin whose
    /// link no longer reaches an interface (it was deleted, or deleted and recreated
    /// under the same name: ENOLINK) is removed, and the caller attaches afresh.
    fn adopt_pinned_link(
        &mut self,
        interface: &str,
        kind: LinkKind,
        keep: bool,
    ) -> Result<Option<(Instance, AttachMode, OwnedLink)>, SensorError> {
        let Some(dir) = self.pin_dir.clone() else {
            return Ok(None);
        };
        for mode in [AttachMode::Native, AttachMode::Skb, AttachMode::Tcx] {
            let path = link_pin_path(&dir, interface, mode);
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
            // Our own reference; the pin stays until the update worked.
            let fd_link = FdLink::from(pinned);
            let mut instance = self.load_instance(Some(interface), mode.hook(), kind)?;
            let name = instance.program;
            let updated = match mode.hook() {
                Hook::Xdp => {
                    let link = XdpLink::try_from(fd_link).map_err(|e| link_error(e.to_string()))?;
                    xdp_mut(&mut instance.ebpf, name)
                        .attach_to_link(link)
                        .map(OwnedLink::Xdp)
                }
                Hook::Tc => {
                    let link = SchedClassifierLink::try_from(fd_link)
                        .map_err(|e| link_error(e.to_string()))?;
                    tc_mut(&mut instance.ebpf, name)
                        .attach_to_link(link)
                        .map(OwnedLink::Tc)
                }
            };
            match updated {
                Ok(link) => {
                    if !keep {
                        // Now owned by this process (detached when it stops).
                        fs::remove_file(&path).map_err(|e| link_error(e.to_string()))?;
                    }
                    return Ok(Some((instance, mode, link)));
                }
                Err(e) if is_defunct_link(&e) => {
                    log::warn!(
                        "removing the kept link {} of a previous run: its interface is gone \
                         ({e}); attaching afresh",
                        path.display()
                    );
                    fs::remove_file(&path).map_err(|e| link_error(e.to_string()))?;
                }
                Err(e) => return Err(link_error(format!("cannot replace its program: {e}"))),
            }
        }
        Ok(None)
    }

    /// Takes `link` out of the program's links (so it is not detached at exit), pins it
    /// unless it is pinned already (adopted), and keeps this process's reference.
    fn keep_link(
        &self,
        instance: &mut Instance,
        interface: &str,
        mode: AttachMode,
        link: OwnedLink,
        pinned_already: bool,
    ) -> Result<(), SensorError> {
        let keep_error = |reason: String| SensorError::KeepAttached {
            interface: interface.to_string(),
            reason,
        };
        let dir = self
            .pin_dir
            .clone()
            .ok_or_else(|| keep_error("no --pin-path".into()))?;
        let name = instance.program;
        let mut fd_link = match link {
            // Pinned in the dispatcher's directory already.
            OwnedLink::Dispatcher { .. } => return Ok(()),
            OwnedLink::Xdp(id) => {
                let link = xdp_mut(&mut instance.ebpf, name)
                    .take_link(id)
                    .map_err(|e| keep_error(e.to_string()))?;
                FdLink::try_from(link).map_err(|e: LinkError| {
                    keep_error(format!("attached through netlink, not bpf_link ({e})"))
                })?
            }
            OwnedLink::Tc(id) => {
                let link = tc_mut(&mut instance.ebpf, name)
                    .take_link(id)
                    .map_err(|e| keep_error(e.to_string()))?;
                FdLink::try_from(link).map_err(|e: LinkError| {
                    keep_error(format!("attached through netlink, not bpf_link ({e})"))
                })?
            }
        };
        if !pinned_already {
            let path = link_pin_path(&dir, interface, mode);
            // The pin keeps the link alive after this process exits; `From` gives our
            // reference back without removing the pin.
            fd_link = fd_link
                .pin(&path)
                .map_err(|e| keep_error(e.to_string()))?
                .into();
        }
        instance.kept = Some((mode, fd_link));
        Ok(())
    }

    /// Pins again every map and kept link whose pin was removed under the running agent
    /// (the maps and the program stayed in the kernel through this process's references),
    /// recreating the pin directory if it went too: the next run (or `scan-agent detach`)
    /// then finds the same maps and link, so a restart loses no count. Returns the pins
    /// restored; one that cannot be restored is logged and tried again at the next call.
    pub fn repin(&mut self) -> Vec<PathBuf> {
        let Some(dir) = self.pin_dir.clone() else {
            return Vec::new();
        };
        let mut restored = Vec::new();
        if !dir.exists()
            && let Err(e) = fs::create_dir_all(&dir)
        {
            log::error!("cannot recreate the pin directory {}: {e}", dir.display());
            return restored;
        }
        for (path, fd) in &self.map_pins {
            if path.exists() {
                continue;
            }
            let pinned = fd
                .try_clone()
                .map_err(|e| e.to_string())
                .and_then(|fd| MapData::from_fd(fd).map_err(|e| e.to_string()))
                .and_then(|map| map.pin(path).map_err(|e| e.to_string()));
            match pinned {
                Ok(()) => {
                    self.repin_failed.retain(|failed| failed != path);
                    restored.push(path.clone());
                }
                Err(e) if !self.repin_failed.contains(path) => {
                    log::error!("cannot pin the map again at {}: {e}", path.display());
                    self.repin_failed.push(path.clone());
                }
                Err(_) => {}
            }
        }
        let mut lost = Vec::new();
        for instance in &mut self.instances {
            let Some(interface) = instance.interface.clone() else {
                continue;
            };
            let Some((mode, link)) = instance.kept.take() else {
                continue;
            };
            let path = link_pin_path(&dir, &interface, mode);
            if path.exists() {
                instance.kept = Some((mode, link));
                continue;
            }
            match link.pin(&path) {
                Ok(pinned) => {
                    restored.push(path);
                    instance.kept = Some((mode, pinned.into()));
                }
                Err(e) => {
                    // Our reference went with the error, so the program is detached:
                    // forgetting the attachment makes the caller attach it again.
                    log::error!("cannot pin the kept link again at {}: {e}", path.display());
                    lost.push(interface);
                }
            }
        }
        self.attachments.retain(|a| !lost.contains(&a.interface));
        self.instances
            .retain(|i| i.interface.as_ref().is_none_or(|name| !lost.contains(name)));
        self.drop_unused_maps();
        restored
    }

    /// Forgets the attachment to interface `ifindex`, which is gone: the kernel detached
    /// the program with it. Its instance (and the link it owns) is closed; a kept link's
    /// pin is removed, so the next attach (or run) does not try to adopt a defunct link.
    pub fn forget(&mut self, ifindex: u32) {
        let Some(at) = self.attachments.iter().position(|a| a.ifindex == ifindex) else {
            return;
        };
        let gone = self.attachments.remove(at);
        let dir = self.pin_dir.clone();
        self.instances.retain(|instance| {
            if instance.interface.as_deref() != Some(gone.interface.as_str()) {
                return true;
            }
            if let (Some(dir), Some((mode, _))) = (&dir, &instance.kept) {
                let _ = fs::remove_file(link_pin_path(dir, &gone.interface, *mode));
            }
            false
        });
        self.drop_unused_maps();
    }

    /// Records that interface `ifindex` is now called `name` (the program stays). A kept
    /// link's pin is named after the interface: it follows the new name, so the next run
    /// adopts it there and a new interface under the old name is not mistaken for it.
    pub fn renamed(&mut self, ifindex: u32, name: &str) {
        let Some(attachment) = self.attachments.iter_mut().find(|a| a.ifindex == ifindex) else {
            return;
        };
        let old = std::mem::replace(&mut attachment.interface, name.to_string());
        for instance in &mut self.instances {
            if instance.interface.as_deref() != Some(old.as_str()) {
                continue;
            }
            instance.interface = Some(name.to_string());
            if let Some(load) = self.counters.loads.iter_mut().find(|l| l.id == instance.id) {
                load.interface = Some(name.to_string());
            }
            if let (Some(dir), Some((mode, _))) = (&self.pin_dir, &instance.kept) {
                let from = link_pin_path(dir, &old, *mode);
                if let Err(e) = fs::rename(&from, link_pin_path(dir, name, *mode)) {
                    log::warn!("cannot rename the pin {}: {e}", from.display());
                }
            }
        }
    }

    /// Detaches every link this process owns; kept (pinned) links stay attached.
    pub fn detach(&mut self) -> Result<(), SensorError> {
        for instance in &mut self.instances {
            let Some(link) = instance.owned.take() else {
                continue;
            };
            let interface = instance.interface.clone().unwrap_or_default();
            let name = instance.program;
            let result = match link {
                OwnedLink::Xdp(id) => xdp_mut(&mut instance.ebpf, name).detach(id),
                OwnedLink::Tc(id) => tc_mut(&mut instance.ebpf, name).detach(id),
                OwnedLink::Dispatcher { ifindex } => {
                    // A new dispatcher without the agent's component; the others stay.
                    if let Err(e) = dispatcher::remove_ours(ifindex) {
                        return Err(SensorError::Dispatcher {
                            interface,
                            source: Box::new(e),
                        });
                    }
                    Ok(())
                }
            };
            result.map_err(|source| SensorError::Detach {
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

    /// Whether the program was loaded with the sketches on.
    pub fn sketches_on(&self) -> bool {
        self.sketches_on
    }

    /// Runs the test-run program once per `repeat` on `frame` through `BPF_PROG_TEST_RUN`.
    pub fn test_run(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<aya::programs::TestRunResult, SensorError> {
        let instance = self
            .instances
            .iter()
            .find(|i| i.interface.is_none())
            .ok_or(SensorError::NoTestProgram)?;
        // The kernel refuses (EINVAL) input shorter than an Ethernet header; no
        // driver delivers such a frame either.
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        let name = instance.program;
        match instance.hook {
            Hook::Xdp => xdp(&instance.ebpf, name).test_run(options),
            Hook::Tc => tc(&instance.ebpf, name).test_run(options),
        }
        .map_err(|e| SensorError::TestRun(Box::new(e)))
    }
}

/// XDP alone on the hook, through a `bpf_link`.
fn attach_xdp(
    instance: &mut Instance,
    interface: &str,
    choice: ModeChoice,
) -> Result<(XdpLinkId, AttachMode), SensorError> {
    let name = instance.program;
    let modes: &[AttachMode] = match choice {
        ModeChoice::Auto => &[AttachMode::Native, AttachMode::Skb],
        ModeChoice::Native => &[AttachMode::Native],
        ModeChoice::Skb => &[AttachMode::Skb],
    };
    let mut last_error = None;
    for &mode in modes {
        match xdp_mut(&mut instance.ebpf, name).attach(interface, mode.xdp_mode()) {
            Ok(id) => return Ok((id, mode)),
            Err(source) => {
                if choice == ModeChoice::Auto && mode == AttachMode::Native {
                    log::warn!(
                        "native XDP on {interface} refused ({source}); falling back to SKB \
                         (generic) mode"
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
    Err(last_error.expect("at least one mode is tried"))
}

/// TCX ingress, first in the chain: a TCX program that returns TC_ACT_OK ends the
/// chain, so a sensor placed after it would miss what it accepts; ours returns
/// TCX_NEXT (TC_ACT_UNSPEC), so the programs after it see every packet as if it
/// were not there. TCX runs before classic tc filters (clsact), so those see the
/// packets after us too.
fn attach_tcx(
    instance: &mut Instance,
    interface: &str,
) -> Result<SchedClassifierLinkId, SensorError> {
    let name = instance.program;
    tc_mut(&mut instance.ebpf, name)
        .attach_with_options(
            interface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(|source| SensorError::AttachTc {
            interface: interface.to_string(),
            source: Box::new(source),
        })
}

/// Whether a load failed because the kernel does not know BPF_F_XDP_HAS_FRAGS (see
/// [`Sensor::load_xdp`]).
fn refuses_multi_buffer(error: &ProgramError) -> bool {
    matches!(
        error,
        ProgramError::LoadError { io_error, verifier_log }
            if io_error.raw_os_error() == Some(libc::EINVAL)
                && verifier_log.to_string().trim().is_empty()
    )
}

fn xdp<'a>(ebpf: &'a Ebpf, name: &str) -> &'a Xdp {
    ebpf.program(name)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the XDP programs (checked at build)")
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the XDP programs (checked at build)")
}

fn tc<'a>(ebpf: &'a Ebpf, name: &str) -> &'a SchedClassifier {
    ebpf.program(name)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the TC programs (checked at build)")
}

fn tc_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the TC programs (checked at build)")
}

fn take_map_data(ebpf: &mut Ebpf, name: &'static str) -> Result<MapData, SensorError> {
    match ebpf.take_map(name) {
        Some(Map::Array(data)) => Ok(data),
        Some(_) => Err(map_error(name)(aya::maps::MapError::InvalidMapType {
            map_type: 0,
        })),
        None => Err(SensorError::MissingMap(name)),
    }
}

/// Whether `error` is the kernel's answer to updating a link whose interface was deleted
/// (ENOLINK: the link is defunct and can only be closed).
fn is_defunct_link(error: &ProgramError) -> bool {
    matches!(
        error,
        ProgramError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOLINK)
    )
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
/// program in `dir` (shared and per-interface ones), then `dir` if that left it
/// empty. Only a directory on a bpffs is touched, and in it only pins of this
/// program's names and types: anything else is left, with a warning. Returns what
/// was removed, for the operator.
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
    // Shared and per-interface map pins; names and types do not depend on the CPU count.
    let map_pins: Vec<(PathBuf, ExpectedMap)> = fs::read_dir(dir)
        .map_err(|e| io_error(dir, &e))?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            expected_map(&name, 1).map(|expected| (entry.path(), expected))
        })
        .collect();
    let mut map_pins: Vec<(PathBuf, ExpectedMap)> = map_pins
        .into_iter()
        .filter(|(path, expected)| {
            let ours = is_our_map_pin(path, expected);
            if !ours {
                log::warn!(
                    "left {}: not a pinned {} map of scan-agent",
                    path.display(),
                    expected.name
                );
            }
            ours
        })
        .collect();
    map_pins.sort_by(|a, b| a.0.cmp(&b.0));
    // A component kept in a libxdp dispatcher is pinned in the dispatcher's directory:
    // found by the maps it uses, which are pinned here.
    let map_ids: Vec<u32> = map_pins
        .iter()
        .filter_map(|(path, _)| MapInfo::from_pin(path).ok().map(|info| info.id()))
        .collect();
    let ifindexes =
        dispatcher::remove_kept(&map_ids).map_err(|e| SensorError::KeptComponent(Box::new(e)))?;
    for ifindex in ifindexes {
        removed.push(format!(
            "component in the libxdp dispatcher of interface index {ifindex}"
        ));
    }
    for (path, _) in map_pins {
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

#[cfg(test)]
mod tests {
    use std::io;

    use aya_obj::VerifierLog;

    use super::*;

    fn load_error(errno: i32, log: &str) -> ProgramError {
        ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(errno),
            verifier_log: VerifierLog::new(log.to_string()),
        }
    }

    #[test]
    fn only_an_unknown_flag_falls_back_to_single_buffer() {
        // What Linux 5.9-5.17 returns for BPF_F_XDP_HAS_FRAGS.
        assert!(refuses_multi_buffer(&load_error(libc::EINVAL, "")));
        assert!(refuses_multi_buffer(&load_error(libc::EINVAL, "\n")));
        // The verifier's rejection, a missing capability: reported as they are.
        assert!(!refuses_multi_buffer(&load_error(
            libc::EINVAL,
            "R1 invalid mem access 'scalar'"
        )));
        assert!(!refuses_multi_buffer(&load_error(libc::EPERM, "")));
        assert!(!refuses_multi_buffer(&ProgramError::NotLoaded));
    }
}
