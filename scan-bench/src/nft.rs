//! The nftables baseline: a table of our own with a netdev ingress chain on the
//! interface (the hook nearest XDP) that updates a dynamic set keyed by TCP
//! destination port, with a counter per element, for every SYN. Deleted on drop.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{leftovers::NFT_PREFIX, proc};

const SET: &str = "syn_ports";

pub struct NftCounter {
    table: String,
}

impl NftCounter {
    pub fn create(interface: &str, dir: &Path) -> Result<Self> {
        let table = format!("{NFT_PREFIX}{}", std::process::id());
        let ruleset = format!(
            "table netdev {table} {{\n  set {SET} {{\n    type inet_service; size 65536; \
             flags dynamic; counter;\n  }}\n  chain ingress {{\n    type filter hook ingress \
             device \"{interface}\" priority 0; policy accept;\n    tcp flags & (syn | ack) == \
             syn update @{SET} {{ tcp dport }}\n  }}\n}}\n"
        );
        let path = dir.join("counter.nft");
        std::fs::write(&path, ruleset)?;
        // The guard exists before the table, so a half-made table is deleted too.
        let counter = Self { table };
        proc::run(
            Command::new("nft").arg("-f").arg(&path),
            Duration::from_secs(20),
        )
        .context("creating the nftables table (apt-get install nftables)")?;
        Ok(counter)
    }

    /// Sum of the per-port counters (reads the whole set as JSON).
    pub fn counted(&self) -> Result<(u64, usize)> {
        let out = proc::run(
            Command::new("nft").args(["-j", "list", "set", "netdev", &self.table, SET]),
            Duration::from_secs(60),
        )?;
        sum_counters(&out)
    }
}

/// (sum of packets, number of elements) of `nft -j list set` output.
fn sum_counters(json: &str) -> Result<(u64, usize)> {
    let doc: Value = serde_json::from_str(json).context("parsing nft -j output")?;
    let Some(items) = doc["nftables"].as_array() else {
        bail!("no nftables array in nft -j output");
    };
    let mut total = 0;
    let mut elements = 0;
    for item in items {
        let Some(elems) = item["set"]["elem"].as_array() else {
            continue;
        };
        for e in elems {
            let packets = e["elem"]["counter"]["packets"]
                .as_u64()
                .with_context(|| format!("set element without a counter: {e}"))?;
            total += packets;
            elements += 1;
        }
    }
    Ok((total, elements))
}

impl Drop for NftCounter {
    fn drop(&mut self) {
        proc::run_quiet(Command::new("nft").args(["delete", "table", "netdev", &self.table]));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_element_counters() {
        let json = r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "netdev",
            "name": "syn_ports", "elem": [
              {"elem": {"val": 22, "counter": {"packets": 3, "bytes": 162}}},
              {"elem": {"val": 445, "counter": {"packets": 4, "bytes": 216}}}]}}]}"#;
        assert_eq!(super::sum_counters(json).unwrap(), (7, 2));
        let empty = r#"{"nftables": [{"set": {"name": "syn_ports"}}]}"#;
        assert_eq!(super::sum_counters(empty).unwrap(), (0, 0));
    }
}
