//! Lab tests of the hooks and link kinds: the real agent on a veth (XDP, TCX, beside
//! a foreign XDP program, before another TCX program), PPPoE session frames written
//! onto the veth, and a TUN device (an L3 link) fed with IP packets. Every count is
//! exact: frames are written raw (AF_PACKET, TUN), so there are no retransmissions.
use std::{collections::BTreeMap, process::Command};

use scan_lab::{
    Agent, Lab, Scratch,
    frames::{Frame, ether_type, ppp_proto, syn_frames, tcp},
    http::{attached, packet_flag, packet_outcome, port_syns, value},
    links::{Tun, build_bpf},
    net::xdp_prog_id,
};

const AGENT: &str = env!("CARGO_BIN_EXE_scan-agent");

fn scratch(tag: &str) -> Scratch {
    Scratch::new(tag, AGENT.as_ref()).expect("scratch directories")
}

fn start(interface: &str, scratch: &Scratch, extra: &[&str], run: &str) -> Agent {
    let mut flags = vec!["--warmup", "8s"];
    flags.extend(extra);
    scratch
        .start_agent(interface, &flags, run)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn tcx_counts_exactly_what_xdp_counts() {
    let lab = Lab::create_quiet().expect("creating the lab (needs root and network namespaces)");
    let per_port = BTreeMap::from([(22, 7), (445, 12), (3389, 5)]);
    let total: usize = per_port.values().sum();
    let mut results = Vec::new();
    for (hook, args) in [
        ("xdp", &["--attach", "xdp", "--xdp-mode", "native"][..]),
        ("tcx", &["--attach", "tc"][..]),
    ] {
        let scratch = scratch(&format!("hook-{hook}"));
        let mut agent = start(&lab.host_if, &scratch, args, hook);
        let sent = lab.inject(syn_frames(&lab, &per_port).unwrap()).unwrap();
        assert_eq!(sent, total);
        let metrics = agent.metrics_after_poll().unwrap();
        assert_eq!(attached(&metrics, &lab.host_if, hook), 1.0, "{metrics}");
        let counts: Vec<f64> = per_port.keys().map(|&p| port_syns(&metrics, p)).collect();
        let syns = packet_flag(&metrics, &lab.host_if, "syn");
        let vlan = packet_flag(&metrics, &lab.host_if, "vlan");
        assert_eq!(syns, total as f64, "{hook}: {metrics}");
        assert_eq!(
            counts,
            per_port.values().map(|&n| n as f64).collect::<Vec<_>>()
        );
        results.push((counts, syns, vlan));
        agent.stop(libc::SIGTERM).unwrap();
    }
    assert_eq!(
        results[0], results[1],
        "XDP and TCX count the same frames alike"
    );
}

#[test]
fn a_foreign_xdp_program_is_never_replaced() {
    let lab = Lab::create_quiet().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("foreign");
    let object = build_bpf("xdp_pass", &scratch.file("")).expect("building the foreign program");
    let status = Command::new("ip")
        .args(["link", "set", "dev", &lab.host_if, "xdpgeneric", "obj"])
        .arg(&object)
        .args(["sec", "xdp"])
        .status()
        .unwrap();
    assert!(status.success(), "ip link set xdpgeneric obj failed");
    let foreign = xdp_prog_id(&lab.host_if)
        .unwrap()
        .expect("the foreign program is attached");

    // --attach xdp: refused, naming the holder; the foreign program stays.
    let out = Command::new(AGENT)
        .args(["run", "--iface", &lab.host_if, "--attach", "xdp"])
        .args(scratch.agent_args())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("held by another program") && stderr.contains(&foreign.to_string()),
        "{stderr}"
    );
    assert_eq!(xdp_prog_id(&lab.host_if).unwrap(), Some(foreign));

    // --attach auto: TCX beside it, saying so; every SYN counted; the foreign stays.
    let mut agent = start(&lab.host_if, &scratch, &["--attach", "auto"], "auto");
    let per_port = BTreeMap::from([(80, 9), (443, 4)]);
    lab.inject(syn_frames(&lab, &per_port).unwrap()).unwrap();
    let metrics = agent.metrics_after_poll().unwrap();
    assert_eq!(attached(&metrics, &lab.host_if, "tcx"), 1.0, "{metrics}");
    assert_eq!(packet_flag(&metrics, &lab.host_if, "syn"), 13.0);
    assert_eq!(port_syns(&metrics, 80), 9.0);
    assert!(
        agent
            .log_text()
            .contains("attaching at TCX ingress instead"),
        "{}",
        agent.log_text()
    );
    agent.stop(libc::SIGTERM).unwrap();
    assert_eq!(xdp_prog_id(&lab.host_if).unwrap(), Some(foreign));
}

