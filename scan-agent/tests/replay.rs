//! Replay tests: captures written to a temporary directory and replayed through the real
//! program (private maps), with exact expected counts; capture errors; pcapng; surge
//! episodes on capture time.
//!
//! The replay tests need root (CAP_BPF + CAP_NET_ADMIN) and a kernel with BPF; without
//! them they fail, saying so. The capture-format tests need neither.
use std::{
    borrow::Cow,
    collections::BTreeMap,
    fs,
    io::BufWriter,
    path::{Path, PathBuf},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::EnhancedPacketBlock, interface_description::InterfaceDescriptionBlock,
            simple_packet::SimplePacketBlock,
        },
    },
};
use scan_agent::{
    capture::{CaptureError, CaptureFormat, CaptureReader, read_capture},
    detector::DetectorConfig,
    replay::{ReplayError, ReplayReport, replay},
};
use scan_common::{PacketClass, PacketClass::*};
use scan_lab::{
    frames::{
        Frame,
        corpus::{self, Capture, START},
        tcp,
    },
    pcap::{write_pcap, write_pcap_link, write_pcapng},
    rng::Rng,
};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("scan-agent-replay-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Replays, failing with the reason if the program cannot be loaded.
fn replay_ok(path: &Path, detector: Option<DetectorConfig>) -> ReplayReport {
    match replay(path, detector) {
        Ok(report) => report,
        Err(e @ ReplayError::Load { .. }) => panic!(
            "{e}\n(effective uid {}; replay needs root, or CAP_BPF + CAP_NET_ADMIN, and a \
             kernel with BPF; `cargo xtask test` runs these tests as root)",
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() }
        ),
        Err(e) => panic!("replay of {} failed: {e}", path.display()),
    }
}

fn assert_matches_expected(report: &ReplayReport, capture: &Capture) {
    let name = capture.name;
    let expected = &capture.expected;
    assert_eq!(report.packets, expected.packets, "{name}: packets");
    assert_eq!(report.skipped_short_frames, 0, "{name}: skipped frames");
    assert_eq!(report.ports, expected.ports, "{name}: SYNs per port");
    for class in PacketClass::ALL {
        assert_eq!(
            report.classes.get(class),
            expected.class(class),
            "{name}: class {}",
            class.name()
        );
    }
    report
        .classes
        .check_invariants()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(report.surges.is_empty(), "{name}: no detector, no surges");
}

#[test]
fn corpus_captures_replay_exactly() {
    let dir = TempDir::new("corpus");
    for capture in corpus::all() {
        let path = dir.path(capture.name);
        write_pcap(&path, &capture.frames).expect("write corpus capture");
        let report = replay_ok(&path, None);
        assert_matches_expected(&report, &capture);
        println!(
            "{}: {} packets, {} SYNs",
            capture.name,
            report.packets,
            report.classes.get(Syn)
        );
    }
}

#[test]
fn corpus_numbers_by_construction() {
    // The tallies above come from the generators; these come from their parameters.
    let dir = TempDir::new("numbers");
    let sweep = corpus::sweep_445(11);
    let path = dir.path(sweep.name);
    write_pcap(&path, &sweep.frames).unwrap();
    let report = replay_ok(&path, None);
    let probes = (corpus::SWEEP_SOURCES * corpus::SWEEP_TARGETS_PER_SOURCE) as u64;
    assert_eq!(report.ports, BTreeMap::from([(445, probes * 3 / 2)]));
    assert_eq!(
        report.packets,
        probes * 2,
        "one SYN and one retransmission or RST per probe"
    );

    let masscan = corpus::masscan_sweep(12);
    let path = dir.path(masscan.name);
    write_pcap(&path, &masscan.frames).unwrap();
    let report = replay_ok(&path, None);
    let hosts = corpus::MASSCAN_HOSTS as u64;
    let expected: BTreeMap<u16, u64> = (1..=corpus::MASSCAN_PORTS).map(|p| (p, hosts)).collect();
    assert_eq!(report.ports, expected);
    assert_eq!(
        report.classes.get(Syn),
        u64::from(corpus::MASSCAN_PORTS) * hosts
    );

    let web = corpus::web_traffic(13);
    let path = dir.path(web.name);
    write_pcap(&path, &web.frames).unwrap();
    let report = replay_ok(&path, None);
    let mut ports = BTreeMap::new();
    let mut connections = 0;
    for (port, _, n) in corpus::WEB_CONNECTIONS {
        *ports.entry(port).or_insert(0u64) += n as u64;
        connections += n as u64;
    }
    assert_eq!(
        report.ports, ports,
        "one SYN per connection, SYN-ACKs not counted"
    );
    assert_eq!(report.classes.get(Tcp), 10 * connections);
    assert_eq!(report.classes.get(NonIp), 5, "ARP requests");

    let ramp = corpus::distributed_ramp(14);
    let path = dir.path(ramp.name);
    write_pcap(&path, &ramp.frames).unwrap();
    let report = replay_ok(&path, None);
    let syns = report.ports[&corpus::RAMP_PORT];
    // Mean rate 2.525 SYN/s over 1,800 s: 4,545 expected, Poisson spread ~67.
    assert!((4_200..4_900).contains(&syns), "ramp SYNs {syns}");
    assert_eq!(report.ports.len(), 1);
}

