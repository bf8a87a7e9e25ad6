//! Writes the generated capture corpus (the one the replay tests check) to a
//! directory, to try `scan-agent replay` by hand:
//!
//! ```sh
//! cargo run -p scan-lab --example corpus -- /tmp/corpus
//! sudo target/debug/scan-agent replay /tmp/corpus/surge-445.pcap
//! ```
use std::path::PathBuf;

use anyhow::{Context, Result};
use scan_lab::{frames::corpus, pcap::write_pcap};

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).context("usage: corpus DIR")?);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for capture in corpus::all() {
        let path = dir.join(capture.name);
        write_pcap(&path, &capture.frames)?;
        let syns: u64 = capture.expected.ports.values().sum();
        println!(
            "{}: {} packets, {syns} SYNs to {} ports",
            path.display(),
            capture.expected.packets,
            capture.expected.ports.len()
        );
    }
    Ok(())
}
