//! Sensor program: counts TCP SYNs (SYN set, ACK clear) per destination port and
//! classifies every packet. A sensor, never a filter: every path returns
//! `XDP_PASS` (XDP, also as a libxdp dispatcher component, where XDP_PASS runs
//! the next component) or `TC_ACT_UNSPEC` (TCX: "next", the verdict is left to
//! the programs after us), and the packet is never written (at TC, headers outside
//! the skb's linear part are moved into it: see `pull_headers`).
//!
//! One parser, four entry points: XDP or TC, each for frames that start with an
//! Ethernet header or with the IP header (L3 links: ppp, tun, wireguard, tunnels);
//! the XDP ones also without multi-buffer support, for kernels before 5.18.
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
use scan_common::{
    CLASS_SLOT_CPUS, ClassSlotTable, ClassSlots, Family, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
    Outcome, PORTS, PPPOE_SLOT, PacketClass, VLAN_SLOT, outcome_slot,
};

mod sketch;
use sketch::Addresses;

/// One slice of `PORTS` counters per possible CPU; the loader sets the real size.
/// Each CPU writes only its own slice, so no atomics and no shared cache lines.
#[map]
static SCAN_PORT_SYNS: Array<u64> = Array::with_max_entries(PORTS, BPF_F_MMAPABLE);

/// This load's (this interface's) class counters, CPU `c`'s at `c`
/// (`scan_common::CLASS_SLOTS_MAP`). In `.bss`, at an address fixed at load time: no
/// map lookup per packet. The agent backs it with a pinned map of its own, so the
/// counts outlive the load.
#[unsafe(no_mangle)]
static mut SCAN_CLASS_SLOTS: ClassSlotTable = [ClassSlots::ZERO; CLASS_SLOT_CPUS];

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

/// EtherTypes and PPP protocols in network order, as [`Header::raw16`] reads them.
const ETH_P_IP: u32 = net16(0x0800);
const ETH_P_IPV6: u32 = net16(0x86DD);
const ETH_P_8021Q: u32 = net16(0x8100);
const ETH_P_8021AD: u32 = net16(0x88A8);
const ETH_P_PPP_SES: u32 = net16(0x8864);
const PPP_IP: u32 = net16(0x0021);
const PPP_IPV6: u32 = net16(0x0057);

/// RFC 2516: version 1, type 1; code 0 for session data.
const PPPOE_VER_TYPE: u8 = 0x11;

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

// The XDP entry points are multi-buffer aware (`xdp.frags`, BPF_F_XDP_HAS_FRAGS, Linux
// >= 5.18): drivers refuse a program without the flag when a frame may span several
// buffers (an MTU above about 3.5 KB, header/data split), and generic XDP copies every
// such packet into one buffer for it. The parser reads only the first buffer
// (`data..data_end`), where drivers put the headers; headers split across buffers are
// `truncated`. The `_lin` twins are the same programs without the flag, for older
// kernels, which refuse it (`scan_common::single_buffer_program_name`).

#[xdp(frags)]
pub fn scan_xdp(ctx: XdpContext) -> u32 {
    run::<ETHERNET, _>(&ctx, 0);
    xdp_action::XDP_PASS
}

#[xdp(frags)]
pub fn scan_xdp_ip(ctx: XdpContext) -> u32 {
    run::<RAW_IP, _>(&ctx, 0);
    xdp_action::XDP_PASS
}

#[xdp]
pub fn scan_xdp_lin(ctx: XdpContext) -> u32 {
    run::<ETHERNET, _>(&ctx, 0);
    xdp_action::XDP_PASS
}

#[xdp]
pub fn scan_xdp_ip_lin(ctx: XdpContext) -> u32 {
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
    pull_headers(&ctx, ETH_HLEN + IPV4_HLEN);
    run::<ETHERNET, _>(&ctx, usize::from(accelerated));
    TC_ACT_UNSPEC
}

#[classifier]
pub fn scan_tc_ip(ctx: TcContext) -> i32 {
    pull_headers(&ctx, IPV4_HLEN);
    run::<RAW_IP, _>(&ctx, 0);
    TC_ACT_UNSPEC
}

/// Bytes made linear by [`pull_headers`]: every header the parser reads (link, IP with
/// options, TCP with options), all but the longest IPv6 extension chains.
const PULL_LEN: usize = 256;

