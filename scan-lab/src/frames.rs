//! A small Ethernet frame builder for tests, benchmarks and the replay corpus.
//!
//! ```
//! use scan_lab::frames::{Frame, Ipv6Ext, tcp};
//!
//! // A plain IPv4 SYN to port 445.
//! let syn = Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 40_000, 445, tcp::SYN).build();
//! assert_eq!(syn.len(), 14 + 20 + 20);
//!
//! // The same over IPv6 behind two VLAN tags and a hop-by-hop header, with SYN options.
//! let frame = Frame::ipv6_tcp(
//!     "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
//!     "2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap(),
//!     40_000,
//!     445,
//!     tcp::SYN,
//! )
//! .vlan(0x88A8, 100)
//! .vlan(0x8100, 200)
//! .ext(Ipv6Ext::HopByHop { len: 8 })
//! .tcp_options(scan_lab::frames::tcp::syn_options())
//! .build();
//! assert_eq!(frame.len(), 14 + 8 + 40 + 8 + 20 + 20);
//! ```
//!
//! Lengths (IPv4 total length, IPv6 payload length, UDP length) and checksums (IPv4
//! header, TCP, UDP, ICMP, ICMPv6) are filled in from what is actually written, so the
//! frames are what a real stack would send. The modifiers that make a header invalid
//! (`ihl`, `ip_version`, `data_offset`, `protocol`, a `raw` extension header) write
//! exactly the value asked for and leave the rest consistent. The XDP program never
//! looks at checksums or length fields.
//!
//! Modifiers that only make sense for one kind of frame (`ip_options` on IPv6, `ext` on
//! IPv4, `tcp_options` on UDP, ...) panic: this is a test tool, and a silently ignored
//! modifier would make a test check something else than it says.
use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherTypes used by the builder.
pub mod ether_type {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86DD;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad provider (S-)tag, the outer tag of QinQ.
    pub const QINQ: u16 = 0x88A8;
    /// PPPoE discovery (PADI, PADO, ...): no IP inside.
    pub const PPPOE_DISCOVERY: u16 = 0x8863;
    /// PPPoE session: a PPP frame inside.
    pub const PPPOE_SESSION: u16 = 0x8864;
}

/// PPP protocol numbers (RFC 1661 and the IANA registry).
pub mod ppp_proto {
    pub const IPV4: u16 = 0x0021;
    pub const IPV6: u16 = 0x0057;
    /// Link Control Protocol.
    pub const LCP: u16 = 0xC021;
}

/// A PPPoE session header (RFC 2516) between the Ethernet/VLAN headers and the
/// network layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pppoe {
    pub session: u16,
    /// The PPP protocol field; `None`: IPv4 or IPv6 from the frame's network layer.
    pub protocol: Option<u16>,
    /// The version/type byte; 0x11 in every valid frame.
    pub ver_type: u8,
    /// The code byte; 0 for session data.
    pub code: u8,
}

/// IP protocol numbers / IPv6 next-header values used by the builder.
pub mod ip_proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
}

/// TCP flag bits (byte 13 of the TCP header) and option helpers.
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    /// The options of a Linux SYN: MSS 1460, SACK permitted, timestamps, window scale 7
    /// (20 bytes).
    pub fn syn_options() -> Vec<u8> {
        vec![
            2, 4, 0x05, 0xB4, // MSS 1460
            4, 2, // SACK permitted
            8, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0, // timestamps
            1, // NOP
            3, 3, 7, // window scale 7
        ]
    }

    /// The options of a Windows SYN: MSS 1460, NOP, window scale 8, NOP, NOP, SACK
    /// permitted (12 bytes).
    pub fn windows_syn_options() -> Vec<u8> {
        vec![2, 4, 0x05, 0xB4, 1, 3, 3, 8, 1, 1, 4, 2]
    }
}

/// One VLAN tag: its TPID (0x8100 or 0x88A8, or anything for negative tests) and TCI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanTag {
    pub tpid: u16,
    pub tci: u16,
}

/// The network layer of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Net {
    Ipv4(Ipv4),
    Ipv6(Ipv6),
    /// An ARP request (EtherType 0x0806).
    Arp {
        sender: Ipv4Addr,
        target: Ipv4Addr,
    },
    /// Anything else: the EtherType and the bytes after it.
    Raw {
        ether_type: u16,
        payload: Vec<u8>,
    },
}

/// An IPv4 header and what it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
    pub tos: u8,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units (13 bits).
    pub fragment_offset: u16,
    /// Options, padded with End-of-Options to a multiple of 4 bytes when written.
    pub options: Vec<u8>,
    /// Writes this IHL (4 bits) instead of the real header length.
    pub ihl: Option<u8>,
    /// Writes this version (4 bits) instead of 4.
    pub version: Option<u8>,
    /// Writes this protocol instead of the transport's.
    pub protocol: Option<u8>,
    pub transport: Transport,
}

/// An IPv6 header, its extension headers and what it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
    /// Extension headers in wire order; each one's next-header field is set to the type
    /// of the one after it (or of the transport).
    pub extensions: Vec<Ipv6Ext>,
    /// Writes this as the next header of the last header instead of the transport's.
    pub next_header: Option<u8>,
    /// Writes this version (4 bits) instead of 6.
    pub version: Option<u8>,
    pub transport: Transport,
}

/// An IPv6 extension header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    /// Hop-by-hop options, `len` bytes in all (a multiple of 8, 8..=2048), PadN-filled.
    HopByHop { len: usize },
    /// Routing header (type 4, segments left 0), `len` bytes in all (multiple of 8).
    Routing { len: usize },
    /// Fragment header: `offset` in 8-byte units (13 bits), `more` = the M flag.
    Fragment { offset: u16, more: bool, id: u32 },
    /// Destination options, `len` bytes in all (a multiple of 8), PadN-filled.
    DestinationOptions { len: usize },
    /// Authentication header (RFC 4302) with an ICV of `icv_len` bytes (a multiple of
    /// 4); its length field is `(12 + icv_len) / 4 - 2`.
    Auth { icv_len: usize },
    /// Any header type with exactly these bytes; byte 0 is replaced by the next header.
    Raw { kind: u8, bytes: Vec<u8> },
}

impl Ipv6Ext {
    /// The next-header value that announces this header.
    pub fn kind(&self) -> u8 {
        match self {
            Self::HopByHop { .. } => ip_proto::HOP_BY_HOP,
            Self::Routing { .. } => ip_proto::ROUTING,
            Self::Fragment { .. } => ip_proto::FRAGMENT,
            Self::DestinationOptions { .. } => ip_proto::DEST_OPTS,
            Self::Auth { .. } => ip_proto::AH,
            Self::Raw { kind, .. } => *kind,
        }
    }

