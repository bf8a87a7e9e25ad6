//! Real Prometheus and Alertmanager (Debian packages) on loopback, configured to
//! scrape one agent with the shipped rules.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{agent::free_port, http};

pub struct Monitoring {
    children: Vec<Child>,
    pub prometheus: SocketAddr,
    pub alertmanager: SocketAddr,
    pub dir: PathBuf,
}

impl Monitoring {
    /// Starts both servers in `dir` (created). `rules` is a Prometheus rule file;
    /// `interval` is both the scrape and the rule evaluation interval.
    pub fn start(agent: SocketAddr, rules: &Path, dir: &Path, interval: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let prometheus: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let alertmanager: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let rules = std::fs::canonicalize(rules)
            .with_context(|| format!("rule file {}", rules.display()))?;
        std::fs::write(
            dir.join("alertmanager.yml"),
            "route:\n  receiver: lab\n  group_by: [alertname, port, instance]\n  \
             group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: lab\n",
        )?;
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
                 rule_files:\n  - {rules}\n\
                 alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\n\
                 scrape_configs:\n  - job_name: scan-agent\n    static_configs:\n      - targets: ['{agent}']\n",
                rules = rules.display()
            ),
        )?;
        let log = |name: &str| -> Result<Stdio> {
            Ok(std::fs::File::create(dir.join(format!("{name}.log")))?.into())
        };
        let mut monitoring = Self {
            children: Vec::new(),
            prometheus,
            alertmanager,
            dir: dir.into(),
        };
        monitoring.children.push(
            Command::new("prometheus-alertmanager")
                .arg(format!(
                    "--config.file={}",
                    dir.join("alertmanager.yml").display()
                ))
                .arg(format!("--storage.path={}", dir.join("am-data").display()))
                .arg(format!("--web.listen-address={alertmanager}"))
                .arg("--cluster.listen-address=")
                .stdout(log("alertmanager")?)
                .stderr(log("alertmanager-err")?)
                .spawn()
                .context("starting prometheus-alertmanager (Debian package)")?,
        );
        monitoring.children.push(
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("prom-data").display()
                ))
                .arg(format!("--web.listen-address={prometheus}"))
                .stdout(log("prometheus")?)
                .stderr(log("prometheus-err")?)
                .spawn()
                .context("starting prometheus (Debian package)")?,
        );
        monitoring.wait_ready(Duration::from_secs(60))?;
        Ok(monitoring)
    }

    fn wait_ready(&self, limit: Duration) -> Result<()> {
        let started = Instant::now();
        for (addr, path) in [
            (self.alertmanager, "/-/ready"),
            (self.prometheus, "/-/ready"),
        ] {
            loop {
                if let Ok((200, _)) = http::get(addr, path) {
                    break;
                }
                if started.elapsed() > limit {
                    bail!(
                        "{addr} not ready after {limit:?}; logs in {}",
                        self.dir.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Alerts Alertmanager holds now (API v2).
    pub fn alerts(&self) -> Result<Vec<serde_json::Value>> {
        let (status, body) = http::get(self.alertmanager, "/api/v2/alerts")?;
        if status != 200 {
            bail!("alertmanager answered {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The active alert named `name` whose labels include `labels`, if any.
    pub fn find_alert(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Option<serde_json::Value>> {
        Ok(self.alerts()?.into_iter().find(|a| {
            let l = &a["labels"];
            a["status"]["state"] == "active"
                && l["alertname"] == name
                && labels.iter().all(|(k, v)| l[*k] == *v)
        }))
    }
}

impl Drop for Monitoring {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        for child in &mut self.children {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