/// At TC the program sees only the skb's linear part. Drivers put at least the
/// headers there (they size it by the headers, or copy 128-256 bytes), but an skb
/// built from a page-sized or larger write (AF_PACKET, tun/tap) keeps only its link
/// header linear: its IP and TCP headers would read as `truncated`. Such an skb, whose
/// linear part ends before a minimal IP header (`min_linear`), has its headers pulled
/// in (`bpf_skb_pull_data`, which moves bytes, never changes them). The check costs
/// one compare for the others; a driver that sizes the linear part by the headers
/// (42 bytes for UDP) is never pulled.
#[inline(always)]
fn pull_headers(ctx: &TcContext, min_linear: usize) {
    let linear = ctx.data_end() - ctx.data();
    let len = ctx.len() as usize;
    if linear < min_linear && linear < len {
        // On failure (no memory) the skb is as it was, and counted `truncated`.
        let _ = ctx.pull_data(len.min(PULL_LEN) as u32);
    }
}

/// Packet bounds of either context.
trait Bounds: EbpfContext {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Bounds for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Bounds for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// This CPU's class slots, bumped in place.
struct Counters(*mut ClassSlots);

impl Counters {
    /// The slots of CPU `cpu`, if it has them (the agent refuses a machine with more
    /// CPU ids than slots). The verifier bounds `bpf_get_smp_processor_id` by
    /// `nr_cpu_ids` and drops this check, so it costs nothing per packet.
    #[inline(always)]
    fn of_cpu(cpu: u32) -> Option<Self> {
        let cpu = cpu as usize;
        if cpu >= CLASS_SLOT_CPUS {
            return None;
        }
        // SAFETY: in bounds (checked above); a raw pointer, no reference to the static.
        Some(Self(unsafe {
            (&raw mut SCAN_CLASS_SLOTS).cast::<ClassSlots>().add(cpu)
        }))
    }

    #[inline(always)]
    fn bump(&self, slot: usize) {
        // SAFETY: this CPU's slots; XDP and TC run with migration disabled, so no other
        // writer touches them while we add. Every caller passes an `outcome_slot` or a
        // flag slot, all below the 32 slots (asserted in scan_common).
        unsafe { (*self.0).counts[slot] += 1 };
    }
}

#[inline(always)]
fn run<const RAW: bool, C: Bounds>(ctx: &C, outer_tags: usize) {
    // SAFETY: plain helper call, no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // Never `None` where the agent loads the program (see `Counters::of_cpu`).
    let Some(counters) = Counters::of_cpu(cpu) else {
        return;
    };
    let packet = Packet {
        ctx,
        frame: Frame::of(ctx),
        counters,
        cpu,
    };
    packet.classify::<RAW>(outer_tags);
}

// The debug log, out of line: with the switch off it never runs, and inlined it
// would take registers and stack from the counting path.
#[inline(never)]
fn log_outcome<C: Bounds>(ctx: &C, outcome: Outcome) {
    info!(ctx, "outcome={}", outcome.class() as u32);
}

#[inline(never)]
fn log_syn<C: Bounds>(ctx: &C, port: u16) {
    info!(ctx, "outcome={} syn_port={}", PacketClass::Tcp as u32, port);
}

/// Whether the program was loaded with the debug switch on. Rare by design.
#[inline(always)]
fn debug() -> bool {
    SCAN_DEBUG.load() != 0
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
    fn of<C: Bounds>(ctx: &C) -> Self {
        Self {
            start: ctx.start(),
            end: ctx.end(),
        }
    }

    /// The `N` bytes at `offset`, or `None` if the frame is shorter.
    #[inline(always)]
    fn header<const N: usize>(self, offset: usize) -> Option<Header<N>> {
        self.has_bytes(offset, N)
            .then(|| Header((self.start + offset) as *const u8))
    }

    /// Whether the frame holds `len` bytes at `offset`: the one bounds check.
    #[inline(always)]
    fn has_bytes(self, offset: usize, len: usize) -> bool {
        self.start + offset + len <= self.end
    }
}

/// `N` bytes of the frame, checked against `data_end` once. Fields are read in
/// place: copying whole headers to the stack cost ~10 ns per IPv6 packet.
///
/// Multi-byte fields are read with unaligned loads: IP fields behind a 14-byte
/// Ethernet header are not 4-aligned. For x86-64 and arm64 the object is built with
/// LLVM's `allows-misaligned-mem-access` (scan-agent's build.rs), so each is one
/// load; elsewhere LLVM assembles them from bytes. A field only compared with
/// constants is compared in network order ([`net16`]), without a byte swap.
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