#[test]
fn n_crafted_syns_report_exactly_n() {
    let dir = TempDir::new("crafted");
    let mut rng = Rng::new(42);
    let mut frames = Vec::new();
    let mut expected: BTreeMap<u16, u64> = BTreeMap::new();
    const N: u64 = 1_000;
    for i in 0..N {
        let port = rng.u16();
        let frame = if i % 3 == 0 {
            Frame::ipv6_tcp(
                [0x2001, 0xdb8, 1, 0, 0, 0, 0, 1],
                [0x2001, 0xdb8, 2, 0, 0, 0, 0, 1],
                1234,
                port,
                tcp::SYN,
            )
        } else {
            Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1234, port, tcp::SYN).vlan(0x8100, 3)
        };
        *expected.entry(port).or_default() += 1;
        frames.push((START + Duration::from_millis(i), frame.build()));
        // Noise that must not count: the answer, a UDP datagram.
        let answer = Frame::ipv4_tcp(
            [198, 19, 0, 1],
            [198, 18, 0, 1],
            port,
            1234,
            tcp::SYN | tcp::ACK,
        );
        frames.push((START + Duration::from_millis(i), answer.build()));
        let udp = Frame::ipv4_udp([198, 18, 0, 1], [198, 19, 0, 1], 1234, port);
        frames.push((START + Duration::from_millis(i), udp.build()));
    }
    let path = dir.path("crafted.pcap");
    write_pcap(&path, &frames).unwrap();
    let report = replay_ok(&path, None);
    assert_eq!(report.packets, 3 * N);
    assert_eq!(report.classes.get(Syn), N);
    assert_eq!(report.ports.values().sum::<u64>(), N);
    assert_eq!(report.ports, expected);
}

