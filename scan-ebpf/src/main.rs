//! Sensor program: counts TCP SYNs (SYN set, ACK clear) per destination port and
//! classifies every packet. A sensor, never a filter: every path returns
//! `XDP_PASS` (XDP, also as a libxdp dispatcher component, where XDP_PASS runs
//! the next component) or `TC_ACT_UNSPEC` (TCX: "next", the verdict is left to
//! the programs after us), and the packet is never written.
//!
//! One parser, four entry points: XDP or TC, each for frames that start with an
//! Ethernet header or with the IP header (L3 links: ppp, tun, wireguard, tunnels).
//! The agent picks the entry point per interface at attach time, so the link kind
//! is a compile-time constant of the parser and costs nothing per packet.
//!
//! Parsing follows xdp-tutorial's `parsing_helpers.h`: one small bounded step per
//! header, each read checked against `data_end` before it is made.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_F_MMAPABLE, TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_get_smp_processor_id,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::info;
use scan_common::{ClassCounters, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, PORTS, PacketClass};

mod sketch;
use sketch::Addresses;

/// One slice of `PORTS` counters per possible CPU; the loader sets the real size.
/// Each CPU writes only its own slice, so no atomics and no shared cache lines.
#[map]
static SCAN_PORT_SYNS: Array<u64> = Array::with_max_entries(PORTS, BPF_F_MMAPABLE);

/// This load's (this interface's) class counters: one struct per CPU.
#[map]
static SCAN_CLASSES: PerCpuArray<ClassCounters> = PerCpuArray::with_max_entries(1, 0);

/// Set at load time (`scan_common::DEBUG_GLOBAL`); `.rodata`, frozen, so the
/// verifier drops the logging branch when it is 0.
#[unsafe(no_mangle)]
static SCAN_DEBUG: Global<u32> = Global::new(0);

/// SYNs whose CPU has no slice in `SCAN_PORT_SYNS` (see `scan_common::SYN_NO_SLOT_MAP`).
#[map]
static SCAN_SYN_NO_SLOT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// PPPoE header (6 bytes) and the PPP protocol field (2 bytes).
const PPPOE_HLEN: usize = 8;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const ETH_P_8021Q: u32 = 0x8100;
const ETH_P_8021AD: u32 = 0x88A8;
const ETH_P_PPP_SES: u32 = 0x8864;

/// RFC 2516: version 1, type 1; code 0 for session data.
const PPPOE_VER_TYPE: u8 = 0x11;
const PPP_IP: u32 = 0x0021;
const PPP_IPV6: u32 = 0x0057;

const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// Frames that start with an Ethernet header.
const ETHERNET: bool = false;
/// Frames that start with the IP header.
const RAW_IP: bool = true;

#[xdp]
pub fn scan_xdp(ctx: XdpContext) -> u32 {
    run::<ETHERNET, _>(&ctx, 0);
    xdp_action::XDP_PASS
}

#[xdp]
pub fn scan_xdp_ip(ctx: XdpContext) -> u32 {
    run::<RAW_IP, _>(&ctx, 0);
    xdp_action::XDP_PASS
}

#[classifier]
pub fn scan_tc(ctx: TcContext) -> i32 {
    // By the time tc runs, the stack has moved the outer VLAN tag out of the frame
    // into the skb (skb_vlan_untag): it counts as the first tag, so the flags and
    // the tag limit match what XDP sees in the frame itself.
    // SAFETY: the context pointer the kernel passed; a plain field read.
    let accelerated = unsafe { (*ctx.skb.skb).vlan_present } != 0;
    run::<ETHERNET, _>(&ctx, usize::from(accelerated));
    TC_ACT_UNSPEC
}

#[classifier]
pub fn scan_tc_ip(ctx: TcContext) -> i32 {
    run::<RAW_IP, _>(&ctx, 0);
    TC_ACT_UNSPEC
}