/// `--xdp-multiprog on` on a free hook: the agent makes a libxdp dispatcher where the
/// kernel allows freplace programs, and otherwise (this project's test kernel refuses
/// BPF_PROG_TYPE_EXT loads with EPERM) falls back to XDP alone and says why. Either
/// way every SYN is counted, and stopping leaves the hook free.
#[test]
fn xdp_multiprog_makes_a_dispatcher_or_falls_back_to_xdp_alone() {
    let lab = Lab::create_quiet().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("multiprog");
    let mut agent = start(
        &lab.host_if,
        &scratch,
        &["--attach", "xdp", "--xdp-multiprog", "on"],
        "multiprog",
    );
    let per_port = BTreeMap::from([(445, 11), (23, 3)]);
    assert_eq!(
        lab.inject(syn_frames(&lab, &per_port).unwrap()).unwrap(),
        14
    );
    let metrics = agent.metrics_after_poll().unwrap();
    let log = agent.log_text();
    let hook = if log.contains("attaching XDP alone") {
        "xdp"
    } else {
        "xdp_dispatcher"
    };
    assert_eq!(
        attached(&metrics, &lab.host_if, hook),
        1.0,
        "{log}\n{metrics}"
    );
    assert_eq!(
        packet_flag(&metrics, &lab.host_if, "syn"),
        14.0,
        "{metrics}"
    );
    assert_eq!(port_syns(&metrics, 445), 11.0);
    assert_eq!(port_syns(&metrics, 23), 3.0);
    assert!(agent.stop(libc::SIGTERM).unwrap().success());
    assert_eq!(
        xdp_prog_id(&lab.host_if).unwrap(),
        None,
        "stopping frees the hook"
    );
}

/// TCX order: the agent's link goes first, so a TCX program that drops (or accepts:
/// TC_ACT_OK ends the chain) runs after it and the agent still sees every packet.
#[test]
fn tcx_runs_first_before_another_tc_program_that_drops() {
    use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};
    let lab = Lab::create_quiet().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("tcx-order");
    let object = build_bpf("tc_drop_port", &scratch.file("")).expect("building the tc program");
    let drop_port: u16 = 445;
    let mut ebpf = aya::EbpfLoader::new()
        .override_global("DROP_PORT", &drop_port, true)
        .load_file(&object)
        .expect("loading the tc program");
    let program: &mut SchedClassifier = ebpf
        .program_mut("tc_drop_port")
        .unwrap()
        .try_into()
        .unwrap();
    program.load().unwrap();
    program
        .attach_with_options(
            &lab.host_if,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .expect("attaching the dropping program at TCX ingress");
    let dropped_before = lab.host_rx_packets().unwrap();

    let mut agent = start(&lab.host_if, &scratch, &["--attach", "tc"], "tcx");
    let per_port = BTreeMap::from([(445, 10), (8080, 6)]);
    lab.inject(syn_frames(&lab, &per_port).unwrap()).unwrap();
    let metrics = agent.metrics_after_poll().unwrap();
    // The 445 SYNs were dropped by the other program, after the agent counted them.
    assert_eq!(port_syns(&metrics, 445), 10.0, "{metrics}");
    assert_eq!(port_syns(&metrics, 8080), 6.0);
    assert_eq!(packet_flag(&metrics, &lab.host_if, "syn"), 16.0);
    assert!(lab.host_rx_packets().unwrap() >= dropped_before + 16);
    agent.stop(libc::SIGTERM).unwrap();
}

