//! Writing packet captures of Ethernet frames, for tests, the corpus example and the
//! differential test's mismatch dumps (the agent itself only reads captures).
use std::{
    borrow::Cow,
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use pcap_file::{
    DataLink, Endianness, TsResolution,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::EnhancedPacketBlock,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};

/// Largest frame libpcap accepts in a capture (its `MAXIMUM_SNAPLEN`).
pub const MAX_FRAME: u32 = 262_144;

/// Writes Ethernet frames as a nanosecond-resolution pcap (native byte order), readable
/// by tcpdump, Wireshark and `scan_agent::capture::CaptureReader`. Timestamps are since
/// the UNIX epoch and must fit pcap's 32-bit seconds (before 2106); frames are at most
/// [`MAX_FRAME`] bytes.
pub fn write_pcap(path: &Path, frames: &[(Duration, Vec<u8>)]) -> Result<()> {
    write_pcap_link(path, DataLink::ETHERNET, frames)
}

/// [`write_pcap`] with another link type, e.g. `DataLink::RAW` for IP packets.
pub fn write_pcap_link(
    path: &Path,
    datalink: DataLink,
    frames: &[(Duration, Vec<u8>)],
) -> Result<()> {
    let context = || format!("cannot write capture {}", path.display());
    let file = File::create(path).with_context(context)?;
    let header = PcapHeader {
        snaplen: MAX_FRAME,
        datalink,
        ts_resolution: TsResolution::NanoSecond,
        endianness: Endianness::native(),
        ..Default::default()
    };
    let mut writer = PcapWriter::with_header(BufWriter::new(file), header).with_context(context)?;
    for (i, (timestamp, frame)) in frames.iter().enumerate() {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let packet = PcapPacket {
            timestamp: *timestamp,
            orig_len: len,
            data: Cow::Borrowed(frame),
        };
        writer
            .write_packet(&packet)
            .with_context(|| format!("{}: packet {}", context(), i + 1))?;
    }
    writer.into_writer().flush().with_context(context)
}

/// Writes Ethernet frames as pcapng: one section, one Ethernet interface with
/// `if_tsresol` = 9 (nanoseconds), one Enhanced Packet Block per frame.
pub fn write_pcapng(path: &Path, frames: &[(Duration, Vec<u8>)]) -> Result<()> {
    let context = || format!("cannot write capture {}", path.display());
    let file = File::create(path).with_context(context)?;
    let mut writer = PcapNgWriter::new(BufWriter::new(file)).with_context(context)?;
    let interface = InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: MAX_FRAME,
        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
    };
    writer.write_pcapng_block(interface).with_context(context)?;
    for (i, (timestamp, frame)) in frames.iter().enumerate() {
        // pcap-file writes the timestamp's nanoseconds as the raw 64-bit value, which
        // is right for if_tsresol = 9.
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: *timestamp,
            original_len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
            data: Cow::Borrowed(frame),
            options: Vec::new(),
        };
        writer
            .write_pcapng_block(block)
            .with_context(|| format!("{}: packet {}", context(), i + 1))?;
    }
    writer.into_inner().flush().with_context(context)
}
