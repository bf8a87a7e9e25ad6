//! The real agent binary as a child process.
use std::{
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::http;

pub struct Agent {
    child: Option<Child>,
    pub listen: SocketAddr,
    pub log: PathBuf,
    /// For an agent with `--web.config.file`: curl's TLS and auth options (requests go
    /// through curl over HTTPS instead of the plain client).
    curl: Option<Vec<String>>,
}

/// A free loopback port (bound then released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Agent {
    /// Starts `binary run <args> --web.listen-address 127.0.0.1:<free>` and waits for /healthz.
    /// Should the thread that started it die without dropping it (a killed test or
    /// benchmark), the agent gets SIGTERM.
    pub fn start(binary: &Path, args: &[String], log: &Path) -> Result<Self> {
        Self::start_with(binary, args, log, None)
    }

    /// [`Self::start`] for an agent serving HTTPS: `curl` holds curl's options for it
    /// (e.g. `--cacert CA -u user:password`, or `--cert`/`--key` for mutual TLS).
    pub fn start_with(
        binary: &Path,
        args: &[String],
        log: &Path,
        curl: Option<Vec<String>>,
    ) -> Result<Self> {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log_file = std::fs::File::create(log)?;
        let mut command = Command::new(binary);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .arg("run")
            .args(args)
            .arg("--web.listen-address")
            .arg(listen.to_string())
            .env("RUST_LOG", "info")
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut agent = Self {
            child: Some(child),
            listen,
            log: log.to_path_buf(),
            curl,
        };
        agent.wait_healthy(Duration::from_secs(30))?;
        Ok(agent)
    }

    fn wait_healthy(&mut self, limit: Duration) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "agent exited early ({status}); its log:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = self.get("/healthz") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "agent not healthy after {limit:?}; its log:\n{}",
            self.log_text()
        )
    }

    /// GET `path` from the agent: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let Some(options) = &self.curl else {
            return http::get(self.listen, path);
        };
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(options)
            .arg(format!("https://{}{path}", self.listen))
            .output()
            .context("running curl")?;
        if !out.status.success() {
            bail!("curl: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').context("no status from curl")?;
        Ok((code.trim().parse()?, body.to_string()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> Result<String> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body)
    }

    /// Waits until the agent has published a poll that began after this call (HTTP
    /// serves the last poll's view, so counts sent before the call show only then): two
    /// new values of `scan_agent_last_poll_timestamp_seconds`, as the first may have
    /// read the counters just before the call.
    pub fn wait_poll(&self) -> Result<()> {
        let stamp = |text: &str| {
            http::sample(text, "scan_agent_last_poll_timestamp_seconds", "").unwrap_or(0.0)
        };
        let started = Instant::now();
        let mut last = stamp(&self.metrics()?);
        for _ in 0..2 {
            loop {
                let now = stamp(&self.metrics()?);
                if now > last {
                    last = now;
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    bail!("no new poll within 30 s; agent log:\n{}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// `/metrics` from a poll that began after this call (see [`Self::wait_poll`]).
    pub fn metrics_after_poll(&self) -> Result<String> {
        self.wait_poll()?;
        self.metrics()
    }

    /// The pid of `scan-agent run`: the attacher, which holds the capabilities.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The worker `run` started (it serves HTTP, without capabilities).
    pub fn worker_pid(&self) -> Option<u32> {
        let tree = crate::procs::tree(self.pid()?).ok()?;
        tree.get(1).map(|u| u.pid)
    }

    /// Every process of the agent: the attacher, then its worker (for RSS and fd
    /// counts, and for signals).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.pid().into_iter().collect();
        pids.extend(self.worker_pid());
        pids
    }

    /// Sends `signal` to every process of the agent, as systemd does to the unit's
    /// cgroup (and a terminal to its process group), and waits (bounded) for the
    /// attacher's exit; returns its exit status (the worker's, see `daemon::run`).
    pub fn stop(&mut self, signal: i32) -> Result<std::process::ExitStatus> {
        let pids = self.pids();
        let mut child = self.child.take().context("agent already stopped")?;
        for pid in pids {
            // SAFETY: kill on our own child's pid and on its child's.
            unsafe { libc::kill(pid as i32, signal) };
        }
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                bail!("agent did not exit within 20 s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The places one agent run needs: a temporary directory (state file, logs) and a
/// bpffs pin directory, named `scan-lab-<tag>-<pid>` so that the stale-lab cleanup
/// recognises them after a killed run. Both are removed on drop; the pins through
/// `scan-agent detach`, which also unpins links kept by `--keep-attached`.
pub struct Scratch {
    pub dir: PathBuf,
    pub pin_path: PathBuf,
    agent: PathBuf,
}

impl Scratch {
    /// `tag` tells apart the scratches of one process (e.g. the test's name).
    pub fn new(tag: &str, agent: &Path) -> Result<Self> {
        let name = format!("{}{tag}-{}", crate::net::PIN_PREFIX, std::process::id());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir,
            pin_path: Path::new("/sys/fs/bpf").join(name),
            agent: agent.into(),
        })
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.bin")
    }

    /// A file in the temporary directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `scan-agent run` arguments for a lab test on `iface`: this scratch's pin path and
    /// state file and short timings (1 s polls, 5 s short window, 5 min baseline, 5 s
    /// warm-up: minutes of a router's life in seconds). A flag in `flags` that is one of
    /// those replaces its value; any other flag is appended as given.
    pub fn run_args(&self, iface: &str, flags: &[&str]) -> Vec<String> {
        let mut defaults: Vec<(&str, String)> = vec![
            ("--interval", "1s".into()),
            ("--short-window", "5s".into()),
            ("--baseline-window", "5m".into()),
            ("--warmup", "5s".into()),
            ("--pin-path", self.pin_path.display().to_string()),
            ("--state-file", self.state_file().display().to_string()),
        ];
        let mut appended = Vec::new();
        let mut i = 0;
        while i < flags.len() {
            let default = defaults.iter_mut().find(|(flag, _)| *flag == flags[i]);
            match (default, flags.get(i + 1)) {
                (Some((_, value)), Some(given)) => {
                    *value = given.to_string();
                    i += 2;
                }
                _ => {
                    appended.push(flags[i].to_string());
                    i += 1;
                }
            }
        }
        let mut args = vec!["--iface".to_string(), iface.to_string()];
        for (flag, value) in defaults {
            args.extend([flag.to_string(), value]);
        }
        args.extend(appended);
        args
    }

    /// Starts the agent with [`Self::run_args`]; its log is `<run>.log` here.
    pub fn start_agent(&self, iface: &str, flags: &[&str], run: &str) -> Result<Agent> {
        Agent::start(
            &self.agent,
            &self.run_args(iface, flags),
            &self.file(&format!("{run}.log")),
        )
        .with_context(|| format!("agent run {run:?} does not start"))
    }

    /// `--pin-path` and `--state-file` for `scan-agent run`.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--pin-path".into(),
            self.pin_path.display().to_string(),
            "--state-file".into(),
            self.state_file().display().to_string(),
        ]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new(&self.agent)
            .args(["detach", "--pin-path"])
            .arg(&self.pin_path)
            .output();
        // Whatever `detach` did not know about (or if the binary is gone).
        let _ = std::fs::remove_dir_all(&self.pin_path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
