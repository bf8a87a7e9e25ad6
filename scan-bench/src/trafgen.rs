//! SYN floods from the lab namespace with trafgen (netsniff-ng): a generated
//! config, a fixed rate, a fixed packet count and a time bound.
use std::{fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use scan_lab::Lab;

use crate::proc;

pub struct Flood {
    pub packets: u64,
    pub rate_pps: u64,
    /// Destination ports cycle through this range, one per packet.
    pub first_port: u16,
    pub last_port: u16,
}

pub struct Sent {
    pub packets: u64,
    pub seconds: f64,
}

impl Flood {
    /// Expected duration at the offered rate.
    pub fn seconds(&self) -> f64 {
        self.packets as f64 / self.rate_pps as f64
    }

    fn config(&self, lab: &Lab) -> String {
        // Checksums are recomputed by trafgen for every packet whose fields change.
        format!(
            "{{\n  eth(da={}, sa={}),\n  ipv4(sa={}, da={}, ttl=64, df),\n  \
             tcp(sp=40000, dp=dinc({}, {}), seq=1, syn, win=64240)\n}}\n",
            lab.host_mac, lab.peer_mac, lab.peer_v4, lab.host_v4, self.first_port, self.last_port
        )
    }

    fn command(&self, lab: &Lab, dir: &Path) -> Result<Command> {
        let path = dir.join(format!("{}.trafgen", lab.namespace));
        fs::write(&path, self.config(lab))
            .with_context(|| format!("writing {}", path.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.namespace, "trafgen", "-i"])
            .arg(&path)
            .args(["-o", &lab.peer_if, "-P", "1", "--no-sock-mem"])
            .args(["-n", &self.packets.to_string()])
            .args(["-b", &format!("{}pps", self.rate_pps)]);
        Ok(cmd)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.seconds() * 2.0 + 15.0)
    }

    /// Sends the flood and waits for it (bounded); returns what trafgen reports sent.
    pub fn run(&self, lab: &Lab, dir: &Path) -> Result<Sent> {
        let started = std::time::Instant::now();
        let child = proc::ChildGuard::spawn(&mut self.command(lab, dir)?)
            .context("starting trafgen (apt-get install netsniff-ng)")?;
        let done = child.wait(self.timeout())?;
        let seconds = started.elapsed().as_secs_f64();
        if !done.status.success() {
            bail!("trafgen failed ({}): {}", done.status, done.stderr.trim());
        }
        let packets = parse_sent(&done.stdout)
            .or_else(|| parse_sent(&done.stderr))
            .with_context(|| format!("no packet count in trafgen's output: {}", done.stdout))?;
        Ok(Sent { packets, seconds })
    }

    /// Starts the flood in the background; the guard kills it when dropped.
    pub fn spawn(&self, lab: &Lab, dir: &Path) -> Result<proc::ChildGuard> {
        proc::ChildGuard::spawn(&mut self.command(lab, dir)?)
            .context("starting trafgen (apt-get install netsniff-ng)")
    }
}

/// "   400000 packets outgoing"
fn parse_sent(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.contains("packets outgoing"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_packet_count() {
        let out = "\n      400000 packets outgoing\n    21600000 bytes outgoing\n";
        assert_eq!(super::parse_sent(out), Some(400_000));
        assert_eq!(super::parse_sent("nothing"), None);
    }
}
