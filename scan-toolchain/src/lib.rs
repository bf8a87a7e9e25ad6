//! Which compiler builds the eBPF program (`-Z build-std=core` for
//! `bpfel-unknown-none` needs one whose sysroot holds the `core` source). One
//! answer for `scan-agent/build.rs`, which builds with it, and `cargo xtask setup`,
//! which installs it and a `bpf-linker` for its LLVM.
//!
//! By preference:
//! 1. `$SCAN_EBPF_RUSTC`, when set;
//! 2. rustup's nightly when it has `rust-src` (a usual developer laptop);
//! 3. Debian's `/usr/bin/rustc` (`rustc-web`) with its exact-match source
//!    (`rust-web-src`), built with `RUSTC_BOOTSTRAP=1`. rustup here cannot fetch
//!    `rust-src`, so this is what a fresh machine of this project's kind uses.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Environment variable naming a compiler to use instead of the detected one.
pub const RUSTC_OVERRIDE: &str = "SCAN_EBPF_RUSTC";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EbpfCompiler {
    /// `$SCAN_EBPF_RUSTC`.
    Custom(String),
    /// `rustup run nightly`, which has `rust-src`.
    Nightly,
    /// Debian's `rustc-web` (possibly not installed yet).
    Debian,
}

impl EbpfCompiler {
    pub fn detect() -> Self {
        if let Ok(rustc) = std::env::var(RUSTC_OVERRIDE) {
            return Self::Custom(rustc);
        }
        if Self::Nightly.has_library_source() {
            return Self::Nightly;
        }
        Self::Debian
    }

    /// A `rustc` command for this compiler (for version and sysroot queries).
    fn rustc(&self) -> Command {
        match self {
            Self::Custom(rustc) => Command::new(rustc),
            Self::Nightly => {
                let mut cmd = Command::new("rustup");
                cmd.args(["run", "nightly", "rustc"]);
                cmd
            }
            Self::Debian => Command::new(DEBIAN_RUSTC),
        }
    }

    fn sysroot(&self) -> Option<PathBuf> {
        let output = self
            .rustc()
            .args(["--print", "sysroot"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
    }

    /// Whether its sysroot holds the `core` source that build-std compiles.
    pub fn has_library_source(&self) -> bool {
        self.sysroot().is_some_and(|root| {
            Path::new(&root)
                .join("lib/rustlib/src/rust/library/core/Cargo.toml")
                .exists()
        })
    }

    /// The LLVM major it was built with: `bpf-linker` must match it.
    pub fn llvm_major(&self) -> Option<u32> {
        let out = self
            .rustc()
            .arg("-vV")
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("LLVM version: "))?;
        version.split('.').next()?.trim().parse().ok()
    }

    /// A `cargo` that compiles with it; `host_cargo` is the cargo to drive a plain
    /// rustc with (rustup's stable cargo drives Debian's rustc fine).
    pub fn cargo(&self, host_cargo: &str) -> Command {
        let with_rustc = |rustc: &str| {
            let mut cmd = Command::new(host_cargo);
            // RUSTC_BOOTSTRAP: a stable compiler must accept -Z build-std.
            cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
            cmd
        };
        match self {
            Self::Custom(rustc) => with_rustc(rustc),
            Self::Nightly => {
                let mut cmd = Command::new("rustup");
                cmd.args(["run", "nightly", "cargo"]).env_remove("RUSTC");
                cmd
            }
            Self::Debian => with_rustc(DEBIAN_RUSTC),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Custom(rustc) => format!("{rustc} (from ${RUSTC_OVERRIDE})"),
            Self::Nightly => "rustup nightly with rust-src".into(),
            Self::Debian => "Debian rustc-web with rust-web-src".into(),
        }
    }
}