/// SYNs carried three ways on the same ports: PPPoE sessions (with and without a
/// VLAN tag) in an Ethernet capture, and raw IP packets in LINKTYPE_RAW, IPV4 and
/// IPV6 captures (an L3 interface's capture); each replays to exactly its SYNs.
#[test]
fn pppoe_and_raw_ip_captures_replay_exactly() {
    let dir = TempDir::new("links");
    let a6 = [0x2001, 0xdb8, 1, 0, 0, 0, 0, 1];
    let b6 = [0x2001, 0xdb8, 2, 0, 0, 0, 0, 1];
    let mut rng = Rng::new(15);
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut expected: BTreeMap<u16, u64> = BTreeMap::new();
    const N: u64 = 300;
    for i in 0..N {
        let port = rng.u16();
        *expected.entry(port).or_default() += 1;
        let at = START + Duration::from_millis(i);
        if i % 2 == 0 {
            v4.push((
                at,
                Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1, port, tcp::SYN),
            ));
        } else {
            v6.push((at, Frame::ipv6_tcp(a6, b6, 1, port, tcp::SYN)));
        }
        // Noise: an answer and a UDP datagram, never counted.
        v4.push((
            at,
            Frame::ipv4_tcp(
                [198, 19, 0, 1],
                [198, 18, 0, 1],
                port,
                1,
                tcp::SYN | tcp::ACK,
            ),
        ));
        v6.push((at, Frame::ipv6_udp(a6, b6, 1, port)));
    }
    let mut all: Vec<(Duration, Frame)> = v4.iter().chain(&v6).cloned().collect();
    all.sort_by_key(|(at, _)| *at);
    let syns = |report: &ReplayReport| (report.classes.get(Syn), report.ports.clone());

    // PPPoE on Ethernet, every other frame behind a VLAN tag.
    let pppoe: Vec<(Duration, Vec<u8>)> = all
        .iter()
        .enumerate()
        .map(|(i, (at, f))| {
            let f = f.clone().pppoe(0x0042);
            let f = if i % 2 == 0 { f.vlan(0x8100, 7) } else { f };
            (*at, f.build())
        })
        .collect();
    let path = dir.path("pppoe.pcap");
    write_pcap(&path, &pppoe).unwrap();
    let report = replay_ok(&path, None);
    assert_eq!(report.packets, all.len() as u64);
    assert_eq!(report.classes.get(PacketClass::Pppoe), all.len() as u64);
    assert_eq!(syns(&report), (N, expected.clone()));

    // Raw IP: one capture with both families, one per family.
    let raw = |frames: &[(Duration, Frame)]| -> Vec<(Duration, Vec<u8>)> {
        frames.iter().map(|(at, f)| (*at, f.build_ip())).collect()
    };
    let path = dir.path("raw.pcap");
    write_pcap_link(&path, DataLink::RAW, &raw(&all)).unwrap();
    let report = replay_ok(&path, None);
    assert_eq!(report.classes.get(PacketClass::Seen), all.len() as u64);
    assert_eq!(report.classes.get(PacketClass::Pppoe), 0);
    assert_eq!(syns(&report), (N, expected.clone()));
    let path4 = dir.path("raw4.pcap");
    write_pcap_link(&path4, DataLink::IPV4, &raw(&v4)).unwrap();
    let path6 = dir.path("raw6.pcap");
    write_pcap_link(&path6, DataLink::IPV6, &raw(&v6)).unwrap();
    let (r4, r6) = (replay_ok(&path4, None), replay_ok(&path6, None));
    assert_eq!(r4.classes.get(Syn) + r6.classes.get(Syn), N);
    assert_eq!(r4.classes.get(PacketClass::Ipv4), v4.len() as u64);
    assert_eq!(r6.classes.get(PacketClass::Ipv6), v6.len() as u64);
    let mut ports = r4.ports.clone();
    for (port, n) in &r6.ports {
        *ports.entry(*port).or_default() += n;
    }
    assert_eq!(ports, expected);
}

#[test]
fn short_frames_are_skipped_not_fatal() {
    let dir = TempDir::new("short");
    let syn = Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1, 445, tcp::SYN).build();
    let frames: Vec<(Duration, Vec<u8>)> = [
        vec![],
        syn[..5].to_vec(),
        syn.clone(),
        syn[..13].to_vec(),
        syn[..14].to_vec(),
        syn,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, f)| (START + Duration::from_secs(i as u64), f))
    .collect();
    let path = dir.path("short.pcap");
    write_pcap(&path, &frames).unwrap();
    let report = replay_ok(&path, None);
    assert_eq!(report.packets, 6);
    assert_eq!(report.skipped_short_frames, 3);
    assert_eq!(report.classes.get(Seen), 3);
    assert_eq!(report.classes.get(Truncated), 1);
    assert_eq!(report.ports, BTreeMap::from([(445, 2)]));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["skipped_short_frames"], 3);
}

