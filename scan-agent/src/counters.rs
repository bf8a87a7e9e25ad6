//! The maps side of the sensor: reads the counters the program writes, and nothing
//! else. The per-CPU port counters, the class slots and the sketch slots by `mmap`,
//! the no-slot counter (and an older version's class counters) by map lookups, the
//! sampled sources from a ring buffer;
//! it writes only the sample budgets and resets taken sketches.
//!
//! None of this needs a capability once the maps are open (Linux >= 6.5 checks
//! `kernel.unprivileged_bpf_disabled` only when a map is created or a program
//! loaded): the unprivileged worker of `scan-agent run` (see [`crate::privsep`])
//! builds its [`Counters`] from map fds the attacher hands over ([`Counters::export`],
//! [`Counters::import`]); the attacher's [`crate::sensor::Sensor`] owns the programs
//! and links, and its own `Counters` for replay, tests and benchmarks.
use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    ptr::NonNull,
};

use aya::maps::{IterableMap as _, Map, MapData, PerCpuArray, RingBuf};
use scan_common::{
    CLASS_SLOT_CPUS, CLASS_SLOTS_MAP, ClassCounts, ClassSlots, LEGACY_CLASSES_MAP, PORT_SYNS_MAP,
    PORTS, SAMPLES_MAP, SKETCH_MAP, SKETCH_PROBES, SKETCH_SLOTS, SYN_NO_SLOT_MAP, Sketch,
    SketchSlot, SourceSample, sketch_slot_home,
};

use crate::{sensor::SensorError, sketch::Distinct};

/// An older version's per-CPU class counters (`scan_common::LEGACY_CLASSES_MAP`).
pub(crate) type LegacyClasses = PerCpuArray<MapData, ClassCounts>;

/// The maps of one load of the program (one per attached interface, plus one for
/// test runs).
pub(crate) struct LoadMaps {
    /// Names the load across messages to the worker.
    pub(crate) id: u64,
    /// `None` for a program loaded only for test runs.
    pub(crate) interface: Option<String>,
    /// Its class slots; `None` only for an older build of the program loaded by the
    /// benchmark, which counts into `legacy_classes`.
    pub(crate) classes: Option<ClassSlotsView>,
    /// What an older version counted for this interface (see
    /// `scan_common::LEGACY_CLASSES_MAP`), added to `classes`.
    pub(crate) legacy_classes: Option<LegacyClasses>,
    /// SYNs this load could not count by port (expected 0; private, not pinned).
    pub(crate) syn_no_slot: PerCpuArray<MapData, u64>,
    /// Its own port map (private maps, or `--per-interface-ports`); `None` when it
    /// counts into the shared pinned one.
    pub(crate) ports: Option<PortCounterView>,
}

/// Every map the agent reads.
#[derive(Default)]
pub struct Counters {
    /// The port map shared by every load through its pin.
    pub(crate) shared_ports: Option<PortCounterView>,
    /// The sketch map, shared by every load (through its pin).
    pub(crate) sketches: Option<SketchView>,
    /// Sampled SYN sources of flagged ports (with the sketches on), shared by every
    /// load (through its pin) like the sketches.
    pub(crate) samples: Option<SampleRing>,
    pub(crate) loads: Vec<LoadMaps>,
}

/// The sample ring, opened as a [`RingBuf`] (which maps it, in full) at the first drain
/// when it came unmapped: the attacher never drains it.
pub(crate) enum SampleRing {
    Unmapped(MapData),
    Mapped(RingBuf<MapData>),
    /// Mapping it failed (logged once).
    Failed,
}

impl SampleRing {
    fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Self::Unmapped(map) => Some(map.fd().as_fd()),
            Self::Mapped(ring) => Some(ring.as_fd()),
            Self::Failed => None,
        }
    }

    fn mapped(&mut self) -> Option<&mut RingBuf<MapData>> {
        if matches!(self, Self::Unmapped(_)) {
            let Self::Unmapped(map) = std::mem::replace(self, Self::Failed) else {
                unreachable!("matched above");
            };
            match RingBuf::try_from(Map::RingBuf(map)) {
                Ok(ring) => *self = Self::Mapped(ring),
                Err(e) => log::error!("{SAMPLES_MAP}: {e}: sampled sources are not read"),
            }
        }
        match self {
            Self::Mapped(ring) => Some(ring),
            _ => None,
        }
    }
}

