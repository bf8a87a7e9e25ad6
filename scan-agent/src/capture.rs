//! Reading and writing packet captures (pcap and pcapng) of Ethernet frames.
//!
//! [`CaptureReader`] streams `(timestamp since the UNIX epoch, frame bytes)` from a pcap
//! (microsecond or nanosecond, either byte order) or pcapng file, for the Ethernet link
//! type only. It never panics, whatever the bytes: every problem is a [`CaptureError`]
//! naming the file and what is wrong with it.
//!
//! What counts as an error:
//! - a file of **0 bytes** is [`CaptureError::Empty`]: it has no header, so it is not a
//!   capture of anything (typically a capture that was killed before it started);
//! - a file with a **valid header and no packets** is *not* an error: it is a capture of
//!   nothing, and yields no frames;
//! - a first word that is no pcap or pcapng magic is [`CaptureError::WrongMagic`];
//! - a file that ends inside a header or a packet is [`CaptureError::Truncated`] (a
//!   capture cut short, or a record whose length field is corrupt); the frames before it
//!   have been yielded;
//! - impossible field values are [`CaptureError::Corrupt`];
//! - a link type other than Ethernet (`LINKTYPE_ETHERNET`, 1) or raw IP
//!   (`LINKTYPE_RAW` 101, `LINKTYPE_IPV4` 228, `LINKTYPE_IPV6` 229) is
//!   [`CaptureError::LinkType`], naming it: for pcap when the file is opened, for pcapng
//!   at the first packet of such an interface (or of an interface whose link kind
//!   differs from the first packet's: one replay runs one parser entry point).
//!
//! Leniency, as libpcap: a pcap record whose captured length exceeds the snapshot
//! length or whose original length is smaller is accepted (some writers do that), but
//! one above 256 KiB (libpcap's own limit) is corrupt. pcapng timestamps honour the
//! interface's `if_tsresol` (default microseconds) and `if_tsoffset`; a Simple Packet
//! Block has no timestamp and gets the previous packet's.
//!
//! The input is read once, in order, never seeked: `-` reads standard input, and
//! [`CaptureReader::from_reader`] any byte stream. A path must be a regular file: a FIFO,
//! a device or a directory is refused before anything is read.
//!
//! Writing captures is test support and lives in the dev crate (`scan_lab::pcap`).
use scan_common::LinkKind;
use std::{
    io::{self, Read},
    path::{Path, PathBuf},
    time::Duration,
};

use pcap_file::{
    DataLink, Endianness, PcapError, TsResolution,
    pcap::PcapReader,
    pcapng::{
        PcapNgReader,
        blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
    },
};

/// Largest frame libpcap accepts in a capture (its `MAXIMUM_SNAPLEN`).
pub const MAX_FRAME: u32 = 262_144;

const PCAP_MAGICS: [u32; 4] = [0xA1B2_C3D4, 0xD4C3_B2A1, 0xA1B2_3C4D, 0x4D3C_B2A1];
const PCAPNG_MAGIC: u32 = 0x0A0D_0D0A;
const EPB: u32 = 6;
const SPB: u32 = 3;
const OBSOLETE_PB: u32 = 2;

/// Why a capture cannot be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open capture {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read capture {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{detail}")]
    NotRegular { path: PathBuf, detail: String },
    #[error(
        "capture {} is empty (0 bytes): not even a file header, so there is nothing to \
         replay; was the capture stopped before it started?",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "{} is not a pcap or pcapng capture: it starts with {magic}{hint}; give a capture \
         written by tcpdump, tshark, dumpcap or `scan-agent`",
        path.display()
    )]
    WrongMagic {
        path: PathBuf,
        magic: String,
        hint: &'static str,
    },
    #[error("capture {} is truncated: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },
    #[error("capture {} is corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "capture {} has link type {name} ({code}){context}; only Ethernet captures \
         (LINKTYPE_ETHERNET, 1) and raw IP captures (LINKTYPE_RAW 101, IPV4 228, IPV6 229) \
         can be replayed through the program, one link kind per capture: capture on one \
         interface (`tcpdump -i eth0` or `-i ppp0`), not on `any` (LINUX_SLL)",
        path.display()
    )]
    LinkType {
        path: PathBuf,
        name: String,
        code: u32,
        context: String,
    },
}

/// The container format of a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFormat {
    Pcap,
    PcapNg,
}

/// A streaming reader of Ethernet frames; see the module documentation.
pub struct CaptureReader {
    path: PathBuf,
    inner: Inner,
    /// Packets yielded so far.
    packets: u64,
    /// After an error, nothing more is read.
    done: bool,
    /// What the frames start with: known at open for pcap, at the first packet for pcapng.
    kind: Option<LinkKind>,
}

/// Where the bytes come from: a file, standard input, or memory; read once, in order,
/// never seeked (so a pipe works).
type Source = Box<dyn Read + Send>;

