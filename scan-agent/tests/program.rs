//! Program tests: the real program, loaded with private maps, fed crafted frames
//! through `BPF_PROG_TEST_RUN`; every case asserts the exact change of every class
//! counter and of every port counter, and the verdict (XDP_PASS or TC_ACT_UNSPEC,
//! always). Every table and sweep runs through both entry points (XDP and TC), with
//! the same expected counts; raw-IP cases run through the L3 entry points.
//!
//! These tests need root (CAP_BPF + CAP_NET_ADMIN) and a kernel with BPF: without them
//! they fail, saying so; they never pass silently.
mod common;

use std::net::Ipv6Addr;

use scan_agent::sensor::{Hook, LinkKind, Sensor};
use scan_common::{
    ClassCounts, MAX_IPV6_EXT_HEADERS, PORTS, PacketClass, single_buffer_program_name,
};
use scan_lab::{
    frames::{Frame, Ipv6Ext, ether_type, ip_proto, ppp_proto, tcp},
    testrun::is_refused_test_input,
};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1): TCX_NEXT, the verdict is left to the next program.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const HOOKS: [Hook; 2] = [Hook::Xdp, Hook::Tc];

/// Whether the kernel's test run takes `frame` as input (measured on 6.18): both
/// need an Ethernet header's 14 bytes; sched_cls also needs a whole IPv4 (IPv6)
/// header after an IPv4 (IPv6) EtherType, since it builds an skb around it. No
/// wire delivers a refused frame to either hook; those lengths are checked to be
/// refused, with no counter moved.
fn kernel_accepts(hook: Hook, frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    match (hook, u16::from_be_bytes([frame[12], frame[13]])) {
        (Hook::Xdp, _) => true,
        (Hook::Tc, ether_type::IPV4) => frame.len() >= 14 + 20,
        (Hook::Tc, ether_type::IPV6) => frame.len() >= 14 + 40,
        (Hook::Tc, _) => true,
    }
}

fn verdict(hook: Hook) -> u32 {
    match hook {
        Hook::Xdp => XDP_PASS,
        Hook::Tc => TC_ACT_UNSPEC,
    }
}
const A4: [u8; 4] = [198, 18, 0, 1];
const B4: [u8; 4] = [198, 19, 0, 1];
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

/// Every counter of the program.
struct Counters {
    classes: ClassCounts,
    ports: Vec<u64>,
}

fn counters(sensor: &Sensor) -> Counters {
    let mut ports = vec![0; PORTS as usize];
    sensor.read_ports(&mut ports);
    Counters {
        classes: sensor.read_classes().expect("read class counters"),
        ports,
    }
}

fn class_delta(after: &ClassCounts, before: &ClassCounts) -> ClassCounts {
    let mut delta = ClassCounts::default();
    for (i, d) in delta.0.iter_mut().enumerate() {
        *d = after.0[i] - before.0[i];
    }
    delta
}