#[test]
fn pppoe_frames_written_onto_a_veth_are_counted_exactly() {
    let lab = Lab::create_quiet().expect("creating the lab (needs root and network namespaces)");
    let scratch = scratch("pppoe");
    let mut agent = start(&lab.host_if, &scratch, &["--attach", "xdp"], "pppoe");
    let (host, peer) = lab.macs().unwrap();
    let mut frames = Vec::new();
    // 11 IPv4 and 6 IPv6 SYNs in PPPoE sessions, every third behind a VLAN tag.
    for i in 0..17u16 {
        let frame = if i < 11 {
            Frame::ipv4_tcp([198, 19, 0, 1], [198, 19, 0, 2], 1000 + i, 1723, tcp::SYN)
        } else {
            Frame::ipv6_tcp(
                [0x2001, 0xdb8, 9, 0, 0, 0, 0, 1],
                [0x2001, 0xdb8, 9, 0, 0, 0, 0, 2],
                1000 + i,
                1723,
                tcp::SYN,
            )
        };
        let frame = frame.pppoe(0x0102);
        let frame = if i % 3 == 0 {
            frame.vlan(ether_type::VLAN, 35)
        } else {
            frame
        };
        frames.push(frame.macs(host, peer).build());
    }
    // Not SYNs: a SYN-ACK, an LCP echo in the session, a discovery frame (PADI).
    frames.push(
        Frame::ipv4_tcp(
            [198, 19, 0, 2],
            [198, 19, 0, 1],
            1723,
            1000,
            tcp::SYN | tcp::ACK,
        )
        .pppoe(0x0102)
        .macs(host, peer)
        .build(),
    );
    frames.push(
        Frame::raw(0, vec![9, 1, 0, 8, 0, 0, 0, 0])
            .pppoe(0x0102)
            .ppp_protocol(ppp_proto::LCP)
            .macs(host, peer)
            .build(),
    );
    frames.push(
        Frame::raw(
            ether_type::PPPOE_DISCOVERY,
            vec![0x11, 0x09, 0, 0, 0, 4, 1, 1, 0, 0],
        )
        .macs(host, peer)
        .build(),
    );
    assert_eq!(lab.inject(frames).unwrap(), 20);
    let metrics = agent.metrics_after_poll().unwrap();
    let i = &lab.host_if;
    assert_eq!(packet_flag(&metrics, i, "pppoe"), 19.0, "{metrics}");
    assert_eq!(packet_flag(&metrics, i, "syn"), 17.0);
    assert_eq!(packet_flag(&metrics, i, "ipv4"), 12.0);
    assert_eq!(packet_flag(&metrics, i, "ipv6"), 6.0);
    assert_eq!(packet_flag(&metrics, i, "vlan"), 6.0);
    assert_eq!(port_syns(&metrics, 1723), 17.0);
    let outcome = |o: &str| packet_outcome(&metrics, i, o);
    assert_eq!(outcome("tcp"), 18.0);
    assert_eq!(outcome("non_ip"), 2.0);
    agent.stop(libc::SIGTERM).unwrap();
}

