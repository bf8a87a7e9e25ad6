//! libxdp's multi-program protocol (xdp-tools `lib/libxdp/protocol.org`, dispatcher
//! version 2), so the agent shares an interface's XDP hook with xdp-filter,
//! xdp-loader and any other libxdp user: a dispatcher program (libxdp's own
//! `xdp-dispatcher.o`) calls up to 10 component programs in priority order, each
//! attached with `freplace` to one of its stub functions; changing the set means
//! building a new dispatcher and swapping it in atomically (netlink
//! `XDP_FLAGS_REPLACE`), under the `flock` of the bpffs directory `xdp/` where the
//! components' program and link pins live.
//!
//! Why the protocol in Rust with aya's `Extension` programs rather than linking
//! libxdp: libxdp loads a component through libbpf from its ELF object, and libbpf
//! 1.x refuses the legacy `maps` section aya-ebpf writes; loading our object twice,
//! by two loaders, would also split the pinned maps' ownership. The protocol itself
//! is small, documented and versioned, and aya already loads the dispatcher object
//! (with its `.rodata` configuration) and attaches and re-attaches `freplace`
//! programs; what remains here is the configuration layout, the pin layout and the
//! order of operations.
use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, Map, MapData, MapInfo},
    programs::{Extension, ProgramError, ProgramFd, Xdp, links::FdLink},
};

use crate::xdp_hook::{self, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, XDP_FLAGS_UPDATE_IF_NOEXIST};

/// Where libxdp's packages install the dispatcher object (Debian: libxdp1).
const DISPATCHER_OBJECTS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o",
    "/usr/lib/bpf/xdp-dispatcher.o",
    "/usr/local/lib/bpf/xdp-dispatcher.o",
];
const DISPATCHER_PROGRAM: &str = "xdp_dispatcher";
const MAGIC: u8 = 236;
const VERSION: u8 = 2;
const SLOTS: usize = 10;
/// The stub functions' return value, always a chain-call action.
const RETVAL: u32 = 31;
const XDP_PASS: u32 = 2;
/// `struct xdp_dispatcher_config`: 4 bytes, then three arrays of 10 `u32`.
const CONFIG_SIZE: usize = 4 + 3 * 4 * SLOTS;

