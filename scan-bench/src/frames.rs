//! The packet mixes of the per-packet benchmark, built by hand (a handful of
//! fixed frames; the agent's own frame builder is for its tests).

const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// RFC 2544 benchmarking addresses.
const SRC_V4: [u8; 4] = [198, 18, 0, 1];
const DST_V4: [u8; 4] = [198, 18, 0, 2];
/// 2001:db8::1 and 2001:db8::2 (documentation prefix).
const SRC_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// One packet mix: a single frame run over and over.
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
            label: "IPv4 SYN",
            frame: ipv4_tcp(None, 445, SYN, 0),
            syn_port: Some(445),
        },
        Mix {
            key: "ipv4_ack_payload",
            label: "IPv4 ACK + 512 B payload",
            frame: ipv4_tcp(None, 443, ACK | PSH, 512),
            syn_port: None,
        },
        Mix {
            key: "ipv6_ext_syn",
            label: "IPv6 SYN behind 3 extension headers",
            frame: ipv6_ext_syn(22),
            syn_port: Some(22),
        },
        Mix {
            key: "vlan_syn",
            label: "802.1Q VLAN IPv4 SYN",
            frame: ipv4_tcp(Some(100), 3389, SYN, 0),
            syn_port: Some(3389),
        },
        Mix { key: "arp", label: "ARP request (non-IP)", frame: arp(), syn_port: None },
    ]
}

fn eth(frame: &mut Vec<u8>, ether_type: u16) {
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ether_type.to_be_bytes());
}

/// 20-byte TCP header with a 4-byte MSS option (data offset 6), no checksum.
fn tcp(frame: &mut Vec<u8>, dport: u16, flags: u8) {
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&dport.to_be_bytes());
    frame.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    let ack: u32 = if flags & ACK != 0 { 0x0bad_cafe } else { 0 };
    frame.extend_from_slice(&ack.to_be_bytes());
    frame.push(6 << 4);
    frame.push(flags);
    frame.extend_from_slice(&64240u16.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    frame.extend_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
}

const TCP_LEN: usize = 24;

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_tcp(vlan: Option<u16>, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(64 + payload);
    match vlan {
        Some(id) => {
            eth(&mut f, 0x8100);
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&0x0800u16.to_be_bytes());
        }
        None => eth(&mut f, 0x0800),
    }
    let ip_start = f.len();
    let total = (20 + TCP_LEN + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]); // id, DF, ttl, TCP, checksum
    f.extend_from_slice(&SRC_V4);
    f.extend_from_slice(&DST_V4);
    let sum = ipv4_checksum(&f[ip_start..ip_start + 20]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
    tcp(&mut f, dport, flags);
    f.extend((0..payload).map(|i| i as u8));
    f
}

/// IPv6 + hop-by-hop (8 B) + routing (8 B, segments left 0) + destination
/// options (8 B) + TCP SYN.
fn ipv6_ext_syn(dport: u16) -> Vec<u8> {
    const HOPOPTS: u8 = 0;
    const ROUTING: u8 = 43;
    const DSTOPTS: u8 = 60;
    const TCP: u8 = 6;
    let mut f = Vec::with_capacity(128);
    eth(&mut f, 0x86dd);
    let payload = (3 * 8 + TCP_LEN) as u16;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&payload.to_be_bytes());
    f.push(HOPOPTS);
    f.push(64);
    f.extend_from_slice(&SRC_V6);
    f.extend_from_slice(&DST_V6);
    // Hop-by-hop: next header, length 0 (8 bytes), PadN option of 4 bytes.
    f.extend_from_slice(&[ROUTING, 0, 1, 4, 0, 0, 0, 0]);
    // Routing: next header, length 0, type 0, segments left 0, reserved.
    f.extend_from_slice(&[DSTOPTS, 0, 0, 0, 0, 0, 0, 0]);
    // Destination options: next header TCP, length 0, PadN.
    f.extend_from_slice(&[TCP, 0, 1, 4, 0, 0, 0, 0]);
    tcp(&mut f, dport, SYN);
    f
}

fn arp() -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    eth(&mut f, 0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&SRC_V4);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&DST_V4);
    f.resize(60, 0); // minimum Ethernet frame without FCS
    f
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
                ("ipv4_syn", 14 + 20 + 24),
                ("ipv4_ack_payload", 14 + 20 + 24 + 512),
                ("ipv6_ext_syn", 14 + 40 + 24 + 24),
                ("vlan_syn", 18 + 20 + 24),
                ("arp", 60),
            ]
        );
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = ipv4_tcp(None, 80, SYN, 0);
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
    }
}
