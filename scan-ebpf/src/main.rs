//! XDP sensor: counts TCP SYNs (SYN set, ACK clear) per destination port and
//! classifies every packet. A sensor, never a filter: every path returns
//! `XDP_PASS` and the packet is never written.
//!
//! Parsing follows xdp-tutorial's `parsing_helpers.h`: one small bounded step per
//! header, each read checked against `data_end` before it is made.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, xdp_action},
    helpers::bpf_get_smp_processor_id,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use aya_log_ebpf::info;
use scan_common::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, PORTS, PacketClass, ProgramConfig};

mod sketch;
use sketch::Addresses;

/// One slice of `PORTS` counters per possible CPU; the loader sets the real size.
/// Each CPU writes only its own slice, so no atomics and no shared cache lines.
#[map]
static SCAN_PORT_SYNS: Array<u64> = Array::with_max_entries(PORTS, BPF_F_MMAPABLE);

#[map]
static SCAN_CLASSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(PacketClass::COUNT, 0);

#[map]
static SCAN_CONFIG: Array<ProgramConfig> = Array::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

#[xdp]
pub fn scan_syn_counter(ctx: XdpContext) -> u32 {
    bump(PacketClass::Seen);
    let (outcome, syn) = classify(&ctx);
    bump(outcome);
    let syn_port = syn.as_ref().map(|syn| syn.port);
    if let Some(syn) = syn {
        bump(PacketClass::Syn);
        count_syn(syn.port);
        if let Some(addresses) = &syn.addresses {
            sketch::record(syn.port, addresses);
        }
    }
    if debug_enabled() {
        // Rare by design: only with the runtime switch on (see `ProgramConfig`).
        info!(
            &ctx,
            "outcome={} syn_port={}",
            outcome as u32,
            syn_port.map_or(-1, |p| p as i32)
        );
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn bump(class: PacketClass) {
    if let Some(counter) = SCAN_CLASSES.get_ptr_mut(class as u32) {
        // SAFETY: per-CPU value; XDP runs with migration disabled, so no other
        // writer touches this CPU's copy while we add.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn count_syn(port: u16) {
    // SAFETY: plain helper call, no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let index = cpu.wrapping_mul(PORTS).wrapping_add(port as u32);
    if let Some(counter) = SCAN_PORT_SYNS.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot (see `bump`).
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn debug_enabled() -> bool {
    SCAN_CONFIG.get(0).is_some_and(|config| config.debug != 0)
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

    /// Big-endian u16 at bytes `I`, `I + 1`.
    #[inline(always)]
    fn be16<const I: usize>(self) -> u16 {
        const { assert!(I + 1 < N) };
        // SAFETY: as in `byte`.
        unsafe { u16::from_be_bytes([*self.0.add(I), *self.0.add(I + 1)]) }
    }
}

/// The `N` bytes at `offset`, or `None` if the frame is shorter.
#[inline(always)]
fn header<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<Header<N>> {
    has_bytes(ctx, offset, N).then(|| Header((ctx.data() + offset) as *const u8))
}

/// Whether the frame holds `len` bytes at `offset`: the one bounds check.
#[inline(always)]
fn has_bytes(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    ctx.data() + offset + len <= ctx.data_end()
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

/// Returns the packet's outcome class and, for a SYN, its port (and addresses).
#[inline(always)]
fn classify(ctx: &XdpContext) -> (PacketClass, Option<Syn>) {
    let Some(eth) = header::<ETH_HLEN>(ctx, 0) else {
        return (PacketClass::Truncated, None);
    };
    let mut ether_type = eth.be16::<12>();
    let mut offset = ETH_HLEN;
    for tag in 0..MAX_VLAN_TAGS + 1 {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        if tag == MAX_VLAN_TAGS {
            return (PacketClass::HeaderLimit, None);
        }
        if tag == 0 {
            bump(PacketClass::Vlan);
        }
        let Some(vlan) = header::<VLAN_HLEN>(ctx, offset) else {
            return (PacketClass::Truncated, None);
        };
        ether_type = vlan.be16::<2>();
        offset += VLAN_HLEN;
    }
    match ether_type {
        ETH_P_IP => {
            bump(PacketClass::Ipv4);
            ipv4(ctx, offset)
        }
        ETH_P_IPV6 => {
            bump(PacketClass::Ipv6);
            ipv6(ctx, offset)
        }
        _ => (PacketClass::NonIp, None),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, offset: usize) -> (PacketClass, Option<Syn>) {
    let Some(ip) = header::<IPV4_HLEN>(ctx, offset) else {
        return (PacketClass::Truncated, None);
    };
    let header_len = ((ip.byte::<0>() & 0x0F) as usize) * 4;
    if ip.byte::<0>() >> 4 != 4 || header_len < IPV4_HLEN {
        return (PacketClass::BadHeader, None);
    }
    // Options included, the whole header must be in the frame before any field
    // past it (fragment, protocol) decides the class.
    if !has_bytes(ctx, offset, header_len) {
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
    tcp(ctx, offset + header_len, Network::V4(ip))
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, offset: usize) -> (PacketClass, Option<Syn>) {
    let Some(ip) = header::<IPV6_HLEN>(ctx, offset) else {
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
            IPPROTO_TCP => return tcp(ctx, offset, Network::V6(ip)),
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT | IPV6_AH => {}
            _ => return (PacketClass::NonTcp, None),
        }
        if walked == MAX_IPV6_EXT_HEADERS {
            return (PacketClass::HeaderLimit, None);
        }
        // Every extension header is at least 8 bytes and starts with
        // (next header, length).
        let Some(ext) = header::<8>(ctx, offset) else {
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
        if !has_bytes(ctx, offset, header_len) {
            return (PacketClass::Truncated, None);
        }
        offset += header_len;
    }
    (PacketClass::HeaderLimit, None)
}

/// A whole TCP header (options included) must be in the frame to be counted.
#[inline(always)]
fn tcp(ctx: &XdpContext, offset: usize, network: Network) -> (PacketClass, Option<Syn>) {
    let Some(tcp) = header::<TCP_HLEN>(ctx, offset) else {
        return (PacketClass::Truncated, None);
    };
    let header_len = ((tcp.byte::<12>() >> 4) as usize) * 4;
    if header_len < TCP_HLEN {
        return (PacketClass::BadHeader, None);
    }
    if !has_bytes(ctx, offset, header_len) {
        return (PacketClass::Truncated, None);
    }
    let flags = tcp.byte::<13>();
    let is_syn = flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0;
    let syn = is_syn.then(|| Syn {
        port: tcp.be16::<2>(),
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
