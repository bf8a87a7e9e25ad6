//! The packet mixes of the per-packet benchmark, built with the agent's frame
//! builder (`scan_lab::frames`): one fixed frame per mix, run over and over.
use std::net::{Ipv4Addr, Ipv6Addr};

use scan_lab::frames::{Frame, Ipv6Ext, ether_type, tcp};

/// RFC 2544 benchmarking and documentation addresses.
const SRC_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const DST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SRC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const SPORT: u16 = 40_000;

/// One packet mix.
pub struct Mix {
    /// Key in summary.json.
    pub key: &'static str,
    pub label: &'static str,
    pub frame: Vec<u8>,
    /// The destination port a SYN counter must count, if the frame is a SYN.
    pub syn_port: Option<u16>,
}

pub fn mixes() -> Vec<Mix> {
    vec![
        Mix {
            key: "ipv4_syn",
            label: "IPv4 SYN with Linux SYN options",
            frame: Frame::ipv4_tcp(SRC_V4, DST_V4, SPORT, 445, tcp::SYN)
                .tcp_options(tcp::syn_options())
                .build(),
            syn_port: Some(445),
        },
        Mix {
            key: "ipv4_ack_payload",
            label: "IPv4 ACK with 512 B payload",
            frame: Frame::ipv4_tcp(SRC_V4, DST_V4, SPORT, 443, tcp::ACK | tcp::PSH)
                .seq_ack(1, 1)
                .payload(vec![0x5a; 512])
                .build(),
            syn_port: None,
        },
        Mix {
            key: "ipv6_ext_syn",
            label: "IPv6 SYN behind hop-by-hop, routing and destination options",
            frame: Frame::ipv6_tcp(SRC_V6, DST_V6, SPORT, 22, tcp::SYN)
                .ext(Ipv6Ext::HopByHop { len: 8 })
                .ext(Ipv6Ext::Routing { len: 24 })
                .ext(Ipv6Ext::DestinationOptions { len: 8 })
                .tcp_options(tcp::syn_options())
                .build(),
            syn_port: Some(22),
        },
        Mix {
            key: "vlan_syn",
            label: "802.1Q VLAN IPv4 SYN",
            frame: Frame::ipv4_tcp(SRC_V4, DST_V4, SPORT, 3389, tcp::SYN)
                .vlan(ether_type::VLAN, 100)
                .tcp_options(tcp::syn_options())
                .build(),
            syn_port: Some(3389),
        },
        Mix {
            key: "arp",
            label: "ARP request (non-IP)",
            frame: Frame::arp_request(SRC_V4, DST_V4).build(),
            syn_port: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_expected_lengths() {
        let lens: Vec<(&str, usize)> = mixes().iter().map(|m| (m.key, m.frame.len())).collect();
        assert_eq!(
            lens,
            [
                ("ipv4_syn", 14 + 20 + 40),
                ("ipv4_ack_payload", 14 + 20 + 20 + 512),
                ("ipv6_ext_syn", 14 + 40 + 8 + 24 + 8 + 40),
                ("vlan_syn", 18 + 20 + 40),
                ("arp", 14 + 28),
            ]
        );
    }
}
