//! The XDP hook of an interface through rtnetlink: which program holds it (and
//! how), and the netlink attach operations the libxdp protocol uses
//! (`XDP_FLAGS_UPDATE_IF_NOEXIST`, `XDP_FLAGS_REPLACE` with an expected fd).
//!
//! libxdp attaches its dispatcher through netlink, not `bpf_link`: a program held
//! by a `bpf_link` cannot be replaced by anyone else, so a dispatcher others may
//! join must be attached this way too.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// Who holds an interface's XDP hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpHolder {
    pub prog_id: u32,
    /// True for generic (SKB) mode, false for native (driver).
    pub skb: bool,
}

/// The program attached to `ifindex`'s XDP hook, if any.
pub fn query(ifindex: u32) -> io::Result<Option<XdpHolder>> {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    let replies = request(RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST)?;
    for reply in replies {
        let RouteNetlinkMessage::NewLink(link) = reply else {
            continue;
        };
        for attribute in link.attributes {
            let LinkAttribute::Xdp(xdp) = attribute else {
                continue;
            };
            let mut attached = XdpAttached::None;
            let mut prog_id = 0;
            for item in xdp {
                match item {
                    LinkXdp::Attached(a) => attached = a,
                    LinkXdp::ProgId(id) => prog_id = id,
                    _ => {}
                }
            }
            return Ok(match attached {
                XdpAttached::None => None,
                XdpAttached::SocketBuffer => Some(XdpHolder { prog_id, skb: true }),
                _ => Some(XdpHolder {
                    prog_id,
                    skb: false,
                }),
            });
        }
    }
    Ok(None)
}

/// Attaches `prog` to `ifindex` (or detaches with `None`) with `flags`;
/// `expected` is the program that must still be there (`XDP_FLAGS_REPLACE`).
pub fn set(
    ifindex: u32,
    prog: Option<BorrowedFd<'_>>,
    expected: Option<BorrowedFd<'_>>,
    mut flags: u32,
) -> io::Result<()> {
    let mut xdp = vec![LinkXdp::Fd(prog.map_or(-1, |fd| fd.as_raw_fd()))];
    if let Some(expected) = expected {
        flags |= XDP_FLAGS_REPLACE;
        xdp.push(LinkXdp::ExpectedFd(expected.as_raw_fd() as u32));
    }
    xdp.push(LinkXdp::Flags(flags));
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    message.attributes.push(LinkAttribute::Xdp(xdp));
    request(
        RouteNetlinkMessage::SetLink(message),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .map(drop)
}

fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut replies = Vec::new();
    let mut receive = vec![0u8; 65536];
    loop {
        let n = socket.recv(&mut &mut receive[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(replies),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::InnerMessage(inner) => {
                    replies.push(inner);
                    // A plain GET (no dump) answers with exactly one message.
                    if flags & NLM_F_ACK == 0 {
                        return Ok(replies);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}
