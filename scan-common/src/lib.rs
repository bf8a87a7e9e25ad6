//! Types shared by the XDP program (`scan-ebpf`) and the agent (`scan-agent`).
//!
//! `no_std` so the eBPF side can use it; the `user` feature adds the aya `Pod`
//! impls the agent needs to read and write the maps.
#![no_std]

/// Number of TCP ports, and so the length of one CPU's slice of [`PORT_SYNS_MAP`].
pub const PORTS: u32 = 65_536;

/// SYNs per destination port, per CPU: a `BPF_F_MMAPABLE` array of
/// `possible CPUs x PORTS` `u64`, where CPU `c` counts port `p` at `c * PORTS + p`.
/// The program declares one slice; the loader sizes it at load time.
pub const PORT_SYNS_MAP: &str = "SCAN_PORT_SYNS";
/// Pins of maps that held an interface's class counters before the `.bss` slots of
/// [`CLASS_SLOTS_MAP`]: a `PERCPU_ARRAY` of one [`ClassCounts`]-shaped value. No
/// program writes them any more; the agent adds what an older version counted into
/// one (frozen since the upgrade swapped the program) to the interface's totals, so
/// an upgrade loses no count.
pub const LEGACY_CLASSES_MAP: &str = "SCAN_CLASSES";
/// Packet-class counters of one load (one interface): the program's `.bss` global of
/// this name, one [`ClassSlots`] per CPU id below [`CLASS_SLOT_CPUS`]. A global is
/// at an address fixed at load time, so a packet reaches its CPU's slots without a
/// map lookup (and without a key on the stack); the agent backs it with its own
/// `BPF_F_MMAPABLE` array of one [`ClassSlotTable`], pinned under this name, reused
/// across restarts and read by `mmap`.
pub const CLASS_SLOTS_MAP: &str = "SCAN_CLASS_SLOTS";
/// Load-time switch (`.rodata`, set with `EbpfLoader::override_global`): non-zero
/// logs parse outcomes through aya-log. A frozen constant, so with it off the
/// verifier removes the logging code and no packet pays for it.
pub const DEBUG_GLOBAL: &str = "SCAN_DEBUG";

/// What the frame starts with, chosen per interface from its link type at attach time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// An Ethernet header (with optional VLAN tags, PPPoE session header).
    Ethernet,
    /// The IP header itself (ppp, tun, wireguard, IPIP/GRE: no link-layer header).
    RawIp,
}

/// Where the program is hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// XDP (alone on the interface or as a libxdp dispatcher component).
    Xdp,
    /// TCX ingress (`sched_cls`, kernel >= 6.6).
    Tc,
}

/// Name of the program for `hook` and `kind` in the object: one parser, one entry
/// point per combination, so the link kind costs nothing per packet.
pub const fn program_name(hook: Hook, kind: LinkKind) -> &'static str {
    match (hook, kind) {
        (Hook::Xdp, LinkKind::Ethernet) => "scan_xdp",
        (Hook::Xdp, LinkKind::RawIp) => "scan_xdp_ip",
        (Hook::Tc, LinkKind::Ethernet) => "scan_tc",
        (Hook::Tc, LinkKind::RawIp) => "scan_tc_ip",
    }
}

/// The XDP program for `kind` without multi-buffer support, for kernels before 5.18,
/// which refuse the flag ([`program_name`]'s XDP programs have it).
pub const fn single_buffer_program_name(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Ethernet => "scan_xdp_lin",
        LinkKind::RawIp => "scan_xdp_ip_lin",
    }
}

/// SYNs that found no slot in [`PORT_SYNS_MAP`] (a CPU id beyond its slices): a
/// `PERCPU_ARRAY` of one `u64`. Expected 0; the agent exports and alerts on it.
pub const SYN_NO_SLOT_MAP: &str = "SCAN_SYN_NO_SLOT";

/// VLAN tags (802.1Q / 802.1ad) the parser steps over before giving up.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers the parser walks before giving up.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// CPU ids with class slots: the agent refuses a machine with more possible CPUs
/// (see `scan_agent::cpus`), so no packet is ever left without its slots.
pub const CLASS_SLOT_CPUS: usize = 1024;