    fn write(&self, next: u8, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Self::HopByHop { len } | Self::DestinationOptions { len } => {
                let len = (*len).clamp(8, 2048) / 8 * 8;
                out.push(next);
                out.push((len / 8 - 1) as u8);
                // PadN options over the remaining len - 2 bytes (>= 6), at most 257
                // bytes each, never leaving a single byte.
                let mut left = len - 2;
                while left > 0 {
                    let mut data = (left - 2).min(255);
                    if left - (data + 2) == 1 {
                        data -= 1;
                    }
                    out.extend_from_slice(&[1, data as u8]);
                    out.resize(out.len() + data, 0);
                    left -= data + 2;
                }
            }
            Self::Routing { len } => {
                let len = (*len).clamp(8, 2048) / 8 * 8;
                out.extend_from_slice(&[next, (len / 8 - 1) as u8, 4, 0]);
                out.resize(start + len, 0);
            }
            Self::Fragment { offset, more, id } => {
                let field = ((offset & 0x1FFF) << 3) | u16::from(*more);
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&field.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
            Self::Auth { icv_len } => {
                let len = 12 + icv_len / 4 * 4;
                out.extend_from_slice(&[next, (len / 4 - 2) as u8, 0, 0]);
                out.extend_from_slice(&0x0000_1000u32.to_be_bytes()); // SPI
                out.extend_from_slice(&1u32.to_be_bytes()); // sequence number
                out.resize(start + len, 0xA5); // ICV
            }
            Self::Raw { bytes, .. } => {
                out.extend_from_slice(bytes);
                if let Some(first) = out.get_mut(start) {
                    *first = next;
                }
            }
        }
    }
}

/// The transport layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp(Tcp),
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// ICMP (in IPv4) or ICMPv6 (in IPv6): type, code, the 4 bytes after the checksum,
    /// then the payload.
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
        payload: Vec<u8>,
    },
    /// Any protocol with exactly these bytes.
    Raw {
        protocol: u8,
        bytes: Vec<u8>,
    },
}

impl Transport {
    fn protocol(&self, ipv6: bool) -> u8 {
        match self {
            Self::Tcp(_) => ip_proto::TCP,
            Self::Udp { .. } => ip_proto::UDP,
            Self::Icmp { .. } if ipv6 => ip_proto::ICMPV6,
            Self::Icmp { .. } => ip_proto::ICMP,
            Self::Raw { protocol, .. } => *protocol,
        }
    }
}

/// A TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// Byte 13: CWR ECE URG ACK PSH RST SYN FIN (see [`tcp`]).
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    /// Options, padded with End-of-Options to a multiple of 4 bytes when written.
    pub options: Vec<u8>,
    /// Writes this data offset (4 bits) instead of the real header length.
    pub data_offset: Option<u8>,
    pub payload: Vec<u8>,
}

/// A frame under construction; [`Frame::build`] writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// VLAN tags, outermost first.
    pub vlans: Vec<VlanTag>,
    /// A PPPoE session header after the VLAN tags, if any.
    pub pppoe: Option<Pppoe>,
    pub net: Net,
}

const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

impl Frame {
    fn with_net(net: Net) -> Self {
        Self {
            dst_mac: DST_MAC,
            src_mac: SRC_MAC,
            vlans: Vec::new(),
            pppoe: None,
            net,
        }
    }

    fn ipv4(src: impl Into<Ipv4Addr>, dst: impl Into<Ipv4Addr>, transport: Transport) -> Self {
        Self::with_net(Net::Ipv4(Ipv4 {
            src: src.into(),
            dst: dst.into(),
            ttl: 64,
            id: 0x1234,
            tos: 0,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
            options: Vec::new(),
            ihl: None,
            version: None,
            protocol: None,
            transport,
        }))
    }

    fn ipv6(src: impl Into<Ipv6Addr>, dst: impl Into<Ipv6Addr>, transport: Transport) -> Self {
        Self::with_net(Net::Ipv6(Ipv6 {
            src: src.into(),
            dst: dst.into(),
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
            extensions: Vec::new(),
            next_header: None,
            version: None,
            transport,
        }))
    }

    fn tcp_segment(sport: u16, dport: u16, flags: u8) -> Transport {
        Transport::Tcp(Tcp {
            sport,
            dport,
            seq: 0x0100_0000,
            ack: if flags & tcp::ACK != 0 {
                0x0200_0000
            } else {
                0
            },
            flags,
            window: 64_240,
            urgent: 0,
            options: Vec::new(),
            data_offset: None,
            payload: Vec::new(),
        })
    }

    /// IPv4 + TCP with these ports and flags (see [`tcp`]), no options, no payload.
    pub fn ipv4_tcp(
        src: impl Into<Ipv4Addr>,
        dst: impl Into<Ipv4Addr>,
        sport: u16,
        dport: u16,
        flags: u8,
    ) -> Self {
        Self::ipv4(src, dst, Self::tcp_segment(sport, dport, flags))
    }

    /// IPv6 + TCP with these ports and flags, no extension headers, options or payload.
    pub fn ipv6_tcp(
        src: impl Into<Ipv6Addr>,
        dst: impl Into<Ipv6Addr>,
        sport: u16,
        dport: u16,
        flags: u8,
    ) -> Self {
        Self::ipv6(src, dst, Self::tcp_segment(sport, dport, flags))
    }

    /// IPv4 + UDP.
    pub fn ipv4_udp(
        src: impl Into<Ipv4Addr>,
        dst: impl Into<Ipv4Addr>,
        sport: u16,
        dport: u16,
    ) -> Self {
        Self::ipv4(
            src,
            dst,
            Transport::Udp {
                sport,
                dport,
                payload: Vec::new(),
            },
        )
    }

    /// IPv6 + UDP.
    pub fn ipv6_udp(
        src: impl Into<Ipv6Addr>,
        dst: impl Into<Ipv6Addr>,
        sport: u16,
        dport: u16,
    ) -> Self {
        Self::ipv6(
            src,
            dst,
            Transport::Udp {
                sport,
                dport,
                payload: Vec::new(),
            },
        )
    }

    /// IPv4 + ICMP echo request.
    pub fn ipv4_icmp_echo(src: impl Into<Ipv4Addr>, dst: impl Into<Ipv4Addr>) -> Self {
        Self::ipv4(
            src,
            dst,
            Transport::Icmp {
                kind: 8,
                code: 0,
                rest: [0, 1, 0, 1],
                payload: vec![0x61; 32],
            },
        )
    }