/// Which maps a message to the worker carries, in the order of its fds (see
/// [`Counters::export`]). The shared maps come once, in the first message.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    pub shared_ports: bool,
    pub sketches: bool,
    pub samples: bool,
    /// Every load there is now; the fds of those the worker does not know yet follow.
    pub loads: Vec<LoadLayout>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadLayout {
    pub id: u64,
    pub interface: Option<String>,
    /// Its fds are in this message: class slots if `class_cpus` is not 0, no-slot
    /// counter, its own port map if `ports`, older class counters if `legacy_classes`.
    pub new: bool,
    /// CPU ids whose class slots are read (0: no class slots).
    pub class_cpus: usize,
    pub ports: bool,
    pub legacy_classes: bool,
}

/// `SensorError::Map` for map `name`, as a `map_err` argument.
pub(crate) fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> SensorError {
    move |source| SensorError::Map {
        name,
        source: Box::new(source),
    }
}

/// Rebuilds a map from an fd received from the attacher (BPF_OBJ_GET_INFO_BY_FD only).
fn received(fd: OwnedFd, name: &'static str) -> Result<MapData, SensorError> {
    MapData::from_fd(fd).map_err(map_error(name))
}

fn port_view(map: MapData) -> Result<PortCounterView, SensorError> {
    let entries = map.info().map_err(map_error(PORT_SYNS_MAP))?.max_entries() as usize;
    if entries == 0 || !entries.is_multiple_of(PORTS as usize) {
        return Err(SensorError::Map {
            name: PORT_SYNS_MAP,
            source: Box::new(aya::maps::MapError::InvalidMapType { map_type: 0 }),
        });
    }
    PortCounterView::new(map, entries)
}

impl Counters {
    /// What the worker needs to read what this process reads: the layout and the
    /// fds it lists (borrowed; sent with `SCM_RIGHTS`, which duplicates them). The
    /// shared maps only with `shared`; per-load fds only of loads not in `known`, and
    /// no more than `max_fds` in all: a new load that does not fit is left out of the
    /// layout (the next export lists it).
    pub fn export(
        &self,
        shared: bool,
        known: &[u64],
        max_fds: usize,
    ) -> (Layout, Vec<BorrowedFd<'_>>) {
        let mut fds = Vec::new();
        let mut layout = Layout::default();
        if shared {
            if let Some(view) = &self.shared_ports {
                layout.shared_ports = true;
                fds.push(view.map().fd().as_fd());
            }
            if let Some(view) = &self.sketches {
                layout.sketches = true;
                fds.push(view.map().fd().as_fd());
            }
            if let Some(fd) = self.samples.as_ref().and_then(SampleRing::as_fd) {
                layout.samples = true;
                fds.push(fd);
            }
        }
        for load in &self.loads {
            let new = !known.contains(&load.id);
            let mut load_fds = Vec::with_capacity(4);
            if let Some(view) = &load.classes {
                load_fds.push(view.map().fd().as_fd());
            }
            load_fds.push(load.syn_no_slot.map().fd().as_fd());
            if let Some(view) = &load.ports {
                load_fds.push(view.map().fd().as_fd());
            }
            if let Some(legacy) = &load.legacy_classes {
                load_fds.push(legacy.map().fd().as_fd());
            }
            if new && fds.len() + load_fds.len() > max_fds {
                continue;
            }
            if new {
                fds.extend(load_fds);
            }
            layout.loads.push(LoadLayout {
                id: load.id,
                interface: load.interface.clone(),
                new,
                class_cpus: load.classes.as_ref().map_or(0, |view| view.cpus),
                ports: load.ports.is_some(),
                legacy_classes: load.legacy_classes.is_some(),
            });
        }
        (layout, fds)
    }

    /// How many loads of the program there are (each with its maps).
    pub fn loads(&self) -> usize {
        self.loads.len()
    }