    /// The 16-bit field at bytes `I`, `I + 1` as it is in the frame (network
    /// order), widened to u32: compared as u16, LLVM masks it before every compare.
    #[inline(always)]
    fn raw16<const I: usize>(self) -> u32 {
        const { assert!(I + 1 < N) };
        // SAFETY: as in `byte`; packet reads may be unaligned.
        u32::from(unsafe { self.0.add(I).cast::<u16>().read_unaligned() })
    }

    /// Big-endian u16 at bytes `I`, `I + 1`.
    #[inline(always)]
    fn be16<const I: usize>(self) -> u16 {
        const { assert!(I + 1 < N) };
        // SAFETY: as in `raw16`.
        u16::from_be(unsafe { self.0.add(I).cast::<u16>().read_unaligned() })
    }

    /// Big-endian u32 at bytes `I..I + 4`.
    #[inline(always)]
    fn be32<const I: usize>(self) -> u32 {
        const { assert!(I + 3 < N) };
        // SAFETY: as in `raw16`.
        u32::from_be(unsafe { self.0.add(I).cast::<u32>().read_unaligned() })
    }

    /// Big-endian u64 at bytes `I..I + 8`.
    #[inline(always)]
    fn be64<const I: usize>(self) -> u64 {
        const { assert!(I + 7 < N) };
        // SAFETY: as in `raw16`.
        u64::from_be(unsafe { self.0.add(I).cast::<u64>().read_unaligned() })
    }
}

/// A 16-bit constant as [`Header::raw16`] reads it from the frame.
const fn net16(value: u32) -> u32 {
    (value as u16).to_be() as u32
}

/// The IP header a TCP header was found behind (already bounds-checked).
#[derive(Clone, Copy)]
enum Network {
    V4(Header<IPV4_HLEN>),
    V6(Header<IPV6_HLEN>),
}

impl Network {
    #[inline(always)]
    fn family(self) -> Family {
        match self {
            Self::V4(_) => Family::Ipv4,
            Self::V6(_) => Family::Ipv6,
        }
    }

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
    End(Outcome),
}

/// Where an IP header leads: the TCP header at an offset, or the end of parsing
/// with an outcome.
#[derive(Clone, Copy)]
enum Transport {
    Tcp(usize, Network),
    End(Outcome),
}

/// One packet on its way through the parser: its bounds, this CPU's id and class
/// counters, and the context (for the debug log).
///
/// A SYN is counted where the TCP header proves it, outcome included, so nothing
/// travels back up the parse: carrying the port and addresses out, or this CPU's
/// counters across the port counter's lookup, cost registers and stack spills.
struct Packet<'a, C> {
    ctx: &'a C,
    frame: Frame,
    counters: Counters,
    cpu: u32,
}