#[test]
fn report_serializes_to_the_documented_shape() {
    let dir = TempDir::new("json");
    let capture = corpus::surge_445(5);
    let path = dir.path(capture.name);
    write_pcap(&path, &capture.frames).unwrap();
    let report = replay_ok(&path, Some(surge_config()));
    let json = serde_json::to_value(&report).unwrap();
    let object = json.as_object().unwrap();
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut sorted_keys = keys.clone();
    sorted_keys.sort_unstable();
    assert_eq!(
        sorted_keys,
        [
            "classes",
            "packets",
            "ports",
            "sketch_misses",
            "skipped_short_frames",
            "sources",
            "surges",
            "targets"
        ]
    );
    // Keyed like "ports": every port with a SYN, at least one source and target each.
    for key in ["sources", "targets"] {
        let distinct = json[key].as_object().unwrap();
        assert_eq!(
            distinct.keys().collect::<Vec<_>>(),
            json["ports"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>()
        );
        for (port, n) in distinct {
            let n = n.as_u64().unwrap();
            assert!(
                n >= 1 && n <= json["ports"][port].as_u64().unwrap(),
                "{key} {port}: {n}"
            );
        }
    }
    assert_eq!(json["packets"], capture.expected.packets);
    let ports = json["ports"].as_object().unwrap();
    assert_eq!(ports.len(), 4);
    assert_eq!(ports["445"], capture.expected.syns(445));
    assert!(ports.values().all(|n| n.as_u64().unwrap() > 0));
    let classes = json["classes"].as_object().unwrap();
    assert_eq!(classes.len(), PacketClass::ALL.len());
    for class in PacketClass::ALL {
        assert_eq!(classes[class.name()], capture.expected.class(class));
    }
    let surges = json["surges"].as_array().unwrap();
    assert_eq!(surges.len(), 1, "{surges:?}");
    let surge = surges[0].as_object().unwrap();
    let mut surge_keys: Vec<&str> = surge.keys().map(String::as_str).collect();
    surge_keys.sort_unstable();
    assert_eq!(
        surge_keys,
        [
            "end",
            "peak_ratio",
            "peak_sources",
            "peak_targets",
            "port",
            "sources",
            "start",
            "syns",
            "targets"
        ]
    );
    assert_eq!(surge["port"], 445);
    let start = surge["start"].as_str().unwrap();
    assert!(
        start.starts_with("2026-03-02T10:15:") && start.ends_with('Z'),
        "start {start}"
    );
    assert!(surge["end"].is_string() || surge["end"].is_null());
    assert!(surge["peak_ratio"].as_f64().unwrap() > 3.0);
    // The table names the same things.
    let table = report.render_table();
    for needle in [
        "packets: ",
        "seen",
        "header_limit",
        "445",
        "surge episodes: 1",
        "2026-03-02T10:15:",
    ] {
        assert!(table.contains(needle), "table lacks {needle:?}:\n{table}");
    }
    println!("{table}");
}

fn surge_config() -> DetectorConfig {
    DetectorConfig {
        interval: Duration::from_secs(1),
        short_window: Duration::from_secs(10),
        baseline_window: Duration::from_secs(600),
        warmup: Duration::from_secs(120),
        ..DetectorConfig::default()
    }
}

#[test]
fn a_surge_on_445_is_one_episode_on_capture_time() {
    let dir = TempDir::new("surge");
    let capture = corpus::surge_445(5);
    let path = dir.path(capture.name);
    write_pcap(&path, &capture.frames).unwrap();
    let report = replay_ok(&path, Some(surge_config()));
    assert_eq!(report.ports, capture.expected.ports);
    assert_eq!(
        report.surges.len(),
        1,
        "exactly one episode: {:#?}",
        report.surges
    );
    let episode = &report.surges[0];
    assert_eq!(episode.port, 445);
    let surge_start = START + corpus::SURGE_START;
    let surge_end = surge_start + corpus::SURGE_LENGTH;
    // 50 SYN/s against a 0.25 SYN/s baseline crosses 3x within a few seconds.
    assert!(
        episode.start >= surge_start && episode.start <= surge_start + Duration::from_secs(10),
        "episode starts {:?} after the surge",
        episode.start.checked_sub(surge_start)
    );
    // Back under 3x about tau * ln(50 / 0.7) ~ 45 s after the surge ends.
    let end = episode
        .end
        .expect("the episode ends before the capture does");
    assert!(
        end > surge_end && end <= surge_end + Duration::from_secs(120),
        "episode ends {:?} after the surge",
        end.checked_sub(surge_end)
    );
    assert!(
        episode.peak_ratio > 50.0,
        "peak ratio {}",
        episode.peak_ratio
    );
    // Every surge SYN falls inside the episode, plus a few background ones.
    let surge_syns = corpus::SURGE_LENGTH.as_secs() * 50;
    // The count starts one short window before the detection (the onset).
    let window =
        (end - episode.start + surge_config().short_window + Duration::from_secs(1)).as_secs();
    assert!(
        episode.syns >= surge_syns && episode.syns <= surge_syns + window / 4 + 1,
        "episode SYNs {} (surge {surge_syns})",
        episode.syns
    );
    // Breadth of the episode: each distinct count is at least one and at most the SYNs,
    // and the short-window peak at most the episode's union (up to the estimate's error).
    for (union, peak) in [
        (episode.sources, episode.peak_sources),
        (episode.targets, episode.peak_targets),
    ] {
        assert!(union >= 1 && union <= episode.syns, "{episode:?}");
        assert!(
            peak >= 1 && peak as f64 <= union as f64 * 1.05,
            "{episode:?}"
        );
    }
}

#[test]
fn pcapng_is_read_too() {
    let dir = TempDir::new("pcapng");
    let capture = corpus::web_traffic(4);

    // Written by pcap-file's pcapng writer with the default microsecond resolution (no
    // if_tsresol option): the raw timestamp is in microseconds.
    let path = dir.path("web-us.pcapng");
    let file = BufWriter::new(fs::File::create(&path).unwrap());
    let mut writer = PcapNgWriter::new(file).unwrap();
    writer
        .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 65_535))
        .unwrap();
    for (ts, frame) in &capture.frames {
        let micros = ts.as_micros() as u64;
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(micros),
                original_len: frame.len() as u32,
                data: Cow::Borrowed(frame),
                options: vec![],
            })
            .unwrap();
    }
    drop(writer);
    let mut reader = CaptureReader::open(&path).unwrap();
    assert_eq!(reader.format(), CaptureFormat::PcapNg);
    let first = reader.next_frame().unwrap().unwrap();
    assert_eq!(
        first.0,
        Duration::from_micros(capture.frames[0].0.as_micros() as u64)
    );
    assert_eq!(first.1, capture.frames[0].1);
    let report = replay_ok(&path, None);
    assert_matches_expected(&report, &capture);

    // Written by `write_pcapng` (nanoseconds): frames and timestamps come back exactly.
    let path = dir.path("web-ns.pcapng");
    write_pcapng(&path, &capture.frames).unwrap();
    assert_eq!(read_capture(&path).unwrap(), capture.frames);
    let report = replay_ok(&path, None);
    assert_matches_expected(&report, &capture);

    // Simple packet blocks: no timestamp (the previous packet's is used).
    let path = dir.path("simple.pcapng");
    let file = BufWriter::new(fs::File::create(&path).unwrap());
    let mut writer = PcapNgWriter::new(file).unwrap();
    writer
        .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
        .unwrap();
    let syn = Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1, 445, tcp::SYN).build();
    let odd = syn[..53].to_vec(); // padded to 56 in the block
    for frame in [&syn, &odd] {
        writer
            .write_pcapng_block(SimplePacketBlock {
                original_len: frame.len() as u32,
                data: Cow::Borrowed(frame),
            })
            .unwrap();
    }
    drop(writer);
    let frames = read_capture(&path).unwrap();
    assert_eq!(frames, vec![(Duration::ZERO, syn), (Duration::ZERO, odd)]);
}