    /// Applies a layout from the attacher with the fds that came with it (in
    /// [`Counters::export`]'s order): adds the new loads, renames, and drops the loads
    /// it no longer lists (their interface is gone).
    pub fn import(&mut self, layout: &Layout, fds: Vec<OwnedFd>) -> Result<(), SensorError> {
        let wanted = usize::from(layout.shared_ports)
            + usize::from(layout.sketches)
            + usize::from(layout.samples)
            + layout
                .loads
                .iter()
                .filter(|l| l.new)
                .map(|l| {
                    1 + usize::from(l.class_cpus != 0)
                        + usize::from(l.ports)
                        + usize::from(l.legacy_classes)
                })
                .sum::<usize>();
        if fds.len() != wanted {
            return Err(SensorError::Layout(format!(
                "{} map fds received, {wanted} listed",
                fds.len()
            )));
        }
        let mut fds = fds.into_iter();
        let mut next = || fds.next().expect("counted above");
        if layout.shared_ports {
            self.shared_ports = Some(port_view(received(next(), PORT_SYNS_MAP)?)?);
        }
        if layout.sketches {
            self.sketches = Some(SketchView::new(received(next(), SKETCH_MAP)?)?);
        }
        if layout.samples {
            self.samples = Some(SampleRing::Mapped(
                RingBuf::try_from(Map::RingBuf(received(next(), SAMPLES_MAP)?))
                    .map_err(map_error(SAMPLES_MAP))?,
            ));
        }
        let mut loads = Vec::with_capacity(layout.loads.len());
        for l in &layout.loads {
            if !l.new {
                let Some(at) = self.loads.iter().position(|have| have.id == l.id) else {
                    return Err(SensorError::Layout(format!(
                        "load {} listed as known, but it never came",
                        l.id
                    )));
                };
                let mut load = self.loads.swap_remove(at);
                load.interface.clone_from(&l.interface);
                loads.push(load);
                continue;
            }
            let classes = if l.class_cpus != 0 {
                let map = received(next(), CLASS_SLOTS_MAP)?;
                Some(ClassSlotsView::new(map, l.class_cpus)?)
            } else {
                None
            };
            let syn_no_slot =
                PerCpuArray::try_from(Map::PerCpuArray(received(next(), SYN_NO_SLOT_MAP)?))
                    .map_err(map_error(SYN_NO_SLOT_MAP))?;
            let ports = if l.ports {
                Some(port_view(received(next(), PORT_SYNS_MAP)?)?)
            } else {
                None
            };
            let legacy_classes = if l.legacy_classes {
                let map = received(next(), LEGACY_CLASSES_MAP)?;
                Some(
                    PerCpuArray::try_from(Map::PerCpuArray(map))
                        .map_err(map_error(LEGACY_CLASSES_MAP))?,
                )
            } else {
                None
            };
            loads.push(LoadMaps {
                id: l.id,
                interface: l.interface.clone(),
                classes,
                legacy_classes,
                syn_no_slot,
                ports,
            });
        }
        // Loads not listed any more are dropped here (their maps closed).
        self.loads = loads;
        Ok(())
    }

    /// Per-port SYN totals, summed over CPUs and port maps, into `out` (length >= 65,536).
    pub fn read_ports(&self, out: &mut [u64]) {
        let mut views = self
            .shared_ports
            .iter()
            .chain(self.loads.iter().filter_map(|l| l.ports.as_ref()));
        match views.next() {
            Some(first) => first.sum_into(out),
            None => out[..PORTS as usize].fill(0),
        }
        for view in views {
            view.add_into(out);
        }
    }