fn describe(counts: &ClassCounts) -> String {
    PacketClass::ALL
        .iter()
        .filter(|&&c| counts.get(c) != 0)
        .map(|&c| format!("{}={}", c.name(), counts.get(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One row of the table: a frame, how often to run it, and exactly what it must count.
struct Case {
    name: String,
    frame: Vec<u8>,
    repeat: u32,
    /// Flag and outcome classes besides `seen` (and `syn`, implied by `syn_port`).
    classes: Vec<PacketClass>,
    syn_port: Option<u16>,
}

fn case(name: &str, frame: &Frame, classes: &[PacketClass], syn_port: Option<u16>) -> Case {
    Case {
        name: name.to_string(),
        frame: frame.build(),
        repeat: 1,
        classes: classes.to_vec(),
        syn_port,
    }
}

impl Case {
    fn repeat(mut self, repeat: u32) -> Self {
        self.repeat = repeat;
        self
    }

    fn expected(&self) -> ClassCounts {
        let mut expected = ClassCounts::default();
        let n = u64::from(self.repeat);
        expected.0[PacketClass::Seen as usize] += n;
        for &class in &self.classes {
            expected.0[class as usize] += n;
        }
        if self.syn_port.is_some() {
            expected.0[PacketClass::Syn as usize] += n;
        }
        expected
    }
}

/// Runs one case and asserts its exact deltas; returns the class deltas.
fn run(sensor: &Sensor, hook: Hook, case: &Case) -> ClassCounts {
    let before = counters(sensor);
    let result = sensor
        .test_run(&case.frame, case.repeat)
        .unwrap_or_else(|e| panic!("{} ({hook:?}): test run failed: {e}", case.name));
    assert_eq!(
        result.return_value,
        verdict(hook),
        "{} ({hook:?}): verdict",
        case.name
    );
    let after = counters(sensor);

    let delta = class_delta(&after.classes, &before.classes);
    let expected = case.expected();
    assert_eq!(
        delta,
        expected,
        "{}: class counters moved by [{}], expected [{}]\nframe: {}",
        case.name,
        describe(&delta),
        describe(&expected),
        hex(&case.frame)
    );
    for (port, (a, b)) in after.ports.iter().zip(&before.ports).enumerate() {
        let want = match case.syn_port {
            Some(p) if usize::from(p) == port => u64::from(case.repeat),
            _ => 0,
        };
        assert_eq!(a - b, want, "{}: SYN counter of port {port}", case.name);
    }
    delta
        .check_invariants()
        .unwrap_or_else(|e| panic!("{}: invariant on the case: {e}", case.name));
    after
        .classes
        .check_invariants()
        .unwrap_or_else(|e| panic!("{}: invariant on the totals: {e}", case.name));
    delta
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn syn4(dport: u16) -> Frame {
    Frame::ipv4_tcp(A4, B4, 40_000, dport, tcp::SYN)
}

fn syn6(dport: u16) -> Frame {
    Frame::ipv6_tcp(A6, B6, 40_000, dport, tcp::SYN)
}

/// Router alert (4 bytes) + 3 NOPs + End of options: 8 bytes of IPv4 options.
fn ip_options() -> Vec<u8> {
    vec![0x94, 4, 0, 0, 1, 1, 1, 0]
}

fn cases() -> Vec<Case> {
    use PacketClass::*;
    let v4 = [Ipv4, Tcp];
    let v6 = [Ipv6, Tcp];
    let mut cases = vec![
        case("IPv4 SYN", &syn4(445), &v4, Some(445)),
        case(
            "IPv4 SYN with IP options and TCP options",
            &syn4(445)
                .ip_options(ip_options())
                .tcp_options(tcp::syn_options()),
            &v4,
            Some(445),
        ),
        case(
            "IPv4 SYN with 40 bytes of IP options (IHL 15) and 40 of TCP options (offset 15)",
            &syn4(22).ip_options(vec![1; 40]).tcp_options(vec![1; 40]),
            &v4,
            Some(22),
        ),
        case(
            "IPv4 SYN with payload",
            &syn4(80).payload(vec![0xAB; 100]),
            &v4,
            Some(80),
        ),
        case("port 0", &syn4(0), &v4, Some(0)),
        case("port 65535", &syn4(65_535), &v4, Some(65_535)),
        case("IPv6 port 0", &syn6(0), &v6, Some(0)),
        case("IPv6 port 65535", &syn6(65_535), &v6, Some(65_535)),
    ];
    for (name, flags) in [
        ("SYN-ACK", tcp::SYN | tcp::ACK),
        ("RST", tcp::RST),
        ("RST-ACK", tcp::RST | tcp::ACK),
        ("FIN", tcp::FIN),
        ("FIN-ACK", tcp::FIN | tcp::ACK),
        ("bare ACK", tcp::ACK),
        ("PSH-ACK", tcp::PSH | tcp::ACK),
        ("no flags (null scan)", 0),
        ("FIN+PSH+URG (xmas scan)", tcp::FIN | tcp::PSH | tcp::URG),
        ("every flag (SYN with ACK)", 0xFF),
    ] {
        let frame = Frame::ipv4_tcp(A4, B4, 445, 40_000, flags);
        cases.push(case(
            &format!("IPv4 {name}: not counted"),
            &frame,
            &v4,
            None,
        ));
        let frame = Frame::ipv6_tcp(A6, B6, 445, 40_000, flags);
        cases.push(case(
            &format!("IPv6 {name}: not counted"),
            &frame,
            &v6,
            None,
        ));
    }
    // The program counts SYN set and ACK clear, whatever else is set.
    for (name, flags) in [
        ("SYN+FIN", tcp::SYN | tcp::FIN),
        ("SYN+ECE+CWR (ECN setup)", tcp::SYN | tcp::ECE | tcp::CWR),
        ("SYN+RST", tcp::SYN | tcp::RST),
        ("SYN+PSH+URG", tcp::SYN | tcp::PSH | tcp::URG),
        ("every flag but ACK", !tcp::ACK),
    ] {
        let frame = Frame::ipv4_tcp(A4, B4, 40_000, 3389, flags);
        cases.push(case(
            &format!("IPv4 {name}: counted"),
            &frame,
            &v4,
            Some(3389),
        ));
        let frame = Frame::ipv6_tcp(A6, B6, 40_000, 3389, flags);
        cases.push(case(
            &format!("IPv6 {name}: counted"),
            &frame,
            &v6,
            Some(3389),
        ));
    }
    cases.extend([
        case("IPv6 SYN", &syn6(445), &v6, Some(445)),
        case(
            "IPv6 SYN with TCP options and payload",
            &syn6(443)
                .tcp_options(tcp::syn_options())
                .payload(vec![1; 64]),
            &v6,
            Some(443),
        ),
        case(
            "IPv6 hop-by-hop + destination options + routing before TCP",
            &syn6(445)
                .ext(Ipv6Ext::HopByHop { len: 8 })
                .ext(Ipv6Ext::DestinationOptions { len: 16 })
                .ext(Ipv6Ext::Routing { len: 24 })
                .tcp_options(tcp::syn_options()),
            &v6,
            Some(445),
        ),
        case(
            "IPv6 routing + destination options (after routing) before TCP",
            &syn6(8443)
                .ext(Ipv6Ext::Routing { len: 8 })
                .ext(Ipv6Ext::DestinationOptions { len: 8 }),
            &v6,
            Some(8443),
        ),
        case(
            "IPv6 AH (12-byte ICV)",
            &syn6(445).ext(Ipv6Ext::Auth { icv_len: 12 }),
            &v6,
            Some(445),
        ),
        case(
            "IPv6 hop-by-hop + AH (4-byte ICV) + destination options",
            &syn6(445)
                .ext(Ipv6Ext::HopByHop { len: 8 })
                .ext(Ipv6Ext::Auth { icv_len: 4 })
                .ext(Ipv6Ext::DestinationOptions { len: 8 }),
            &v6,
            Some(445),
        ),
        case(
            "IPv6 large hop-by-hop (2048 bytes)",
            &syn6(445).ext(Ipv6Ext::HopByHop { len: 2048 }),
            &v6,
            Some(445),
        ),
        case(
            "IPv6 first fragment (offset 0, M=1)",
            &syn6(445).fragment(0, true),
            &v6,
            Some(445),
        ),
        case(
            "IPv6 atomic fragment (offset 0, M=0)",
            &syn6(445).fragment(0, false),
            &v6,
            Some(445),
        ),
        case(
            "IPv6 hop-by-hop + first fragment",
            &syn6(445)
                .ext(Ipv6Ext::HopByHop { len: 8 })
                .fragment(0, true),
            &v6,
            Some(445),
        ),
        case(
            "IPv6 later fragment (offset 100, M=1)",
            &syn6(445).fragment(100, true),
            &[Ipv6, LaterFragment],
            None,
        ),
        case(
            "IPv6 last fragment (offset 1, M=0)",
            &syn6(445).fragment(1, false),
            &[Ipv6, LaterFragment],
            None,
        ),
        case(
            "IPv6 hop-by-hop + later fragment",
            &syn6(445)
                .ext(Ipv6Ext::HopByHop { len: 8 })
                .fragment(8191, false),
            &[Ipv6, LaterFragment],
            None,
        ),
        case(
            "IPv4 first fragment (MF, offset 0)",
            &syn4(445).fragment(0, true),
            &v4,
            Some(445),
        ),
        case(
            "IPv4 later fragment (MF, offset 185)",
            &syn4(445).fragment(185, true),
            &[Ipv4, LaterFragment],
            None,
        ),
        case(
            "IPv4 last fragment (offset 8191)",
            &syn4(445).fragment(8191, false),
            &[Ipv4, LaterFragment],
            None,
        ),
        case(
            "IPv4 UDP later fragment",
            &Frame::ipv4_udp(A4, B4, 53, 53).fragment(3, false),
            &[Ipv4, LaterFragment],
            None,
        ),
    ]);
    for (family, frame, ip) in [("IPv4", syn4(445), Ipv4), ("IPv6", syn6(445), Ipv6)] {
        for (tags, tpids) in [
            ("one 802.1Q tag", &[ether_type::VLAN][..]),
            ("one 802.1ad tag", &[ether_type::QINQ][..]),
            (
                "802.1ad + 802.1Q tags",
                &[ether_type::QINQ, ether_type::VLAN][..],
            ),
            ("two 802.1Q tags", &[ether_type::VLAN, ether_type::VLAN][..]),
            (
                "two 802.1ad tags",
                &[ether_type::QINQ, ether_type::QINQ][..],
            ),
        ] {
            let tagged = tpids
                .iter()
                .fold(frame.clone(), |f, &tpid| f.vlan(tpid, 100));
            cases.push(case(
                &format!("{family} SYN, {tags}"),
                &tagged,
                &[Vlan, ip, Tcp],
                Some(445),
            ));
        }
        for tpids in [
            [ether_type::VLAN; 3],
            [ether_type::QINQ, ether_type::VLAN, ether_type::VLAN],
            [ether_type::QINQ; 3],
        ] {
            let tagged = tpids.iter().fold(frame.clone(), |f, &tpid| f.vlan(tpid, 7));
            cases.push(case(
                &format!("{family} SYN, three tags {tpids:04x?}: header_limit"),
                &tagged,
                &[Vlan, HeaderLimit],
                None,
            ));
        }
    }
    let chain = |n: usize| {
        (0..n).fold(syn6(445), |f, i| {
            f.ext(if i % 2 == 0 {
                Ipv6Ext::DestinationOptions { len: 8 }
            } else {
                Ipv6Ext::HopByHop { len: 8 }
            })
        })
    };
    cases.extend([
        case(
            &format!("IPv6 exactly {MAX_IPV6_EXT_HEADERS} extension headers: counted"),
            &chain(MAX_IPV6_EXT_HEADERS),
            &v6,
            Some(445),
        ),
        case(
            &format!(
                "IPv6 {} extension headers: header_limit",
                MAX_IPV6_EXT_HEADERS + 1
            ),
            &chain(MAX_IPV6_EXT_HEADERS + 1),
            &[Ipv6, HeaderLimit],
            None,
        ),
        case(
            &format!(
                "IPv6 {} extension headers then UDP: header_limit",
                MAX_IPV6_EXT_HEADERS + 1
            ),
            &(0..=MAX_IPV6_EXT_HEADERS).fold(Frame::ipv6_udp(A6, B6, 1, 53), |f, _| {
                f.ext(Ipv6Ext::DestinationOptions { len: 8 })
            }),
            &[Ipv6, HeaderLimit],
            None,
        ),
        case(
            &format!("IPv6 {MAX_IPV6_EXT_HEADERS} extension headers then UDP: non_tcp"),
            &(0..MAX_IPV6_EXT_HEADERS).fold(Frame::ipv6_udp(A6, B6, 1, 53), |f, _| {
                f.ext(Ipv6Ext::DestinationOptions { len: 8 })
            }),
            &[Ipv6, NonTcp],
            None,
        ),
        case(
            "IPv6 with two VLAN tags and 6 extension headers: counted",
            &chain(MAX_IPV6_EXT_HEADERS)
                .vlan(ether_type::QINQ, 1)
                .vlan(ether_type::VLAN, 2),
            &[Vlan, Ipv6, Tcp],
            Some(445),
        ),
        case(
            "PPPoE IPv4 SYN",
            &syn4(445).pppoe(7),
            &[Pppoe, Ipv4, Tcp],
            Some(445),
        ),
        case(
            "PPPoE IPv6 SYN",
            &syn6(22).pppoe(7),
            &[Pppoe, Ipv6, Tcp],
            Some(22),
        ),
        case(
            "PPPoE IPv4 SYN behind a VLAN tag",
            &syn4(3389).pppoe(1).vlan(ether_type::VLAN, 7),
            &[Vlan, Pppoe, Ipv4, Tcp],
            Some(3389),
        ),
        case(
            "PPPoE IPv6 SYN behind two tags, with extension headers",
            &syn6(445)
                .ext(Ipv6Ext::HopByHop { len: 8 })
                .pppoe(0xFFFF)
                .vlan(ether_type::QINQ, 1)
                .vlan(ether_type::VLAN, 2),
            &[Vlan, Pppoe, Ipv6, Tcp],
            Some(445),
        ),
        case(
            "PPPoE IPv4 SYN-ACK: not counted",
            &Frame::ipv4_tcp(A4, B4, 445, 1, tcp::SYN | tcp::ACK).pppoe(3),
            &[Pppoe, Ipv4, Tcp],
            None,
        ),
        case(
            "PPPoE IPv4 UDP",
            &Frame::ipv4_udp(A4, B4, 1, 53).pppoe(3),
            &[Pppoe, Ipv4, NonTcp],
            None,
        ),
        case(
            "PPPoE IPv6 later fragment",
            &syn6(445).fragment(8, false).pppoe(3),
            &[Pppoe, Ipv6, LaterFragment],
            None,
        ),
        case(
            "PPPoE LCP: non_ip",
            &Frame::raw(0, vec![1, 1, 0, 4])
                .pppoe(3)
                .ppp_protocol(ppp_proto::LCP),
            &[Pppoe, NonIp],
            None,
        ),
        case(
            "PPPoE with an IPv4 packet under the IPv6 PPP protocol: bad_header",
            &syn4(445).pppoe(3).ppp_protocol(ppp_proto::IPV6),
            &[Pppoe, Ipv6, BadHeader],
            None,
        ),
        case(
            "PPPoE version/type 0x12: bad_header",
            &syn4(445).pppoe(3).pppoe_ver_type(0x12),
            &[Pppoe, BadHeader],
            None,
        ),
        case(
            "PPPoE session EtherType with 6 bytes: truncated",
            &Frame::raw(ether_type::PPPOE_SESSION, vec![0x11, 0, 0, 1, 0, 2]),
            &[Pppoe, Truncated],
            None,
        ),
        case(
            "PPPoE discovery (PADI): non_ip",
            &Frame::raw(ether_type::PPPOE_DISCOVERY, vec![0x11, 0x09, 0, 0, 0, 0]),
            &[NonIp],
            None,
        ),
        case(
            "PPPoE discovery behind a VLAN tag: non_ip",
            &Frame::raw(ether_type::PPPOE_DISCOVERY, vec![0x11, 0x09, 0, 0, 0, 0])
                .vlan(ether_type::VLAN, 9),
            &[Vlan, NonIp],
            None,
        ),
        case("ARP", &Frame::arp_request(A4, B4), &[NonIp], None),
        case(
            "ARP behind a VLAN tag",
            &Frame::arp_request(A4, B4).vlan(ether_type::VLAN, 5),
            &[Vlan, NonIp],
            None,
        ),
        case("LLDP", &Frame::raw(0x88CC, vec![0; 46]), &[NonIp], None),
        case(
            "old QinQ TPID 0x9100 is not a VLAN tag: non_ip",
            &syn4(445).vlan(0x9100, 5),
            &[NonIp],
            None,
        ),
        case(
            "IPv4 UDP",
            &Frame::ipv4_udp(A4, B4, 5353, 53),
            &[Ipv4, NonTcp],
            None,
        ),
        case(
            "IPv6 UDP",
            &Frame::ipv6_udp(A6, B6, 5353, 53),
            &[Ipv6, NonTcp],
            None,
        ),
        case(
            "IPv4 ICMP echo",
            &Frame::ipv4_icmp_echo(A4, B4),
            &[Ipv4, NonTcp],
            None,
        ),
        case(
            "ICMPv6 echo",
            &Frame::ipv6_icmp_echo(A6, B6),
            &[Ipv6, NonTcp],
            None,
        ),
        case(
            "IPv4 UDP behind two tags",
            &Frame::ipv4_udp(A4, B4, 1, 2)
                .vlan(ether_type::QINQ, 1)
                .vlan(ether_type::VLAN, 2),
            &[Vlan, Ipv4, NonTcp],
            None,
        ),
        case(
            "IPv4 ESP",
            &Frame::ipv4_raw(A4, B4, ip_proto::ESP, vec![0; 40]),
            &[Ipv4, NonTcp],
            None,
        ),
        case(
            "IPv6 ESP",
            &Frame::ipv6_raw(A6, B6, ip_proto::ESP, vec![0; 40]),
            &[Ipv6, NonTcp],
            None,
        ),
        case(
            "IPv6 no next header (59)",
            &Frame::ipv6_raw(A6, B6, ip_proto::NO_NEXT_HEADER, vec![]),
            &[Ipv6, NonTcp],
            None,
        ),
        case(
            "IPv6 hop-by-hop then ICMPv6",
            &Frame::ipv6_icmp_echo(A6, B6).ext(Ipv6Ext::HopByHop { len: 8 }),
            &[Ipv6, NonTcp],
            None,
        ),
        case(
            "IPv4 IHL 4: bad_header",
            &syn4(445).ihl(4),
            &[Ipv4, BadHeader],
            None,
        ),
        case(
            "IPv4 IHL 0: bad_header",
            &syn4(445).ihl(0),
            &[Ipv4, BadHeader],
            None,
        ),
        case(
            "IPv4 version 6 in an IPv4 frame: bad_header",
            &syn4(445).ip_version(6),
            &[Ipv4, BadHeader],
            None,
        ),
        case(
            "IPv4 version 0: bad_header",
            &syn4(445).ip_version(0),
            &[Ipv4, BadHeader],
            None,
        ),
        case(
            "IPv6 version 4 in an IPv6 frame: bad_header",
            &syn6(445).ip_version(4),
            &[Ipv6, BadHeader],
            None,
        ),
        case(
            "IPv4 IHL 6 with no options: the TCP header, read 4 bytes late, runs past the end",
            &syn4(445).ihl(6),
            &[Ipv4, Truncated],
            None,
        ),
        case(
            "TCP data offset 4: bad_header",
            &syn4(445).data_offset(4),
            &[Ipv4, BadHeader],
            None,
        ),
        case(
            "TCP data offset 0: bad_header",
            &syn4(445).data_offset(0),
            &[Ipv4, BadHeader],
            None,
        ),
        case(
            "IPv6 TCP data offset 4: bad_header",
            &syn6(445).data_offset(4),
            &[Ipv6, BadHeader],
            None,
        ),
        case(
            "TCP data offset 15 past the end of the frame: truncated",
            &syn4(445).data_offset(15),
            &[Ipv4, Truncated],
            None,
        ),
        case(
            "TCP data offset 6 with a 20-byte header at the end: truncated",
            &syn6(445).data_offset(6),
            &[Ipv6, Truncated],
            None,
        ),
        case(
            "TCP data offset 6 with 4 bytes of payload after it: counted",
            &syn4(445).data_offset(6).payload(vec![0; 4]),
            &v4,
            Some(445),
        ),
        case(
            "IPv4 IHL 15 with no options: TCP past the end: truncated",
            &Frame::ipv4_tcp(A4, B4, 1, 2, tcp::SYN).ihl(15),
            &[Ipv4, Truncated],
            None,
        ),
        case(
            "Ethernet header only (IPv4 EtherType): truncated",
            &Frame::raw(ether_type::IPV4, vec![]),
            &[Ipv4, Truncated],
            None,
        ),
        case(
            "VLAN EtherType with 2 bytes of tag: truncated",
            &Frame::raw(ether_type::VLAN, vec![0, 5]),
            &[Vlan, Truncated],
            None,
        ),
        case(
            "IPv6 hop-by-hop cut after 4 bytes: truncated",
            &Frame::raw(ether_type::IPV6, {
                let mut f = syn6(445).ext(Ipv6Ext::HopByHop { len: 8 }).build();
                f.truncate(14 + 40 + 4);
                f[14..].to_vec()
            }),
            &[Ipv6, Truncated],
            None,
        ),
        // Scaling: the counts move by exactly `repeat`.
        case("IPv4 SYN x1000", &syn4(8080), &v4, Some(8080)).repeat(1000),
        case(
            "IPv6 SYN, two tags x37",
            &syn6(443)
                .vlan(ether_type::QINQ, 1)
                .vlan(ether_type::VLAN, 2),
            &[Vlan, Ipv6, Tcp],
            Some(443),
        )
        .repeat(37),
        case(
            "IPv6 SYN-ACK x250",
            &Frame::ipv6_tcp(A6, B6, 443, 1, tcp::SYN | tcp::ACK),
            &v6,
            None,
        )
        .repeat(250),
        case("ARP x3", &Frame::arp_request(A4, B4), &[NonIp], None).repeat(3),
    ]);
    cases
}

/// Runs a table through one entry point; returns the class totals.
fn run_table(hook: Hook, kind: LinkKind, cases: &[Case]) -> ClassCounts {
    run_table_on(&common::load_entry(hook, kind), hook, kind, cases)
}

fn run_table_on(sensor: &Sensor, hook: Hook, kind: LinkKind, cases: &[Case]) -> ClassCounts {
    match sensor.verified_instructions() {
        Some(n) => println!("verifier: {n} instructions processed for {hook:?} {kind:?}"),
        None => println!("verifier: the kernel did not report an instruction count"),
    }
    let start = counters(sensor);
    let mut total = ClassCounts::default();
    for case in cases {
        if !kernel_accepts(hook, &case.frame) {
            assert_refused(sensor, &case.name, &case.frame);
            continue;
        }
        let delta = run(sensor, hook, case);
        for (t, d) in total.0.iter_mut().zip(delta.0) {
            *t += d;
        }
    }
    total
        .check_invariants()
        .expect("invariants over the whole table");
    let end = counters(sensor);
    assert_eq!(class_delta(&end.classes, &start.classes), total);
    end.classes
        .check_invariants()
        .expect("invariants of the totals");
    println!(
        "{hook:?} {kind:?}: {} cases: {}",
        cases.len(),
        describe(&total)
    );
    total
}

/// Asserts the kernel refuses `frame` as test input (EINVAL) and no counter moves.
fn assert_refused(sensor: &Sensor, name: &str, frame: &[u8]) {
    let before = counters(sensor);
    match sensor.test_run(frame, 1) {
        Err(e) if is_refused_test_input(&e) => {}
        Err(e) => panic!("{name} ({} bytes): expected EINVAL, got {e}", frame.len()),
        Ok(r) => panic!(
            "{name} ({} bytes): the kernel ran it (verdict {})",
            frame.len(),
            r.return_value
        ),
    }
    let after = counters(sensor);
    assert_eq!(
        after.classes, before.classes,
        "{name}: class counters moved"
    );
    assert!(after.ports == before.ports, "{name}: a port counter moved");
}

#[test]
fn crafted_frames_count_exactly() {
    // Only frames both entry points can be test-run on are compared (XDP's are a
    // superset; run_table checks that TC refuses the others).
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| kernel_accepts(Hook::Tc, &c.frame))
        .collect();
    let totals: Vec<ClassCounts> = HOOKS
        .iter()
        .map(|&hook| run_table(hook, LinkKind::Ethernet, &cases))
        .collect();
    assert_eq!(
        totals[0], totals[1],
        "XDP and TC count the same frames alike"
    );
    assert!(totals[0].get(PacketClass::Pppoe) > 0);
}

/// The Ethernet cases whose frame is a plain IP packet (no tags, no PPPoE, the
/// version nibble agreeing with the EtherType), as an L3 link delivers them: the
/// same classes, from the IP header on. Packets shorter than 14 bytes cannot be
/// test-run (the kernel refuses them): the truncation sweep covers those lengths.
fn raw_ip_cases() -> Vec<Case> {
    use PacketClass::*;
    let mut raw: Vec<Case> = cases()
        .into_iter()
        .filter(|c| {
            let ether = u16::from_be_bytes([c.frame[12], c.frame[13]]);
            let version = c.frame.get(14).map(|b| b >> 4);
            c.frame.len() >= 28
                && ((ether == ether_type::IPV4 && version == Some(4))
                    || (ether == ether_type::IPV6 && version == Some(6)))
        })
        .map(|c| Case {
            name: format!("raw IP: {}", c.name),
            frame: c.frame[14..].to_vec(),
            ..c
        })
        .collect();
    for version in [0u8, 5, 7, 15] {
        let mut frame = syn4(445).build_ip();
        frame[0] = (version << 4) | 5;
        raw.push(Case {
            name: format!("raw IP: version {version}: non_ip"),
            frame,
            repeat: 1,
            classes: vec![NonIp],
            syn_port: None,
        });
    }
    raw.push(Case {
        name: "raw IP: IPv4 cut to 19 bytes (shorter than any IP header): truncated".into(),
        frame: syn4(445).build_ip()[..19].to_vec(),
        repeat: 1,
        classes: vec![Truncated],
        syn_port: None,
    });
    raw
}

#[test]
fn raw_ip_frames_count_exactly() {
    let cases: Vec<Case> = raw_ip_cases()
        .into_iter()
        .filter(|c| kernel_accepts(Hook::Tc, &c.frame))
        .collect();
    assert!(cases.len() > 50, "the raw-IP table covers the IP cases");
    let totals: Vec<ClassCounts> = HOOKS
        .iter()
        .map(|&hook| run_table(hook, LinkKind::RawIp, &cases))
        .collect();
    assert_eq!(
        totals[0], totals[1],
        "XDP and TC count the same packets alike"
    );
    assert_eq!(totals[0].get(PacketClass::Vlan), 0);
    assert_eq!(totals[0].get(PacketClass::Pppoe), 0);
}

/// The XDP programs' single-buffer twins (what a kernel before 5.18 runs, as it
/// refuses multi-buffer programs) count every crafted frame as the programs do.
#[test]
fn single_buffer_xdp_programs_count_alike() {
    for (kind, cases) in [
        (LinkKind::Ethernet, cases()),
        (LinkKind::RawIp, raw_ip_cases()),
    ] {
        let twin = single_buffer_program_name(kind);
        let multi = run_table(Hook::Xdp, kind, &cases);
        let sensor = Sensor::unattached_single_buffer(kind).expect("loading the twin");
        assert!(
            aya::programs::loaded_programs()
                .flatten()
                .any(|p| p.name_as_str() == Some(twin)),
            "{twin} is loaded"
        );
        let single = run_table_on(&sensor, Hook::Xdp, kind, &cases);
        assert_eq!(multi, single, "{kind:?}: {}", describe(&single));
    }
}

/// Runs `full` cut at every length from 0 to its full size. Lengths below the test run's minimum must be
/// refused (EINVAL) with no counter moved; the rest up to full-1 must be passed, classed
/// `truncated` and not counted, with the flags `flags(len)`; the full frame is a SYN.
fn truncation_sweep(
    name: &str,
    full: &Frame,
    dport: u16,
    flags: impl Fn(usize) -> Vec<PacketClass>,
) {
    for hook in HOOKS {
        truncation_sweep_on(hook, LinkKind::Ethernet, name, &full.build(), dport, &flags);
    }
}

/// [`truncation_sweep`] of an IP packet through the raw-IP entry points (the
/// length in `flags` counts from the IP header).
fn raw_truncation_sweep(
    name: &str,
    full: &Frame,
    dport: u16,
    flags: impl Fn(usize) -> Vec<PacketClass>,
) {
    for hook in HOOKS {
        truncation_sweep_on(hook, LinkKind::RawIp, name, &full.build_ip(), dport, &flags);
    }
}

fn truncation_sweep_on(
    hook: Hook,
    kind: LinkKind,
    name: &str,
    full: &[u8],
    dport: u16,
    flags: &dyn Fn(usize) -> Vec<PacketClass>,
) {
    use PacketClass::*;
    let name = format!("{name} ({hook:?} {kind:?})");
    let sensor = common::load_entry(hook, kind);
    let mut total = ClassCounts::default();
    let mut accepted_short = 0;
    for len in 0..=full.len() {
        let frame = full[..len].to_vec();
        if len < full.len() && kernel_accepts(hook, &frame) {
            accepted_short += 1;
        }
        if !kernel_accepts(hook, &frame) {
            assert_refused(&sensor, &format!("{name} cut to {len}"), &frame);
            continue;
        }
        let mut classes = flags(len);
        let syn_port = if len == full.len() {
            classes.push(Tcp);
            Some(dport)
        } else {
            classes.push(Truncated);
            None
        };
        let case = Case {
            name: format!("{name} cut to {len} of {} bytes", full.len()),
            frame,
            repeat: 1,
            classes,
            syn_port,
        };
        let delta = run(&sensor, hook, &case);
        for (t, d) in total.0.iter_mut().zip(delta.0) {
            *t += d;
        }
    }
    total.check_invariants().expect("invariants over the sweep");
    assert_eq!(total.get(Truncated), accepted_short);
    if hook == Hook::Xdp {
        // XDP takes every length from 14 on.
        assert_eq!(accepted_short, (full.len() - 14) as u64);
    }
    assert_eq!(total.get(Syn), 1);
}

#[test]
fn ipv4_syn_with_options_truncated_at_every_length() {
    let frame = syn4(445)
        .ip_options(ip_options())
        .tcp_options(tcp::syn_options());
    truncation_sweep("IPv4 SYN with IP and TCP options", &frame, 445, |_| {
        vec![PacketClass::Ipv4]
    });
}

#[test]
fn vlan_ipv4_syn_truncated_at_every_length() {
    use PacketClass::*;
    let frame = syn4(445)
        .vlan(ether_type::QINQ, 10)
        .vlan(ether_type::VLAN, 20)
        .tcp_options(tcp::windows_syn_options());
    // The inner EtherType is bytes 20..22: the frame is known to be IPv4 from 22 bytes on.
    truncation_sweep("QinQ IPv4 SYN", &frame, 445, |len| {
        if len >= 22 {
            vec![Vlan, Ipv4]
        } else {
            vec![Vlan]
        }
    });
}

#[test]
fn ipv6_syn_with_extension_headers_truncated_at_every_length() {
    let frame = syn6(445)
        .ext(Ipv6Ext::HopByHop { len: 16 })
        .ext(Ipv6Ext::Routing { len: 24 })
        .ext(Ipv6Ext::Auth { icv_len: 12 })
        .fragment(0, true)
        .ext(Ipv6Ext::DestinationOptions { len: 8 })
        .tcp_options(tcp::syn_options());
    truncation_sweep("IPv6 SYN with extension headers", &frame, 445, |_| {
        vec![PacketClass::Ipv6]
    });
}

#[test]
fn pppoe_ipv4_syn_with_vlan_truncated_at_every_length() {
    use PacketClass::*;
    let frame = syn4(445)
        .ip_options(ip_options())
        .tcp_options(tcp::syn_options())
        .pppoe(0x1234)
        .vlan(ether_type::VLAN, 20);
    // Tag 14..18, EtherType 16..18 says PPPoE, PPPoE + PPP protocol 18..26.
    truncation_sweep("VLAN PPPoE IPv4 SYN", &frame, 445, |len| {
        let mut flags = vec![Vlan];
        if len >= 18 {
            flags.push(Pppoe);
        }
        if len >= 26 {
            flags.push(Ipv4);
        }
        flags
    });
}

#[test]
fn pppoe_ipv6_syn_with_vlans_truncated_at_every_length() {
    use PacketClass::*;
    let frame = syn6(445)
        .ext(Ipv6Ext::HopByHop { len: 8 })
        .tcp_options(tcp::syn_options())
        .pppoe(1)
        .vlan(ether_type::QINQ, 10)
        .vlan(ether_type::VLAN, 20);
    truncation_sweep("QinQ PPPoE IPv6 SYN", &frame, 445, |len| {
        let mut flags = vec![Vlan];
        if len >= 22 {
            flags.push(Pppoe);
        }
        if len >= 30 {
            flags.push(Ipv6);
        }
        flags
    });
}

#[test]
fn pppoe_ipv4_syn_untagged_truncated_at_every_length() {
    use PacketClass::*;
    truncation_sweep("PPPoE IPv4 SYN", &syn4(80).pppoe(2), 80, |len| {
        if len >= 22 {
            vec![Pppoe, Ipv4]
        } else {
            vec![Pppoe]
        }
    });
}

#[test]
fn raw_ipv4_syn_truncated_at_every_length() {
    let frame = syn4(445)
        .ip_options(ip_options())
        .tcp_options(tcp::syn_options());
    // Below 20 bytes (the smallest IP header) the version is not read.
    raw_truncation_sweep("raw IPv4 SYN", &frame, 445, |len| {
        if len >= 20 {
            vec![PacketClass::Ipv4]
        } else {
            vec![]
        }
    });
}

#[test]
fn raw_ipv6_syn_truncated_at_every_length() {
    let frame = syn6(445)
        .ext(Ipv6Ext::DestinationOptions { len: 16 })
        .tcp_options(tcp::syn_options());
    raw_truncation_sweep("raw IPv6 SYN", &frame, 445, |len| {
        if len >= 20 {
            vec![PacketClass::Ipv6]
        } else {
            vec![]
        }
    });
}

#[test]
fn every_port_is_its_own_counter() {
    // One SYN to each of a spread of ports, IPv4 and IPv6: each lands on its own port.
    let sensor = common::load_sensor();
    let before = counters(&sensor);
    let ports: Vec<u16> = (0..=u16::MAX)
        .step_by(257)
        .chain([1, 445, 65_534, 65_535])
        .collect();
    for &port in &ports {
        sensor.test_run(&syn4(port).build(), 1).expect("test run");
        // Two runs, not repeat = 2: the kernel swaps the XDP dispatcher around every
        // run with repeat > 1, which costs about 20 ms.
        let syn6 = syn6(port).build();
        sensor.test_run(&syn6, 1).expect("test run");
        sensor.test_run(&syn6, 1).expect("test run");
    }
    let after = counters(&sensor);
    for port in 0..=u16::MAX {
        let want = 3 * ports.iter().filter(|&&p| p == port).count() as u64;
        let got = after.ports[usize::from(port)] - before.ports[usize::from(port)];
        assert_eq!(got, want, "port {port}");
    }
    let delta = class_delta(&after.classes, &before.classes);
    assert_eq!(delta.get(PacketClass::Syn), 3 * ports.len() as u64);
    delta.check_invariants().expect("invariants");
}

/// Pins the calling thread to `cpu` (BPF_PROG_TEST_RUN runs on the calling CPU).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; the set and affinity calls only write it and
    // the thread's mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "cannot run on CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Issue 10: a SYN on a CPU whose id has no slice in the port map (as on a sparse
/// possible-CPU mask with a map sized by the CPU count) is counted in the no-slot
/// counter, not lost silently; a SYN on a CPU with a slice is counted by port.
#[test]
fn syn_on_a_cpu_without_a_slice_is_counted_as_such() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs 2 CPUs (one with a slice, one without)"
    );
    // One slice: CPU 0 only.
    let sensor =
        Sensor::unattached_sized(Hook::Xdp, LinkKind::Ethernet, 1).expect("load with one slice");
    let frame = syn4(445).build();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_to_cpu(1);
                sensor.test_run(&frame, 3).expect("test run on CPU 1");
            })
            .join()
            .unwrap();
        scope
            .spawn(|| {
                pin_to_cpu(0);
                sensor.test_run(&frame, 2).expect("test run on CPU 0");
            })
            .join()
            .unwrap();
    });
    assert_eq!(sensor.read_syn_no_slot().unwrap(), 3);
    assert_eq!(counters(&sensor).ports[445], 2);
    assert_eq!(counters(&sensor).classes.get(PacketClass::Syn), 5);
}