/// The agent's run priority among the dispatcher's components: libxdp's default is
/// 50 (lower runs first), so the agent runs after programs that did not ask for a
/// late slot and counts what they pass (XDP_PASS goes on to the next component).
pub const PRIORITY: u32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error(
        "libxdp's xdp-dispatcher.o is not installed (looked in {}): install libxdp1 \
         (`cargo xtask setup` does), or run with --xdp-multiprog=off",
        DISPATCHER_OBJECTS.join(", ")
    )]
    NoObject,
    #[error("the program on the XDP hook (id {0}) is not a libxdp dispatcher")]
    Foreign(u32),
    #[error(
        "this kernel refuses freplace (BPF_PROG_TYPE_EXT) programs ({0:#}), which libxdp's \
         dispatcher needs"
    )]
    NoFreplace(Box<ProgramError>),
    #[error(
        "another program changed the XDP hook while the dispatcher was being rebuilt ({0}); \
         libxdp 1.3 does not hold the protocol's lock from its read of the hook to its swap"
    )]
    Raced(io::Error),
    #[error("libxdp dispatcher {id}: {what}")]
    Dispatcher { id: u32, what: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{what}: {source:#}")]
    Program {
        what: String,
        source: Box<ProgramError>,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DispatcherError {
    let what = what.into();
    move |source| DispatcherError::Io { what, source }
}

fn prog_err(what: impl Into<String>) -> impl FnOnce(ProgramError) -> DispatcherError {
    let what = what.into();
    move |source| DispatcherError::Program {
        what,
        source: Box::new(source),
    }
}

/// The dispatcher's configuration, as laid out in its `.rodata`.
#[derive(Clone, Copy)]
struct Config([u8; CONFIG_SIZE]);

impl Config {
    fn word(&self, array: usize, slot: usize) -> u32 {
        let at = 4 + array * 4 * SLOTS + 4 * slot;
        u32::from_ne_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }

    fn set_word(&mut self, array: usize, slot: usize, value: u32) {
        let at = 4 + array * 4 * SLOTS + 4 * slot;
        self.0[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }
}

/// The bpffs directory of libxdp's pins (`$LIBXDP_BPFFS/xdp`, default /sys/fs/bpf/xdp).
fn base_dir() -> PathBuf {
    std::env::var_os("LIBXDP_BPFFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"))
        .join("xdp")
}

fn pin_dir(ifindex: u32, dispatcher_id: u32) -> PathBuf {
    base_dir().join(format!("dispatch-{ifindex}-{dispatcher_id}"))
}

/// The protocol's lock: `flock(LOCK_EX)` on the `xdp/` directory, released on drop.
struct Lock {
    _dir: fs::File,
}

impl Lock {
    fn take() -> Result<Self, DispatcherError> {
        let dir = base_dir();
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let file = fs::File::open(&dir).map_err(io_err(format!("opening {}", dir.display())))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(format!("locking {}", dir.display()))(
                io::Error::last_os_error(),
            ));
        }
        Ok(Self { _dir: file })
    }
}

/// One component program of a dispatcher.
struct Component {
    name: String,
    priority: u32,
    chain_actions: u32,
    flags: u32,
    program: Slot,
}

enum Slot {
    /// Already loaded (pinned by the old dispatcher): re-attached to the new one.
    Existing(Box<Extension>),
    /// Ours: loaded against the new dispatcher.
    Ours,
}

/// The dispatcher holding `prog_id`, if it is one: its fd and configuration.
fn read_dispatcher(prog_id: u32) -> Result<Option<(ProgramFd, Config)>, DispatcherError> {
    let Some(info) = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == prog_id)
    else {
        return Ok(None);
    };
    let fd = info.fd().map_err(prog_err("opening the XDP program"))?;
    let map_ids = info
        .map_ids()
        .map_err(prog_err("reading the XDP program's maps"))?
        .unwrap_or_default();
    for map_id in map_ids {
        let Ok(map_info) = MapInfo::from_id(map_id) else {
            continue;
        };
        if map_info.value_size() as usize != CONFIG_SIZE || map_info.max_entries() != 1 {
            continue;
        }
        let Ok(data) = MapData::from_id(map_id) else {
            continue;
        };
        let Ok(array) = Array::<MapData, [u8; CONFIG_SIZE]>::try_from(Map::Array(data)) else {
            continue;
        };
        let Ok(bytes) = array.get(&0, 0) else {
            continue;
        };
        if bytes[0] == MAGIC {
            if bytes[1] != VERSION {
                return Err(DispatcherError::Dispatcher {
                    id: prog_id,
                    what: format!(
                        "dispatcher version {} (this agent speaks version {VERSION}); unload \
                         its programs with xdp-loader, or run with --xdp-multiprog=off",
                        bytes[1]
                    ),
                });
            }
            return Ok(Some((fd, Config(bytes))));
        }
    }
    Ok(None)
}

/// Attempts at a dispatcher swap that another libxdp user keeps racing.
pub const RACE_ATTEMPTS: u32 = 5;

/// Whether `prog_id` is a libxdp dispatcher.
pub fn is_dispatcher(prog_id: u32) -> Result<bool, DispatcherError> {
    Ok(read_dispatcher(prog_id)?.is_some())
}

fn is_ours(name: &str) -> bool {
    name.starts_with("scan_xdp")
}

