//! Differential tests: random and mutated frames through the real program and
//! through a reference classifier built on etherparse; they must agree exactly on the
//! outcome class, the flag classes (vlan, pppoe, ipv4, ipv6) and the SYN port of every
//! frame. Ethernet frames (with VLAN tags and PPPoE sessions) and raw IP packets (L3
//! links), through the XDP and the TC entry points.
//!
//! Reproducible: the seed is printed; `SCAN_FUZZ_SEED=<seed>` replays a run and
//! `SCAN_FUZZ_FRAMES=<n>` sets the number of frames (default 200,000; `cargo xtask fuzz
//! --frames N`). On a mismatch the test prints each bad frame in hex with both
//! verdicts, writes them to a pcap under `target/differential/` (printed) that
//! `scan-agent replay` reads, and fails.
//!
//! # How a frame is checked, exactly and fast
//!
//! A test run costs about 3 µs; reading the class counters, 12 map lookups, about
//! 20 µs; summing the port counters, a pass over all 65,536 x CPUs words, about 2 ms in a
//! debug build. (`repeat` > 1 is no shortcut: the kernel then swaps the XDP dispatcher
//! around the run, about 20 ms a call.) So:
//! - the class counters are read after every frame: the per-frame delta gives the
//!   outcome and the flags exactly;
//! - the port counters are read once per batch of up to [`SYN_BATCH`] = K frames that
//!   the reference calls SYNs, all to different ports; the `k`-th SYN of a batch is run
//!   `K + k` times (separate runs), every other frame once. Every weight is in `K..2K`,
//!   so a port hit by two or more of them moves by at least `2K + 1`, more than any one
//!   weight: the port counters add up if and only if every SYN of the batch was counted
//!   on its own port, which checks the port of each frame exactly. A frame the program
//!   counts as a SYN against the reference shows up in the class check; its port is
//!   read at once as the one port that moved by its weight more than the batch
//!   explains. A port increment that no frame explains fails the test.
//! - When the counters do not add up, the frames concerned are run again one at a time
//!   with both maps read around each, to report exactly what the program did.
mod common;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice, IpNumber, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice, err,
};
use scan_agent::sensor::{Hook, LinkKind, Sensor};
use scan_common::{ClassCounts, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, PORTS, PacketClass};
use scan_lab::{
    frames::{Frame, Ipv6Ext, ether_type, ip_proto, tcp},
    pcap::write_pcap,
    rng::Rng,
    testrun::is_refused_test_input,
};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1): TCX_NEXT.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const ETH_P_PPP_SES: u16 = 0x8864;
const ETH_P_PPP_DISC: u16 = 0x8863;
const PPP_IP: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;
/// SYN frames per port-counter read: K(3K-1)/2 = 1,520 runs (about 4 ms) and one read
/// (about 2 ms) for 32 SYNs.
const SYN_BATCH: usize = 32;
const DEFAULT_FRAMES: u64 = 200_000;
/// Example frames printed per kind of mismatch (all go to the pcap, up to `MAX_SAVED`).
const MAX_PRINTED: usize = 3;
const MAX_SAVED: usize = 1_000;

/// What the program does with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// The kernel refuses the test run (EINVAL): shorter than an Ethernet header.
    Refused,
    Run {
        outcome: PacketClass,
        vlan: bool,
        pppoe: bool,
        ipv4: bool,
        ipv6: bool,
        syn_port: Option<u16>,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())?;
        match self.syn_port() {
            Some(port) => write!(f, " to port {port}"),
            None => Ok(()),
        }
    }
}

impl Verdict {
    /// Outcome, flags and whether it is a SYN, without the port.
    fn summary(&self) -> String {
        match self {
            Self::Refused => "refused (EINVAL)".to_string(),
            Self::Run {
                outcome,
                vlan,
                pppoe,
                ipv4,
                ipv6,
                syn_port,
            } => {
                let mut text = outcome.name().to_string();
                for (on, name) in [
                    (vlan, "vlan"),
                    (pppoe, "pppoe"),
                    (ipv4, "ipv4"),
                    (ipv6, "ipv6"),
                ] {
                    if *on {
                        text.push_str(" +");
                        text.push_str(name);
                    }
                }
                text.push_str(if syn_port.is_some() {
                    " SYN"
                } else {
                    " no SYN"
                });
                text
            }
        }
    }

    fn syn_port(&self) -> Option<u16> {
        match self {
            Self::Run { syn_port, .. } => *syn_port,
            Self::Refused => None,
        }
    }

    /// The class counter deltas of one run.
    fn classes(&self) -> ClassCounts {
        let mut counts = ClassCounts::default();
        if let Self::Run {
            outcome,
            vlan,
            pppoe,
            ipv4,
            ipv6,
            syn_port,
        } = *self
        {
            let mut set = |class: PacketClass, on: bool| counts.0[class as usize] = u64::from(on);
            set(PacketClass::Seen, true);
            set(outcome, true);
            set(PacketClass::Vlan, vlan);
            set(PacketClass::Pppoe, pppoe);
            set(PacketClass::Ipv4, ipv4);
            set(PacketClass::Ipv6, ipv6);
            set(PacketClass::Syn, syn_port.is_some());
        }
        counts
    }
}

// ---------------------------------------------------------------------------------------
// The reference: the program's documented semantics (scan-common's `PacketClass` docs,
// DESIGN.md), with etherparse decoding every header.
// ---------------------------------------------------------------------------------------

/// Flags collected on the way through.
#[derive(Default)]
struct Flags {
    vlan: bool,
    pppoe: bool,
    ipv4: bool,
    ipv6: bool,
    syn_port: Option<u16>,
}

