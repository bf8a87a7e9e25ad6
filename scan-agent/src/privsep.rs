//! Privilege separation of `scan-agent run` (issue 12): the process that parses HTTP
//! and TLS holds no capability.
//!
//! - The **attacher** (the process `run` starts as, with CAP_BPF, CAP_NET_ADMIN and
//!   CAP_PERFMON) validates the configuration, binds the listeners, loads the
//!   program, attaches it, watches link changes and re-attaches, and detaches at the
//!   end. It never reads a socket a client can write to.
//! - The **worker** (`/proc/self/exe worker <the same run arguments>`, a hidden
//!   subcommand) first sets no_new_privs and clears its ambient, inheritable,
//!   effective and permitted capabilities (and the bounding set, when it may), then
//!   checks `/proc/self/status` and refuses to run with any capability left. Only
//!   then does it start threads: it polls the maps, runs the detector, saves the
//!   state and serves HTTP/TLS.
//!
//! The channel is one `AF_UNIX` `SOCK_SEQPACKET` socket pair, the worker's end at fd
//! [`WORKER_FD`]. It carries one direction only, attacher to worker: JSON messages
//! ([`ToWorker`], at most [`MAX_MESSAGE`] bytes) with the fds they name
//! (`SCM_RIGHTS`): the listeners once, the maps of each new load of the program, and
//! after every change the full list of attachments. An open map fd stays usable
//! without capabilities (Linux >= 6.5 checks `kernel.unprivileged_bpf_disabled` only
//! at map creation and program load; before 6.5 the worker keeps CAP_BPF alone, see
//! [`drop_capabilities`]); the worker can read and reset counters, never load, attach
//! or detach. End of file on the channel means the attacher is gone.
use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

use caps::CapSet;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use crate::{
    counters::Layout,
    sensor::{AttachMode, Attachment, LinkKind},
};

/// The worker's end of the channel.
pub const WORKER_FD: RawFd = 3;
/// The hidden subcommand that runs the worker.
pub const WORKER_COMMAND: &str = "worker";
/// Largest message (JSON); the attachment list of a few thousand interfaces fits.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Fds in one message, below the kernel's SCM_MAX_FD (253).
pub const MAX_FDS: usize = 240;

#[derive(Debug, thiserror::Error)]
pub enum PrivsepError {
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error(
        "cannot drop the {set} capabilities: {source}. Under systemd the unit must allow \
         capset(2) (SystemCallFilter=capset, as the shipped unit does)"
    )]
    Drop {
        set: &'static str,
        source: caps::errors::CapsError,
    },
    #[error(
        "the worker still has capabilities after dropping them ({0}); it does not serve \
         HTTP with capabilities"
    )]
    StillPrivileged(String),
    #[error("cannot read /proc/self/status: {0}")]
    Status(std::io::Error),
    #[error("channel to the worker: {0}")]
    Channel(nix::Error),
    #[error(
        "`scan-agent worker` is started by `scan-agent run` (with its channel at fd 3), not \
         by hand"
    )]
    NotStarted,
    #[error("the attacher closed the channel")]
    Closed,
    #[error("bad message on the channel: {0}")]
    Message(String),
}

/// An attachment as the worker learns it (for `scan_agent_attached`, `/healthz` and
/// the index page).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WireAttachment {
    pub interface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    /// The frames start with an IP header (an L3 link), not an Ethernet one.
    pub raw_ip: bool,
    pub adopted: bool,
    pub dispatcher: bool,
}

impl From<&Attachment> for WireAttachment {
    fn from(a: &Attachment) -> Self {
        Self {
            interface: a.interface.clone(),
            ifindex: a.ifindex,
            mode: a.mode,
            raw_ip: a.kind == LinkKind::RawIp,
            adopted: a.adopted,
            dispatcher: a.dispatcher,
        }
    }
}

impl From<&WireAttachment> for Attachment {
    fn from(a: &WireAttachment) -> Self {
        Self {
            interface: a.interface.clone(),
            ifindex: a.ifindex,
            mode: a.mode,
            kind: if a.raw_ip {
                LinkKind::RawIp
            } else {
                LinkKind::Ethernet
            },
            adopted: a.adopted,
            dispatcher: a.dispatcher,
        }
    }
}