/// Puts `ours` (an `Extension` of the agent's object, not loaded yet) into the
/// interface's dispatcher, making one if the hook is free; with `ours` `None`,
/// removes the agent's component (detaching the dispatcher when nothing is left).
/// Any earlier component of the agent (a kept one) is replaced. Returns whether the
/// dispatcher runs in SKB (generic) mode.
pub fn update(
    ifindex: u32,
    skb_if_new: Option<bool>,
    mut ours: Option<&mut Extension>,
) -> Result<bool, DispatcherError> {
    let _lock = Lock::take()?;
    let holder = xdp_hook::query(ifindex).map_err(io_err("reading the XDP hook"))?;
    let mut components = Vec::new();
    let (old, skb) = match holder {
        None => (None, skb_if_new.unwrap_or(false)),
        Some(holder) => {
            let Some((fd, config)) = read_dispatcher(holder.prog_id)? else {
                return Err(DispatcherError::Foreign(holder.prog_id));
            };
            let dir = pin_dir(ifindex, holder.prog_id);
            for slot in 0..usize::from(config.0[2]).min(SLOTS) {
                let path = dir.join(format!("prog{slot}-prog"));
                let program = Extension::from_pin(&path)
                    .map_err(prog_err(format!("opening {}", path.display())))?;
                let name = program
                    .info()
                    .ok()
                    .and_then(|i| i.name_as_str().map(str::to_string))
                    .unwrap_or_default();
                if is_ours(&name) {
                    continue;
                }
                components.push(Component {
                    name,
                    priority: config.word(1, slot),
                    chain_actions: config.word(0, slot),
                    flags: config.word(2, slot),
                    program: Slot::Existing(Box::new(program)),
                });
            }
            (Some((fd, holder.prog_id)), holder.skb)
        }
    };
    if ours.is_some() {
        components.push(Component {
            name: "scan_xdp".into(),
            priority: PRIORITY,
            chain_actions: (1 << XDP_PASS) | (1 << RETVAL),
            flags: 0,
            program: Slot::Ours,
        });
    }
    if components.len() > SLOTS {
        return Err(DispatcherError::Dispatcher {
            id: old.as_ref().map_or(0, |o| o.1),
            what: format!("already holds {SLOTS} programs, the most a dispatcher can"),
        });
    }
    // libxdp's order: run priority, then the function name.
    components.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    let mode = if skb {
        XDP_FLAGS_SKB_MODE
    } else {
        XDP_FLAGS_DRV_MODE
    };

    if components.is_empty() {
        if let Some((old_fd, old_id)) = &old {
            xdp_hook::set(ifindex, None, Some(old_fd.as_fd()), mode)
                .map_err(io_err("detaching the empty dispatcher"))?;
            let _ = fs::remove_dir_all(pin_dir(ifindex, *old_id));
        }
        return Ok(skb);
    }

    let mut config = Config([0; CONFIG_SIZE]);
    config.0[0] = MAGIC;
    config.0[1] = VERSION;
    config.0[2] = components.len() as u8;
    for (slot, c) in components.iter().enumerate() {
        config.set_word(0, slot, c.chain_actions | (1 << RETVAL));
        config.set_word(1, slot, c.priority);
        config.set_word(2, slot, c.flags);
    }
    let object = DISPATCHER_OBJECTS
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or(DispatcherError::NoObject)?;
    let mut loaded = EbpfLoader::new()
        .override_global("conf", &config.0, true)
        .load_file(object)
        .map_err(|e| DispatcherError::Io {
            what: format!("loading {}", object.display()),
            source: io::Error::other(e.to_string()),
        })?;
    let dispatcher: &mut Xdp = loaded
        .program_mut(DISPATCHER_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| DispatcherError::Io {
            what: format!("{} has no {DISPATCHER_PROGRAM}", object.display()),
            source: io::Error::from(io::ErrorKind::InvalidData),
        })?;
    dispatcher
        .load()
        .map_err(prog_err("loading the dispatcher"))?;
    let new_fd = dispatcher
        .fd()
        .map_err(prog_err("the dispatcher's fd"))?
        .try_clone()
        .map_err(io_err("the dispatcher's fd"))?;
    let new_id = dispatcher
        .info()
        .map_err(prog_err("the dispatcher's id"))?
        .id();
    let dir = pin_dir(ifindex, new_id);
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let result = (|| {
        for (slot, c) in components.iter_mut().enumerate() {
            let target = format!("prog{slot}");
            let link = match &mut c.program {
                Slot::Existing(program) => {
                    let id = program
                        .attach_to_program(&new_fd, &target)
                        .map_err(prog_err(format!(
                            "re-attaching {} to the new dispatcher",
                            c.name
                        )))?;
                    let link = program.take_link(id).map_err(prog_err("taking the link"))?;
                    program
                        .pin(dir.join(format!("{target}-prog")))
                        .map_err(|e| DispatcherError::Io {
                            what: format!("pinning {}", c.name),
                            source: io::Error::other(e.to_string()),
                        })?;
                    FdLink::from(link)
                }
                Slot::Ours => {
                    let program = ours
                        .as_deref_mut()
                        .expect("ours is in the list only if given");
                    let fd = new_fd.try_clone().map_err(io_err("the dispatcher's fd"))?;
                    match program.load(fd, &target) {
                        Ok(()) => {}
                        // EPERM: the kernel (or its security policy) does not allow
                        // freplace at all; libxdp falls back the same way.
                        Err(e @ ProgramError::LoadError { .. })
                            if matches!(&e, ProgramError::LoadError { io_error, .. }
                                if io_error.raw_os_error() == Some(libc::EPERM)) =>
                        {
                            return Err(DispatcherError::NoFreplace(Box::new(e)));
                        }
                        Err(e) => {
                            return Err(prog_err("loading the agent's program as a component")(e));
                        }
                    }
                    let id = program
                        .attach()
                        .map_err(prog_err("attaching the agent's component"))?;
                    let link = program.take_link(id).map_err(prog_err("taking the link"))?;
                    program
                        .pin(dir.join(format!("{target}-prog")))
                        .map_err(|e| DispatcherError::Io {
                            what: "pinning the agent's component".into(),
                            source: io::Error::other(e.to_string()),
                        })?;
                    FdLink::from(link)
                }
            };
            link.pin(dir.join(format!("{target}-link")))
                .map_err(|e| DispatcherError::Io {
                    what: format!("pinning the link of {}", c.name),
                    source: io::Error::other(e.to_string()),
                })?;
        }
        let (expected, flags) = match &old {
            Some((fd, _)) => (Some(fd.as_fd()), mode),
            None => (None, mode | XDP_FLAGS_UPDATE_IF_NOEXIST),
        };
        xdp_hook::set(ifindex, Some(new_fd.as_fd()), expected, flags).map_err(|e| {
            // EEXIST: the expected dispatcher was replaced; EBUSY: the free hook was
            // taken. Either way a libxdp user swapped under us: build again.
            if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::EBUSY)) {
                DispatcherError::Raced(e)
            } else {
                io_err("attaching the new dispatcher")(e)
            }
        })
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    if let Some((_, old_id)) = old {
        let _ = fs::remove_dir_all(pin_dir(ifindex, old_id));
    }
    Ok(skb)
}