/// Packet bounds of either context.
trait Packet: EbpfContext {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// Class counters of this CPU, bumped in place: one map lookup per packet.
struct Counters(*mut ClassCounters);

impl Counters {
    #[inline(always)]
    fn bump(&self, class: PacketClass) {
        // SAFETY: per-CPU value; XDP and TC run with migration disabled, so no
        // other writer touches this CPU's copy while we add. The index is a
        // constant below COUNT.
        unsafe { (*self.0).counts[class as usize] += 1 };
    }
}

#[inline(always)]
fn run<const RAW: bool, C: Packet>(ctx: &C, outer_tags: usize) {
    let Some(counters) = SCAN_CLASSES.get_ptr_mut(0) else {
        return;
    };
    let counters = Counters(counters);
    let frame = Frame::of(ctx);
    counters.bump(PacketClass::Seen);
    let (outcome, syn) = classify::<RAW>(frame, &counters, outer_tags);
    counters.bump(outcome);
    let syn_port = syn.as_ref().map(|syn| syn.port);
    if let Some(syn) = syn {
        counters.bump(PacketClass::Syn);
        count_syn(syn.port);
        if let Some(addresses) = &syn.addresses {
            sketch::record(syn.port, addresses);
        }
    }
    if SCAN_DEBUG.load() != 0 {
        // Rare by design: only when loaded with the debug switch on.
        info!(
            ctx,
            "outcome={} syn_port={}",
            outcome as u32,
            syn_port.map_or(-1, |p| p as i32)
        );
    }
}

#[inline(always)]
fn count_syn(port: u16) {
    // SAFETY: plain helper call, no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let index = cpu.wrapping_mul(PORTS).wrapping_add(port as u32);
    if let Some(counter) = SCAN_PORT_SYNS.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot (see `Counters::bump`).
        unsafe { *counter += 1 };
    } else if let Some(counter) = SCAN_SYN_NO_SLOT.get_ptr_mut(0) {
        // SAFETY: a per-CPU value, written only by this CPU.
        unsafe { *counter += 1 };
    }
}

/// The frame's bounds, read from the context once: the counter bumps write through
/// raw pointers, so LLVM would otherwise reload `data` and `data_end` after each.
#[derive(Clone, Copy)]
struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    fn of<C: Packet>(ctx: &C) -> Self {
        Self {
            start: ctx.start(),
            end: ctx.end(),
        }
    }
}

/// `N` bytes of the frame, checked against `data_end` once. Fields are read in
/// place: copying whole headers to the stack cost ~10 ns per IPv6 packet.
#[derive(Clone, Copy)]
struct Header<const N: usize>(*const u8);

impl<const N: usize> Header<N> {
    /// Byte `I` of the header; `I < N` is checked at compile time.
    #[inline(always)]
    fn byte<const I: usize>(self) -> u8 {
        const { assert!(I < N) };
        // SAFETY: the N bytes were bounds-checked when the Header was made.
        unsafe { *self.0.add(I) }
    }

    /// Byte `i` of the header, for the wider reads (their `I` is checked).
    #[inline(always)]
    fn byte_at(self, i: usize) -> u8 {
        // SAFETY: `i < N`, asserted at compile time by every caller.
        unsafe { *self.0.add(i) }
    }

    /// Big-endian u16 at bytes `I`, `I + 1`, widened to u32: compared as u16, LLVM
    /// masks the value to 16 bits before every compare.
    #[inline(always)]
    fn be16<const I: usize>(self) -> u32 {
        const { assert!(I + 1 < N) };
        // Assembled by hand: with `from_be_bytes` LLVM builds the little-endian
        // value and byte-swaps it, one more instruction per 16-bit field.
        (u32::from(self.byte_at(I)) << 8) | u32::from(self.byte_at(I + 1))
    }

    /// Big-endian u32 at bytes `I..I + 4`.
    #[inline(always)]
    fn be32<const I: usize>(self) -> u32 {
        const { assert!(I + 3 < N) };
        // SAFETY: as in `byte`; packet reads may be unaligned.
        u32::from_be(unsafe { self.0.add(I).cast::<u32>().read_unaligned() })
    }

    /// Big-endian u64 at bytes `I..I + 8`.
    #[inline(always)]
    fn be64<const I: usize>(self) -> u64 {
        const { assert!(I + 7 < N) };
        // SAFETY: as in `be32`.
        u64::from_be(unsafe { self.0.add(I).cast::<u64>().read_unaligned() })
    }
}

/// The `N` bytes at `offset`, or `None` if the frame is shorter.
#[inline(always)]
fn header<const N: usize>(frame: Frame, offset: usize) -> Option<Header<N>> {
    has_bytes(frame, offset, N).then(|| Header((frame.start + offset) as *const u8))
}

/// Whether the frame holds `len` bytes at `offset`: the one bounds check.
#[inline(always)]
fn has_bytes(frame: Frame, offset: usize, len: usize) -> bool {
    frame.start + offset + len <= frame.end
}