/// Outcomes as the program counts them: like the outcome [`PacketClass`]es, but a
/// SYN is its own outcome (`tcp` and `syn` at once). With the IP family, one
/// [`ClassSlots`] slot per packet holds everything [`ClassCounts`] derives: one
/// increment per packet instead of one per class on its way.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Tcp = 0,
    Syn = 1,
    NonTcp = 2,
    NonIp = 3,
    Truncated = 4,
    BadHeader = 5,
    LaterFragment = 6,
    HeaderLimit = 7,
}

impl Outcome {
    pub const COUNT: usize = 8;
    pub const ALL: [Outcome; Self::COUNT] = [
        Self::Tcp,
        Self::Syn,
        Self::NonTcp,
        Self::NonIp,
        Self::Truncated,
        Self::BadHeader,
        Self::LaterFragment,
        Self::HeaderLimit,
    ];

    /// The [`PacketClass`] this outcome is counted as (a SYN also as `tcp`).
    pub const fn class(self) -> PacketClass {
        match self {
            Self::Tcp => PacketClass::Tcp,
            Self::Syn => PacketClass::Syn,
            Self::NonTcp => PacketClass::NonTcp,
            Self::NonIp => PacketClass::NonIp,
            Self::Truncated => PacketClass::Truncated,
            Self::BadHeader => PacketClass::BadHeader,
            Self::LaterFragment => PacketClass::LaterFragment,
            Self::HeaderLimit => PacketClass::HeaderLimit,
        }
    }
}

/// What the link layer said the packet carries: which outcome slots it counts in.
#[repr(usize)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// No IP header was reached (non-IP, or the link layer ended the parse).
    None = 0,
    Ipv4 = 1,
    Ipv6 = 2,
}

/// Slot of `outcome` for a packet of `family` in [`ClassSlots`].
#[inline(always)]
pub const fn outcome_slot(family: Family, outcome: Outcome) -> usize {
    family as usize * Outcome::COUNT + outcome as usize
}
/// Slot of the `vlan` flag (the frame carried a VLAN tag), counted on the way.
pub const VLAN_SLOT: usize = 3 * Outcome::COUNT;
/// Slot of the `pppoe` flag (a PPPoE session frame), counted on the way.
pub const PPPOE_SLOT: usize = VLAN_SLOT + 1;

/// One CPU's class counters of one load: one slot per (family, outcome) and the two
/// link flags, on cache lines of its own (no two CPUs write the same line).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassSlots {
    pub counts: [u64; 32],
}

impl ClassSlots {
    pub const ZERO: Self = Self { counts: [0; 32] };
}

const _: () = assert!(PPPOE_SLOT < 32);

/// The value of [`CLASS_SLOTS_MAP`]: the slots of every CPU id, CPU `c` at `c`.
pub type ClassSlotTable = [ClassSlots; CLASS_SLOT_CPUS];

#[cfg(feature = "user")]
// SAFETY: `repr(C)` array of `u64` filling its 64-byte alignment exactly (256 bytes).
unsafe impl aya::Pod for ClassSlots {}
const _: () = assert!(size_of::<ClassSlots>() == 256);