/// Jumbo frames span several buffers. Drivers refuse a native XDP program that is not
/// multi-buffer aware on such an interface (veth: ERANGE above a 3.5 KB MTU), and
/// every hook must find the headers where the frame's first buffer (XDP) or the
/// skb's linear part (TCX) ends early: an AF_PACKET frame over a page long arrives
/// with only its 14-byte Ethernet header linear.
#[test]
fn jumbo_frames_count_exactly_on_every_hook_at_a_9000_byte_mtu() {
    let lab = Lab::create_quiet().expect("creating the lab (needs root and network namespaces)");
    lab.set_mtu(9000).unwrap();
    let (host, peer) = lab.macs().unwrap();
    let payload = |len: usize| (0..len).map(|i| i as u8).collect::<Vec<u8>>();
    let v4 = |flags, len| {
        Frame::ipv4_tcp([198, 19, 0, 1], [198, 19, 0, 2], 40000, 445, flags)
            .payload(payload(len))
            .macs(host, peer)
            .build()
    };
    let v6 = |flags, len| {
        Frame::ipv6_tcp(
            [0x2001, 0xdb8, 9, 0, 0, 0, 0, 1],
            [0x2001, 0xdb8, 9, 0, 0, 0, 0, 2],
            40000,
            445,
            flags,
        )
        .payload(payload(len))
        .macs(host, peer)
        .build()
    };
    let mut frames = Vec::new();
    // 5 + 4 SYNs carrying data (as TCP Fast Open's do) in 9,014- and 8,014-byte
    // frames, 3 small SYNs, and 6 jumbo ACK segments of 8,900 bytes of payload.
    for _ in 0..5 {
        frames.push(v4(tcp::SYN, 9000 - 40));
    }
    for _ in 0..4 {
        frames.push(v6(tcp::SYN, 8000 - 60));
    }
    for _ in 0..3 {
        frames.push(v4(tcp::SYN, 0));
    }
    for _ in 0..6 {
        frames.push(v4(tcp::ACK, 8900));
    }
    assert_eq!(frames[0].len(), 9014);
    for (mode, hook, args) in [
        (
            "native",
            "xdp",
            &["--attach", "xdp", "--xdp-mode", "native"][..],
        ),
        ("skb", "xdp", &["--attach", "xdp", "--xdp-mode", "skb"][..]),
        ("tcx", "tcx", &["--attach", "tc"][..]),
    ] {
        let scratch = scratch(&format!("jumbo-{mode}"));
        let mut agent = start(&lab.host_if, &scratch, args, mode);
        assert_eq!(lab.inject(frames.clone()).unwrap(), 18);
        let metrics = agent.metrics_after_poll().unwrap();
        let i = &lab.host_if;
        let attached_as = value(
            &metrics,
            "scan_agent_attached",
            &[
                &format!("interface=\"{i}\""),
                &format!("mode=\"{mode}\""),
                &format!("hook=\"{hook}\""),
            ],
        );
        assert_eq!(attached_as, 1.0, "attached in {mode} mode: {metrics}");
        let outcome = |o: &str| packet_outcome(&metrics, i, o);
        // Every frame whole TCP (the SYNs included), none cut short.
        assert_eq!(outcome("truncated"), 0.0, "{mode}: {metrics}");
        assert_eq!(outcome("tcp"), 18.0, "{mode}");
        assert_eq!(packet_flag(&metrics, i, "syn"), 12.0, "{mode}");
        assert_eq!(port_syns(&metrics, 445), 12.0, "{mode}");
        assert_eq!(packet_flag(&metrics, i, "ipv4"), 14.0, "{mode}");
        assert_eq!(packet_flag(&metrics, i, "ipv6"), 4.0, "{mode}");
        agent.stop(libc::SIGTERM).unwrap();
    }
}