    /// IPv6 + ICMPv6 echo request.
    pub fn ipv6_icmp_echo(src: impl Into<Ipv6Addr>, dst: impl Into<Ipv6Addr>) -> Self {
        Self::ipv6(
            src,
            dst,
            Transport::Icmp {
                kind: 128,
                code: 0,
                rest: [0, 1, 0, 1],
                payload: vec![0x61; 32],
            },
        )
    }

    /// IPv4 carrying any protocol with these bytes.
    pub fn ipv4_raw(
        src: impl Into<Ipv4Addr>,
        dst: impl Into<Ipv4Addr>,
        protocol: u8,
        bytes: Vec<u8>,
    ) -> Self {
        Self::ipv4(src, dst, Transport::Raw { protocol, bytes })
    }

    /// IPv6 carrying any next header with these bytes.
    pub fn ipv6_raw(
        src: impl Into<Ipv6Addr>,
        dst: impl Into<Ipv6Addr>,
        protocol: u8,
        bytes: Vec<u8>,
    ) -> Self {
        Self::ipv6(src, dst, Transport::Raw { protocol, bytes })
    }

    /// An ARP request (who has `target`? tell `sender`), broadcast.
    pub fn arp_request(sender: impl Into<Ipv4Addr>, target: impl Into<Ipv4Addr>) -> Self {
        let mut frame = Self::with_net(Net::Arp {
            sender: sender.into(),
            target: target.into(),
        });
        frame.dst_mac = [0xFF; 6];
        frame
    }

    /// Any EtherType with these bytes after it.
    pub fn raw(ether_type: u16, payload: Vec<u8>) -> Self {
        Self::with_net(Net::Raw {
            ether_type,
            payload,
        })
    }

    /// Sets the MAC addresses.
    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }

    /// Carries the network layer in a PPPoE session (EtherType 0x8864) with this
    /// session id; the PPP protocol follows the network layer (IPv4 0x0021, IPv6 0x0057).
    pub fn pppoe(mut self, session: u16) -> Self {
        self.pppoe = Some(Pppoe {
            session,
            protocol: None,
            ver_type: 0x11,
            code: 0,
        });
        self
    }

    /// Sets the PPP protocol field of the PPPoE session (needs [`Frame::pppoe`] first).
    pub fn ppp_protocol(mut self, protocol: u16) -> Self {
        self.pppoe
            .as_mut()
            .expect("ppp_protocol needs a PPPoE frame")
            .protocol = Some(protocol);
        self
    }

    /// Sets the PPPoE version/type byte (needs [`Frame::pppoe`] first).
    pub fn pppoe_ver_type(mut self, ver_type: u8) -> Self {
        self.pppoe
            .as_mut()
            .expect("pppoe_ver_type needs a PPPoE frame")
            .ver_type = ver_type;
        self
    }

    /// Adds a VLAN tag inside the ones already there (call outermost first).
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push(VlanTag {
            tpid,
            tci: vid & 0x0FFF,
        });
        self
    }

    fn ipv4_mut(&mut self, what: &str) -> &mut Ipv4 {
        match &mut self.net {
            Net::Ipv4(ip) => ip,
            other => panic!("{what} needs an IPv4 frame, not {other:?}"),
        }
    }

    fn ipv6_mut(&mut self, what: &str) -> &mut Ipv6 {
        match &mut self.net {
            Net::Ipv6(ip) => ip,
            other => panic!("{what} needs an IPv6 frame, not {other:?}"),
        }
    }

    fn transport_mut(&mut self, what: &str) -> &mut Transport {
        match &mut self.net {
            Net::Ipv4(ip) => &mut ip.transport,
            Net::Ipv6(ip) => &mut ip.transport,
            other => panic!("{what} needs an IP frame, not {other:?}"),
        }
    }

    fn tcp_mut(&mut self, what: &str) -> &mut Tcp {
        match self.transport_mut(what) {
            Transport::Tcp(tcp) => tcp,
            other => panic!("{what} needs a TCP segment, not {other:?}"),
        }
    }

    /// The TCP segment, if this is IPv4 or IPv6 carrying TCP.
    pub fn tcp(&self) -> Option<&Tcp> {
        match &self.net {
            Net::Ipv4(Ipv4 {
                transport: Transport::Tcp(tcp),
                ..
            })
            | Net::Ipv6(Ipv6 {
                transport: Transport::Tcp(tcp),
                ..
            }) => Some(tcp),
            _ => None,
        }
    }

    /// IPv4 options (padded to a multiple of 4 bytes with End-of-Options).
    pub fn ip_options(mut self, options: Vec<u8>) -> Self {
        self.ipv4_mut("ip_options").options = options;
        self
    }

    /// Writes this IHL (0..=15) in the IPv4 header; the header written is unchanged.
    pub fn ihl(mut self, ihl: u8) -> Self {
        self.ipv4_mut("ihl").ihl = Some(ihl & 0x0F);
        self
    }

    /// Writes this version (0..=15) in the IPv4 or IPv6 header.
    pub fn ip_version(mut self, version: u8) -> Self {
        match &mut self.net {
            Net::Ipv4(ip) => ip.version = Some(version & 0x0F),
            Net::Ipv6(ip) => ip.version = Some(version & 0x0F),
            other => panic!("ip_version needs an IP frame, not {other:?}"),
        }
        self
    }

    /// Writes this IPv4 protocol, or IPv6 next header of the last header.
    pub fn protocol(mut self, protocol: u8) -> Self {
        match &mut self.net {
            Net::Ipv4(ip) => ip.protocol = Some(protocol),
            Net::Ipv6(ip) => ip.next_header = Some(protocol),
            other => panic!("protocol needs an IP frame, not {other:?}"),
        }
        self
    }

    /// Makes it a fragment: IPv4 sets the MF flag and offset (8-byte units) and clears DF;
    /// IPv6 appends a fragment header with that offset and M flag.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        match &mut self.net {
            Net::Ipv4(ip) => {
                ip.fragment_offset = offset & 0x1FFF;
                ip.more_fragments = more;
                ip.dont_fragment = false;
            }
            Net::Ipv6(ip) => ip.extensions.push(Ipv6Ext::Fragment {
                offset: offset & 0x1FFF,
                more,
                id: 0x0BAD_F00D,
            }),
            other => panic!("fragment needs an IP frame, not {other:?}"),
        }
        self
    }

    /// Appends an IPv6 extension header (after those already there).
    pub fn ext(mut self, ext: Ipv6Ext) -> Self {
        self.ipv6_mut("ext").extensions.push(ext);
        self
    }

    /// Sets the IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        match &mut self.net {
            Net::Ipv4(ip) => ip.ttl = ttl,
            Net::Ipv6(ip) => ip.hop_limit = ttl,
            other => panic!("ttl needs an IP frame, not {other:?}"),
        }
        self
    }

    /// Sets the IPv4 identification.
    pub fn ip_id(mut self, id: u16) -> Self {
        self.ipv4_mut("ip_id").id = id;
        self
    }

    /// TCP options (padded to a multiple of 4 bytes with End-of-Options).
    pub fn tcp_options(mut self, options: Vec<u8>) -> Self {
        self.tcp_mut("tcp_options").options = options;
        self
    }

    /// Writes this data offset (0..=15) in the TCP header; the header written is unchanged.
    pub fn data_offset(mut self, data_offset: u8) -> Self {
        self.tcp_mut("data_offset").data_offset = Some(data_offset & 0x0F);
        self
    }

    /// Sets the TCP sequence and acknowledgment numbers.
    pub fn seq_ack(mut self, seq: u32, ack: u32) -> Self {
        let tcp = self.tcp_mut("seq_ack");
        tcp.seq = seq;
        tcp.ack = ack;
        self
    }

    /// Sets the TCP window.
    pub fn window(mut self, window: u16) -> Self {
        self.tcp_mut("window").window = window;
        self
    }

    /// Sets the transport payload (TCP, UDP or ICMP).
    pub fn payload(mut self, payload: Vec<u8>) -> Self {
        match self.transport_mut("payload") {
            Transport::Tcp(tcp) => tcp.payload = payload,
            Transport::Udp { payload: p, .. } | Transport::Icmp { payload: p, .. } => *p = payload,
            Transport::Raw { bytes, .. } => *bytes = payload,
        }
        self
    }

    /// Writes the frame.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        let inner_type = match &self.net {
            _ if self.pppoe.is_some() => ether_type::PPPOE_SESSION,
            Net::Ipv4(_) => ether_type::IPV4,
            Net::Ipv6(_) => ether_type::IPV6,
            Net::Arp { .. } => ether_type::ARP,
            Net::Raw { ether_type, .. } => *ether_type,
        };
        // dst src [TPID TCI]... EtherType: each tag's TPID sits where an EtherType would.
        for tag in &self.vlans {
            out.extend_from_slice(&tag.tpid.to_be_bytes());
            out.extend_from_slice(&tag.tci.to_be_bytes());
        }
        out.extend_from_slice(&inner_type.to_be_bytes());
        let Some(pppoe) = &self.pppoe else {
            self.write_net(&mut out);
            return out;
        };
        let mut inner = Vec::new();
        self.write_net(&mut inner);
        let protocol = pppoe.protocol.unwrap_or(match &self.net {
            Net::Ipv6(_) => ppp_proto::IPV6,
            _ => ppp_proto::IPV4,
        });
        out.push(pppoe.ver_type);
        out.push(pppoe.code);
        out.extend_from_slice(&pppoe.session.to_be_bytes());
        // The PPPoE length covers the PPP protocol field and the payload.
        let length = (inner.len() + 2).min(usize::from(u16::MAX)) as u16;
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&protocol.to_be_bytes());
        out.extend_from_slice(&inner);
        out
    }

    /// Writes only the network layer (the IP packet): what an L3 link (tun, ppp,
    /// wireguard) carries, and what a LINKTYPE_RAW capture holds.
    pub fn build_ip(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_net(&mut out);
        out
    }

    fn write_net(&self, out: &mut Vec<u8>) {
        match &self.net {
            Net::Ipv4(ip) => write_ipv4(ip, out),
            Net::Ipv6(ip) => write_ipv6(ip, out),
            Net::Arp { sender, target } => {
                out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
                out.extend_from_slice(&self.src_mac);
                out.extend_from_slice(&sender.octets());
                out.extend_from_slice(&[0; 6]);
                out.extend_from_slice(&target.octets());
            }
            Net::Raw { payload, .. } => out.extend_from_slice(payload),
        }
    }
}

