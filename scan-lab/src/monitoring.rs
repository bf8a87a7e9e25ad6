//! Real Prometheus and Alertmanager (Debian packages) on loopback: one Prometheus that
//! scrapes one agent with the shipped rules ([`Monitoring`]), or a fleet on remote-write
//! built from the shipped deploy/prometheus/fleet/ configurations ([`Fleet`]).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{agent::free_port, http};

pub struct Monitoring {
    servers: Servers,
    pub prometheus: SocketAddr,
    pub alertmanager: SocketAddr,
    pub dir: PathBuf,
}

impl Monitoring {
    /// Starts both servers in `dir` (created). `rules` is a Prometheus rule file;
    /// `interval` is both the scrape and the rule evaluation interval.
    pub fn start(agent: SocketAddr, rules: &Path, dir: &Path, interval: &str) -> Result<Self> {
        Self::start_with(agent, rules, dir, interval, "")
    }

    /// [`Self::start`] with `scrape` added to the agent's scrape job (YAML at the job's
    /// indentation, e.g. `scheme: https`, `tls_config:` and `basic_auth:`).
    pub fn start_with(
        agent: SocketAddr,
        rules: &Path,
        dir: &Path,
        interval: &str,
        scrape: &str,
    ) -> Result<Self> {
        let mut servers = Servers::new(dir)?;
        let prometheus: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let rules = std::fs::canonicalize(rules)
            .with_context(|| format!("rule file {}", rules.display()))?;
        let alertmanager = servers.start_alertmanager()?;
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
                 rule_files:\n  - {rules}\n\
                 alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\n\
                 scrape_configs:\n  - job_name: scan-agent\n{scrape}    static_configs:\n      - targets: ['{agent}']\n",
                rules = rules.display()
            ),
        )?;
        servers.spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("prom-data").display()
                ))
                .arg(format!("--web.listen-address={prometheus}")),
        )?;
        servers.wait_ready(&[alertmanager, prometheus])?;
        Ok(Self {
            servers,
            prometheus,
            alertmanager,
            dir: dir.into(),
        })
    }

    /// The last lines of both servers' logs, for a failure message.
    pub fn log_tails(&self) -> String {
        self.servers.log_tails()
    }

    /// The value of the instant `query` in Prometheus, if it returns a sample.
    pub fn query(&self, query: &str) -> Result<Option<f64>> {
        let (status, body) = http::get(self.prometheus, &query_path(query))?;
        if status != 200 {
            bail!("prometheus answered {status}: {body}");
        }
        let json: serde_json::Value = serde_json::from_str(&body)?;
        Ok(json["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok()))
    }

    /// Alerts Alertmanager holds now (API v2).
    pub fn alerts(&self) -> Result<Vec<serde_json::Value>> {
        alertmanager_alerts(self.alertmanager)
    }

    /// The active alert named `name` whose labels include `labels`, if any.
    pub fn find_alert(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Option<serde_json::Value>> {
        find_alert(self.alertmanager, name, labels)
    }
}

fn alertmanager_alerts(alertmanager: SocketAddr) -> Result<Vec<serde_json::Value>> {
    let (status, body) = http::get(alertmanager, "/api/v2/alerts")?;
    if status != 200 {
        bail!("alertmanager answered {status}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

fn find_alert(
    alertmanager: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<Option<serde_json::Value>> {
    Ok(alertmanager_alerts(alertmanager)?.into_iter().find(|a| {
        let l = &a["labels"];
        a["status"]["state"] == "active"
            && l["alertname"] == name
            && labels.iter().all(|(k, v)| l[*k] == *v)
    }))
}

/// Copies the shipped file `from` to `to`, replacing each `(old, new)`; every `old` must
/// occur, so that a changed shipped file fails the test instead of going untested.
fn adapt(from: &Path, to: &Path, replace: &[(&str, String)]) -> Result<()> {
    let mut text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    for (old, new) in replace {
        if !text.contains(old) {
            bail!(
                "{} no longer contains {old:?}: update scan-lab's Fleet",
                from.display()
            );
        }
        text = text.replace(old, new);
    }
    Ok(std::fs::write(to, text)?)
}

/// The monitoring servers of one test: their processes and their logs
/// (`<dir>/<name>.log`), stopped on drop.
struct Servers {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Servers {
    fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            children: Vec::new(),
            dir: dir.into(),
        })
    }

    fn spawn(&mut self, name: &str, command: &mut Command) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = command
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("starting {name} (Debian packages prometheus, prometheus-alertmanager)")
            })?;
        self.children.push(child);
        Ok(())
    }

    /// Alertmanager on a free port, with one receiver and 1 s grouping so that a test
    /// sees an alert within seconds.
    fn start_alertmanager(&mut self) -> Result<SocketAddr> {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let config = self.dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: lab\n  group_by: [alertname, port, instance]\n  \
             group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: lab\n",
        )?;
        let storage = self.dir.join("am-data");
        self.spawn(
            "alertmanager",
            Command::new("prometheus-alertmanager")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", storage.display()))
                .arg(format!("--web.listen-address={listen}"))
                .arg("--cluster.listen-address="),
        )?;
        Ok(listen)
    }

    /// Waits until every server at `addresses` answers `/-/ready` (60 s at most); fails
    /// at once, with the logs, if one exits.
    fn wait_ready(&mut self, addresses: &[SocketAddr]) -> Result<()> {
        let started = Instant::now();
        for &addr in addresses {
            while !matches!(http::get(addr, "/-/ready"), Ok((200, _))) {
                if self
                    .children
                    .iter_mut()
                    .any(|c| c.try_wait().ok().flatten().is_some())
                {
                    bail!("a monitoring server exited; {}", self.log_tails());
                }
                if started.elapsed() > Duration::from_secs(60) {
                    bail!("{addr} not ready after 60 s; {}", self.log_tails());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// The last lines of every server's log, for a failure message.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!("\n--- {}:\n", path.display()));
                for line in &lines[lines.len().saturating_sub(5)..] {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Servers {
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

/// The query API path for an instant query of `promql`, URL-encoded.
fn query_path(promql: &str) -> String {
    let mut path = String::from("/api/v1/query?query=");
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

/// A fleet on remote-write, from the shipped deploy/prometheus/fleet/ files: one Prometheus
/// in agent mode per router (agent-mode.yml) scraping that router's agent and remote-writing
/// to one central Prometheus (central.yml, remote-write receiver, the given rules), which
/// alerts to one Alertmanager.
pub struct Fleet {
    servers: Servers,
    pub central: SocketAddr,
    pub alertmanager: SocketAddr,
    pub dir: PathBuf,
}

impl Fleet {
    /// `agents`: each router's agent address and name (its `instance`). `fleet_dir` holds
    /// the shipped configurations; `interval` is the scrape, evaluation and remote-write
    /// batch interval.
    pub fn start(
        agents: &[(SocketAddr, String)],
        fleet_dir: &Path,
        rules: &Path,
        dir: &Path,
        interval: &str,
    ) -> Result<Self> {
        let mut servers = Servers::new(dir)?;
        let central: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let rules = std::fs::canonicalize(rules)
            .with_context(|| format!("rule file {}", rules.display()))?;
        let alertmanager = servers.start_alertmanager()?;
        adapt(
            &fleet_dir.join("central.yml"),
            &dir.join("central.yml"),
            &[
                (
                    "evaluation_interval: 30s",
                    format!("evaluation_interval: {interval}"),
                ),
                ("../scan-agent.rules.yml", rules.display().to_string()),
                ("127.0.0.1:9093", alertmanager.to_string()),
            ],
        )?;
        servers.spawn(
            "central",
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("central.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("central-data").display()
                ))
                .arg(format!("--web.listen-address={central}"))
                .arg("--web.enable-remote-write-receiver"),
        )?;
        let mut ready = vec![alertmanager, central];
        for (i, (agent, name)) in agents.iter().enumerate() {
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let config = dir.join(format!("agent-mode-{i}.yml"));
            adapt(
                &fleet_dir.join("agent-mode.yml"),
                &config,
                &[
                    (
                        "scrape_interval: 15s",
                        format!("scrape_interval: {interval}"),
                    ),
                    ("scrape_timeout: 5s", format!("scrape_timeout: {interval}")),
                    ("127.0.0.1:9745", agent.to_string()),
                    ("router-1.example.net", name.clone()),
                    (
                        "http://prometheus-central.example.net:9090/api/v1/write",
                        format!(
                            "http://{central}/api/v1/write\n    queue_config:\n      batch_send_deadline: {interval}"
                        ),
                    ),
                ],
            )?;
            servers.spawn(
                &format!("agent-mode-{i}"),
                Command::new("prometheus")
                    .arg("--enable-feature=agent")
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.agent.path={}",
                        dir.join(format!("agent-data-{i}")).display()
                    ))
                    .arg(format!("--web.listen-address={listen}")),
            )?;
            ready.push(listen);
        }
        servers.wait_ready(&ready)?;
        Ok(Self {
            servers,
            central,
            alertmanager,
            dir: dir.into(),
        })
    }

    /// The active Alertmanager alert named `name` whose labels include `labels`, if any.
    pub fn find_alert(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Option<serde_json::Value>> {
        find_alert(self.alertmanager, name, labels)
    }

    /// The last lines of every server's log, for a failure message.
    pub fn log_tails(&self) -> String {
        self.servers.log_tails()
    }

    /// An instant query on the central Prometheus: the result vector.
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>> {
        let (status, body) = http::get(self.central, &query_path(promql))?;
        if status != 200 {
            bail!("central Prometheus answered {status} to {promql}: {body}");
        }
        let value: serde_json::Value = serde_json::from_str(&body)?;
        Ok(value["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}