enum Inner {
    Pcap(PcapReader<Source>),
    PcapNg {
        reader: PcapNgReader<Source>,
        last: Duration,
    },
}

/// What the frames of a link type start with, if the program can parse it.
fn link_kind(link: DataLink) -> Option<LinkKind> {
    match link {
        DataLink::ETHERNET => Some(LinkKind::Ethernet),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Some(LinkKind::RawIp),
        _ => None,
    }
}

/// A link type as libpcap names it, e.g. `LINKTYPE_RAW`.
fn link_name(link: DataLink) -> String {
    match link {
        DataLink::Unknown(code) => format!("unknown link type {code}"),
        known => format!("LINKTYPE_{known:?}"),
    }
}

impl CaptureReader {
    /// Opens a pcap or pcapng file and checks its header. `-` reads standard input.
    /// Anything but a regular file (a FIFO, a device, a directory) is refused unread:
    /// reading a FIFO would wait for a writer.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        if path == Path::new("-") {
            return Self::from_reader(path, io::stdin());
        }
        let (file, _) =
            crate::input::open_regular(path, crate::input::CAPTURE).map_err(|e| match e {
                crate::input::InputError::Open { source, .. } => CaptureError::Open {
                    path: path.to_path_buf(),
                    source,
                },
                other => CaptureError::NotRegular {
                    path: path.to_path_buf(),
                    detail: other.to_string(),
                },
            })?;
        Self::from_reader(path, file)
    }

    /// Reads a capture from any byte stream, in one pass; `path` names it in errors.
    pub fn from_reader(
        path: &Path,
        source: impl Read + Send + 'static,
    ) -> Result<Self, CaptureError> {
        let path_buf = path.to_path_buf();
        let mut source = source;
        let io_error = |source| CaptureError::Io {
            path: path_buf.clone(),
            source,
        };
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match source.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        if got == 0 {
            return Err(CaptureError::Empty { path: path_buf });
        }
        if got < magic.len() {
            return Err(CaptureError::Truncated {
                path: path_buf,
                detail: format!(
                    "the file is only {got} bytes long, shorter than any capture header"
                ),
            });
        }
        // The magic goes back in front of the rest: no seek, so pipes work.
        let file: Source = Box::new(io::Cursor::new(magic).chain(source));
        let word = u32::from_be_bytes(magic);
        let mut kind = None;
        let inner = if PCAP_MAGICS.contains(&word) {
            let reader = PcapReader::new(file)
                .map_err(|e| pcap_error(&path_buf, e, "the 24-byte pcap file header"))?;
            let link = reader.header().datalink;
            let Some(link_kind) = link_kind(link) else {
                return Err(CaptureError::LinkType {
                    path: path_buf,
                    name: link_name(link),
                    code: link.into(),
                    context: String::new(),
                });
            };
            kind = Some(link_kind);
            Inner::Pcap(reader)
        } else if word == PCAPNG_MAGIC {
            let reader = PcapNgReader::new(file)
                .map_err(|e| pcap_error(&path_buf, e, "the pcapng section header block"))?;
            Inner::PcapNg {
                reader,
                last: Duration::ZERO,
            }
        } else {
            let hint = match magic {
                [0x1F, 0x8B, ..] => " (gzip-compressed: decompress it first)",
                [0x28, 0xB5, 0x2F, 0xFD] => " (zstd-compressed: decompress it first)",
                [0xA1, 0xB2, 0xCD, 0x34] | [0x34, 0xCD, 0xB2, 0xA1] => {
                    " (Kuznetzov's modified pcap: convert it with `editcap -F pcap`)"
                }
                _ => "",
            };
            return Err(CaptureError::WrongMagic {
                path: path_buf,
                magic: format!(
                    "{:02x} {:02x} {:02x} {:02x}",
                    magic[0], magic[1], magic[2], magic[3]
                ),
                hint,
            });
        };
        Ok(Self {
            path: path_buf,
            inner,
            packets: 0,
            done: false,
            kind,
        })
    }

    /// What the frames start with; `None` for a pcapng file before its first packet.
    pub fn link_kind(&self) -> Option<LinkKind> {
        self.kind
    }

    /// pcap or pcapng.
    pub fn format(&self) -> CaptureFormat {
        match self.inner {
            Inner::Pcap(_) => CaptureFormat::Pcap,
            Inner::PcapNg { .. } => CaptureFormat::PcapNg,
        }
    }

    /// The path (or name) the capture was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Packets read so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The next frame, `None` at the end, or the error that stops the reading.
    pub fn next_frame(&mut self) -> Option<Result<(Duration, Vec<u8>), CaptureError>> {
        if self.done {
            return None;
        }
        let next = match &mut self.inner {
            Inner::Pcap(reader) => next_pcap(&self.path, reader, self.packets),
            Inner::PcapNg { reader, last } => {
                next_pcapng(&self.path, reader, last, &mut self.kind, self.packets)
            }
        };
        match &next {
            Some(Ok(_)) => self.packets += 1,
            Some(Err(_)) | None => self.done = true,
        }
        next
    }
}