/// Not a parsing rule but the kernel's: BPF_PROG_TEST_RUN refuses input shorter than
/// an Ethernet header (and no driver delivers one); for sched_cls it also refuses an
/// IPv4 (IPv6) EtherType at bytes 12..14 without a whole IPv4 (IPv6) header after it,
/// whatever the program's link kind (measured on 6.18).
fn kernel_refuses(hook: Hook, frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return true;
    }
    match (hook, u16::from_be_bytes([frame[12], frame[13]])) {
        (Hook::Tc, 0x0800) => frame.len() < 14 + 20,
        (Hook::Tc, 0x86DD) => frame.len() < 14 + 40,
        _ => false,
    }
}

fn reference(hook: Hook, kind: LinkKind, frame: &[u8]) -> Verdict {
    if kernel_refuses(hook, frame) {
        return Verdict::Refused;
    }
    let mut flags = Flags::default();
    let outcome = match kind {
        LinkKind::Ethernet => ethernet(frame, &mut flags),
        LinkKind::RawIp => raw_ip(frame, &mut flags),
    };
    Verdict::Run {
        outcome,
        vlan: flags.vlan,
        pppoe: flags.pppoe,
        ipv4: flags.ipv4,
        ipv6: flags.ipv6,
        syn_port: flags.syn_port,
    }
}

fn ethernet(frame: &[u8], flags: &mut Flags) -> PacketClass {
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return PacketClass::Truncated;
    };
    let mut ether_type = eth.ether_type();
    let mut rest = &frame[eth.slice().len()..];
    // Hand rule: exactly the TPIDs 0x8100 and 0x88A8, at most MAX_VLAN_TAGS of them.
    // (etherparse's SlicedPacket also takes 0x9100 and has its own limit, so the tags are
    // walked here one SingleVlanHeaderSlice at a time.)
    let mut tags = 0;
    while ether_type == EtherType::VLAN_TAGGED_FRAME || ether_type == EtherType::PROVIDER_BRIDGING {
        if tags == MAX_VLAN_TAGS {
            return PacketClass::HeaderLimit;
        }
        flags.vlan = true;
        let Ok(tag) = SingleVlanHeaderSlice::from_slice(rest) else {
            return PacketClass::Truncated;
        };
        ether_type = tag.ether_type();
        rest = &rest[tag.slice().len()..];
        tags += 1;
    }
    match ether_type {
        EtherType::IPV4 => {
            flags.ipv4 = true;
            ipv4(rest, flags)
        }
        EtherType::IPV6 => {
            flags.ipv6 = true;
            ipv6(rest, flags)
        }
        EtherType(ETH_P_PPP_SES) => {
            flags.pppoe = true;
            pppoe_session(rest, flags)
        }
        _ => PacketClass::NonIp,
    }
}

/// Hand rule (etherparse has no PPPoE): RFC 2516's 6-byte session header, version
/// and type 1 (0x11), code 0, then RFC 1661's 2-byte PPP protocol: 0x0021 IPv4,
/// 0x0057 IPv6, anything else (LCP, IPCP, ...) is not IP.
fn pppoe_session(data: &[u8], flags: &mut Flags) -> PacketClass {
    let Some(header) = data.get(..8) else {
        return PacketClass::Truncated;
    };
    if header[0] != 0x11 || header[1] != 0 {
        return PacketClass::BadHeader;
    }
    match u16::from_be_bytes([header[6], header[7]]) {
        PPP_IP => {
            flags.ipv4 = true;
            ipv4(&data[8..], flags)
        }
        PPP_IPV6 => {
            flags.ipv6 = true;
            ipv6(&data[8..], flags)
        }
        _ => PacketClass::NonIp,
    }
}

/// An L3 link's packet: the version nibble says IPv4 or IPv6. Hand rule: shorter
/// than the smallest IP header (20 bytes) is truncated whatever the version says.
fn raw_ip(data: &[u8], flags: &mut Flags) -> PacketClass {
    if data.len() < 20 {
        return PacketClass::Truncated;
    }
    match data[0] >> 4 {
        4 => {
            flags.ipv4 = true;
            ipv4(data, flags)
        }
        6 => {
            flags.ipv6 = true;
            ipv6(data, flags)
        }
        _ => PacketClass::NonIp,
    }
}

fn ipv4(data: &[u8], flags: &mut Flags) -> PacketClass {
    // etherparse checks, in the program's order: 20 bytes, version 4, IHL >= 5, and the
    // whole header (options included) in the frame; total length is not looked at.
    let header = match Ipv4HeaderSlice::from_slice(data) {
        Ok(header) => header,
        Err(err::ipv4::HeaderSliceError::Len(_)) => return PacketClass::Truncated,
        Err(err::ipv4::HeaderSliceError::Content(_)) => return PacketClass::BadHeader,
    };
    if header.fragments_offset().value() != 0 {
        return PacketClass::LaterFragment;
    }
    if header.protocol() != IpNumber::TCP {
        return PacketClass::NonTcp;
    }
    tcp(&data[header.slice().len()..], flags)
}