/// What happened to a packet: the classes the agent reports, derived from
/// [`ClassSlots`] ([`ClassCounts::from_slots`]).
///
/// Two kinds of class:
/// - *flags*: `Seen`, `Vlan`, `Pppoe`, `Ipv4`, `Ipv6`, `Syn`;
/// - *outcomes*, exactly one per packet: `Tcp`, `NonTcp`, `NonIp`, `Truncated`,
///   `BadHeader`, `LaterFragment`, `HeaderLimit`.
///
/// The program counts each packet once, in the slot of its (family, [`Outcome`]),
/// plus `Vlan` and `Pppoe` when the link layer has them; `Seen`, `Ipv4`, `Ipv6`,
/// `Tcp` and `Syn` are sums of outcome slots. So invariants 1-3 hold by
/// construction, also in live reads; all four are checked over every case of the
/// program, and in the differential and replay tests:
/// 1. `seen == tcp + non_tcp + non_ip + truncated + bad_header + later_fragment + header_limit`
/// 2. `syn <= tcp` (a SYN is counted only once its whole TCP header is read)
/// 3. `tcp + non_tcp + later_fragment <= ipv4 + ipv6 <= seen - non_ip`
/// 4. `vlan <= seen`, `pppoe <= seen` (live reads may be off by the packets in flight)
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PacketClass {
    /// Every packet the program ran on.
    Seen = 0,
    /// Carried at least one VLAN tag.
    Vlan = 1,
    /// The (inner) EtherType was IPv4.
    Ipv4 = 2,
    /// The (inner) EtherType was IPv6.
    Ipv6 = 3,
    /// Outcome: a whole TCP header was read.
    Tcp = 4,
    /// Flag on `Tcp`: SYN set and ACK clear, counted in the port map. Other flags
    /// (FIN, PSH, URG, ECE, CWR, RST) do not matter: a probe that sets SYN without
    /// ACK is a connection attempt to that port whatever else it sets.
    Syn = 5,
    /// Outcome: an IP packet whose transport is not TCP (UDP, ICMP, ESP, ...).
    NonTcp = 6,
    /// Outcome: the EtherType was neither IPv4 nor IPv6 (ARP, LLDP, PPPoE discovery,
    /// a PPPoE session carrying LCP or another non-IP PPP protocol; on a raw-IP
    /// link, an IP version other than 4 or 6).
    NonIp = 7,
    /// Outcome: a header ran past the end of the frame.
    Truncated = 8,
    /// Outcome: a header field is impossible (IPv4 IHL < 5, wrong IP version,
    /// TCP data offset < 5, IPv6 extension header length past the frame end is `Truncated`).
    BadHeader = 9,
    /// Outcome: an IPv4 or IPv6 fragment other than the first: no TCP header in it.
    LaterFragment = 10,
    /// Outcome: more VLAN tags than [`MAX_VLAN_TAGS`] or more IPv6 extension
    /// headers than [`MAX_IPV6_EXT_HEADERS`]; the parser stops there.
    HeaderLimit = 11,
    /// A PPPoE session frame (EtherType 0x8864, after any VLAN tags).
    Pppoe = 12,
}

impl PacketClass {
    pub const COUNT: u32 = 13;

    pub const ALL: [PacketClass; Self::COUNT as usize] = [
        Self::Seen,
        Self::Vlan,
        Self::Ipv4,
        Self::Ipv6,
        Self::Tcp,
        Self::Syn,
        Self::NonTcp,
        Self::NonIp,
        Self::Truncated,
        Self::BadHeader,
        Self::LaterFragment,
        Self::HeaderLimit,
        Self::Pppoe,
    ];

    /// The outcomes: exactly one of these is counted for every packet.
    pub const OUTCOMES: [PacketClass; 7] = [
        Self::Tcp,
        Self::NonTcp,
        Self::NonIp,
        Self::Truncated,
        Self::BadHeader,
        Self::LaterFragment,
        Self::HeaderLimit,
    ];

    /// Label value used in metrics and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Seen => "seen",
            Self::Vlan => "vlan",
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::Tcp => "tcp",
            Self::Syn => "syn",
            Self::NonTcp => "non_tcp",
            Self::NonIp => "non_ip",
            Self::Truncated => "truncated",
            Self::BadHeader => "bad_header",
            Self::LaterFragment => "later_fragment",
            Self::HeaderLimit => "header_limit",
            Self::Pppoe => "pppoe",
        }
    }

    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// Class counters indexed by [`PacketClass`], summed over CPUs (and interfaces). Also