#[test]
fn pcap_round_trip_keeps_nanoseconds() {
    let dir = TempDir::new("roundtrip");
    let frames: Vec<(Duration, Vec<u8>)> = (0..100u32)
        .map(|i| {
            (
                START + Duration::new(u64::from(i), i * 10_000_001 % 1_000_000_000),
                vec![i as u8; 14 + i as usize],
            )
        })
        .collect();
    let path = dir.path("rt.pcap");
    write_pcap(&path, &frames).unwrap();
    let mut reader = CaptureReader::open(&path).unwrap();
    assert_eq!(reader.format(), CaptureFormat::Pcap);
    let back: Vec<_> = reader.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(back, frames);
    assert_eq!(reader.packets(), 100);

    // A big-endian microsecond pcap, as older tools write.
    let path = dir.path("be-us.pcap");
    let header = PcapHeader {
        endianness: pcap_file::Endianness::Big,
        ..PcapHeader::default()
    };
    let mut writer =
        PcapWriter::with_header(BufWriter::new(fs::File::create(&path).unwrap()), header).unwrap();
    writer
        .write_packet(&PcapPacket::new(
            Duration::new(1_000, 123_456_000),
            14,
            &[7; 14],
        ))
        .unwrap();
    drop(writer);
    assert_eq!(
        read_capture(&path).unwrap(),
        vec![(Duration::new(1_000, 123_456_000), vec![7; 14])]
    );
}

