//! Builds `scan-ebpf` for `bpfel-unknown-none` and leaves the object in `OUT_DIR`,
//! so every build of the agent embeds the current program.
//!
//! Not aya-build: it drives `rustup run <toolchain> cargo` and drops `RUSTC`, but on
//! machines whose rustup has no `rust-src` the only `core` source is Debian's
//! `rust-web-src`, which matches `/usr/bin/rustc`. So pick the compiler here:
//! 1. `$SCAN_EBPF_RUSTC` if set;
//! 2. rustup's nightly when it has `rust-src` (a usual developer laptop);
//! 3. `/usr/bin/rustc` when its sysroot has the library source (`cargo xtask setup`
//!    installs Debian's `rustc-web` + `rust-web-src`), with `RUSTC_BOOTSTRAP=1`.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

const TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("agent crate has no parent")?;
    for dir in ["scan-ebpf/src", "scan-ebpf/Cargo.toml", "scan-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=SCAN_EBPF_RUSTC");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // One target dir for every profile of the agent (debug, release, clippy), so
    // `core` is compiled once; it is not the outer target dir, which cargo has locked
    // (https://github.com/rust-lang/cargo/issues/6412).
    let target_dir = workspace.join("target").join("bpf");

    let mut cmd = ebpf_cargo()?;
    cmd.current_dir(workspace)
        .args([
            "build",
            "--package",
            "scan-ebpf",
            "--release",
            "--target",
            TARGET,
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir);
    for key in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(key);
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        [
            &format!("--cfg=bpf_target_arch=\"{arch}\""),
            "-Cdebuginfo=2",
            "-Clink-arg=--btf",
        ]
        .join("\x1f"),
    );
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!(
            "building the eBPF program failed ({status}); run `cargo xtask setup` to install \
             the toolchain it needs (bpf-linker, a rustc with library source)"
        );
    }
    let object = target_dir.join(TARGET).join("release").join("scan-ebpf");
    std::fs::copy(&object, out_dir.join("scan-ebpf.o"))
        .with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}

/// A `cargo` command set up to compile for the BPF target with build-std.
fn ebpf_cargo() -> anyhow::Result<Command> {
    if let Ok(rustc) = env::var("SCAN_EBPF_RUSTC") {
        return Ok(cargo_with_rustc(&rustc));
    }
    if let Some(sysroot) = sysroot(Command::new("rustup").args(["run", "nightly", "rustc"]))
        && has_library_source(&sysroot)
    {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo"]).env_remove("RUSTC");
        return Ok(cmd);
    }
    let debian_rustc = "/usr/bin/rustc";
    if let Some(sysroot) = sysroot(&mut Command::new(debian_rustc))
        && has_library_source(&sysroot)
    {
        return Ok(cargo_with_rustc(debian_rustc));
    }
    bail!(
        "no Rust compiler with the `core` library source was found (needed to build the eBPF \
         program with -Z build-std=core): run `cargo xtask setup`, or install rustup's nightly \
         with `rustup component add rust-src --toolchain nightly`, or set SCAN_EBPF_RUSTC"
    )
}

fn cargo_with_rustc(rustc: &str) -> Command {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // RUSTC_BOOTSTRAP: a stable compiler must accept -Z build-std.
    cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
    cmd
}

fn sysroot(cmd: &mut Command) -> Option<PathBuf> {
    let output = cmd.arg("--print").arg("sysroot").output().ok()?;
    output
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

fn has_library_source(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}