#[test]
fn syns_written_into_a_tun_device_are_counted_from_the_ip_header() {
    let mut tun = Tun::create().expect("creating a TUN device (needs root)");
    // `check` says how the L3 link will be parsed.
    let out = Command::new(AGENT)
        .args(["check", "--iface", &tun.name])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("parsed from the IP header"),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v4 = |i: u16| {
        Frame::ipv4_tcp([198, 19, 1, 1], [198, 19, 1, 2], 2000 + i, 5900, tcp::SYN).build_ip()
    };
    let v6 = |i: u16| {
        Frame::ipv6_tcp(
            [0x2001, 0xdb8, 7, 0, 0, 0, 0, 1],
            [0x2001, 0xdb8, 7, 0, 0, 0, 0, 2],
            2000 + i,
            5901,
            tcp::SYN,
        )
        .build_ip()
    };
    for (hook, args) in [
        ("xdp", &["--attach", "xdp", "--xdp-mode", "skb"][..]),
        ("tcx", &["--attach", "tc"][..]),
    ] {
        let scratch = scratch(&format!("tun-{hook}"));
        let mut agent = start(&tun.name, &scratch, args, hook);
        let mut packets: Vec<Vec<u8>> = (0..14).map(v4).collect();
        packets.extend((0..9).map(v6));
        // Not SYNs: an answer, and an IP packet that is not TCP.
        packets.push(
            Frame::ipv4_tcp(
                [198, 19, 1, 2],
                [198, 19, 1, 1],
                5900,
                1,
                tcp::SYN | tcp::ACK,
            )
            .build_ip(),
        );
        packets.push(Frame::ipv4_udp([198, 19, 1, 1], [198, 19, 1, 2], 1, 53).build_ip());
        tun.write(&packets).unwrap();
        let metrics = agent.metrics_after_poll().unwrap();
        let name = &tun.name;
        assert_eq!(attached(&metrics, name, hook), 1.0, "{metrics}");
        assert_eq!(
            packet_flag(&metrics, name, "syn"),
            23.0,
            "{hook}: {metrics}"
        );
        assert_eq!(packet_flag(&metrics, name, "ipv4"), 16.0);
        assert_eq!(packet_flag(&metrics, name, "ipv6"), 9.0);
        assert_eq!(port_syns(&metrics, 5900), 14.0);
        assert_eq!(port_syns(&metrics, 5901), 9.0);
        assert!(
            agent.log_text().contains("parsed from the IP header"),
            "{}",
            agent.log_text()
        );
        agent.stop(libc::SIGTERM).unwrap();
    }
}

fn run_tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} does not run ({e}): `cargo xtask setup` installs xdp-tools")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// xdp-filter (xdp-tools 1.3.1, libxdp) on the lab veth, then the agent with
/// `--attach auto`: the agent joins libxdp's dispatcher where the kernel allows
/// freplace, and takes TCX ingress beside it where libxdp had to load xdp-filter
/// alone (this test machine refuses freplace programs with EPERM, libxdp's own
/// compatibility check included). Either way xdp-filter keeps the hook and still
/// drops what it is told to, the agent counts every SYN it passes, and stopping the
/// agent leaves xdp-filter as it was.
#[test]
fn xdp_filter_keeps_working_and_the_agent_counts_what_it_passes() {
    let lab = Lab::create_quiet().expect("creating the lab (needs root and network namespaces)");
    let i = lab.host_if.clone();
    let scratch = scratch("xdp-filter");
    run_tool("xdp-filter", &["load", &i]);
    run_tool("xdp-filter", &["port", "445", "--mode", "dst"]);
    let filter = xdp_prog_id(&i).unwrap().expect("xdp-filter is on the hook");
    let mut agent = start(&i, &scratch, &["--attach", "auto"], "agent");
    let status = run_tool("xdp-loader", &["status", &i]);
    assert!(status.contains("xdpfilt"), "{status}");
    let per_port = BTreeMap::from([(445, 8), (80, 5)]);
    lab.inject(syn_frames(&lab, &per_port).unwrap()).unwrap();
    let metrics = agent.metrics_after_poll().unwrap();
    let shared = attached(&metrics, &i, "xdp_dispatcher");
    let tcx = attached(&metrics, &i, "tcx");
    assert_eq!(shared + tcx, 1.0, "{metrics}");
    if shared == 1.0 {
        assert!(status.contains("scan_xdp"), "{status}");
    }
    // xdp-filter dropped the 445 SYNs before the agent saw them; the 80 ones passed.
    assert_eq!(port_syns(&metrics, 445), 0.0, "{metrics}");
    assert_eq!(port_syns(&metrics, 80), 5.0, "{metrics}");
    agent.stop(libc::SIGTERM).unwrap();
    let status = run_tool("xdp-loader", &["status", &i]);
    assert!(
        !status.contains("scan_xdp") && status.contains("xdpfilt"),
        "agent stopped: {status}"
    );
    if tcx == 1.0 {
        assert_eq!(
            xdp_prog_id(&i).unwrap(),
            Some(filter),
            "xdp-filter untouched"
        );
    }
    run_tool("xdp-filter", &["unload", &i]);
}
