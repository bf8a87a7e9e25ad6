//! Running external commands with a bound on time, child processes that are
//! killed when dropped, and the stop flag set by SIGINT/SIGTERM.
use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set a flag that every loop checks, so the part in progress
/// fails fast and its guards clean up (a default handler would skip them).
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub fn check_stop() -> Result<()> {
    if stop_requested() {
        bail!("interrupted by SIGINT/SIGTERM");
    }
    Ok(())
}

/// Sleeps `d` in short slices; fails early when a stop is requested.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// A child process that is killed (SIGKILL) and reaped if still running when dropped.
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
    stderr: Option<thread::JoinHandle<Vec<u8>>>,
}

fn drain(
    reader: Option<impl std::io::Read + Send + 'static>,
) -> Option<thread::JoinHandle<Vec<u8>>> {
    reader.map(|mut r| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    })
}

/// What a finished child printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr captured (read by threads, so a chatty
    /// child never blocks on a full pipe), in a process group of its own so that
    /// whatever it forks (trafgen forks its workers) is signalled with it.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let what = describe(cmd);
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM
        // the child if this thread dies first (a killed bench leaves no child).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{what}`"))?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Ok(Self {
            child: Some(child),
            what,
            stdout,
            stderr,
        })
    }

    /// Signals the child's process group (the child leads it until reaped).
    fn signal_group(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: signals the group led by our own child, not yet reaped, so
            // its id cannot have been reused.
            unsafe { libc::kill(-(child.id() as libc::pid_t), signal) };
        }
    }

    /// SIGTERM to the group, then SIGKILL after `grace`; returns the exit status.
    fn stop_group(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal_group(libc::SIGTERM);
        let end = Instant::now() + grace;
        loop {
            let child = self.child.as_mut().expect("child present until reaped");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= end {
                self.signal_group(libc::SIGKILL);
                let child = self.child.as_mut().expect("child present until reaped");
                let status = child.wait()?;
                self.child = None;
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Waits up to `timeout`; stops the child and fails if it takes longer, or
    /// when a stop is requested.
    pub fn wait(self, timeout: Duration) -> Result<Finished> {
        self.wait_inner(timeout, true)
    }

    fn wait_inner(mut self, timeout: Duration, honour_stop: bool) -> Result<Finished> {
        let end = Instant::now() + timeout;
        let status = loop {
            let child = self.child.as_mut().expect("child present until reaped");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                break status;
            }
            if Instant::now() >= end {
                bail!(
                    "`{}` still running after {:.0?}: stopped",
                    self.what,
                    timeout
                );
            }
            if honour_stop && stop_requested() {
                bail!("interrupted by SIGINT/SIGTERM while `{}` ran", self.what);
            }
            thread::sleep(Duration::from_millis(10));
        };
        Ok(self.collect(status))
    }

    fn collect(&mut self, status: ExitStatus) -> Finished {
        let text = |h: Option<thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Finished {
            status,
            stdout: text(self.stdout.take()),
            stderr: text(self.stderr.take()),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_group(Duration::from_secs(2));
        }
    }
}

/// Runs `cmd` to completion within `timeout`; fails, with its stderr, unless it exits 0.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    run_inner(cmd, timeout, true)
}

fn run_inner(cmd: &mut Command, timeout: Duration, honour_stop: bool) -> Result<String> {
    let child = ChildGuard::spawn(cmd)?;
    let what = child.what().to_string();
    let done = child.wait_inner(timeout, honour_stop)?;
    if !done.status.success() {
        bail!("`{what}` failed ({}): {}", done.status, done.stderr.trim());
    }
    Ok(done.stdout)
}

/// Runs a clean-up command: ignores failure, and runs even after a stop request.
pub fn run_quiet(cmd: &mut Command) {
    let _ = run_inner(cmd, Duration::from_secs(10), false);
}