impl<C: Bounds> Packet<'_, C> {
    /// Parses and counts the packet in the slot of its family and outcome (a SYN in
    /// [`Self::syn`]): the link layer first (Ethernet, VLAN tags, PPPoE; or none on
    /// an L3 link), then IPv4 or IPv6, then TCP. Each family's outcome is counted in
    /// its own branch, the family a constant there: as one shared count, the family
    /// in a register cost 1-3 ns per SYN and a quarter more verifier work. Each layer's
    /// parser is inlined (and verified) once per entry point, not once per path
    /// into it: the SYN counting and sketch code behind TCP is the largest part.
    #[inline(always)]
    fn classify<const RAW: bool>(&self, outer_tags: usize) {
        let link = if RAW {
            self.raw_ip()
        } else {
            self.ethernet(outer_tags)
        };
        match link {
            Link::Ipv4(offset) => self.transport(Family::Ipv4, self.ipv4(offset)),
            Link::Ipv6(offset) => self.transport(Family::Ipv6, self.ipv6(offset)),
            Link::End(outcome) => self.count(Family::None, outcome),
        }
    }

    #[inline(always)]
    fn transport(&self, family: Family, transport: Transport) {
        let outcome = match transport {
            Transport::Tcp(offset, network) => match self.tcp(offset, network) {
                Some(outcome) => outcome,
                None => return,
            },
            Transport::End(outcome) => outcome,
        };
        self.count(family, outcome);
    }

    #[inline(always)]
    fn count(&self, family: Family, outcome: Outcome) {
        self.counters.bump(outcome_slot(family, outcome));
        if debug() {
            log_outcome(self.ctx, outcome);
        }
    }

    /// A frame that starts with an Ethernet header, with up to [`MAX_VLAN_TAGS`]
    /// tags (`outer_tags` of them already taken out of the frame by the stack) and
    /// an optional PPPoE session header.
    #[inline(always)]
    fn ethernet(&self, outer_tags: usize) -> Link {
        let Some(eth) = self.frame.header::<ETH_HLEN>(0) else {
            return Link::End(Outcome::Truncated);
        };
        if outer_tags != 0 {
            self.counters.bump(VLAN_SLOT);
        }
        let mut ether_type = eth.raw16::<12>();
        let mut offset = ETH_HLEN;
        for tag in outer_tags..MAX_VLAN_TAGS + 1 {
            // Untagged IPv4 first: the common frame takes one compare.
            if ether_type == ETH_P_IP || (ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD) {
                break;
            }
            if tag == MAX_VLAN_TAGS {
                return Link::End(Outcome::HeaderLimit);
            }
            if tag == 0 {
                self.counters.bump(VLAN_SLOT);
            }
            let Some(vlan) = self.frame.header::<VLAN_HLEN>(offset) else {
                return Link::End(Outcome::Truncated);
            };
            ether_type = vlan.raw16::<2>();
            offset += VLAN_HLEN;
        }
        match ether_type {
            ETH_P_IP => Link::Ipv4(offset),
            ETH_P_IPV6 => Link::Ipv6(offset),
            ETH_P_PPP_SES => {
                self.counters.bump(PPPOE_SLOT);
                self.pppoe(offset)
            }
            _ => Link::End(Outcome::NonIp),
        }
    }

    /// A PPPoE session frame: the PPPoE header, then the PPP protocol field.
    #[inline(always)]
    fn pppoe(&self, offset: usize) -> Link {
        let Some(session) = self.frame.header::<PPPOE_HLEN>(offset) else {
            return Link::End(Outcome::Truncated);
        };
        if session.byte::<0>() != PPPOE_VER_TYPE || session.byte::<1>() != 0 {
            return Link::End(Outcome::BadHeader);
        }
        match session.raw16::<6>() {
            PPP_IP => Link::Ipv4(offset + PPPOE_HLEN),
            PPP_IPV6 => Link::Ipv6(offset + PPPOE_HLEN),
            // LCP, IPCP, CHAP, ...: link control, not IP.
            _ => Link::End(Outcome::NonIp),
        }
    }

    /// A frame that starts with the IP header: the version nibble says which. A
    /// packet shorter than the smallest IP header (20 bytes) is `truncated` whatever
    /// its first byte says. (A 1-byte check would be the exact one, but LLVM turns
    /// `data + 1 <= data_end` into `data < data_end`, which the verifier does not
    /// accept as a bound.)
    #[inline(always)]
    fn raw_ip(&self) -> Link {
        let Some(first) = self.frame.header::<IPV4_HLEN>(0) else {
            return Link::End(Outcome::Truncated);
        };
        match first.byte::<0>() >> 4 {
            4 => Link::Ipv4(0),
            6 => Link::Ipv6(0),
            _ => Link::End(Outcome::NonIp),
        }
    }

    #[inline(always)]
    fn ipv4(&self, offset: usize) -> Transport {
        let Some(ip) = self.frame.header::<IPV4_HLEN>(offset) else {
            return Transport::End(Outcome::Truncated);
        };
        let version_ihl = ip.byte::<0>();
        // Version 4 without options, nearly every packet, is one compare.
        let header_len = if version_ihl == 0x45 {
            IPV4_HLEN
        } else {
            let header_len = ((version_ihl & 0x0F) as usize) * 4;
            if version_ihl >> 4 != 4 || header_len < IPV4_HLEN {
                return Transport::End(Outcome::BadHeader);
            }
            // Options included, the whole header must be in the frame before any
            // field past it (fragment, protocol) decides the class.
            if !self.frame.has_bytes(offset, header_len) {
                return Transport::End(Outcome::Truncated);
            }
            header_len
        };
        // A fragment with a non-zero offset carries no TCP header.
        if ip.raw16::<6>() & net16(0x1FFF) != 0 {
            return Transport::End(Outcome::LaterFragment);
        }
        if ip.byte::<9>() != IPPROTO_TCP {
            return Transport::End(Outcome::NonTcp);
        }
        Transport::Tcp(offset + header_len, Network::V4(ip))
    }

    #[inline(always)]
    fn ipv6(&self, offset: usize) -> Transport {
        let Some(ip) = self.frame.header::<IPV6_HLEN>(offset) else {
            return Transport::End(Outcome::Truncated);
        };
        if ip.byte::<0>() >> 4 != 6 {
            return Transport::End(Outcome::BadHeader);
        }
        let mut next_header = ip.byte::<6>();
        let mut offset = offset + IPV6_HLEN;
        for walked in 0..MAX_IPV6_EXT_HEADERS + 1 {
            let current = next_header;
            match current {
                IPPROTO_TCP => return Transport::Tcp(offset, Network::V6(ip)),
                IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT | IPV6_AH => {}
                _ => return Transport::End(Outcome::NonTcp),
            }
            if walked == MAX_IPV6_EXT_HEADERS {
                return Transport::End(Outcome::HeaderLimit);
            }
            // Every extension header is at least 8 bytes and starts with
            // (next header, length).
            let Some(ext) = self.frame.header::<8>(offset) else {
                return Transport::End(Outcome::Truncated);
            };
            next_header = ext.byte::<0>();
            let header_len = match current {
                IPV6_FRAGMENT => {
                    if ext.raw16::<2>() & net16(0xFFF8) != 0 {
                        return Transport::End(Outcome::LaterFragment);
                    }
                    8
                }
                // RFC 4302: AH's length is in 4-byte units, minus 2.
                IPV6_AH => (ext.byte::<1>() as usize + 2) * 4,
                _ => (ext.byte::<1>() as usize + 1) * 8,
            };
            if !self.frame.has_bytes(offset, header_len) {
                return Transport::End(Outcome::Truncated);
            }
            offset += header_len;
        }
        Transport::End(Outcome::HeaderLimit)
    }

    /// A whole TCP header (options included) must be in the frame to be counted.
    #[inline(always)]
    fn tcp(&self, offset: usize, network: Network) -> Option<Outcome> {
        let Some(tcp) = self.frame.header::<TCP_HLEN>(offset) else {
            return Some(Outcome::Truncated);
        };
        let header_len = ((tcp.byte::<12>() >> 4) as usize) * 4;
        if header_len < TCP_HLEN {
            return Some(Outcome::BadHeader);
        }
        if !self.frame.has_bytes(offset, header_len) {
            return Some(Outcome::Truncated);
        }
        let flags = tcp.byte::<13>();
        if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
            self.syn(tcp.be16::<2>(), network);
            return None;
        }
        Some(Outcome::Tcp)
    }

    /// Counts a SYN to `port` (its outcome slot and its port counter) and, with the
    /// sketches on, records its addresses.
    #[inline(always)]
    fn syn(&self, port: u16, network: Network) {
        self.counters
            .bump(outcome_slot(network.family(), Outcome::Syn));
        count_syn(self.cpu, port);
        if sketch::enabled() {
            sketch::record(port, &network.addresses());
        }
        if debug() {
            log_syn(self.ctx, port);
        }
    }
}

#[inline(always)]
fn count_syn(cpu: u32, port: u16) {
    let index = cpu.wrapping_mul(PORTS).wrapping_add(port as u32);
    if let Some(counter) = SCAN_PORT_SYNS.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot (see `Counters::bump`).
        unsafe { *counter += 1 };
    } else if let Some(counter) = SCAN_SYN_NO_SLOT.get_ptr_mut(0) {
        // SAFETY: a per-CPU value, written only by this CPU.
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
