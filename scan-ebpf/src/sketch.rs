//! Distinct sources and targets per destination port: on every counted SYN, the
//! source and destination addresses go into the port's two sketches in
//! `SCAN_SKETCHES` (layout and hashing in `scan_common`).
//!
//! The map is one array shared by all CPUs: register maxima are updated without
//! atomics. Two CPUs racing on one register can lose the smaller of two raises for
//! that one packet; the next SYN from the same address raises it again, and a lost
//! raise only ever lowers an estimate by less than one register's share (see
//! BENCHMARKS.md for the measured error). The exact list is racy the same way: a
//! fingerprint appended by two CPUs at once may be lost or kept twice.
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, RingBuf},
};
use scan_common::{
    SAMPLES_BYTES, SKETCH_EXACT, SKETCH_PROBES, SKETCH_SLOTS, Sketch, SketchSlot, SourceSample,
    hash_ipv4, hash_ipv6, sketch_fingerprint, sketch_index, sketch_rank, sketch_slot_home,
};

#[map]
static SCAN_SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLES_BYTES, 0);

#[map]
static SCAN_SKETCHES: Array<SketchSlot> = Array::with_max_entries(SKETCH_SLOTS, BPF_F_MMAPABLE);

/// Set at load time (`.rodata`, frozen): with 0 the verifier drops the sketch code.
#[unsafe(no_mangle)]
static SCAN_SKETCH_ON: u32 = 1;

/// Addresses of a SYN, as read from its IP header (big-endian).
pub enum Addresses {
    V4 { source: u32, target: u32 },
    V6 { source: [u64; 2], target: [u64; 2] },
}

#[inline(always)]
pub fn enabled() -> bool {
    // SAFETY: a plain read of a global the loader may have rewritten.
    unsafe { core::ptr::read_volatile(&SCAN_SKETCH_ON) != 0 }
}

/// Records one SYN to `port` in the port's slot, claiming a free one if it has none.
/// A port whose probes all find other ports is not sketched (counted as a miss).
#[inline(always)]
pub fn record(port: u16, addresses: &Addresses) {
    let Some(slot) = slot_of(port) else {
        return;
    };
    let (source, target) = match addresses {
        Addresses::V4 { source, target } => (hash_ipv4(*source), hash_ipv4(*target)),
        Addresses::V6 { source, target } => (
            hash_ipv6(source[0], source[1]),
            hash_ipv6(target[0], target[1]),
        ),
    };
    // SAFETY: a pointer into the map value returned by the lookup; see the module
    // docs for the (accepted) races with other CPUs and the agent's reset.
    unsafe {
        insert(&raw mut (*slot).sources, source);
        insert(&raw mut (*slot).targets, target);
        // Zero for every port the agent has not flagged: one load and a branch.
        let budget = (*slot).sample_budget;
        if budget != 0 {
            (*slot).sample_budget = budget - 1;
            sample(port, addresses);
        }
    }
}

/// Sends a flagged port's SYN source to the agent (dropped if the ring is full).
#[inline(always)]
fn sample(port: u16, addresses: &Addresses) {
    let Some(mut entry) = SCAN_SAMPLES.reserve::<SourceSample>(0) else {
        return;
    };
    let (family, address) = match addresses {
        Addresses::V4 { source, .. } => {
            let mut address = [0u8; 16];
            address[..4].copy_from_slice(&source.to_be_bytes());
            (4, address)
        }
        Addresses::V6 { source, .. } => {
            let mut address = [0u8; 16];
            address[..8].copy_from_slice(&source[0].to_be_bytes());
            address[8..].copy_from_slice(&source[1].to_be_bytes());
            (6, address)
        }
    };
    entry.write(SourceSample {
        port,
        family,
        address,
    });
    entry.submit(0);
}

#[inline(always)]
fn slot_of(port: u16) -> Option<*mut SketchSlot> {
    let tag = port as u32 + 1;
    let home = sketch_slot_home(port);
    for probe in 0..SKETCH_PROBES {
        let slot = SCAN_SKETCHES.get_ptr_mut((home + probe) & (SKETCH_SLOTS - 1))?;
        // SAFETY: map value pointer; racy plain accesses to the tag (module docs).
        unsafe {
            let found = (*slot).port;
            if found == tag {
                return Some(slot);
            }
            if found == 0 {
                // Two CPUs claiming one free slot for different ports at once leave
                // one port's first SYNs in the other's sketch.
                (*slot).port = tag;
                return Some(slot);
            }
        }
    }
    if let Some(slot) = SCAN_SKETCHES.get_ptr_mut(home) {
        // SAFETY: as above.
        unsafe { (*slot).misses = (*slot).misses.wrapping_add(1) };
    }
    None
}

/// # Safety
/// `sketch` points into a map value.
#[inline(always)]
unsafe fn insert(sketch: *mut Sketch, hash: u64) {
    let fingerprint = sketch_fingerprint(hash);
    // SAFETY: caller's contract.
    let len = unsafe { (*sketch).exact_len };
    if len <= SKETCH_EXACT as u32 {
        for i in 0..SKETCH_EXACT {
            if i as u32 >= len {
                break;
            }
            // SAFETY: i < SKETCH_EXACT.
            if unsafe { (*sketch).exact[i] } == fingerprint {
                // Seen before: its register was raised then.
                return;
            }
        }
        // SAFETY: the index is masked into the list.
        unsafe {
            if (len as usize) < SKETCH_EXACT {
                (*sketch).exact[len as usize & (SKETCH_EXACT - 1)] = fingerprint;
                (*sketch).exact_len = len + 1;
            } else {
                (*sketch).exact_len = SKETCH_EXACT as u32 + 1;
            }
        }
    }
    let index = sketch_index(hash);
    let rank = sketch_rank(hash);
    // SAFETY: index < SKETCH_REGISTERS by construction (top bits of the hash).
    unsafe {
        let register = (*sketch).registers.as_mut_ptr().add(index);
        if *register < rank {
            *register = rank;
        }
    }
}