fn write_ipv4(ip: &Ipv4, out: &mut Vec<u8>) {
    let start = out.len();
    let mut options = ip.options.clone();
    options.resize(options.len().div_ceil(4) * 4, 0);
    let header_len = 20 + options.len();
    let ihl = ip.ihl.unwrap_or((header_len / 4) as u8);
    let version = ip.version.unwrap_or(4);
    let protocol = ip.protocol.unwrap_or(ip.transport.protocol(false));
    let mut transport = Vec::new();
    write_transport(
        &ip.transport,
        Pseudo::V4 {
            src: ip.src,
            dst: ip.dst,
        },
        &mut transport,
    );
    let total = (header_len + transport.len()).min(usize::from(u16::MAX)) as u16;
    let flags_frag = (u16::from(ip.dont_fragment) << 14)
        | (u16::from(ip.more_fragments) << 13)
        | (ip.fragment_offset & 0x1FFF);
    out.push((version << 4) | (ihl & 0x0F));
    out.push(ip.tos);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&ip.id.to_be_bytes());
    out.extend_from_slice(&flags_frag.to_be_bytes());
    out.push(ip.ttl);
    out.push(protocol);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&ip.src.octets());
    out.extend_from_slice(&ip.dst.octets());
    out.extend_from_slice(&options);
    let checksum = internet_checksum(0, &out[start..start + header_len]);
    out[start + 10..start + 12].copy_from_slice(&checksum.to_be_bytes());
    out.extend_from_slice(&transport);
}

fn write_ipv6(ip: &Ipv6, out: &mut Vec<u8>) {
    let transport_proto = ip.transport.protocol(true);
    let last_next = ip.next_header.unwrap_or(transport_proto);
    let mut exts = Vec::new();
    for (i, ext) in ip.extensions.iter().enumerate() {
        let next = ip.extensions.get(i + 1).map_or(last_next, Ipv6Ext::kind);
        ext.write(next, &mut exts);
    }
    let first_next = ip.extensions.first().map_or(last_next, Ipv6Ext::kind);
    let mut transport = Vec::new();
    write_transport(
        &ip.transport,
        Pseudo::V6 {
            src: ip.src,
            dst: ip.dst,
        },
        &mut transport,
    );
    let payload_len = (exts.len() + transport.len()).min(usize::from(u16::MAX)) as u16;
    let version = ip.version.unwrap_or(6);
    let word = (u32::from(version) << 28)
        | (u32::from(ip.traffic_class) << 20)
        | (ip.flow_label & 0x000F_FFFF);
    out.extend_from_slice(&word.to_be_bytes());
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.push(first_next);
    out.push(ip.hop_limit);
    out.extend_from_slice(&ip.src.octets());
    out.extend_from_slice(&ip.dst.octets());
    out.extend_from_slice(&exts);
    out.extend_from_slice(&transport);
}