impl Iterator for CaptureReader {
    type Item = Result<(Duration, Vec<u8>), CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame()
    }
}

/// Reads every frame of a capture into memory.
pub fn read_capture(path: &Path) -> Result<Vec<(Duration, Vec<u8>)>, CaptureError> {
    CaptureReader::open(path)?.collect()
}

/// Maps a pcap-file error met while reading `what`.
fn pcap_error(path: &Path, error: PcapError, what: &str) -> CaptureError {
    let path = path.to_path_buf();
    match error {
        PcapError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            CaptureError::Truncated {
                path,
                detail: format!("the file ends inside {what}"),
            }
        }
        PcapError::IncompleteBuffer => CaptureError::Truncated {
            path,
            detail: format!("the file ends inside {what}"),
        },
        PcapError::IoError(source) => CaptureError::Io { path, source },
        other => CaptureError::Corrupt {
            path,
            detail: format!("{what}: {other}"),
        },
    }
}

fn next_pcap(
    path: &Path,
    reader: &mut PcapReader<Source>,
    index: u64,
) -> Option<Result<(Duration, Vec<u8>), CaptureError>> {
    let header = reader.header();
    let raw = match reader.next_raw_packet()? {
        Ok(raw) => raw,
        Err(e) => {
            return Some(Err(pcap_error(
                path,
                e,
                &format!(
                    "packet record {} (or the record's length field is corrupt)",
                    index + 1
                ),
            )));
        }
    };
    if raw.incl_len > MAX_FRAME {
        return Some(Err(CaptureError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "packet record {} claims {} captured bytes, more than any capture holds \
                 ({MAX_FRAME})",
                index + 1,
                raw.incl_len
            ),
        }));
    }
    let nanos = match header.ts_resolution {
        TsResolution::MicroSecond => u64::from(raw.ts_frac) * 1_000,
        TsResolution::NanoSecond => u64::from(raw.ts_frac),
    };
    // Lenient like libpcap: an out-of-range fraction carries into the seconds.
    let timestamp = Duration::from_secs(u64::from(raw.ts_sec)) + Duration::from_nanos(nanos);
    Some(Ok((timestamp, raw.data.into_owned())))
}

fn read_u32(bytes: &[u8], at: usize, endianness: Endianness) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(match endianness {
        Endianness::Big => u32::from_be_bytes(word),
        Endianness::Little => u32::from_le_bytes(word),
    })
}

fn read_u16(bytes: &[u8], at: usize, endianness: Endianness) -> Option<u16> {
    let word: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
    Some(match endianness {
        Endianness::Big => u16::from_be_bytes(word),
        Endianness::Little => u16::from_le_bytes(word),
    })
}

/// A pcapng timestamp in the interface's resolution, converted to a `Duration`.
fn pcapng_time(raw: u64, interface: &InterfaceDescriptionBlock) -> Duration {
    let mut resolution = 6u8;
    let mut offset_secs = 0u64;
    for option in &interface.options {
        match option {
            InterfaceDescriptionOption::IfTsResol(r) => resolution = *r,
            InterfaceDescriptionOption::IfTsOffset(o) => offset_secs = *o,
            _ => {}
        }
    }
    let raw = u128::from(raw);
    let (secs, nanos) = if resolution & 0x80 == 0 {
        match 10u128.checked_pow(u32::from(resolution)) {
            Some(units) => {
                let frac = raw % units;
                let nanos = if resolution <= 9 {
                    frac * 10u128.pow(9 - u32::from(resolution))
                } else {
                    frac / 10u128.pow(u32::from(resolution) - 9)
                };
                (raw / units, nanos)
            }
            None => (0, 0),
        }
    } else {
        let bits = u32::from(resolution & 0x7F);
        let frac = raw & ((1u128 << bits) - 1);
        (raw >> bits, (frac * 1_000_000_000) >> bits)
    };
    let secs = u64::try_from(secs)
        .unwrap_or(u64::MAX)
        .saturating_add(offset_secs);
    Duration::from_secs(secs).saturating_add(Duration::from_nanos(nanos as u64))
}