/// the per-CPU value of a [`LEGACY_CLASSES_MAP`] pin.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounts(pub [u64; PacketClass::COUNT as usize]);

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` array of `u64`, no padding.
unsafe impl aya::Pod for ClassCounts {}

impl ClassCounts {
    /// The classes one CPU's slots count (see [`PacketClass`]).
    pub fn from_slots(slots: &ClassSlots) -> Self {
        let mut counts = Self::default();
        let mut bump = |class: PacketClass, value: u64| {
            let total = &mut counts.0[class as usize];
            *total = total.wrapping_add(value);
        };
        for (family, ip) in [
            (Family::None, None),
            (Family::Ipv4, Some(PacketClass::Ipv4)),
            (Family::Ipv6, Some(PacketClass::Ipv6)),
        ] {
            for outcome in Outcome::ALL {
                let value = slots.counts[outcome_slot(family, outcome)];
                bump(PacketClass::Seen, value);
                bump(outcome.class(), value);
                if outcome == Outcome::Syn {
                    bump(PacketClass::Tcp, value);
                }
                if let Some(ip) = ip {
                    bump(ip, value);
                }
            }
        }
        bump(PacketClass::Vlan, slots.counts[VLAN_SLOT]);
        bump(PacketClass::Pppoe, slots.counts[PPPOE_SLOT]);
        counts
    }

    /// Adds `other` into `self`, class by class.
    pub fn add(&mut self, other: &[u64; PacketClass::COUNT as usize]) {
        for (total, value) in self.0.iter_mut().zip(other) {
            *total = total.wrapping_add(*value);
        }
    }

    pub fn get(&self, class: PacketClass) -> u64 {
        self.0[class as usize]
    }

    /// Checks the invariants documented on [`PacketClass`]; returns the first broken one.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        use PacketClass::*;
        let g = |c| self.get(c);
        let outcomes: u64 = PacketClass::OUTCOMES.iter().map(|&c| g(c)).sum();
        if g(Seen) != outcomes {
            return Err("seen != sum of outcomes");
        }
        if g(Syn) > g(Tcp) {
            return Err("syn > tcp");
        }
        let ip = g(Ipv4) + g(Ipv6);
        if g(Tcp) + g(NonTcp) + g(LaterFragment) > ip {
            return Err("tcp + non_tcp + later_fragment > ipv4 + ipv6");
        }
        if ip > g(Seen) - g(NonIp) {
            return Err("ipv4 + ipv6 > seen - non_ip");
        }
        if g(Vlan) > g(Seen) {
            return Err("vlan > seen");
        }
        if g(Pppoe) > g(Seen) {
            return Err("pppoe > seen");
        }
        Ok(())
    }
}

/// Distinct-address sketches per destination port: a `BPF_F_MMAPABLE` `ARRAY` of
/// [`SKETCH_SLOTS`] [`SketchSlot`], shared by all CPUs (memory independent of the CPU
/// count), read and reset by the agent through `mmap`.
pub const SKETCH_MAP: &str = "SCAN_SKETCHES";
/// Read-only global (set at load time): non-zero turns the sketches on. Off, the
/// verifier prunes the sketch code (a frozen `.rodata` constant), so it costs nothing.
pub const SKETCH_SWITCH: &str = "SCAN_SKETCH_ON";
/// Ports sketched at once. A port claims a free slot at its first SYN, probing
/// [`SKETCH_PROBES`] slots from its hashed home; the agent frees the slots of ports
/// idle for a whole short window. A power of two.
pub const SKETCH_SLOTS: u32 = 512;
/// Slots probed (linearly, from the home slot) before a SYN is counted as a miss.
/// Lookup stops at the port's tag or the first free slot, so a port may come to hold
/// two slots after a free in its chain: readers merge slots by port.
pub const SKETCH_PROBES: u32 = 8;
/// HyperLogLog precision `p`: `2^p` registers, standard error `1.04 / sqrt(2^p)` = 1.6%.
pub const SKETCH_PRECISION: u32 = 12;
/// Registers per sketch (`2^SKETCH_PRECISION`), one `u8` each.
pub const SKETCH_REGISTERS: usize = 1 << SKETCH_PRECISION;
/// Fingerprints kept exactly before a sketch counts with its registers only.
pub const SKETCH_EXACT: usize = 16;

/// One distinct-count sketch (HyperLogLog++-style): an exact list of up to
/// [`SKETCH_EXACT`] 32-bit fingerprints of the addresses seen, then the dense registers.
///
/// The registers are always updated (so they are valid whenever the list overflows);
/// `exact_len` is the number of fingerprints, or `SKETCH_EXACT + 1` once more distinct
/// addresses were seen than the list holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sketch {
    pub exact_len: u32,
    pub exact: [u32; SKETCH_EXACT],
    pub registers: [u8; SKETCH_REGISTERS],
}

/// One port's sketches in [`SKETCH_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SketchSlot {
    /// Destination port + 1; 0 is a free slot.
    pub port: u32,
    /// SYNs of ports whose home is this slot that found no slot in their probes
    /// (not sketched); cumulative, racy increments.
    pub misses: u32,
    /// SYN sources this port may still send to [`SAMPLES_MAP`]: the agent sets it at
    /// every poll for flagged ports (the rate cap) and to 0 for the others; the
    /// program counts it down (racy: CPUs together may send a few more).
    pub sample_budget: u32,
    pub _pad: u32,
    /// Distinct source addresses of the SYNs to this port.
    pub sources: Sketch,
    /// Distinct destination addresses of the SYNs to this port.
    pub targets: Sketch,
}