#[derive(Clone, Copy)]
enum Pseudo {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl Pseudo {
    /// Sum of the pseudo-header (RFC 793 / RFC 8200 section 8.1), not yet folded.
    fn sum(self, protocol: u8, len: usize) -> u32 {
        let mut bytes = Vec::with_capacity(40);
        match self {
            Self::V4 { src, dst } => {
                bytes.extend_from_slice(&src.octets());
                bytes.extend_from_slice(&dst.octets());
                bytes.extend_from_slice(&[0, protocol]);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            Self::V6 { src, dst } => {
                bytes.extend_from_slice(&src.octets());
                bytes.extend_from_slice(&dst.octets());
                bytes.extend_from_slice(&(len as u32).to_be_bytes());
                bytes.extend_from_slice(&[0, 0, 0, protocol]);
            }
        }
        sum_words(0, &bytes)
    }
}

fn write_transport(transport: &Transport, pseudo: Pseudo, out: &mut Vec<u8>) {
    let ipv6 = matches!(pseudo, Pseudo::V6 { .. });
    match transport {
        Transport::Tcp(tcp) => {
            let mut options = tcp.options.clone();
            options.resize(options.len().div_ceil(4) * 4, 0);
            let header_len = 20 + options.len();
            let data_offset = tcp.data_offset.unwrap_or((header_len / 4).min(15) as u8);
            out.extend_from_slice(&tcp.sport.to_be_bytes());
            out.extend_from_slice(&tcp.dport.to_be_bytes());
            out.extend_from_slice(&tcp.seq.to_be_bytes());
            out.extend_from_slice(&tcp.ack.to_be_bytes());
            out.push(data_offset << 4);
            out.push(tcp.flags);
            out.extend_from_slice(&tcp.window.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&tcp.urgent.to_be_bytes());
            out.extend_from_slice(&options);
            out.extend_from_slice(&tcp.payload);
            let sum = pseudo.sum(ip_proto::TCP, out.len());
            let checksum = internet_checksum(sum, out);
            out[16..18].copy_from_slice(&checksum.to_be_bytes());
        }
        Transport::Udp {
            sport,
            dport,
            payload,
        } => {
            let len = (8 + payload.len()).min(usize::from(u16::MAX)) as u16;
            out.extend_from_slice(&sport.to_be_bytes());
            out.extend_from_slice(&dport.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(payload);
            let sum = pseudo.sum(ip_proto::UDP, out.len());
            let checksum = match internet_checksum(sum, out) {
                0 => 0xFFFF,
                c => c,
            };
            out[6..8].copy_from_slice(&checksum.to_be_bytes());
        }
        Transport::Icmp {
            kind,
            code,
            rest,
            payload,
        } => {
            out.extend_from_slice(&[*kind, *code, 0, 0]);
            out.extend_from_slice(rest);
            out.extend_from_slice(payload);
            let sum = if ipv6 {
                pseudo.sum(ip_proto::ICMPV6, out.len())
            } else {
                0
            };
            let checksum = internet_checksum(sum, out);
            out[2..4].copy_from_slice(&checksum.to_be_bytes());
        }
        Transport::Raw { bytes, .. } => out.extend_from_slice(bytes),
    }
}

fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([pair[0], pair[1]])));
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum
}