#[test]
fn a_capture_with_no_packets_is_not_an_error() {
    let dir = TempDir::new("nopackets");
    let path = dir.path("none.pcap");
    write_pcap(&path, &[]).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 24);
    assert!(read_capture(&path).unwrap().is_empty());
    let report = replay_ok(&path, Some(surge_config()));
    assert_eq!(report.packets, 0);
    assert_eq!(report.classes.get(Seen), 0);
    assert!(report.ports.is_empty() && report.surges.is_empty());
    let path = dir.path("none.pcapng");
    write_pcapng(&path, &[]).unwrap();
    assert!(read_capture(&path).unwrap().is_empty());
}

/// The capture error inside a replay error.
fn capture_error(path: &Path) -> CaptureError {
    match replay(path, None) {
        Err(ReplayError::Capture(e)) => {
            let message = e.to_string();
            assert!(
                message.contains(&path.display().to_string()),
                "error names the file: {message}"
            );
            println!("{message}");
            e
        }
        Err(other) => panic!(
            "expected a capture error for {}, got: {other}",
            path.display()
        ),
        Ok(report) => panic!(
            "expected a capture error for {}, got a report: {report:?}",
            path.display()
        ),
    }
}

#[test]
fn bad_captures_give_the_documented_errors() {
    let dir = TempDir::new("errors");
    let syn = Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1, 445, tcp::SYN).build();
    let good: Vec<(Duration, Vec<u8>)> = (0..3)
        .map(|i| (START + Duration::from_secs(i), syn.clone()))
        .collect();

    let empty = dir.path("empty.pcap");
    fs::write(&empty, b"").unwrap();
    assert!(matches!(capture_error(&empty), CaptureError::Empty { .. }));

    let text = dir.path("notes.txt");
    fs::write(&text, b"this is not a capture\n").unwrap();
    assert!(matches!(
        capture_error(&text),
        CaptureError::WrongMagic { .. }
    ));

    let gzip = dir.path("capture.pcap.gz");
    fs::write(&gzip, [0x1F, 0x8B, 8, 0, 0, 0, 0, 0]).unwrap();
    let e = capture_error(&gzip);
    assert!(matches!(e, CaptureError::WrongMagic { .. }) && e.to_string().contains("gzip"));

    let tiny = dir.path("tiny.pcap");
    fs::write(&tiny, [0xD4, 0xC3]).unwrap();
    assert!(matches!(
        capture_error(&tiny),
        CaptureError::Truncated { .. }
    ));

    // A pcap cut inside its file header, and inside its last packet.
    let full = dir.path("full.pcap");
    write_pcap(&full, &good).unwrap();
    let bytes = fs::read(&full).unwrap();
    let header_cut = dir.path("header-cut.pcap");
    fs::write(&header_cut, &bytes[..10]).unwrap();
    assert!(matches!(
        capture_error(&header_cut),
        CaptureError::Truncated { .. }
    ));
    let packet_cut = dir.path("packet-cut.pcap");
    fs::write(&packet_cut, &bytes[..bytes.len() - 7]).unwrap();
    assert!(matches!(
        capture_error(&packet_cut),
        CaptureError::Truncated { .. }
    ));
    // The frames before the cut are still read by the streaming reader.
    let mut reader = CaptureReader::open(&packet_cut).unwrap();
    assert!(reader.next_frame().unwrap().is_ok());
    assert!(reader.next_frame().unwrap().is_ok());
    assert!(matches!(
        reader.next_frame(),
        Some(Err(CaptureError::Truncated { .. }))
    ));
    assert!(reader.next_frame().is_none(), "nothing after an error");

    // A pcapng cut inside a block.
    let ng = dir.path("full.pcapng");
    write_pcapng(&ng, &good).unwrap();
    let bytes = fs::read(&ng).unwrap();
    let ng_cut = dir.path("cut.pcapng");
    fs::write(&ng_cut, &bytes[..bytes.len() - 5]).unwrap();
    assert!(matches!(
        capture_error(&ng_cut),
        CaptureError::Truncated { .. }
    ));

    // LINKTYPE_IEEE802_11 (105): Wi-Fi frames, which the program does not parse.
    let raw = dir.path("wifi.pcap");
    let header = PcapHeader {
        datalink: DataLink::IEEE802_11,
        ..PcapHeader::default()
    };
    let mut writer =
        PcapWriter::with_header(BufWriter::new(fs::File::create(&raw).unwrap()), header).unwrap();
    writer
        .write_packet(&PcapPacket::new(Duration::from_secs(1), 40, &syn[14..]))
        .unwrap();
    drop(writer);
    match capture_error(&raw) {
        CaptureError::LinkType { name, code, .. } => {
            assert_eq!(code, 105);
            assert_eq!(name, "LINKTYPE_IEEE802_11");
        }
        other => panic!("expected a link-type error, got {other}"),
    }

    // pcapng whose packet is on a Linux "cooked" (SLL) interface.
    let sll = dir.path("sll.pcapng");
    let mut writer = PcapNgWriter::new(BufWriter::new(fs::File::create(&sll).unwrap())).unwrap();
    writer
        .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::LINUX_SLL, 0))
        .unwrap();
    writer
        .write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_secs(1),
            original_len: 40,
            data: Cow::Borrowed(&syn[..40]),
            options: vec![],
        })
        .unwrap();
    drop(writer);
    match capture_error(&sll) {
        CaptureError::LinkType { name, code, .. } => {
            assert_eq!((name.as_str(), code), ("LINKTYPE_LINUX_SLL", 113))
        }
        other => panic!("expected a link-type error, got {other}"),
    }

    // A packet on an interface that was never described.
    let orphan = dir.path("orphan.pcapng");
    write_pcapng(&orphan, &good[..1]).unwrap();
    // pcap-file refuses to write it, so patch the interface id of the packet block.
    let mut bytes = fs::read(&orphan).unwrap();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let kind = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = u32::from_ne_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if kind == 6 {
            bytes[at + 8..at + 12].copy_from_slice(&3u32.to_ne_bytes());
        }
        at += len;
    }
    fs::write(&orphan, &bytes).unwrap();
    assert!(matches!(
        capture_error(&orphan),
        CaptureError::Corrupt { .. }
    ));

    // A missing file.
    assert!(matches!(
        capture_error(&dir.path("missing.pcap")),
        CaptureError::Open { .. }
    ));
}