/// Sampled SYN sources of flagged ports: a `RINGBUF` of [`SourceSample`].
pub const SAMPLES_MAP: &str = "SCAN_SAMPLES";
/// Size of [`SAMPLES_MAP`] in bytes (a power-of-two number of pages): 16,384 samples.
pub const SAMPLES_BYTES: u32 = 1 << 19;

/// One sampled SYN of a flagged port: its destination port and source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceSample {
    pub port: u16,
    /// 4 or 6.
    pub family: u16,
    /// The source address in network byte order (IPv4 in the first 4 bytes).
    pub address: [u8; 16],
}

// The kernel lays array values out at an 8-byte stride; the mmap view relies on
// the struct filling it exactly.
const _: () = assert!(size_of::<SketchSlot>().is_multiple_of(8));

#[cfg(feature = "user")]
// SAFETY: `repr(C)` of integers, no padding (checked above and by the field sizes).
unsafe impl aya::Pod for SketchSlot {}

/// murmur3's 64-bit finalizer: a bijection of `u64`, so distinct IPv4 addresses never
/// share a hash.
#[inline(always)]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Hash of an IPv4 address (network order read as big-endian `u32`). The tag in the
/// high bits keeps IPv4 inputs apart from the IPv6 fold.
#[inline(always)]
pub const fn hash_ipv4(addr: u32) -> u64 {
    mix64(addr as u64 | 0x4000_0000_0000_0000)
}

/// Hash of an IPv6 address given as its two big-endian halves.
#[inline(always)]
pub const fn hash_ipv6(high: u64, low: u64) -> u64 {
    mix64(high ^ mix64(low ^ 0x6000_0000_0000_0006))
}

/// Register index of a hash: its top [`SKETCH_PRECISION`] bits.
#[inline(always)]
pub const fn sketch_index(hash: u64) -> usize {
    (hash >> (64 - SKETCH_PRECISION)) as usize
}

/// Register value of a hash: 1 + leading zeros of the remaining bits (1..=53).
#[inline(always)]
pub const fn sketch_rank(hash: u64) -> u8 {
    // The guard bit bounds the rank when every remaining bit is zero.
    let rest = (hash << SKETCH_PRECISION) | (1 << (SKETCH_PRECISION - 1));
    rest.leading_zeros() as u8 + 1
}

/// Fingerprint kept in the exact list: the top 32 bits of the hash, so the agent can
/// turn a list into registers (index and rank) when a merge overflows it.
#[inline(always)]
pub const fn sketch_fingerprint(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// Register index and rank of a fingerprint: the same as [`sketch_index`] and
/// [`sketch_rank`] of its hash, except that a rank above 21 (one hash in 2^20) reads 21.
#[inline(always)]
pub const fn fingerprint_register(fingerprint: u32) -> (usize, u8) {
    let index = (fingerprint >> (32 - SKETCH_PRECISION)) as usize;
    let rest = (fingerprint << SKETCH_PRECISION) | (1 << (SKETCH_PRECISION - 1));
    (index, rest.leading_zeros() as u8 + 1)
}

/// Home slot of a port in [`SKETCH_MAP`]; probe `i` is `(home + i) % SKETCH_SLOTS`.
#[inline(always)]
pub const fn sketch_slot_home(port: u16) -> u32 {
    (mix64(port as u64 | 0x5000_0000_0000_0000) as u32) & (SKETCH_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_dense_and_named_once() {
        for (i, c) in PacketClass::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
            for other in &PacketClass::ALL[..i] {
                assert_ne!(c.name(), other.name());
            }
        }
    }

    #[test]
    fn fingerprints_keep_index_and_rank() {
        for seed in 0..100_000u64 {
            let hash = mix64(seed);
            let (index, rank) = fingerprint_register(sketch_fingerprint(hash));
            assert_eq!(index, sketch_index(hash));
            assert_eq!(rank, sketch_rank(hash).min(21));
        }
    }

    #[test]
    fn invariants_catch_a_lost_outcome() {
        let mut c = ClassCounts::default();
        c.0[PacketClass::Seen as usize] = 1;
        assert_eq!(c.check_invariants(), Err("seen != sum of outcomes"));
        c.0[PacketClass::NonIp as usize] = 1;
        assert_eq!(c.check_invariants(), Ok(()));
        c.0[PacketClass::Syn as usize] = 1;
        assert_eq!(c.check_invariants(), Err("syn > tcp"));
    }
}