fn ipv6(data: &[u8], flags: &mut Flags) -> PacketClass {
    let header = match Ipv6HeaderSlice::from_slice(data) {
        Ok(header) => header,
        Err(err::ipv6::HeaderSliceError::Len(_)) => return PacketClass::Truncated,
        Err(err::ipv6::HeaderSliceError::Content(_)) => return PacketClass::BadHeader,
    };
    let mut next = header.next_header();
    let mut rest = &data[header.slice().len()..];
    for walked in 0..=MAX_IPV6_EXT_HEADERS {
        let is_extension = matches!(
            next,
            IpNumber::IPV6_HEADER_HOP_BY_HOP
                | IpNumber::IPV6_ROUTE_HEADER
                | IpNumber::IPV6_DESTINATION_OPTIONS
                | IpNumber::IPV6_FRAGMENTATION_HEADER
                | IpNumber::AUTHENTICATION_HEADER
        );
        if next == IpNumber::TCP {
            return tcp(rest, flags);
        }
        if !is_extension {
            return PacketClass::NonTcp;
        }
        // Hand rule: the walk is bounded; one more extension header is header_limit,
        // whatever it looks like.
        if walked == MAX_IPV6_EXT_HEADERS {
            return PacketClass::HeaderLimit;
        }
        let len = match next {
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                let Ok(fragment) = Ipv6FragmentHeaderSlice::from_slice(rest) else {
                    return PacketClass::Truncated;
                };
                if fragment.fragment_offset().value() != 0 {
                    return PacketClass::LaterFragment;
                }
                next = fragment.next_header();
                fragment.slice().len()
            }
            // Hand rule: an AH with payload length 0 (8 bytes, shorter than RFC 4302's
            // 12-byte minimum) is refused by etherparse; the program walks over it as 8
            // bytes and the documentation does not call it bad, so the reference does too.
            IpNumber::AUTHENTICATION_HEADER if rest.get(1) == Some(&0) => {
                if rest.len() < 8 {
                    return PacketClass::Truncated;
                }
                next = IpNumber(rest[0]);
                8
            }
            IpNumber::AUTHENTICATION_HEADER => match IpAuthHeaderSlice::from_slice(rest) {
                Ok(ah) => {
                    next = ah.next_header();
                    ah.slice().len()
                }
                Err(err::ip_auth::HeaderSliceError::Len(_)) => return PacketClass::Truncated,
                Err(err::ip_auth::HeaderSliceError::Content(e)) => {
                    unreachable!("payload length 0 is handled above: {e}")
                }
            },
            _ => {
                let Ok(ext) = Ipv6RawExtHeaderSlice::from_slice(rest) else {
                    return PacketClass::Truncated;
                };
                next = ext.next_header();
                ext.slice().len()
            }
        };
        rest = &rest[len..];
    }
    unreachable!("the loop returns at walked == MAX_IPV6_EXT_HEADERS")
}

fn tcp(data: &[u8], flags: &mut Flags) -> PacketClass {
    // The whole header, options included, must be in the frame; data offset >= 5.
    match TcpHeaderSlice::from_slice(data) {
        Ok(header) => {
            if header.syn() && !header.ack() {
                flags.syn_port = Some(header.destination_port());
            }
            PacketClass::Tcp
        }
        Err(err::tcp::HeaderSliceError::Len(_)) => PacketClass::Truncated,
        Err(err::tcp::HeaderSliceError::Content(_)) => PacketClass::BadHeader,
    }
}

// ---------------------------------------------------------------------------------------
// Frame generation: valid frames from `frames.rs`, with stacked headers, odd values,
// flipped bytes, cut lengths, and some plain noise.
// ---------------------------------------------------------------------------------------

const ETHER_TYPES: [u16; 11] = [
    ether_type::IPV4,
    ether_type::IPV6,
    ether_type::VLAN,
    ether_type::QINQ,
    ether_type::ARP,
    ETH_P_PPP_SES,
    ETH_P_PPP_DISC,
    0x9100,
    0x88CC,
    0x8847,
    0x0000,
];
const PROTOCOLS: [u8; 14] = [0, 1, 4, 6, 17, 41, 43, 44, 50, 51, 58, 59, 60, 255];

fn address4(rng: &mut Rng) -> [u8; 4] {
    [198, 18 + rng.below(2) as u8, rng.u8(), rng.u8()]
}

fn address6(rng: &mut Rng) -> [u16; 8] {
    [0x2001, 0xdb8, rng.u16(), 0, 0, 0, 0, rng.u16()]
}

fn port(rng: &mut Rng) -> u16 {
    match rng.below(10) {
        0 => *rng.pick(&[0, 1, 22, 80, 443, 445, 3389, 65_535]),
        _ => rng.u16(),
    }
}

fn tcp_flags(rng: &mut Rng) -> u8 {
    match rng.below(10) {
        0..=3 => *rng.pick(&[
            tcp::SYN,
            tcp::SYN,
            tcp::SYN | tcp::ECE | tcp::CWR,
            tcp::SYN | tcp::FIN,
            tcp::SYN | tcp::RST,
            tcp::SYN | tcp::PSH | tcp::URG,
        ]),
        4..=6 => *rng.pick(&[
            tcp::SYN | tcp::ACK,
            tcp::ACK,
            tcp::RST,
            tcp::FIN | tcp::ACK,
            tcp::PSH | tcp::ACK,
            0,
        ]),
        _ => rng.u8(),
    }
}

fn extension(rng: &mut Rng) -> Ipv6Ext {
    match rng.below(12) {
        0..=1 => Ipv6Ext::HopByHop {
            len: 8 * rng.range(1, 8) as usize,
        },
        2..=3 => Ipv6Ext::DestinationOptions {
            len: 8 * rng.range(1, 8) as usize,
        },
        4..=5 => Ipv6Ext::Routing {
            len: 8 * rng.range(1, 6) as usize,
        },
        6..=7 => Ipv6Ext::Fragment {
            offset: if rng.chance(0.7) {
                0
            } else {
                rng.u16() & 0x1FFF
            },
            more: rng.chance(0.5),
            id: rng.u32(),
        },
        8..=9 => Ipv6Ext::Auth {
            icv_len: 4 * rng.below(7) as usize,
        },
        _ => {
            let len = rng.range(2, 24) as usize;
            let kind = *rng.pick(&[0, 43, 44, 51, 60, 0, 60]);
            Ipv6Ext::Raw {
                kind,
                bytes: rng.bytes(len),
            }
        }
    }
}