    /// Appends the sketches of every port that has a slot and saw a SYN since the
    /// last call, and resets them: each call returns one interval's sketches.
    pub fn take_sketches(&self, out: &mut Vec<PortSketches>) {
        let Some(view) = self.sketches.as_ref().filter(|v| v.ready()) else {
            return;
        };
        for index in 0..SKETCH_SLOTS as usize {
            let slot = view.slot(index);
            // SAFETY: inside the mapping; volatile read of the tag.
            let tag = unsafe { (&raw const (*slot).port).read_volatile() };
            if tag == 0 || tag > PORTS {
                continue;
            }
            // SAFETY: as above.
            let (sources, targets) = unsafe {
                (
                    SketchView::take(&raw mut (*slot).sources),
                    SketchView::take(&raw mut (*slot).targets),
                )
            };
            if sources.is_empty() && targets.is_empty() {
                continue;
            }
            let port = (tag - 1) as u16;
            // A port may hold two slots (see `SKETCH_PROBES`): one entry per port.
            match out.iter_mut().find(|p| p.port == port) {
                Some(entry) => {
                    entry.sources.merge(&sources);
                    entry.targets.merge(&targets);
                }
                None => out.push(PortSketches {
                    port,
                    sources,
                    targets,
                }),
            }
        }
    }

    /// Lets each of `ports` send up to `budget` SYN sources to the sample ring until
    /// the next call; every other port sends none. Only ports holding a sketch slot
    /// can be sampled (a flagged port has one: it received SYNs).
    pub fn set_sample_budgets(&self, ports: &[u16], budget: u32) {
        let Some(view) = self.sketches.as_ref().filter(|v| v.ready()) else {
            return;
        };
        for index in 0..SKETCH_SLOTS as usize {
            let slot = view.slot(index);
            // SAFETY: inside the mapping; volatile accesses.
            unsafe {
                let tag = (&raw const (*slot).port).read_volatile();
                let sampled = tag != 0 && ports.contains(&((tag - 1) as u16));
                let want = if sampled { budget } else { 0 };
                let current = &raw mut (*slot).sample_budget;
                if current.read_volatile() != want {
                    current.write_volatile(want);
                }
            }
        }
    }

    /// Appends the SYN sources sampled since the last call (see
    /// [`Counters::set_sample_budgets`]).
    pub fn drain_samples(&mut self, out: &mut Vec<SourceSample>) {
        let Some(ring) = self.samples.as_mut().and_then(SampleRing::mapped) else {
            return;
        };
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<SourceSample>() {
                // SAFETY: the program writes whole `SourceSample`s (plain integers);
                // the read is unaligned-safe.
                out.push(unsafe { item.as_ptr().cast::<SourceSample>().read_unaligned() });
            }
        }
    }

    /// SYNs not sketched because every slot their port probed was taken (cumulative).
    pub fn sketch_misses(&self) -> u64 {
        let Some(view) = self.sketches.as_ref().filter(|v| v.ready()) else {
            return 0;
        };
        (0..SKETCH_SLOTS as usize)
            .map(|index| {
                // SAFETY: inside the mapping; volatile read.
                u64::from(unsafe { (&raw const (*view.slot(index)).misses).read_volatile() })
            })
            .sum()
    }

    /// Frees `port`'s slot (if it has one) for other ports, discarding what it holds.
    /// The agent frees the slots of ports idle for a whole short window.
    pub fn free_sketch_slot(&self, port: u16) {
        let Some(view) = self.sketches.as_ref().filter(|v| v.ready()) else {
            return;
        };
        let home = sketch_slot_home(port);
        for probe in 0..SKETCH_PROBES {
            let slot = view.slot(((home + probe) & (SKETCH_SLOTS - 1)) as usize);
            // SAFETY: inside the mapping; volatile accesses.
            unsafe {
                if (&raw const (*slot).port).read_volatile() == u32::from(port) + 1 {
                    SketchView::take(&raw mut (*slot).sources);
                    SketchView::take(&raw mut (*slot).targets);
                    (&raw mut (*slot).port).write_volatile(0);
                }
            }
        }
    }

    /// Frees every slot, discarding what they hold: for a reader (replay) that takes
    /// the sketches often and keeps its own union, so any number of ports take turns.
    pub fn release_sketch_slots(&self) {
        let Some(view) = self.sketches.as_ref().filter(|v| v.ready()) else {
            return;
        };
        for index in 0..SKETCH_SLOTS as usize {
            let slot = view.slot(index);
            // SAFETY: inside the mapping; volatile accesses.
            unsafe {
                if (&raw const (*slot).port).read_volatile() != 0 {
                    SketchView::take(&raw mut (*slot).sources);
                    SketchView::take(&raw mut (*slot).targets);
                    (&raw mut (*slot).port).write_volatile(0);
                }
            }
        }
    }

    /// Ports holding a sketch slot now.
    pub fn sketched_ports(&self) -> usize {
        let Some(view) = self.sketches.as_ref().filter(|v| v.ready()) else {
            return 0;
        };
        (0..SKETCH_SLOTS as usize)
            .filter(|&index| {
                // SAFETY: inside the mapping; volatile read of the tag.
                unsafe { (&raw const (*view.slot(index)).port).read_volatile() != 0 }
            })
            .count()
    }

    /// SYNs that found no port slot, summed over CPUs and loads (expected 0).
    pub fn read_syn_no_slot(&self) -> Result<u64, SensorError> {
        let mut total = 0u64;
        for load in &self.loads {
            let values = load
                .syn_no_slot
                .get(&0, 0)
                .map_err(|source| SensorError::Map {
                    name: SYN_NO_SLOT_MAP,
                    source: Box::new(source),
                })?;
            total = values.iter().copied().fold(total, u64::wrapping_add);
        }
        Ok(total)
    }

    /// Packet-class totals summed over CPUs and interfaces.
    pub fn read_classes(&self) -> Result<ClassCounts, SensorError> {
        let mut counts = ClassCounts::default();
        for load in &self.loads {
            counts.add(&read_load_classes(load)?.0);
        }
        Ok(counts)
    }

    /// Packet-class totals per attached interface, summed over CPUs.
    pub fn read_interface_classes(&self) -> Result<Vec<(String, ClassCounts)>, SensorError> {
        self.loads
            .iter()
            .filter_map(|i| i.interface.as_ref().map(|name| (name, i)))
            .map(|(name, i)| Ok((name.clone(), read_load_classes(i)?)))
            .collect()
    }
}