/// A counted SYN: its destination port and, with the sketches on, its addresses.
struct Syn {
    port: u16,
    addresses: Option<Addresses>,
}

/// The IP header a TCP header was found behind (already bounds-checked).
#[derive(Clone, Copy)]
enum Network {
    V4(Header<IPV4_HLEN>),
    V6(Header<IPV6_HLEN>),
}

impl Network {
    #[inline(always)]
    fn addresses(self) -> Addresses {
        match self {
            Self::V4(ip) => Addresses::V4 {
                source: ip.be32::<12>(),
                target: ip.be32::<16>(),
            },
            Self::V6(ip) => Addresses::V6 {
                source: [ip.be64::<8>(), ip.be64::<16>()],
                target: [ip.be64::<24>(), ip.be64::<32>()],
            },
        }
    }
}

/// Where a link-layer header leads: the IP header at an offset, or the end of
/// parsing with an outcome.
#[derive(Clone, Copy)]
enum Link {
    Ipv4(usize),
    Ipv6(usize),
    End(PacketClass),
}

/// Returns the outcome class of a packet and, for a SYN, its destination port (and
/// addresses): the link layer first (Ethernet, VLAN tags, PPPoE; or none on an L3
/// link), then one shared IPv4/IPv6/TCP parser, so each is inlined (and verified)
/// once per entry point rather than once per link path.
#[inline(always)]
fn classify<const RAW: bool>(
    frame: Frame,
    counters: &Counters,
    outer_tags: usize,
) -> (PacketClass, Option<Syn>) {
    let link = if RAW {
        raw_ip(frame)
    } else {
        ethernet(frame, counters, outer_tags)
    };
    match link {
        Link::Ipv4(offset) => {
            counters.bump(PacketClass::Ipv4);
            ipv4(frame, offset)
        }
        Link::Ipv6(offset) => {
            counters.bump(PacketClass::Ipv6);
            ipv6(frame, offset)
        }
        Link::End(outcome) => (outcome, None),
    }
}

/// A frame that starts with an Ethernet header, with up to [`MAX_VLAN_TAGS`] tags
/// (`outer_tags` of them already taken out of the frame by the stack) and an
/// optional PPPoE session header.
#[inline(always)]
fn ethernet(frame: Frame, counters: &Counters, outer_tags: usize) -> Link {
    let Some(eth) = header::<ETH_HLEN>(frame, 0) else {
        return Link::End(PacketClass::Truncated);
    };
    if outer_tags != 0 {
        counters.bump(PacketClass::Vlan);
    }
    let mut ether_type = eth.be16::<12>();
    let mut offset = ETH_HLEN;
    for tag in outer_tags..MAX_VLAN_TAGS + 1 {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        if tag == MAX_VLAN_TAGS {
            return Link::End(PacketClass::HeaderLimit);
        }
        if tag == 0 {
            counters.bump(PacketClass::Vlan);
        }
        let Some(vlan) = header::<VLAN_HLEN>(frame, offset) else {
            return Link::End(PacketClass::Truncated);
        };
        ether_type = vlan.be16::<2>();
        offset += VLAN_HLEN;
    }
    match ether_type {
        ETH_P_IP => Link::Ipv4(offset),
        ETH_P_IPV6 => Link::Ipv6(offset),
        ETH_P_PPP_SES => {
            counters.bump(PacketClass::Pppoe);
            pppoe(frame, offset)
        }
        _ => Link::End(PacketClass::NonIp),
    }
}

/// A PPPoE session frame: the PPPoE header, then the PPP protocol field.
#[inline(always)]
fn pppoe(frame: Frame, offset: usize) -> Link {
    let Some(session) = header::<PPPOE_HLEN>(frame, offset) else {
        return Link::End(PacketClass::Truncated);
    };
    if session.byte::<0>() != PPPOE_VER_TYPE || session.byte::<1>() != 0 {
        return Link::End(PacketClass::BadHeader);
    }
    match session.be16::<6>() {
        PPP_IP => Link::Ipv4(offset + PPPOE_HLEN),
        PPP_IPV6 => Link::Ipv6(offset + PPPOE_HLEN),
        // LCP, IPCP, CHAP, ...: link control, not IP.
        _ => Link::End(PacketClass::NonIp),
    }
}