/// Random bytes, and valid pcap and pcapng files with bytes flipped, cut or spliced:
/// the reader returns frames or an error, never panics, never loops.
#[test]
fn capture_reader_never_panics() {
    let dir = TempDir::new("fuzz");
    let capture = corpus::web_traffic(9);
    let frames = &capture.frames[..40];
    let pcap = dir.path("seed.pcap");
    write_pcap(&pcap, frames).unwrap();
    let ng = dir.path("seed.pcapng");
    write_pcapng(&ng, frames).unwrap();
    let seeds = [fs::read(&pcap).unwrap(), fs::read(&ng).unwrap()];
    let mut rng = Rng::new(0x5EED);
    let path = dir.path("fuzz.bin");
    let mut outcomes: BTreeMap<String, u32> = BTreeMap::new();
    for round in 0..3_000 {
        let mut bytes = if round % 10 == 0 {
            let len = rng.below(200) as usize;
            let mut b = rng.bytes(len);
            // Sometimes a real magic in front of the noise.
            if b.len() >= 4 && rng.chance(0.7) {
                let magic = *rng.pick(&[
                    0xA1B2_C3D4u32,
                    0xD4C3_B2A1,
                    0xA1B2_3C4D,
                    0x4D3C_B2A1,
                    0x0A0D_0D0A,
                ]);
                b[..4].copy_from_slice(&magic.to_be_bytes());
            }
            b
        } else {
            rng.pick(&seeds).clone()
        };
        for _ in 0..rng.range(1, 8) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.below(bytes.len() as u64) as usize;
            match rng.below(5) {
                0 => bytes.truncate(at),
                1 => bytes[at] = *rng.pick(&[0x00, 0xFF, 0x7F, 0x80, 0x01]),
                2 => {
                    // A length-sized field set to something large.
                    let end = (at + 4).min(bytes.len());
                    for b in &mut bytes[at..end] {
                        *b = 0xFF;
                    }
                }
                _ => bytes[at] = rng.u8(),
            }
        }
        fs::write(&path, &bytes).unwrap();
        let outcome = match read_capture(&path) {
            Ok(frames) if frames.is_empty() => "ok, no frames".to_string(),
            Ok(_) => "ok, frames".to_string(),
            Err(e) => {
                let text = format!("{e:?}");
                text.split([' ', '{', '('])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    println!("capture fuzz outcomes: {outcomes:?}");
    assert!(
        outcomes.len() >= 4,
        "the fuzz should reach several outcomes: {outcomes:?}"
    );
}

#[test]
fn odd_timestamps_do_not_stall_the_replay() {
    // A frame stamped at the epoch, one ten years later, one back in time: the detector
    // crosses the gaps in one step each, and every frame is still counted.
    let dir = TempDir::new("timestamps");
    let syn = |port| Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1, port, tcp::SYN).build();
    let frames = vec![
        (Duration::ZERO, syn(1)),
        (Duration::from_secs(10 * 365 * 86_400), syn(2)),
        (Duration::from_secs(5), syn(3)),
        (Duration::from_secs(10 * 365 * 86_400 + 1), syn(4)),
    ];
    let path = dir.path("odd.pcap");
    write_pcap(&path, &frames).unwrap();
    let started = std::time::Instant::now();
    let report = replay_ok(&path, Some(surge_config()));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        report.ports,
        BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1)])
    );
    assert!(report.surges.is_empty(), "{:?}", report.surges);
}

