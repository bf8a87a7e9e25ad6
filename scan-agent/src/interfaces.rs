//! Which interfaces the program belongs on, and when that changes.
//!
//! Interfaces are tracked by ifindex, not by name: ppp0, wg0 or a VLAN sub-interface
//! deleted and recreated under the same name is a new interface (new ifindex) that needs
//! the program attached again; a renamed one keeps its ifindex and its program. `--iface`
//! takes names and patterns (`ppp*`, `eth1.*`, `?` for one character).
//!
//! [`watch`] listens to the kernel's link notifications (rtnetlink, RTMGRP_LINK) on a
//! thread and wakes the daemon, which then compares [`present`] with what is attached
//! (`daemon::reattach`, the one place that re-attaches). The daemon also does that at
//! every poll, so a lost notification (socket overrun) delays a re-attach by one poll
//! interval at most.
use std::{ffi::CStr, sync::Arc};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{RouteNetlinkMessage, link::LinkAttribute};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// An interface that exists now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Present {
    pub index: u32,
    pub name: String,
}

/// Whether `--iface` value `pattern` names `name`: `*` matches any run of characters
/// (also none), `?` one character; anything else itself.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative glob with one backtrack point (the last `*`): linear in practice.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `value` is a pattern rather than one interface name.
pub fn is_pattern(value: &str) -> bool {
    value.contains(['*', '?'])
}

/// Whether any of `patterns` names `name`.
pub fn wanted(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches(p, name))
}

/// The interfaces of this network namespace, by `if_nameindex(3)`.
pub fn present() -> Vec<Present> {
    let mut found = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, or null; it is
    // read here and released by if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return found;
        }
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            found.push(Present {
                index: (*entry).if_index,
                name: CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            });
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    found
}

/// Starts a thread that calls `changed` on every link notification (an interface
/// created, deleted, renamed, set up or down). Fails if the netlink socket cannot be
/// opened; the daemon then relies on its per-poll check alone.
pub fn watch(changed: Arc<dyn Fn() + Send + Sync>) -> std::io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))?;
    std::thread::Builder::new()
        .name("link-watch".into())
        .spawn(move || {
            loop {
                match socket.recv_from_full() {
                    Ok((bytes, _)) => {
                        log_events(&bytes);
                        changed();
                    }
                    // ENOBUFS: notifications were lost; the caller rechecks everything.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => changed(),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::warn!(
                            "link notifications stopped ({e}); interfaces are rechecked at \
                             every poll only"
                        );
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

/// Logs each link message of a notification at debug level.
fn log_events(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
            return;
        };
        let len = (message.header.length as usize).max(16).min(bytes.len());
        bytes = &bytes[len..];
        let (what, link) = match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                ("new/changed", link)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => ("deleted", link),
            _ => continue,
        };
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.as_str()),
            _ => None,
        });
        log::debug!(
            "link {what}: index {} name {}",
            link.header.index,
            name.unwrap_or("?")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        for (pattern, name, expected) in [
            ("eth0", "eth0", true),
            ("eth0", "eth01", false),
            ("ppp*", "ppp0", true),
            ("ppp*", "ppp", true),
            ("ppp*", "pp", false),
            ("eth1.*", "eth1.100", true),
            ("eth1.*", "eth10.100", false),
            ("eth1.*", "eth1", false),
            ("*", "anything", true),
            ("w?0", "wg0", true),
            ("w?0", "wg10", false),
            ("*.1*", "eth0.100", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(matches(pattern, name), expected, "{pattern} vs {name}");
        }
        assert!(is_pattern("ppp*") && is_pattern("w?0") && !is_pattern("eth0"));
    }

    #[test]
    fn loopback_is_present() {
        let all = present();
        assert!(
            all.iter().any(|p| p.name == "lo" && p.index == 1),
            "{all:?}"
        );
    }
}
