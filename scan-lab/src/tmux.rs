//! A real terminal for tests of interactive views: a tmux server on its own socket
//! (pid-tagged, so parallel tests never share one), one pane of a fixed size running a
//! plain shell; keys are sent and the screen is captured as text.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// A detached `width`x`height` pane running `bash --norc` with `env` set, and no
    /// user configuration. `tag` tells apart several servers of one process.
    pub fn start(tag: &str, width: u16, height: u16, env: &[(&str, &str)]) -> Result<Self> {
        let tmux = Self {
            socket: format!("scan-lab-{tag}-{}", std::process::id()),
        };
        let mut args: Vec<String> = ["-f", "/dev/null", "new-session", "-d", "-s", "main"]
            .map(String::from)
            .to_vec();
        args.extend([
            "-x".into(),
            width.to_string(),
            "-y".into(),
            height.to_string(),
        ]);
        for (key, value) in env {
            args.extend(["-e".into(), format!("{key}={value}")]);
        }
        args.extend(["bash", "--norc", "--noprofile"].map(String::from));
        tmux.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .context("starting tmux (Debian package tmux, installed by cargo xtask setup)")?;
        // The pane must keep this size whatever clients (none) attach.
        tmux.run(&["set-option", "-g", "window-size", "manual"])?;
        Ok(tmux)
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .context("running tmux")?;
        if !out.status.success() {
            bail!(
                "tmux {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Types `text` literally, then Enter.
    pub fn type_line(&self, text: &str) -> Result<()> {
        self.run(&["send-keys", "-t", "main", "-l", text])?;
        self.run(&["send-keys", "-t", "main", "Enter"])?;
        Ok(())
    }

    /// Sends tmux key names (`q`, `Enter`, `Escape`, `C-c`, ...).
    pub fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        self.run(&args).map(drop)
    }

    /// The visible screen as text, one string per row.
    pub fn screen(&self) -> Result<Vec<String>> {
        Ok(self
            .run(&["capture-pane", "-p", "-t", "main"])?
            .lines()
            .map(String::from)
            .collect())
    }

    /// The visible screen with its attributes as escape sequences.
    pub fn screen_with_escapes(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-e", "-t", "main"])
    }

    /// A tmux format about the pane, e.g. `#{alternate_on}`.
    pub fn format(&self, format: &str) -> Result<String> {
        Ok(self
            .run(&["display-message", "-p", "-t", "main", format])?
            .trim()
            .to_string())
    }

    /// Waits until `check` holds for the screen; fails with the last screen after `limit`.
    pub fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        check: impl Fn(&[String]) -> bool,
    ) -> Result<Vec<String>> {
        let started = Instant::now();
        loop {
            let screen = self.screen()?;
            if check(&screen) {
                return Ok(screen);
            }
            if started.elapsed() > limit {
                bail!(
                    "{what}: not within {limit:?}; screen:\n{}",
                    screen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