/// Distinct sources and targets over the whole capture, through the replay: exact
/// for small counts, within 5% beyond (IPv4 and IPv6 mixed), and one source sending
/// 100,000 SYNs is one source. Ports take turns in the kernel's slots: 1,000 ports
/// (twice the slots) each get their own exact count.
#[test]
fn replay_counts_distinct_sources_and_targets() {
    let dir = TempDir::new("distinct");
    let v4 = |i: u64, base: u32| std::net::Ipv4Addr::from(base | (i % 65_536) as u32);
    let v6 = |i: u64, net: u128| std::net::Ipv6Addr::from((net << 80) | u128::from(i));
    for (n, repeat) in [
        (1u64, 100_000u64),
        (2, 1),
        (10, 3),
        (100, 1),
        (1_000, 1),
        (10_000, 1),
        (100_000, 1),
    ] {
        let mut frames = Vec::new();
        for k in 0..n * repeat {
            let i = k % n;
            let at = START + Duration::from_micros(k);
            // Even: IPv4 (198.18/16 -> 198.19/16), odd: IPv6 (2001:db8:1:: -> 2001:db8:2::).
            let frame = if i % 2 == 0 && i < 131_072 {
                Frame::ipv4_tcp(
                    v4(i / 2, 0xC612_0000),
                    v4(i / 2, 0xC613_0000),
                    40_000,
                    445,
                    tcp::SYN,
                )
            } else {
                Frame::ipv6_tcp(
                    v6(i, 0x2001_0db8_0001),
                    v6(i, 0x2001_0db8_0002),
                    40_000,
                    445,
                    tcp::SYN,
                )
            };
            frames.push((at, frame.build()));
        }
        let path = dir.path(&format!("distinct-{n}.pcap"));
        write_pcap(&path, &frames).unwrap();
        let report = replay_ok(&path, None);
        assert_eq!(report.ports[&445], n * repeat);
        for (what, got) in [
            ("sources", report.sources[&445]),
            ("targets", report.targets[&445]),
        ] {
            let error = (got as f64 / n as f64 - 1.0).abs();
            if n <= 10 {
                assert_eq!(got, n, "{what}, n={n}");
            } else {
                assert!(error <= 0.05, "{what}, n={n}: {got} ({error:.4})");
            }
            println!("n={n:>6} {what}: {got} (error {error:.4})");
        }
    }
    // 1,000 ports, port p hit by p % 7 + 1 sources: more ports than kernel slots.
    let mut frames = Vec::new();
    let mut k = 0;
    for port in 1_000u16..2_000 {
        for s in 0..u64::from(port % 7) + 1 {
            k += 1;
            let frame =
                Frame::ipv4_tcp(v4(s, 0xC612_0000), [198, 19, 0, 1], 40_000, port, tcp::SYN);
            frames.push((START + Duration::from_micros(k), frame.build()));
        }
    }
    let path = dir.path("ports.pcap");
    write_pcap(&path, &frames).unwrap();
    let report = replay_ok(&path, None);
    assert_eq!(report.sketch_misses, 0);
    assert_eq!(report.sources.len(), 1_000);
    for (&port, &n) in &report.sources {
        assert_eq!(n, u64::from(port % 7) + 1, "port {port}");
        assert_eq!(report.targets[&port], 1, "port {port}");
    }
}