/// A frame that starts with the IP header: the version nibble says which. A
/// packet shorter than the smallest IP header (20 bytes) is `truncated` whatever
/// its first byte says. (A 1-byte check would be the exact one, but LLVM turns
/// `data + 1 <= data_end` into `data < data_end`, which the verifier does not
/// accept as a bound.)
#[inline(always)]
fn raw_ip(frame: Frame) -> Link {
    let Some(first) = header::<IPV4_HLEN>(frame, 0) else {
        return Link::End(PacketClass::Truncated);
    };
    match first.byte::<0>() >> 4 {
        4 => Link::Ipv4(0),
        6 => Link::Ipv6(0),
        _ => Link::End(PacketClass::NonIp),
    }
}

#[inline(always)]
fn ipv4(frame: Frame, offset: usize) -> (PacketClass, Option<Syn>) {
    let Some(ip) = header::<IPV4_HLEN>(frame, offset) else {
        return (PacketClass::Truncated, None);
    };
    let header_len = ((ip.byte::<0>() & 0x0F) as usize) * 4;
    if ip.byte::<0>() >> 4 != 4 || header_len < IPV4_HLEN {
        return (PacketClass::BadHeader, None);
    }
    // Options included, the whole header must be in the frame before any field
    // past it (fragment, protocol) decides the class.
    if !has_bytes(frame, offset, header_len) {
        return (PacketClass::Truncated, None);
    }
    // A fragment with a non-zero offset carries no TCP header.
    let fragment_offset = ip.be16::<6>() & 0x1FFF;
    if fragment_offset != 0 {
        return (PacketClass::LaterFragment, None);
    }
    if ip.byte::<9>() != IPPROTO_TCP {
        return (PacketClass::NonTcp, None);
    }
    tcp(frame, offset + header_len, Network::V4(ip))
}

#[inline(always)]
fn ipv6(frame: Frame, offset: usize) -> (PacketClass, Option<Syn>) {
    let Some(ip) = header::<IPV6_HLEN>(frame, offset) else {
        return (PacketClass::Truncated, None);
    };
    if ip.byte::<0>() >> 4 != 6 {
        return (PacketClass::BadHeader, None);
    }
    let mut next_header = ip.byte::<6>();
    let mut offset = offset + IPV6_HLEN;
    for walked in 0..MAX_IPV6_EXT_HEADERS + 1 {
        let current = next_header;
        match current {
            IPPROTO_TCP => return tcp(frame, offset, Network::V6(ip)),
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT | IPV6_AH => {}
            _ => return (PacketClass::NonTcp, None),
        }
        if walked == MAX_IPV6_EXT_HEADERS {
            return (PacketClass::HeaderLimit, None);
        }
        // Every extension header is at least 8 bytes and starts with
        // (next header, length).
        let Some(ext) = header::<8>(frame, offset) else {
            return (PacketClass::Truncated, None);
        };
        next_header = ext.byte::<0>();
        let header_len = match current {
            IPV6_FRAGMENT => {
                if ext.be16::<2>() >> 3 != 0 {
                    return (PacketClass::LaterFragment, None);
                }
                8
            }
            // RFC 4302: AH's length is in 4-byte units, minus 2.
            IPV6_AH => (ext.byte::<1>() as usize + 2) * 4,
            _ => (ext.byte::<1>() as usize + 1) * 8,
        };
        if !has_bytes(frame, offset, header_len) {
            return (PacketClass::Truncated, None);
        }
        offset += header_len;
    }
    (PacketClass::HeaderLimit, None)
}

/// A whole TCP header (options included) must be in the frame to be counted.
#[inline(always)]
fn tcp(frame: Frame, offset: usize, network: Network) -> (PacketClass, Option<Syn>) {
    let Some(tcp) = header::<TCP_HLEN>(frame, offset) else {
        return (PacketClass::Truncated, None);
    };
    let header_len = ((tcp.byte::<12>() >> 4) as usize) * 4;
    if header_len < TCP_HLEN {
        return (PacketClass::BadHeader, None);
    }
    if !has_bytes(frame, offset, header_len) {
        return (PacketClass::Truncated, None);
    }
    let flags = tcp.byte::<13>();
    let is_syn = flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0;
    let syn = is_syn.then(|| Syn {
        // At most 0xFFFF: two bytes.
        port: tcp.be16::<2>() as u16,
        addresses: sketch::enabled().then(|| network.addresses()),
    });
    (PacketClass::Tcp, syn)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