fn next_pcapng(
    path: &Path,
    reader: &mut PcapNgReader<Source>,
    last: &mut Duration,
    kind: &mut Option<LinkKind>,
    index: u64,
) -> Option<Result<(Duration, Vec<u8>), CaptureError>> {
    let corrupt = |detail: String| CaptureError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    // Raw blocks: packet blocks are decoded here, because pcap-file 2's decoded
    // Enhanced Packet Block reads the raw timestamp as nanoseconds whatever the
    // interface's if_tsresol (microseconds by default, so 1,000x too small), and no other
    // block type is decoded beyond what the reader needs (sections and interfaces).
    loop {
        let endianness = reader.section().endianness;
        let packet = index + 1;
        // The block borrows the reader's buffer: take what is needed, then look up the
        // interface.
        let (interface_id, raw_time, mut data) = {
            let block = match reader.next_raw_block()? {
                Ok(block) => block,
                Err(e) => {
                    return Some(Err(pcap_error(
                        path,
                        e,
                        &format!(
                            "the block after packet {index} (or the block's length field is \
                             corrupt)"
                        ),
                    )));
                }
            };
            let body: &[u8] = &block.body;
            match block.type_ {
                EPB | OBSOLETE_PB => {
                    let fields = (|| {
                        let interface_id = if block.type_ == EPB {
                            read_u32(body, 0, endianness)?
                        } else {
                            u32::from(read_u16(body, 0, endianness)?)
                        };
                        let high = u64::from(read_u32(body, 4, endianness)?);
                        let low = u64::from(read_u32(body, 8, endianness)?);
                        let captured = read_u32(body, 12, endianness)? as usize;
                        Some((interface_id, (high << 32) | low, captured))
                    })();
                    let Some((interface_id, raw_time, captured)) = fields else {
                        return Some(Err(corrupt(format!(
                            "packet block {packet} is shorter than its fixed fields"
                        ))));
                    };
                    let Some(data) = body.get(20..).and_then(|rest| rest.get(..captured)) else {
                        return Some(Err(corrupt(format!(
                            "packet block {packet} claims {captured} captured bytes, more than \
                             the block holds"
                        ))));
                    };
                    (interface_id, Some(raw_time), data.to_vec())
                }
                SPB => {
                    let Some(original) = read_u32(body, 0, endianness) else {
                        return Some(Err(corrupt(format!(
                            "simple packet block {packet} has no length"
                        ))));
                    };
                    let len = (body.len() - 4).min(original as usize);
                    (0, None, body[4..4 + len].to_vec())
                }
                _ => continue,
            }
        };
        let Some(interface) = reader.interfaces().get(interface_id as usize) else {
            return Some(Err(corrupt(format!(
                "packet {packet} is on interface {interface_id}, which no interface block \
                 describes"
            ))));
        };
        let this_kind = link_kind(interface.linktype);
        if this_kind.is_none() || kind.is_some_and(|k| Some(k) != this_kind) {
            return Some(Err(CaptureError::LinkType {
                path: path.to_path_buf(),
                name: link_name(interface.linktype),
                code: interface.linktype.into(),
                context: format!(" on interface {interface_id} (packet {packet})"),
            }));
        }
        *kind = this_kind;
        let timestamp = match raw_time {
            Some(raw) => pcapng_time(raw, interface),
            None => {
                // A simple packet block: no timestamp, and the snapshot length applies.
                if interface.snaplen != 0 {
                    data.truncate(interface.snaplen as usize);
                }
                *last
            }
        };
        if data.len() > MAX_FRAME as usize {
            return Some(Err(corrupt(format!(
                "packet {packet} has {} captured bytes, more than any capture holds ({MAX_FRAME})",
                data.len()
            ))));
        }
        *last = timestamp;
        return Some(Ok((timestamp, data)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(
        options: Vec<InterfaceDescriptionOption<'static>>,
    ) -> InterfaceDescriptionBlock<'static> {
        InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options,
        }
    }

    #[test]
    fn pcapng_resolutions() {
        let micro = interface(vec![]);
        assert_eq!(pcapng_time(1_500_000, &micro), Duration::from_millis(1500));
        let nano = interface(vec![InterfaceDescriptionOption::IfTsResol(9)]);
        assert_eq!(
            pcapng_time(1_500_000_001, &nano),
            Duration::new(1, 500_000_001)
        );
        let binary = interface(vec![InterfaceDescriptionOption::IfTsResol(0x80 | 10)]);
        assert_eq!(
            pcapng_time(1024 + 512, &binary),
            Duration::from_millis(1500)
        );
        let pico = interface(vec![
            InterfaceDescriptionOption::IfTsResol(12),
            InterfaceDescriptionOption::IfTsOffset(10),
        ]);
        assert_eq!(
            pcapng_time(2_000_000_000_001, &pico),
            Duration::from_secs(12)
        );
        for r in [0u8, 19, 20, 38, 39, 127, 0x80, 0xBF, 0xC0, 0xFF] {
            let weird = interface(vec![InterfaceDescriptionOption::IfTsResol(r)]);
            let _ = pcapng_time(u64::MAX, &weird);
            let _ = pcapng_time(0, &weird);
        }
    }
}