/// What the attacher has attached, and the maps behind it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Update {
    pub attachments: Vec<WireAttachment>,
    /// Re-attaches so far (`scan_agent_reattaches_total`).
    pub reattaches: u64,
    /// The maps; their fds follow the message's listener fds.
    pub layout: Layout,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ToWorker {
    /// The first message, once attached.
    Start {
        /// The attacher's pid: the worker checks it is still its parent.
        attacher: u32,
        /// Listener fds first in the message, in the order of `--web.listen-address`.
        listeners: usize,
        /// The configured interfaces (the default route's when none was given).
        interfaces: Vec<String>,
        /// Whether every configured interface had a kept link that was adopted: the
        /// program counted while no agent ran.
        all_adopted: bool,
        update: Update,
    },
    /// After every change of the attachments, and for loads beyond one message's fds.
    Update(Update),
}

/// The channel's two ends: the attacher's, and the one the worker inherits.
pub fn channel() -> Result<(OwnedFd, OwnedFd), PrivsepError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(PrivsepError::Channel)
}

/// Sends `message` with `fds` (each duplicated into the receiver).
pub fn send(
    socket: BorrowedFd<'_>,
    message: &ToWorker,
    fds: &[BorrowedFd<'_>],
) -> Result<(), PrivsepError> {
    let bytes = serde_json::to_vec(message).map_err(|e| PrivsepError::Message(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(PrivsepError::Message(format!(
            "{} bytes and {} fds, more than {MAX_MESSAGE} bytes or {MAX_FDS} fds",
            bytes.len(),
            fds.len()
        )));
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(PrivsepError::Channel)?;
    Ok(())
}

/// Receives one message and its fds (blocking). [`PrivsepError::Closed`] at end of file.
pub fn receive(socket: BorrowedFd<'_>) -> Result<(ToWorker, Vec<OwnedFd>), PrivsepError> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (bytes, flags, fds) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let msg = loop {
            match recvmsg::<()>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::Error::EINTR) => continue,
                other => break other.map_err(PrivsepError::Channel)?,
            }
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(PrivsepError::Channel)? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel just installed these fds in this process for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, msg.flags, fds)
    };
    if bytes == 0 {
        return Err(PrivsepError::Closed);
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(PrivsepError::Message("truncated".into()));
    }
    let message = serde_json::from_slice(&buffer[..bytes])
        .map_err(|e| PrivsepError::Message(e.to_string()))?;
    Ok((message, fds))
}

/// The worker's end of the channel, checked to be a socket.
pub fn worker_end() -> Result<OwnedFd, PrivsepError> {
    // SAFETY: fstat on a number; the struct is plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(WORKER_FD, &mut st) } != 0
        || st.st_mode & libc::S_IFMT != libc::S_IFSOCK
    {
        return Err(PrivsepError::NotStarted);
    }
    // SAFETY: fd 3 was handed to this process for the channel (checked: a socket), and
    // nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(WORKER_FD) })
}

/// Whether this kernel refuses every bpf(2) command, also on an open map fd, to a
/// process without CAP_BPF: before Linux 6.5, `kernel.unprivileged_bpf_disabled` (1 or
/// 2, the default of most distributions) was checked for every command; since 6.5 only
/// at map creation and program load. `release` is `uname -r`, `disabled` the sysctl.
pub fn maps_need_cap_bpf(release: &str, disabled: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version < (6, 5) && disabled.trim() != "0"
}

fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct; `release` is NUL-terminated.
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(name.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// The worker's first action, before any other thread exists (capabilities are per
/// thread; threads started later inherit these): no_new_privs, every capability set
/// cleared, the parent-death signal set, then verified from `/proc/self/status`.
///
/// Where the kernel refuses map access without CAP_BPF ([`maps_need_cap_bpf`]), the
/// worker keeps CAP_BPF alone (effective and permitted; never CAP_NET_ADMIN or
/// CAP_PERFMON, none ambient or inheritable) and returns why, for a warning: on such a
/// kernel it could not read the counters otherwise.
pub fn drop_capabilities() -> Result<Option<String>, PrivsepError> {
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a NUL-terminated string. The
    // name shown by ps/top (it would be `exe`, from /proc/self/exe).
    unsafe { libc::prctl(libc::PR_SET_NAME, c"scan-agent-work".as_ptr(), 0, 0, 0) };
    // SAFETY: plain prctl calls with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivsepError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let fail = |set: &'static str| move |source| PrivsepError::Drop { set, source };
    // The bounding set only when this process may (root outside systemd, whose exec
    // gave it every capability); with it empty, not even an exec could regain any.
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
        caps::clear(None, CapSet::Bounding).map_err(fail("bounding"))?;
    }
    let release = kernel_release();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .unwrap_or_else(|_| "1".into());
    let keep_bpf = maps_need_cap_bpf(&release, &disabled)
        && caps::has_cap(None, CapSet::Permitted, caps::Capability::CAP_BPF).unwrap_or(false);
    caps::clear(None, CapSet::Ambient).map_err(fail("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(fail("inheritable"))?;
    if keep_bpf {
        let only_bpf: caps::CapsHashSet = [caps::Capability::CAP_BPF].into_iter().collect();
        caps::set(None, CapSet::Effective, &only_bpf).map_err(fail("effective"))?;
        caps::set(None, CapSet::Permitted, &only_bpf).map_err(fail("permitted"))?;
    } else {
        caps::clear(None, CapSet::Effective).map_err(fail("effective"))?;
        caps::clear(None, CapSet::Permitted).map_err(fail("permitted"))?;
    }
    // SAFETY: as above. The attacher dying ends the worker (also checked by pid at
    // start, and by end of file on the channel).
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
    let status = std::fs::read_to_string("/proc/self/status").map_err(PrivsepError::Status)?;
    let allowed = if keep_bpf { CAP_BPF_BIT } else { 0 };
    let held = held_capabilities_beyond(&status, allowed);
    if !held.is_empty() {
        return Err(PrivsepError::StillPrivileged(held.join(", ")));
    }
    Ok(keep_bpf.then(|| {
        format!(
            "Linux {} with kernel.unprivileged_bpf_disabled={} refuses map access without \
             CAP_BPF: the worker (HTTP) keeps CAP_BPF, and only it; Linux >= 6.5 (or the sysctl \
             at 0) lets it run with no capability",
            release.trim(),
            disabled.trim()
        )
    }))
}

/// CAP_BPF (39) in a capability mask.
const CAP_BPF_BIT: u64 = 1 << 39;

/// The capability lines of a `/proc/<pid>/status` among CapEff, CapPrm and CapAmb
/// that are not zero, as `Name: value`.
pub fn held_capabilities(status: &str) -> Vec<String> {
    held_capabilities_beyond(status, 0)
}

/// [`held_capabilities`] with the bits of `allowed` permitted in CapEff and CapPrm
/// (never in CapAmb).
fn held_capabilities_beyond(status: &str, allowed: u64) -> Vec<String> {
    status
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let value = value.trim();
            let mask = if name == "CapAmb" { 0 } else { allowed };
            let held = u64::from_str_radix(value, 16).map_or(true, |v| v & !mask != 0);
            (matches!(name, "CapEff" | "CapPrm" | "CapAmb") && held)
                .then(|| format!("{name}: {value}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_lines() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000001ffffffffff\n\
                      CapAmb:\t0000000000000000\n";
        assert_eq!(held_capabilities(status), vec!["CapEff: 000000c000001000"]);
        assert!(held_capabilities(&status.replace("c000001000", "0000000000")).is_empty());
        let only_bpf = status.replace("c000001000", "8000000000");
        assert!(held_capabilities_beyond(&only_bpf, CAP_BPF_BIT).is_empty());
        assert_eq!(
            held_capabilities(&only_bpf),
            vec!["CapEff: 0000008000000000"]
        );
        let ambient = "CapAmb:\t0000008000000000\n";
        assert_eq!(held_capabilities_beyond(ambient, CAP_BPF_BIT).len(), 1);
    }

    #[test]
    fn kernels_that_refuse_map_access_without_cap_bpf() {
        for (release, disabled, expected) in [
            ("6.1.0-18-amd64", "2", true),
            ("6.1.0-18-amd64", "1", true),
            ("6.1.0-18-amd64", "0", false),
            ("5.15.0-91-generic", "2\n", true),
            ("6.4.16", "2", true),
            ("6.5.0", "2", false),
            ("6.18.0", "2", false),
            ("7.0.1", "1", false),
        ] {
            assert_eq!(
                maps_need_cap_bpf(release, disabled),
                expected,
                "{release} {disabled}"
            );
        }
    }

    #[test]
    fn messages_and_fds_cross_the_channel() {
        let (a, b) = channel().unwrap();
        let file = tempfile::tempfile().unwrap();
        let message = ToWorker::Update(Update {
            attachments: vec![WireAttachment {
                interface: "eth0".into(),
                ifindex: 2,
                mode: AttachMode::Native,
                raw_ip: false,
                adopted: true,
                dispatcher: false,
            }],
            reattaches: 3,
            layout: Layout::default(),
        });
        send(
            std::os::fd::AsFd::as_fd(&a),
            &message,
            &[std::os::fd::AsFd::as_fd(&file)],
        )
        .unwrap();
        let (got, fds) = receive(std::os::fd::AsFd::as_fd(&b)).unwrap();
        assert_eq!(got, message);
        assert_eq!(fds.len(), 1);
        drop(a);
        assert!(matches!(
            receive(std::os::fd::AsFd::as_fd(&b)),
            Err(PrivsepError::Closed)
        ));
    }
}