/// Removes the agent's component from every interface's libxdp dispatcher where it
/// uses one of `map_ids` (maps pinned under one `--pin-path`): `scan-agent detach`
/// for a component kept by `--keep-attached`, which lives in the dispatcher's pin
/// directory, not under the agent's pin path. Returns the interfaces' indexes.
pub fn remove_kept(map_ids: &[u32]) -> Result<Vec<u32>, DispatcherError> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(base_dir()) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // dispatch-<ifindex>-<dispatcher id>
        let Some((ifindex, id)) = name
            .strip_prefix("dispatch-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(i, d)| Some((i.parse::<u32>().ok()?, d.parse::<u32>().ok()?)))
        else {
            continue;
        };
        // A directory whose dispatcher no longer holds the hook is libxdp's to clean.
        let holder = xdp_hook::query(ifindex).map_err(io_err("reading the XDP hook"))?;
        if holder.map(|h| h.prog_id) != Some(id) {
            continue;
        }
        let uses_ours = (0..SLOTS).any(|slot| {
            Extension::from_pin(entry.path().join(format!("prog{slot}-prog")))
                .ok()
                .and_then(|p| p.info().ok())
                .is_some_and(|info| {
                    info.name_as_str().is_some_and(is_ours)
                        && info
                            .map_ids()
                            .ok()
                            .flatten()
                            .is_some_and(|ids| ids.iter().any(|m| map_ids.contains(m)))
                })
        });
        if uses_ours {
            remove_ours(ifindex)?;
            removed.push(ifindex);
        }
    }
    Ok(removed)
}

/// Removes the agent's component from `ifindex`'s dispatcher, building again when a
/// libxdp user swapped the dispatcher meanwhile.
pub fn remove_ours(ifindex: u32) -> Result<(), DispatcherError> {
    let mut attempt = 1;
    loop {
        match update(ifindex, None, None) {
            Err(DispatcherError::Raced(e)) if attempt < RACE_ATTEMPTS => {
                log::warn!("removing the agent's component: {e}; again");
                attempt += 1;
            }
            result => return result.map(drop),
        }
    }
}