/// A frame from the builder, sometimes with invalid fields.
fn random_spec(rng: &mut Rng) -> Frame {
    let tcp_segment = rng.chance(0.7);
    let mut frame = match rng.below(100) {
        0..=44 => {
            let (src, dst) = (address4(rng), address4(rng));
            if tcp_segment {
                Frame::ipv4_tcp(src, dst, port(rng), port(rng), tcp_flags(rng))
            } else {
                match rng.below(3) {
                    0 => Frame::ipv4_udp(src, dst, port(rng), port(rng)),
                    1 => Frame::ipv4_icmp_echo(src, dst),
                    _ => {
                        let (protocol, len) = (*rng.pick(&PROTOCOLS), rng.below(48) as usize);
                        Frame::ipv4_raw(src, dst, protocol, rng.bytes(len))
                    }
                }
            }
        }
        45..=89 => {
            let (src, dst) = (address6(rng), address6(rng));
            if tcp_segment {
                Frame::ipv6_tcp(src, dst, port(rng), port(rng), tcp_flags(rng))
            } else {
                match rng.below(3) {
                    0 => Frame::ipv6_udp(src, dst, port(rng), port(rng)),
                    1 => Frame::ipv6_icmp_echo(src, dst),
                    _ => {
                        let (protocol, len) = (*rng.pick(&PROTOCOLS), rng.below(48) as usize);
                        Frame::ipv6_raw(src, dst, protocol, rng.bytes(len))
                    }
                }
            }
        }
        90..=94 => Frame::arp_request(address4(rng), address4(rng)),
        _ => {
            let kind = if rng.chance(0.5) {
                *rng.pick(&ETHER_TYPES)
            } else {
                rng.u16()
            };
            let len = rng.below(80) as usize;
            Frame::raw(kind, rng.bytes(len))
        }
    };
    let is_ip = matches!(
        frame.net,
        scan_lab::frames::Net::Ipv4(_) | scan_lab::frames::Net::Ipv6(_)
    );
    let is_ipv4 = matches!(frame.net, scan_lab::frames::Net::Ipv4(_));
    if frame.tcp().is_some() {
        match rng.below(4) {
            0 => frame = frame.tcp_options(tcp::syn_options()),
            1 => {
                let len = rng.below(41) as usize;
                frame = frame.tcp_options(rng.bytes(len));
            }
            _ => {}
        }
        if rng.chance(0.3) {
            let len = rng.range(1, 32) as usize;
            frame = frame.payload(rng.bytes(len));
        }
        if rng.chance(0.05) {
            frame = frame.data_offset(rng.below(16) as u8);
        }
    }
    if is_ipv4 {
        if rng.chance(0.2) {
            let len = rng.below(41) as usize;
            frame = frame.ip_options(rng.bytes(len));
        }
        if rng.chance(0.1) {
            let offset = if rng.chance(0.5) {
                0
            } else {
                rng.u16() & 0x1FFF
            };
            frame = frame.fragment(offset, rng.chance(0.5));
        }
        if rng.chance(0.05) {
            frame = frame.ihl(rng.below(16) as u8);
        }
    } else if is_ip && rng.chance(0.5) {
        for _ in 0..rng.range(1, 8) {
            frame = frame.ext(extension(rng));
        }
    }
    if is_ip {
        if rng.chance(0.03) {
            frame = frame.ip_version(rng.below(16) as u8);
        }
        if rng.chance(0.05) {
            frame = frame.protocol(*rng.pick(&PROTOCOLS));
        }
    }
    if rng.chance(0.15) {
        frame = frame.pppoe(rng.u16());
        if rng.chance(0.1) {
            frame = frame.ppp_protocol(*rng.pick(&[PPP_IP, PPP_IPV6, 0xC021, 0x8021, 0x0021]));
        }
        if rng.chance(0.05) {
            frame = frame.pppoe_ver_type(rng.u8());
        }
    }
    let tags = match rng.below(100) {
        0..=59 => 0,
        60..=79 => 1,
        80..=91 => 2,
        _ => 3,
    };
    for _ in 0..tags {
        let tpid = match rng.below(10) {
            0..=4 => ether_type::VLAN,
            5..=8 => ether_type::QINQ,
            _ => 0x9100,
        };
        frame = frame.vlan(tpid, rng.u16());
    }
    frame
}

/// Flips, overwrites, cuts or extends a built frame.
fn mutate(mut bytes: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let flips = rng.range(1, 4);
    for _ in 0..flips {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len().min(128) as u64) as usize;
        bytes[at] = match rng.below(4) {
            0 => bytes[at] ^ (1 << rng.below(8)),
            1 => *rng.pick(&[
                0, 0xFF, 6, 0x81, 0x86, 0x88, 0x45, 0x60, 0x02, 0x12, 0x50, 0x08,
            ]),
            _ => rng.u8(),
        };
    }
    if rng.chance(0.3) {
        let len = rng.below(bytes.len() as u64 + 1) as usize;
        bytes.truncate(len);
    }
    if rng.chance(0.05) {
        let extra = rng.below(32) as usize;
        bytes.extend(rng.bytes(extra));
    }
    bytes
}

