//! A minimal HTTP/1.1 GET/POST client for loopback tests (no dependency needed).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};

/// Returns (status, body).
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)?
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    request(addr, "GET", path, "")
}

fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("short chunk")?);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// The value of the first sample of `metric` whose labels contain `labels`
/// (e.g. `port="445"`), from a Prometheus text exposition.
pub fn sample(exposition: &str, metric: &str, labels: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?;
        let (series, value) = rest.rsplit_once(' ')?;
        let matches = if labels.is_empty() {
            series.is_empty() || series.starts_with('{')
        } else {
            series.starts_with('{') && series.contains(labels)
        };
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// The value of the first labelled sample of `metric` whose labels contain every one
/// of `labels` (e.g. `["interface=\"eth0\"", "flag=\"syn\""]`).
pub fn series(exposition: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(metric))
        .filter(|rest| rest.starts_with('{'))
        .filter_map(|rest| rest.rsplit_once(' '))
        .find(|(series, _)| labels.iter().all(|l| series.contains(l)))
        .and_then(|(_, v)| v.parse().ok())
}

/// [`series`], 0 when there is none.
pub fn value(exposition: &str, metric: &str, labels: &[&str]) -> f64 {
    series(exposition, metric, labels).unwrap_or(0.0)
}

/// SYNs counted for `port` (`scan_syn_packets_total`).
pub fn port_syns(exposition: &str, port: u16) -> f64 {
    value(
        exposition,
        "scan_syn_packets_total",
        &[&format!("port=\"{port}\"")],
    )
}

/// Packets of `interface` that carried `flag` (`scan_packet_flags_total`).
pub fn packet_flag(exposition: &str, interface: &str, flag: &str) -> f64 {
    value(
        exposition,
        "scan_packet_flags_total",
        &[
            &format!("interface=\"{interface}\""),
            &format!("flag=\"{flag}\""),
        ],
    )
}

/// `scan_packets_total` of `interface` with `outcome` (0 if absent).
pub fn packet_outcome(exposition: &str, interface: &str, outcome: &str) -> f64 {
    value(
        exposition,
        "scan_packets_total",
        &[
            &format!("interface=\"{interface}\""),
            &format!("outcome=\"{outcome}\""),
        ],
    )
}

/// `scan_agent_attached` of `interface` on `hook` (1 attached, 0 not, 0 if absent).
pub fn attached(exposition: &str, interface: &str, hook: &str) -> f64 {
    value(
        exposition,
        "scan_agent_attached",
        &[
            &format!("interface=\"{interface}\""),
            &format!("hook=\"{hook}\""),
        ],
    )
}

/// The sum of every sample of `metric` (all label sets), e.g. the packets seen as the
/// sum of `scan_packets_total` over its outcomes.
pub fn sample_sum(exposition: &str, metric: &str) -> f64 {
    exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let (series, value) = rest.rsplit_once(' ')?;
            (series.is_empty() || series.starts_with('{'))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_and_samples() {
        assert_eq!(
            super::dechunk("5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n").unwrap(),
            "hello!"
        );
        assert!(super::dechunk("9\r\nhello\r\n0\r\n\r\n").is_err());
        let text = "# HELP a x\na_total 12\na 3\nb{port=\"22\"} 4\n";
        assert_eq!(super::sample(text, "a", ""), Some(3.0));
        assert_eq!(super::sample(text, "a_total", ""), Some(12.0));
        assert_eq!(super::sample(text, "b", "port=\"22\""), Some(4.0));
        assert_eq!(super::sample(text, "b", "port=\"80\""), None);
        let text = "c{i=\"x\",f=\"syn\"} 1\nc{i=\"y\",f=\"syn\"} 2\nc 3\n";
        assert_eq!(
            super::series(text, "c", &["f=\"syn\"", "i=\"y\""]),
            Some(2.0)
        );
        assert_eq!(super::series(text, "c", &["i=\"z\""]), None);
        let text = "x_total{o=\"a\"} 2\nx_total{o=\"b\"} 3\nx_totals 9\n";
        assert_eq!(super::sample_sum(text, "x_total"), 5.0);
    }
}