fn read_load_classes(load: &LoadMaps) -> Result<ClassCounts, SensorError> {
    let mut counts = match &load.classes {
        Some(view) => view.read()?,
        None => ClassCounts::default(),
    };
    if let Some(legacy) = &load.legacy_classes {
        let values = legacy.get(&0, 0).map_err(map_error(LEGACY_CLASSES_MAP))?;
        for cpu in values.iter() {
            counts.add(&cpu.0);
        }
    }
    Ok(counts)
}

/// A `BPF_F_MMAPABLE` array of the program mapped into this process, now
/// ([`Mapping::new`]) or at the first use ([`Mapping::deferred`]): the attacher of
/// `scan-agent run` never reads the counters (its worker does), and a BPF array's
/// mapping is resident in full from the `mmap` on, so it does not map them. A failed
/// `mmap` is logged once, saying what goes unread, and the mapping stays absent.
pub(crate) struct Mapping {
    /// The mapping, once tried (`None` inside: the `mmap` failed).
    base: std::sync::OnceLock<Option<NonNull<u8>>>,
    len: usize,
    writable: bool,
    name: &'static str,
    /// What goes unread when the `mmap` fails (for the log).
    unread: &'static str,
    // Keeps the map alive while mapped.
    map: MapData,
}

// SAFETY: shared memory, accessed only through volatile reads and writes.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `map` now.
    fn new(
        map: MapData,
        len: usize,
        writable: bool,
        name: &'static str,
        unread: &'static str,
    ) -> Result<Self, SensorError> {
        let mapping = Self::deferred(map, len, writable, name, unread);
        let base = mapping.mmap()?;
        let _ = mapping.base.set(Some(base));
        Ok(mapping)
    }

    /// Maps the first `len` bytes of `map` at the first use.
    fn deferred(
        map: MapData,
        len: usize,
        writable: bool,
        name: &'static str,
        unread: &'static str,
    ) -> Self {
        Self {
            base: std::sync::OnceLock::new(),
            len,
            writable,
            name,
            unread,
            map,
        }
    }

    fn mmap(&self) -> Result<NonNull<u8>, SensorError> {
        let prot = if self.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: maps the first `len` bytes of a BPF_F_MMAPABLE array (never more than
        // its values); the kernel lays the values out from offset 0 at their 8-byte stride.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.len,
                prot,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&self.map.fd().as_fd()),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(SensorError::Mmap(self.name, io::Error::last_os_error()));
        }
        NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| SensorError::Mmap(self.name, io::Error::other("null mapping")))
    }

    /// The mapping, made now if it was deferred; `None` if that failed (logged once).
    fn base(&self) -> Option<NonNull<u8>> {
        *self.base.get_or_init(|| {
            self.mmap()
                .map_err(|e| log::error!("{e}: {} not read", self.unread))
                .ok()
        })
    }

    fn map(&self) -> &MapData {
        &self.map
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(Some(base)) = self.base.get() {
            // SAFETY: unmaps exactly what `mmap` mapped.
            unsafe { libc::munmap(base.as_ptr().cast(), self.len) };
        }
    }
}