/// A random packet as an L3 link carries it: the IP packet of a built frame (no
/// tags, no PPPoE), sometimes mutated or cut, sometimes noise.
fn random_ip_packet(rng: &mut Rng) -> Vec<u8> {
    let mut spec = random_spec(rng);
    spec.vlans.clear();
    spec.pppoe = None;
    let bytes = spec.build_ip();
    match rng.below(100) {
        0..=39 => bytes,
        40..=79 => mutate(bytes, rng),
        80..=94 => {
            let len = rng.below(bytes.len() as u64 + 1) as usize;
            bytes[..len].to_vec()
        }
        _ => {
            let len = rng.below(80) as usize;
            rng.bytes(len)
        }
    }
}

fn random_frame(rng: &mut Rng) -> Vec<u8> {
    match rng.below(100) {
        0..=34 => random_spec(rng).build(),
        35..=79 => {
            let bytes = random_spec(rng).build();
            mutate(bytes, rng)
        }
        80..=94 => {
            let bytes = random_spec(rng).build();
            let len = rng.below(bytes.len() as u64 + 1) as usize;
            bytes[..len].to_vec()
        }
        _ => {
            let len = rng.below(129) as usize;
            let mut bytes = rng.bytes(len);
            if bytes.len() >= 14 && rng.chance(0.7) {
                bytes[12..14].copy_from_slice(&rng.pick(&ETHER_TYPES).to_be_bytes());
            }
            bytes
        }
    }
}

// ---------------------------------------------------------------------------------------
// Running frames through the program.
// ---------------------------------------------------------------------------------------

fn read_ports(sensor: &Sensor) -> Vec<u64> {
    let mut ports = vec![0; PORTS as usize];
    sensor.read_ports(&mut ports);
    ports
}

fn read_classes(sensor: &Sensor) -> ClassCounts {
    sensor.read_classes().expect("read class counters")
}

fn delta(after: &ClassCounts, before: &ClassCounts) -> ClassCounts {
    let mut d = ClassCounts::default();
    for (i, v) in d.0.iter_mut().enumerate() {
        *v = after.0[i].wrapping_sub(before.0[i]);
    }
    d
}

/// Runs `frame` `repeat` times; `None` if the kernel refused it with EINVAL.
fn run(sensor: &Sensor, hook: Hook, frame: &[u8], repeat: u32) -> Option<()> {
    match sensor.test_run(frame, repeat) {
        Ok(result) => {
            let pass = match hook {
                Hook::Xdp => XDP_PASS,
                Hook::Tc => TC_ACT_UNSPEC,
            };
            assert_eq!(
                result.return_value,
                pass,
                "verdict for frame {}",
                hex(frame)
            );
            Some(())
        }
        Err(e) if is_refused_test_input(&e) => None,
        Err(e) => panic!("test run failed: {e} for frame {}", hex(frame)),
    }
}