/// The Internet checksum (RFC 1071) of `bytes`, starting from a partial `sum`.
pub fn internet_checksum(sum: u32, bytes: &[u8]) -> u16 {
    let mut sum = sum_words(sum, bytes);
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// SYN frames from a lab's peer end to its host end, to be written with
/// [`Lab::inject`](crate::Lab::inject): `per_port[p]` to each port `p` (source ports
/// 40000 up), IPv4 and IPv6 alternating, every third behind a VLAN tag (the host end
/// counts tagged frames too: the hook sees them before the VLAN code).
pub fn syn_frames(
    lab: &crate::Lab,
    per_port: &std::collections::BTreeMap<u16, usize>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let (host, peer) = lab.macs()?;
    let mut frames = Vec::new();
    for (&port, &n) in per_port {
        for i in 0..n {
            let frame = if i % 2 == 0 {
                Frame::ipv4_tcp(lab.peer_v4, lab.host_v4, 40_000 + i as u16, port, tcp::SYN)
            } else {
                Frame::ipv6_tcp(lab.peer_v6, lab.host_v6, 40_000 + i as u16, port, tcp::SYN)
            };
            let frame = if i % 3 == 2 {
                frame.vlan(ether_type::VLAN, 7)
            } else {
                frame
            };
            frames.push(frame.macs(host, peer).build());
        }
    }
    Ok(frames)
}

/// Realistic captures with timestamps, for replay tests, demos and benchmarks.
///
/// Every generator is deterministic (seeded) and returns, with its frames, what the
/// program must count for them ([`Expected`]), tallied from what was built.
/// Addresses: sources in 198.18.0.0/16 and 2001:db8:1::/48, our side in 198.19.0.0/16
/// and 2001:db8:2::/48 (RFC 2544 / RFC 3849 ranges).
pub mod corpus {
    use std::{collections::BTreeMap, time::Duration};

    use scan_common::PacketClass;

    use super::{Frame, Ipv6Ext, Net, Transport, tcp};
    use crate::rng::Rng;

    /// 2026-03-02T10:00:00Z, the start of every corpus capture.
    pub const START: Duration = Duration::from_secs(1_772_445_600);

    /// A generated capture and what replaying it must report.
    #[derive(Clone, Debug)]
    pub struct Capture {
        /// File name to write it under (`.pcap`).
        pub name: &'static str,
        pub frames: Vec<(Duration, Vec<u8>)>,
        pub expected: Expected,
    }

    /// What the program must count for a capture.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Expected {
        pub packets: u64,
        /// Non-zero SYN counts per destination port.
        pub ports: BTreeMap<u16, u64>,
        /// Count per class, indexed by [`PacketClass`].
        pub classes: [u64; PacketClass::COUNT as usize],
    }

    impl Expected {
        pub fn class(&self, class: PacketClass) -> u64 {
            self.classes[class as usize]
        }

        pub fn syns(&self, port: u16) -> u64 {
            self.ports.get(&port).copied().unwrap_or(0)
        }

        /// Tallies a well-formed frame (no header overrides, at most two VLAN tags, no
        /// later fragments): the generators only build such frames, so this is plain
        /// bookkeeping, not a second parser.
        fn tally(&mut self, frame: &Frame) {
            use PacketClass::*;
            assert!(
                frame.vlans.len() <= scan_common::MAX_VLAN_TAGS,
                "corpus frame with >2 tags"
            );
            self.packets += 1;
            let mut bump = |c: PacketClass| self.classes[c as usize] += 1;
            bump(Seen);
            if !frame.vlans.is_empty() {
                bump(Vlan);
            }
            let transport = match &frame.net {
                Net::Ipv4(ip) => {
                    assert!(ip.ihl.is_none() && ip.version.is_none() && ip.protocol.is_none());
                    assert_eq!(ip.fragment_offset, 0, "corpus frame is a later fragment");
                    bump(Ipv4);
                    &ip.transport
                }
                Net::Ipv6(ip) => {
                    assert!(ip.version.is_none() && ip.next_header.is_none());
                    assert!(ip.extensions.len() <= scan_common::MAX_IPV6_EXT_HEADERS);
                    assert!(ip.extensions.iter().all(|e| !matches!(
                        e,
                        Ipv6Ext::Raw { .. } | Ipv6Ext::Fragment { offset: 1.., .. }
                    )));
                    bump(Ipv6);
                    &ip.transport
                }
                Net::Arp { .. } | Net::Raw { .. } => {
                    bump(NonIp);
                    return;
                }
            };
            match transport {
                Transport::Tcp(segment) => {
                    assert!(segment.data_offset.is_none());
                    bump(Tcp);
                    if segment.flags & tcp::SYN != 0 && segment.flags & tcp::ACK == 0 {
                        bump(Syn);
                        *self.ports.entry(segment.dport).or_default() += 1;
                    }
                }
                _ => bump(NonTcp),
            }
        }
    }

    /// Collects frames with their timestamps, sorted at the end.
    struct Builder {
        name: &'static str,
        frames: Vec<(Duration, Vec<u8>)>,
        expected: Expected,
    }

    impl Builder {
        fn new(name: &'static str) -> Self {
            Self {
                name,
                frames: Vec::new(),
                expected: Expected::default(),
            }
        }

        fn push(&mut self, at: Duration, frame: Frame) {
            self.expected.tally(&frame);
            self.frames.push((at, frame.build()));
        }

        fn finish(mut self) -> Capture {
            // Stable: frames pushed for the same instant keep their order.
            self.frames.sort_by_key(|(at, _)| *at);
            Capture {
                name: self.name,
                frames: self.frames,
                expected: self.expected,
            }
        }
    }

    fn source_v4(rng: &mut Rng) -> [u8; 4] {
        [198, 18, rng.u8(), rng.range(1, 254) as u8]
    }

    fn ours_v4(rng: &mut Rng) -> [u8; 4] {
        [198, 19, rng.below(4) as u8, rng.range(1, 254) as u8]
    }

    fn v6(net: u16, rng: &mut Rng) -> [u16; 8] {
        [
            0x2001,
            0x0db8,
            net,
            0,
            0,
            0,
            rng.u16(),
            rng.range(1, 0xFFFE) as u16,
        ]
    }

    fn ephemeral(rng: &mut Rng) -> u16 {
        rng.range(32_768, 60_999) as u16
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Number of scanning sources in [`sweep_445`].
    pub const SWEEP_SOURCES: usize = 200;
    /// Targets each source of [`sweep_445`] probes.
    pub const SWEEP_TARGETS_PER_SOURCE: usize = 8;

    /// A worm-like sweep of TCP 445 from many sources over two minutes: each source
    /// probes [`SWEEP_TARGETS_PER_SOURCE`] of our addresses with a Windows SYN, and
    /// retransmits it after 3 s when nothing answers (every other target); closed
    /// targets answer RST+ACK. SYNs on 445: sources x targets x 1.5.
    pub fn sweep_445(seed: u64) -> Capture {
        let mut rng = Rng::new(seed);
        let mut b = Builder::new("sweep-445.pcap");
        for _ in 0..SWEEP_SOURCES {
            let src = source_v4(&mut rng);
            let ttl = *rng.pick(&[113u8, 117, 121, 49]);
            let begin = rng.unit() * 110.0;
            for t in 0..SWEEP_TARGETS_PER_SOURCE {
                let at = begin + t as f64 * 0.25 + rng.unit() * 0.1;
                let dst = ours_v4(&mut rng);
                let sport = ephemeral(&mut rng);
                let syn = Frame::ipv4_tcp(src, dst, sport, 445, tcp::SYN)
                    .ttl(ttl)
                    .ip_id(rng.u16())
                    .seq_ack(rng.u32(), 0)
                    .tcp_options(tcp::windows_syn_options());
                b.push(START + secs(at), syn.clone());
                if t % 2 == 0 {
                    // Silent target: the scanner retransmits once.
                    b.push(START + secs(at + 3.0), syn);
                } else {
                    let rst = Frame::ipv4_tcp(dst, src, 445, sport, tcp::RST | tcp::ACK).ip_id(0);
                    b.push(START + secs(at + 0.0004), rst);
                }
            }
        }
        b.finish()
    }

    /// Port that [`distributed_ramp`] ramps up on.
    pub const RAMP_PORT: u16 = 3389;

    /// A distributed ramp: over 30 minutes, 300 sources scan TCP 3389 at a combined rate
    /// rising linearly from 0.05 to 5 SYN/s (Poisson arrivals), each SYN from a random
    /// source of the pool, a sixth of them over IPv6.
    pub fn distributed_ramp(seed: u64) -> Capture {
        let mut rng = Rng::new(seed);
        let mut b = Builder::new("distributed-ramp.pcap");
        let sources: Vec<[u8; 4]> = (0..300).map(|_| source_v4(&mut rng)).collect();
        let duration = 1800.0;
        let mut t = 0.0;
        loop {
            let rate = 0.05 + (5.0 - 0.05) * t / duration;
            t += -(1.0 - rng.unit()).ln() / rate;
            if t >= duration {
                break;
            }
            let sport = ephemeral(&mut rng);
            let frame = if rng.chance(1.0 / 6.0) {
                Frame::ipv6_tcp(v6(1, &mut rng), v6(2, &mut rng), sport, RAMP_PORT, tcp::SYN)
            } else {
                Frame::ipv4_tcp(
                    *rng.pick(&sources),
                    ours_v4(&mut rng),
                    sport,
                    RAMP_PORT,
                    tcp::SYN,
                )
            };
            b.push(
                START + secs(t),
                frame.seq_ack(rng.u32(), 0).tcp_options(tcp::syn_options()),
            );
        }
        b.finish()
    }

    /// Ports that [`masscan_sweep`] probes: 1..=this.
    pub const MASSCAN_PORTS: u16 = 1024;
    /// Hosts that [`masscan_sweep`] probes on every port.
    pub const MASSCAN_HOSTS: usize = 4;

    /// One source sweeping ports 1..=[`MASSCAN_PORTS`] on [`MASSCAN_HOSTS`] hosts at
    /// 1,000 packets/s, masscan-style: one fixed source port, window 1024, no options,
    /// randomized order. Exactly `MASSCAN_HOSTS` SYNs on each port.
    pub fn masscan_sweep(seed: u64) -> Capture {
        let mut rng = Rng::new(seed);
        let mut b = Builder::new("masscan-sweep.pcap");
        let src = [198, 18, 66, 6];
        let hosts: Vec<[u8; 4]> = (0..MASSCAN_HOSTS)
            .map(|i| [198, 19, 1, 10 + i as u8])
            .collect();
        let mut probes: Vec<(u16, [u8; 4])> = (1..=MASSCAN_PORTS)
            .flat_map(|port| hosts.iter().map(move |&h| (port, h)))
            .collect();
        // Fisher-Yates, as masscan randomizes its target order.
        for i in (1..probes.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            probes.swap(i, j);
        }
        for (i, (port, host)) in probes.into_iter().enumerate() {
            let frame = Frame::ipv4_tcp(src, host, 61_000, port, tcp::SYN)
                .ttl(255)
                .ip_id(rng.u16())
                .window(1024)
                .seq_ack(rng.u32(), 0);
            b.push(START + Duration::from_millis(i as u64), frame);
        }
        b.finish()
    }

    /// Connections of each kind in [`web_traffic`]: IPv4 to 80, IPv4 to 443, IPv6 to 443.
    pub const WEB_CONNECTIONS: [(u16, bool, usize); 3] =
        [(80, false, 40), (443, false, 60), (443, true, 30)];

    /// Normal web traffic over five minutes: full TCP connections (SYN, SYN-ACK, ACK,
    /// request, ACK, response, FIN-ACK, ACK, FIN-ACK, ACK) to 80 and 443 over IPv4 and
    /// IPv6 (a third of the IPv4 ones on VLAN 20), a DNS query and answer over UDP before
    /// each IPv4 one, and five ARP requests. One SYN per connection; SYN-ACKs are not
    /// SYNs.
    pub fn web_traffic(seed: u64) -> Capture {
        let mut rng = Rng::new(seed);
        let mut b = Builder::new("web-traffic.pcap");
        let server_v4 = [198, 19, 0, 80];
        let server_v6 = v6(2, &mut rng);
        let dns = [198, 19, 0, 53];
        for (port, ipv6, count) in WEB_CONNECTIONS {
            for n in 0..count {
                let start = rng.unit() * 290.0;
                let rtt = 0.001 + rng.unit() * 0.05;
                let sport = ephemeral(&mut rng);
                let (cseq, sseq) = (rng.u32(), rng.u32());
                let tagged = !ipv6 && n % 3 == 0;
                let client_v4 = [198, 18, 10, rng.range(1, 254) as u8];
                let client_v6 = v6(1, &mut rng);
                // A segment from the client (`up`) or the server.
                let segment = |up: bool, flags: u8| {
                    let (sp, dp) = if up { (sport, port) } else { (port, sport) };
                    let frame = if ipv6 {
                        let (s, d) = if up {
                            (client_v6, server_v6)
                        } else {
                            (server_v6, client_v6)
                        };
                        Frame::ipv6_tcp(s, d, sp, dp, flags)
                    } else {
                        let (s, d) = if up {
                            (client_v4, server_v4)
                        } else {
                            (server_v4, client_v4)
                        };
                        Frame::ipv4_tcp(s, d, sp, dp, flags)
                    };
                    if tagged {
                        frame.vlan(super::ether_type::VLAN, 20)
                    } else {
                        frame
                    }
                };
                if !ipv6 {
                    let query = Frame::ipv4_udp(client_v4, dns, ephemeral(&mut rng), 53)
                        .payload(rng.bytes(40));
                    let answer = Frame::ipv4_udp(dns, client_v4, 53, 33_000).payload(rng.bytes(80));
                    b.push(START + secs(start - 0.01), query);
                    b.push(START + secs(start - 0.009), answer);
                }
                let request = rng.bytes(300);
                let response_len = 200 + rng.below(1200) as usize;
                let (c1, s1) = (cseq.wrapping_add(1), sseq.wrapping_add(1));
                let c2 = c1.wrapping_add(request.len() as u32);
                let s2 = s1.wrapping_add(response_len as u32);
                let steps: Vec<(f64, Frame)> = vec![
                    (
                        0.0,
                        segment(true, tcp::SYN)
                            .seq_ack(cseq, 0)
                            .tcp_options(tcp::syn_options()),
                    ),
                    (
                        rtt / 2.0,
                        segment(false, tcp::SYN | tcp::ACK)
                            .seq_ack(sseq, c1)
                            .tcp_options(tcp::syn_options()),
                    ),
                    (rtt, segment(true, tcp::ACK).seq_ack(c1, s1)),
                    (
                        rtt + 0.0001,
                        segment(true, tcp::PSH | tcp::ACK)
                            .seq_ack(c1, s1)
                            .payload(request),
                    ),
                    (1.5 * rtt, segment(false, tcp::ACK).seq_ack(s1, c2)),
                    (
                        1.5 * rtt + 0.002,
                        segment(false, tcp::PSH | tcp::ACK)
                            .seq_ack(s1, c2)
                            .payload(vec![0x3C; response_len]),
                    ),
                    (
                        2.0 * rtt + 0.002,
                        segment(true, tcp::FIN | tcp::ACK).seq_ack(c2, s2),
                    ),
                    (
                        2.5 * rtt + 0.002,
                        segment(false, tcp::ACK).seq_ack(s2, c2.wrapping_add(1)),
                    ),
                    (
                        2.5 * rtt + 0.003,
                        segment(false, tcp::FIN | tcp::ACK).seq_ack(s2, c2.wrapping_add(1)),
                    ),
                    (
                        3.0 * rtt + 0.003,
                        segment(true, tcp::ACK).seq_ack(c2.wrapping_add(1), s2.wrapping_add(1)),
                    ),
                ];
                for (offset, frame) in steps {
                    b.push(START + secs(start + offset), frame);
                }
            }
        }
        for i in 0..5 {
            b.push(
                START + secs(10.0 + 60.0 * f64::from(i)),
                Frame::arp_request([198, 19, 0, 1], [198, 19, 0, 80 + i as u8]),
            );
        }
        b.finish()
    }

    /// When the 445 surge of [`surge_445`] starts, after [`START`].
    pub const SURGE_START: Duration = Duration::from_secs(15 * 60);
    /// How long the 445 surge of [`surge_445`] lasts.
    pub const SURGE_LENGTH: Duration = Duration::from_secs(2 * 60);
    /// Length of the whole [`surge_445`] capture.
    pub const SURGE_CAPTURE_LENGTH: Duration = Duration::from_secs(20 * 60);

    /// Steady background for 20 minutes (one SYN every 4 s on each of 22, 80, 443 and
    /// 445, evenly spaced so that no noise can look like a surge), with a strong surge on
    /// 445 (50 SYN/s from many sources) from [`SURGE_START`] for [`SURGE_LENGTH`].
    pub fn surge_445(seed: u64) -> Capture {
        let mut rng = Rng::new(seed);
        let mut b = Builder::new("surge-445.pcap");
        let length = SURGE_CAPTURE_LENGTH.as_secs();
        for (i, port) in [22u16, 80, 443, 445].into_iter().enumerate() {
            let mut t = i as f64;
            while t < length as f64 {
                let frame = Frame::ipv4_tcp(
                    source_v4(&mut rng),
                    ours_v4(&mut rng),
                    ephemeral(&mut rng),
                    port,
                    tcp::SYN,
                )
                .tcp_options(tcp::syn_options());
                b.push(START + secs(t), frame);
                t += 4.0;
            }
        }
        let begin = SURGE_START.as_secs_f64();
        let surge_syns = SURGE_LENGTH.as_secs() * 50;
        for i in 0..surge_syns {
            let at = begin + i as f64 / 50.0;
            let frame = Frame::ipv4_tcp(
                source_v4(&mut rng),
                ours_v4(&mut rng),
                ephemeral(&mut rng),
                445,
                tcp::SYN,
            )
            .tcp_options(tcp::windows_syn_options());
            b.push(START + secs(at), frame);
        }
        b.finish()
    }

    /// Every corpus capture but the surge one, with default seeds.
    pub fn all() -> Vec<Capture> {
        vec![
            sweep_445(1),
            distributed_ramp(2),
            masscan_sweep(3),
            web_traffic(4),
            surge_445(5),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_syn_layout_and_checksums() {
        let f = Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 2], 40_000, 445, tcp::SYN).build();
        assert_eq!(f.len(), 54);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 40);
        assert_eq!(internet_checksum(0, &f[14..34]), 0, "IPv4 header checksum");
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 445);
        assert_eq!(f[46], 0x50);
        assert_eq!(f[47], tcp::SYN);
        let pseudo = Pseudo::V4 {
            src: [198, 18, 0, 1].into(),
            dst: [198, 19, 0, 2].into(),
        };
        assert_eq!(
            internet_checksum(pseudo.sum(6, 20), &f[34..]),
            0,
            "TCP checksum"
        );
    }

    #[test]
    fn vlan_tags_sit_before_the_inner_ether_type() {
        let f = Frame::ipv4_udp([1, 1, 1, 1], [2, 2, 2, 2], 1, 2)
            .vlan(0x88A8, 10)
            .vlan(0x8100, 20)
            .build();
        assert_eq!(
            &f[12..22],
            &[0x88, 0xA8, 0x00, 10, 0x81, 0x00, 0x00, 20, 0x08, 0x00]
        );
        assert_eq!(f[22], 0x45);
    }

    #[test]
    fn ipv6_extension_chain() {
        let f = Frame::ipv6_tcp(
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 1],
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 2],
            1,
            80,
            tcp::SYN,
        )
        .ext(Ipv6Ext::HopByHop { len: 8 })
        .ext(Ipv6Ext::Routing { len: 24 })
        .ext(Ipv6Ext::Auth { icv_len: 12 })
        .fragment(0, true)
        .ext(Ipv6Ext::DestinationOptions { len: 16 })
        .build();
        let ip = 14;
        assert_eq!(f[ip] >> 4, 6);
        assert_eq!(f[ip + 6], ip_proto::HOP_BY_HOP);
        let mut at = ip + 40;
        let mut kinds = Vec::new();
        let mut next = f[ip + 6];
        while next != ip_proto::TCP {
            kinds.push(next);
            let len = match next {
                ip_proto::AH => (usize::from(f[at + 1]) + 2) * 4,
                ip_proto::FRAGMENT => 8,
                _ => (usize::from(f[at + 1]) + 1) * 8,
            };
            next = f[at];
            at += len;
        }
        assert_eq!(kinds, [0, 43, 51, 44, 60]);
        assert_eq!(u16::from_be_bytes([f[at + 2], f[at + 3]]), 80);
        assert_eq!(f.len(), at + 20);
        assert_eq!(
            usize::from(u16::from_be_bytes([f[ip + 4], f[ip + 5]])),
            f.len() - ip - 40
        );
    }

    #[test]
    fn options_headers_are_padded_with_valid_padn() {
        for len in [8, 16, 256, 264, 512, 2048] {
            let mut out = Vec::new();
            Ipv6Ext::HopByHop { len }.write(ip_proto::TCP, &mut out);
            assert_eq!(out.len(), len);
            assert_eq!((usize::from(out[1]) + 1) * 8, len);
            let mut at = 2;
            while at < len {
                assert_eq!(out[at], 1, "PadN at {at} of {len}");
                at += 2 + usize::from(out[at + 1]);
            }
            assert_eq!(at, len);
        }
    }

    #[test]
    fn overrides_write_exactly_what_is_asked() {
        let f = Frame::ipv4_tcp([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, tcp::SYN)
            .ihl(3)
            .ip_version(6)
            .data_offset(4)
            .build();
        assert_eq!(f[14], 0x63);
        assert_eq!(f[34 + 12], 0x40);
        let f = Frame::ipv4_tcp([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, tcp::SYN)
            .fragment(185, true)
            .build();
        assert_eq!(u16::from_be_bytes([f[20], f[21]]), 0x2000 | 185);
    }

    #[test]
    fn corpus_is_reproducible_and_tallied() {
        let a = corpus::sweep_445(7);
        let b = corpus::sweep_445(7);
        assert_eq!(a.frames, b.frames);
        let syns = (corpus::SWEEP_SOURCES * corpus::SWEEP_TARGETS_PER_SOURCE * 3 / 2) as u64;
        assert_eq!(a.expected.syns(445), syns);
        assert!(a.frames.windows(2).all(|w| w[0].0 <= w[1].0));
        let m = corpus::masscan_sweep(1);
        assert_eq!(m.expected.ports.len(), usize::from(corpus::MASSCAN_PORTS));
        assert!(
            m.expected
                .ports
                .values()
                .all(|&n| n == corpus::MASSCAN_HOSTS as u64)
        );
    }
}