/// Read-only view of one load's class slots (see `scan_common::CLASS_SLOTS_MAP`): the
/// slots of the first `cpus` CPU ids (the possible ones), mapped at the first read.
pub(crate) struct ClassSlotsView {
    mapping: Mapping,
    cpus: usize,
}

impl ClassSlotsView {
    pub(crate) fn new(map: MapData, cpus: usize) -> Result<Self, SensorError> {
        if cpus == 0 || cpus > CLASS_SLOT_CPUS {
            return Err(SensorError::Layout(format!(
                "{cpus} CPUs of class slots (1 to {CLASS_SLOT_CPUS})"
            )));
        }
        let len = cpus * size_of::<ClassSlots>();
        Ok(Self {
            mapping: Mapping::deferred(map, len, false, CLASS_SLOTS_MAP, "packet classes are"),
            cpus,
        })
    }

    fn map(&self) -> &MapData {
        self.mapping.map()
    }

    /// The classes counted on every CPU.
    fn read(&self) -> Result<ClassCounts, SensorError> {
        let base = self.mapping.base().ok_or_else(|| {
            SensorError::Mmap(CLASS_SLOTS_MAP, io::Error::other("not mapped (logged)"))
        })?;
        let base = base.cast::<ClassSlots>();
        let mut total = ClassSlots::ZERO;
        for cpu in 0..self.cpus {
            for (word, sum) in total.counts.iter_mut().enumerate() {
                // SAFETY: cpu < cpus, inside the mapping; the program writes these
                // words concurrently, so read each one volatile.
                let value =
                    unsafe { (&raw const (*base.as_ptr().add(cpu)).counts[word]).read_volatile() };
                *sum = sum.wrapping_add(value);
            }
        }
        Ok(ClassCounts::from_slots(&total))
    }
}

/// Read-only view of the per-CPU port counters (see `scan_common::PORT_SYNS_MAP`).
pub(crate) struct PortCounterView {
    mapping: Mapping,
    entries: usize,
}

impl PortCounterView {
    /// Maps the counters now.
    pub(crate) fn new(map: MapData, entries: usize) -> Result<Self, SensorError> {
        Ok(Self {
            mapping: Mapping::new(map, Self::len(entries), false, PORT_SYNS_MAP, UNREAD_PORTS)?,
            entries,
        })
    }

    /// Maps the counters at the first read.
    pub(crate) fn deferred(map: MapData, entries: usize) -> Self {
        Self {
            mapping: Mapping::deferred(map, Self::len(entries), false, PORT_SYNS_MAP, UNREAD_PORTS),
            entries,
        }
    }

    fn len(entries: usize) -> usize {
        entries * size_of::<u64>()
    }

    fn map(&self) -> &MapData {
        self.mapping.map()
    }

    /// Sums the CPU slices into `out[port]`; no syscall.
    fn sum_into(&self, out: &mut [u64]) {
        out[..PORTS as usize].fill(0);
        self.add_into(out);
    }