/// What the program did with `frame`, measured alone, both maps read around it.
fn observe(sensor: &Sensor, hook: Hook, frame: &[u8]) -> Verdict {
    let (classes_before, ports_before) = (read_classes(sensor), read_ports(sensor));
    let ran = run(sensor, hook, frame, 1);
    let (classes_after, ports_after) = (read_classes(sensor), read_ports(sensor));
    let d = delta(&classes_after, &classes_before);
    let moved: Vec<u16> = (0..PORTS as usize)
        .filter(|&p| ports_after[p] != ports_before[p])
        .map(|p| p as u16)
        .collect();
    if ran.is_none() {
        assert_eq!(
            d,
            ClassCounts::default(),
            "refused frame moved class counters: {}",
            hex(frame)
        );
        assert!(
            moved.is_empty(),
            "refused frame moved port counters: {}",
            hex(frame)
        );
        return Verdict::Refused;
    }
    let outcomes: Vec<PacketClass> = PacketClass::OUTCOMES
        .into_iter()
        .filter(|&c| d.get(c) != 0)
        .collect();
    assert_eq!(
        outcomes.len(),
        1,
        "not exactly one outcome ({outcomes:?}) for {}",
        hex(frame)
    );
    assert!(
        moved.len() <= 1,
        "more than one port moved ({moved:?}) for {}",
        hex(frame)
    );
    assert_eq!(
        d.get(PacketClass::Syn),
        moved.len() as u64,
        "syn class and port map disagree for {}",
        hex(frame)
    );
    Verdict::Run {
        outcome: outcomes[0],
        vlan: d.get(PacketClass::Vlan) != 0,
        pppoe: d.get(PacketClass::Pppoe) != 0,
        ipv4: d.get(PacketClass::Ipv4) != 0,
        ipv6: d.get(PacketClass::Ipv6) != 0,
        syn_port: moved.first().copied(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Mismatch {
    index: u64,
    frame: Vec<u8>,
    expected: Verdict,
    actual: Verdict,
}

impl Mismatch {
    /// Groups mismatches by what went wrong, ports left out.
    fn kind(&self) -> String {
        let port = if self.expected.syn_port().is_some()
            && self.expected.summary() == self.actual.summary()
        {
            " (other port)"
        } else {
            ""
        };
        format!(
            "reference {} / program {}{port}",
            self.expected.summary(),
            self.actual.summary()
        )
    }
}

/// Reads a verdict out of the class deltas of a run of `weight` repetitions; the SYN
/// port is left to the port check. `None` if the deltas are not those of one verdict.
fn decode(d: &ClassCounts, weight: u64) -> Option<Verdict> {
    if d.0.iter().all(|&v| v == 0) {
        return Some(Verdict::Refused);
    }
    if d.0.iter().any(|&v| v != 0 && v != weight) || d.get(PacketClass::Seen) != weight {
        return None;
    }
    let outcomes: Vec<PacketClass> = PacketClass::OUTCOMES
        .into_iter()
        .filter(|&c| d.get(c) != 0)
        .collect();
    let [outcome] = outcomes[..] else { return None };
    Some(Verdict::Run {
        outcome,
        vlan: d.get(PacketClass::Vlan) != 0,
        pppoe: d.get(PacketClass::Pppoe) != 0,
        ipv4: d.get(PacketClass::Ipv4) != 0,
        ipv6: d.get(PacketClass::Ipv6) != 0,
        // A placeholder until the port counters say which port.
        syn_port: (d.get(PacketClass::Syn) != 0).then_some(0),
    })
}

/// A frame the program counted as a SYN though the reference disagrees on the frame:
/// its port is read at once, as the one port that moved by `weight` more than the batch
/// explains.
struct Stray {
    index: u64,
    frame: Vec<u8>,
    expected: Verdict,
    actual: Verdict,
    weight: u64,
}

/// Drives the program over a stream of frames and checks each against the reference.
struct Checker<'a> {
    sensor: &'a Sensor,
    hook: Hook,
    kind: LinkKind,
    classes: ClassCounts,
    ports: Vec<u64>,
    /// SYN frames of the current batch, to distinct ports: (index, frame, expected
    /// verdict); the k-th ran SYN_BATCH + k times. Frames that are not SYNs run once.
    batch: Vec<(u64, Vec<u8>, Verdict)>,
    mismatches: Vec<Mismatch>,
    mismatch_count: u64,
    /// Port counter moves that no frame could be blamed for.
    unexplained: Vec<String>,
    kinds: BTreeMap<String, u64>,
    outcomes: BTreeMap<&'static str, u64>,
    frames: u64,
}

impl<'a> Checker<'a> {
    fn new(sensor: &'a Sensor, hook: Hook, kind: LinkKind) -> Self {
        Self {
            sensor,
            hook,
            kind,
            classes: read_classes(sensor),
            ports: read_ports(sensor),
            batch: Vec::new(),
            mismatches: Vec::new(),
            mismatch_count: 0,
            unexplained: Vec::new(),
            kinds: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            frames: 0,
        }
    }

    fn record(&mut self, index: u64, frame: &[u8], expected: Verdict, actual: Verdict) {
        let mismatch = Mismatch {
            index,
            frame: frame.to_vec(),
            expected,
            actual,
        };
        self.mismatch_count += 1;
        let kind = mismatch.kind();
        let seen = self.kinds.entry(kind).or_default();
        *seen += 1;
        // Keep every kind, then fill up to MAX_SAVED.
        if *seen <= 3 || self.mismatches.len() < MAX_SAVED {
            self.mismatches.push(mismatch);
        }
    }

    fn check(&mut self, index: u64, frame: &[u8]) {
        let expected = reference(self.hook, self.kind, frame);
        self.frames += 1;
        let key = match expected {
            Verdict::Refused => "refused",
            Verdict::Run {
                syn_port: Some(_), ..
            } => "syn",
            Verdict::Run { outcome, .. } => outcome.name(),
        };
        *self.outcomes.entry(key).or_default() += 1;
        if let Verdict::Run { pppoe: true, .. } = expected {
            *self.outcomes.entry("pppoe").or_default() += 1;
        }
        if let Some(port) = expected.syn_port()
            && (self.batch.len() == SYN_BATCH
                || self.batch.iter().any(|b| b.2.syn_port() == Some(port)))
        {
            self.settle(None);
        }
        let weight = if expected.syn_port().is_some() {
            SYN_BATCH + self.batch.len()
        } else {
            1
        };
        let mut ran = false;
        for _ in 0..weight {
            ran = run(self.sensor, self.hook, frame, 1).is_some();
        }
        let classes = read_classes(self.sensor);
        let d = delta(&classes, &self.classes);
        self.classes = classes;
        let weight = weight as u64;
        let mut want = expected.classes();
        for v in &mut want.0 {
            *v *= weight;
        }
        if ran == (expected != Verdict::Refused) && d == want {
            if expected.syn_port().is_some() {
                self.batch.push((index, frame.to_vec(), expected));
            }
            return;
        }
        match decode(&d, weight) {
            // Not a SYN for the program: its ports did not move (the next port read
            // checks that too), the batch goes on.
            Some(actual) if actual.syn_port().is_none() => {
                self.record(index, frame, expected, actual)
            }
            // A SYN for the program: find its port now.
            Some(actual) => {
                let stray = Stray {
                    index,
                    frame: frame.to_vec(),
                    expected,
                    actual,
                    weight,
                };
                self.settle(Some(stray));
            }
            // Deltas of no single verdict: settle and measure it alone.
            None => {
                self.settle(None);
                let actual = observe(self.sensor, self.hook, frame);
                self.record(index, frame, expected, actual);
                self.resync();
            }
        }
    }

    /// Reads the port counters and checks them against the SYN frames of the batch
    /// (and the port of `stray`, if any). If they do not add up, every frame concerned
    /// is run again alone to find out which did what.
    fn settle(&mut self, stray: Option<Stray>) {
        let batch = std::mem::take(&mut self.batch);
        let ports = read_ports(self.sensor);
        let mut owners = vec![0u64; PORTS as usize];
        for (k, (_, _, expected)) in batch.iter().enumerate() {
            let port = expected.syn_port().expect("batch holds SYNs");
            owners[usize::from(port)] += (SYN_BATCH + k) as u64;
        }
        let mut residual: Vec<(u16, u64)> = Vec::new();
        for p in 0..PORTS as usize {
            let moved = ports[p].wrapping_sub(self.ports[p]);
            if moved != owners[p] {
                residual.push((p as u16, moved.wrapping_sub(owners[p])));
            }
        }
        self.ports = ports;
        match (stray, &residual[..]) {
            (None, []) => return,
            (Some(stray), &[(port, extra)]) if extra == stray.weight => {
                let actual = match stray.actual {
                    Verdict::Run {
                        outcome,
                        vlan,
                        pppoe,
                        ipv4,
                        ipv6,
                        ..
                    } => Verdict::Run {
                        outcome,
                        vlan,
                        pppoe,
                        ipv4,
                        ipv6,
                        syn_port: Some(port),
                    },
                    refused => refused,
                };
                self.record(stray.index, &stray.frame, stray.expected, actual);
                return;
            }
            (stray, _) => {
                let before = self.mismatch_count;
                let (first, last) = (batch.first().map(|b| b.0), batch.last().map(|b| b.0));
                for (index, frame, expected) in batch {
                    let actual = observe(self.sensor, self.hook, &frame);
                    if actual != expected {
                        self.record(index, &frame, expected, actual);
                    }
                }
                if let Some(stray) = stray {
                    let actual = observe(self.sensor, self.hook, &stray.frame);
                    self.record(stray.index, &stray.frame, stray.expected, actual);
                }
                if self.mismatch_count == before {
                    self.unexplained.push(format!(
                        "port counters moved by {residual:?} (port, count) more than the SYNs \
                         of frames {first:?}..={last:?} explain, and each of them alone agrees"
                    ));
                }
            }
        }
        self.resync();
    }

    fn resync(&mut self) {
        self.classes = read_classes(self.sensor);
        self.ports = read_ports(self.sensor);
    }

    /// Settles the last batch.
    fn finish(&mut self) {
        self.settle(None);
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = if let Some(hex) = value.strip_prefix("0x") {
        u64::from_str_radix(hex, 16)
    } else {
        value.replace('_', "").parse()
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value:?} is not a number: {e}")))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(&manifest).join("target")
        })
}

/// Reports the mismatches (hex, both verdicts, a pcap) and fails, if there are any.
fn report(checker: &Checker, seed: u64, what: &str) {
    assert!(
        checker.unexplained.is_empty(),
        "{what}: {}",
        checker.unexplained.join("\n")
    );
    if checker.mismatch_count == 0 {
        return;
    }
    println!(
        "\n{} of {} frames disagree ({what}, seed {seed:#x}), by kind:",
        checker.mismatch_count, checker.frames
    );
    for (kind, n) in &checker.kinds {
        println!("{n:>8} x {kind}");
        // The shortest frames of each kind: the easiest to read.
        let mut examples: Vec<&Mismatch> = checker
            .mismatches
            .iter()
            .filter(|m| &m.kind() == kind)
            .collect();
        examples.sort_by_key(|m| m.frame.len());
        for m in examples.iter().take(MAX_PRINTED) {
            println!(
                "           frame #{} ({} bytes): {}\n\
                 \x20            reference: {}\n\
                 \x20            program:   {}",
                m.index,
                m.frame.len(),
                hex(&m.frame),
                m.expected,
                m.actual
            );
        }
    }
    let dir = target_dir().join("differential");
    std::fs::create_dir_all(&dir).expect("create target/differential");
    let path = dir.join(format!("mismatch-{seed:016x}.pcap"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let frames: Vec<(Duration, Vec<u8>)> = checker
        .mismatches
        .iter()
        .enumerate()
        .map(|(i, m)| (now + Duration::from_micros(i as u64), m.frame.clone()))
        .collect();
    write_pcap(&path, &frames).expect("write the mismatch pcap");
    panic!(
        "{} frames disagree between the program and the reference; {} of them written to {} \
         (`scan-agent replay {}`); rerun with SCAN_FUZZ_SEED={seed:#x} (or `cargo xtask fuzz \
         --seed {seed}`)",
        checker.mismatch_count,
        frames.len(),
        path.display(),
        path.display()
    );
}

/// Outcomes (and the pppoe flag) every long enough run must exercise (per mille of
/// the frames at least).
const ETHERNET_OUTCOMES: [&str; 10] = [
    "pppoe",
    "refused",
    "syn",
    "tcp",
    "non_tcp",
    "non_ip",
    "truncated",
    "bad_header",
    "later_fragment",
    "header_limit",
];

fn fuzz(
    hook: Hook,
    kind: LinkKind,
    default_frames: u64,
    generate: fn(&mut Rng) -> Vec<u8>,
    outcomes: &[&str],
) {
    let seed = env_u64("SCAN_FUZZ_SEED").unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
    });
    let count = env_u64("SCAN_FUZZ_FRAMES").unwrap_or(default_frames);
    println!(
        "differential ({hook:?} {kind:?}): seed {seed:#x} (replay it with \
         SCAN_FUZZ_SEED={seed:#x} or `cargo xtask fuzz --seed {seed}`), {count} frames"
    );
    let sensor = common::load_entry(hook, kind);
    let mut rng = Rng::new(seed);
    let mut checker = Checker::new(&sensor, hook, kind);
    let started = Instant::now();
    for index in 0..count {
        let frame = generate(&mut rng);
        checker.check(index, &frame);
    }
    checker.finish();
    let elapsed = started.elapsed();
    let rate = count as f64 / elapsed.as_secs_f64();
    println!(
        "differential: {count} frames in {:.2} s: {rate:.0} frames/s (program and reference, \
         every frame checked)",
        elapsed.as_secs_f64()
    );
    println!("differential: expected outcomes: {:?}", checker.outcomes);
    let totals = read_classes(&sensor);
    totals
        .check_invariants()
        .expect("class invariants after the run");
    report(
        &checker,
        seed,
        &format!("random and mutated frames, {hook:?} {kind:?}"),
    );
    // Every outcome must have been exercised, or the generator has gone blind.
    if count >= 50_000 {
        for name in outcomes {
            let n = checker.outcomes.get(name).copied().unwrap_or(0);
            assert!(
                n * 1000 >= count,
                "only {n} frames of {count} were {name}: the generator lost coverage"
            );
        }
    }
}

#[test]
fn random_and_mutated_frames_agree_with_the_reference() {
    fuzz(
        Hook::Xdp,
        LinkKind::Ethernet,
        DEFAULT_FRAMES,
        random_frame,
        &ETHERNET_OUTCOMES,
    );
}

/// The TC entry point on the same kind of frames (fewer: the parser is the same code).
#[test]
fn random_frames_through_tc_agree_with_the_reference() {
    fuzz(
        Hook::Tc,
        LinkKind::Ethernet,
        DEFAULT_FRAMES / 4,
        random_frame,
        &ETHERNET_OUTCOMES,
    );
}

/// Raw IP packets (L3 links) through both entry points.
#[test]
fn random_ip_packets_agree_with_the_reference() {
    let outcomes = [
        "refused",
        "syn",
        "tcp",
        "non_tcp",
        "non_ip",
        "truncated",
        "bad_header",
        "later_fragment",
    ];
    for hook in [Hook::Xdp, Hook::Tc] {
        fuzz(
            hook,
            LinkKind::RawIp,
            DEFAULT_FRAMES / 4,
            random_ip_packet,
            &outcomes,
        );
    }
}

/// Every frame of the program tests' kinds, cut at every length: small, exhaustive, fast.
#[test]
fn every_prefix_of_valid_frames_agrees_with_the_reference() {
    for hook in [Hook::Xdp, Hook::Tc] {
        for kind in [LinkKind::Ethernet, LinkKind::RawIp] {
            prefixes(hook, kind);
        }
    }
}

fn prefixes(hook: Hook, kind: LinkKind) {
    let sensor = common::load_entry(hook, kind);
    let mut checker = Checker::new(&sensor, hook, kind);
    let a6 = [0x2001, 0xdb8, 1, 0, 0, 0, 0, 1];
    let b6 = [0x2001, 0xdb8, 2, 0, 0, 0, 0, 1];
    let frames = [
        Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1, 445, tcp::SYN)
            .ip_options(vec![1; 12])
            .tcp_options(tcp::syn_options())
            .vlan(ether_type::QINQ, 1)
            .vlan(ether_type::VLAN, 2),
        Frame::ipv4_udp([198, 18, 0, 1], [198, 19, 0, 1], 1, 53).ip_options(vec![1; 8]),
        Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1, 445, tcp::SYN)
            .ip_options(vec![1; 8])
            .fragment(9, true),
        Frame::ipv6_tcp(a6, b6, 1, 445, tcp::SYN)
            .ext(Ipv6Ext::HopByHop { len: 16 })
            .ext(Ipv6Ext::Auth { icv_len: 12 })
            .ext(Ipv6Ext::Routing { len: 24 })
            .fragment(0, true)
            .ext(Ipv6Ext::DestinationOptions { len: 8 })
            .tcp_options(tcp::syn_options()),
        Frame::ipv6_udp(a6, b6, 1, 53)
            .ext(Ipv6Ext::HopByHop { len: 16 })
            .ext(Ipv6Ext::DestinationOptions { len: 8 }),
        Frame::ipv6_raw(a6, b6, ip_proto::NO_NEXT_HEADER, vec![]).ext(Ipv6Ext::Auth { icv_len: 4 }),
        Frame::ipv6_tcp(a6, b6, 1, 445, tcp::SYN)
            .ext(Ipv6Ext::HopByHop { len: 8 })
            .fragment(3, false),
        (0..MAX_IPV6_EXT_HEADERS).fold(Frame::ipv6_tcp(a6, b6, 1, 445, tcp::SYN), |f, _| {
            f.ext(Ipv6Ext::DestinationOptions { len: 8 })
        }),
        (0..=MAX_IPV6_EXT_HEADERS).fold(Frame::ipv6_tcp(a6, b6, 1, 445, tcp::SYN), |f, _| {
            f.ext(Ipv6Ext::DestinationOptions { len: 8 })
        }),
        Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1, 445, tcp::SYN)
            .tcp_options(tcp::syn_options())
            .pppoe(0x1234)
            .vlan(ether_type::VLAN, 2),
        Frame::ipv6_tcp(a6, b6, 1, 445, tcp::SYN)
            .ext(Ipv6Ext::HopByHop { len: 8 })
            .pppoe(1)
            .vlan(ether_type::QINQ, 1)
            .vlan(ether_type::VLAN, 2),
        Frame::ipv4_udp([198, 18, 0, 1], [198, 19, 0, 1], 1, 53).pppoe(7),
    ];
    let mut index = 0;
    for frame in &frames {
        let bytes = match kind {
            LinkKind::Ethernet => frame.build(),
            LinkKind::RawIp => frame.build_ip(),
        };
        for len in 0..=bytes.len() {
            checker.check(index, &bytes[..len]);
            index += 1;
        }
    }
    checker.finish();
    println!(
        "prefixes ({hook:?} {kind:?}): {} frames checked",
        checker.frames
    );
    report(
        &checker,
        0,
        &format!("prefixes of valid frames, {hook:?} {kind:?}"),
    );
}