/// The class counters live in the program's `.bss`, which aya 0.14 rewrites with its
/// initial bytes at every load, also when reused from a pin: the agent binds it to a
/// pinned map of its own instead. A new load (an agent restart) must find every class
/// count where the last one left it, and an older version's per-CPU class map pinned
/// for the same interface (an upgrade) must be added, not dropped.
#[test]
fn class_counts_survive_a_new_load_and_an_upgrade() {
    use aya::maps::{MapData, PerCpuArray, PerCpuValues};
    use scan_common::{CLASS_SLOTS_MAP, LEGACY_CLASSES_MAP};

    let scratch = scan_lab::agent::Scratch::new(
        "class-pins",
        std::path::Path::new(env!("CARGO_BIN_EXE_scan-agent")),
    )
    .unwrap();
    std::fs::create_dir_all(&scratch.pin_path).expect("a directory on the bpffs");
    // What an older version counted: 3 IPv4 SYNs on every CPU.
    let mut older = ClassCounts::default();
    for class in [
        PacketClass::Seen,
        PacketClass::Ipv4,
        PacketClass::Tcp,
        PacketClass::Syn,
    ] {
        older.0[class as usize] = 3;
    }
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    let definition = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_PERCPU_ARRAY,
        4,
        size_of::<ClassCounts>() as u32,
        1,
        0,
    );
    let mut legacy = PerCpuArray::<MapData, ClassCounts>::try_from(aya::maps::Map::PerCpuArray(
        MapData::create(definition, LEGACY_CLASSES_MAP, None).expect("a per-CPU array"),
    ))
    .unwrap();
    legacy
        .set(0, PerCpuValues::try_from(vec![older; cpus]).unwrap(), 0)
        .unwrap();
    legacy
        .pin(scratch.pin_path.join(LEGACY_CLASSES_MAP))
        .expect("pin the older map");

    let mut expected = ClassCounts::default();
    for _ in 0..cpus {
        expected.add(&older.0);
    }
    let frame = syn4(445).build();
    for (load, runs) in [(1, 5u32), (2, 7), (3, 0)] {
        let sensor = Sensor::unattached_pinned(&scratch.pin_path, Hook::Xdp, LinkKind::Ethernet)
            .unwrap_or_else(|e| panic!("load {load} with pins (needs root and a bpffs): {e}"));
        assert_eq!(
            sensor.read_classes().unwrap(),
            expected,
            "load {load} did not start where the last one left"
        );
        if runs > 0 {
            let result = sensor.test_run(&frame, runs).unwrap();
            assert_eq!(result.return_value, XDP_PASS);
        }
        for class in [
            PacketClass::Seen,
            PacketClass::Ipv4,
            PacketClass::Tcp,
            PacketClass::Syn,
        ] {
            expected.0[class as usize] += u64::from(runs);
        }
        assert_eq!(
            sensor.read_classes().unwrap(),
            expected,
            "{}",
            describe(&sensor.read_classes().unwrap())
        );
        assert!(scratch.pin_path.join(CLASS_SLOTS_MAP).exists());
    }
    assert_eq!(expected.get(PacketClass::Syn), 3 * cpus as u64 + 12);
    let mut removed = scan_agent::sensor::detach_all(&scratch.pin_path).expect("detach");
    removed.sort();
    let pin = |name: &str| format!("map pin {}", scratch.pin_path.join(name).display());
    for name in [CLASS_SLOTS_MAP, LEGACY_CLASSES_MAP] {
        assert!(removed.contains(&pin(name)), "{name} left: {removed:?}");
    }
}