    /// Adds the CPU slices into `out[port]`.
    fn add_into(&self, out: &mut [u64]) {
        let Some(base) = self.mapping.base() else {
            return;
        };
        let base = base.cast::<u64>();
        let ports = PORTS as usize;
        for slice in 0..self.entries / ports {
            let start = slice * ports;
            for (port, total) in out[..ports].iter_mut().enumerate() {
                // SAFETY: start + port < entries, inside the mapping; the kernel
                // writes these words concurrently, so read each one volatile.
                let value = unsafe { base.as_ptr().add(start + port).read_volatile() };
                *total = total.wrapping_add(value);
            }
        }
    }
}

const UNREAD_PORTS: &str = "the port counters are";

/// Read-write view of the sketch slots (see `scan_common::SKETCH_MAP`): the agent
/// copies each used slot out and resets it, once per poll.
pub(crate) struct SketchView {
    mapping: Mapping,
}

const SKETCH_VIEW_LEN: usize = SKETCH_SLOTS as usize * size_of::<SketchSlot>();
const UNREAD_SKETCHES: &str = "distinct sources and targets are";

impl SketchView {
    /// Maps the slots now.
    pub(crate) fn new(map: MapData) -> Result<Self, SensorError> {
        Ok(Self {
            mapping: Mapping::new(map, SKETCH_VIEW_LEN, true, SKETCH_MAP, UNREAD_SKETCHES)?,
        })
    }

    /// Maps the slots at the first use.
    pub(crate) fn deferred(map: MapData) -> Self {
        Self {
            mapping: Mapping::deferred(map, SKETCH_VIEW_LEN, true, SKETCH_MAP, UNREAD_SKETCHES),
        }
    }

    /// Whether the slots are mapped, mapping them now if that was deferred (a failure is
    /// logged once; the sketches are then left alone).
    fn ready(&self) -> bool {
        self.mapping.base().is_some()
    }

    fn map(&self) -> &MapData {
        self.mapping.map()
    }

    /// Slot `index`; only after [`SketchView::ready`] returned true.
    fn slot(&self, index: usize) -> *mut SketchSlot {
        debug_assert!(index < SKETCH_SLOTS as usize);
        let base = self
            .mapping
            .base()
            .expect("slot() is reached only through a ready() view");
        // SAFETY: index < SKETCH_SLOTS, inside the mapping.
        unsafe { base.cast::<SketchSlot>().as_ptr().add(index) }
    }

    /// Copies a sketch out and resets it. The program writes concurrently: every
    /// access is volatile, and an insert landing between the copy and the reset is
    /// lost (a window of microseconds per poll).
    fn take(sketch: *mut Sketch) -> Distinct {
        // SAFETY: `sketch` points into the mapping; volatile 4-byte accesses only.
        unsafe {
            let len_ptr = &raw mut (*sketch).exact_len;
            let len = len_ptr.read_volatile();
            if len == 0 {
                return Distinct::default();
            }
            let mut copy = Sketch {
                exact_len: len,
                exact: [0; scan_common::SKETCH_EXACT],
                registers: [0; scan_common::SKETCH_REGISTERS],
            };
            let exact = (&raw mut (*sketch).exact).cast::<u32>();
            for (i, value) in copy.exact.iter_mut().enumerate() {
                *value = exact.add(i).read_volatile();
            }
            if len as usize > scan_common::SKETCH_EXACT {
                let registers = (&raw mut (*sketch).registers).cast::<u32>();
                let words = scan_common::SKETCH_REGISTERS / 4;
                for i in 0..words {
                    let word = registers.add(i).read_volatile();
                    copy.registers[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
                    registers.add(i).write_volatile(0);
                }
            } else {
                // Registers of a list-sized sketch hold only what the list holds.
                let registers = (&raw mut (*sketch).registers).cast::<u32>();
                for i in 0..scan_common::SKETCH_REGISTERS / 4 {
                    registers.add(i).write_volatile(0);
                }
            }
            len_ptr.write_volatile(0);
            Distinct::from_kernel(&copy)
        }
    }
}

/// One port's sketches since the previous [`Counters::take_sketches`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSketches {
    pub port: u16,
    pub sources: Distinct,
    pub targets: Distinct,
}
