//! Builds `scan-ebpf` for `bpfel-unknown-none` and leaves the object in `OUT_DIR`,
//! so every build of the agent embeds the current program.
//!
//! Not aya-build: it drives `rustup run <toolchain> cargo` and drops `RUSTC`, but on
//! machines whose rustup has no `rust-src` the only `core` source is Debian's
//! `rust-web-src`, which matches `/usr/bin/rustc`. The compiler is chosen by
//! `scan-toolchain`, the same choice `cargo xtask setup` installs for.
use std::{env, path::PathBuf};

use anyhow::{Context, bail};
use scan_toolchain::{EbpfCompiler, RUSTC_OVERRIDE};

const TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("agent crate has no parent")?;
    for dir in ["scan-ebpf/src", "scan-ebpf/Cargo.toml", "scan-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed={RUSTC_OVERRIDE}");
    build_info(workspace);

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // One target dir for every profile of the agent (debug, release, clippy), so
    // `core` is compiled once; it is not the outer target dir, which cargo has locked
    // (https://github.com/rust-lang/cargo/issues/6412).
    let target_dir = workspace.join("target").join("bpf");

    let compiler = EbpfCompiler::detect();
    if !compiler.has_library_source() {
        bail!(
            "{} has no `core` library source (needed to build the eBPF program with \
             -Z build-std=core): run `cargo xtask setup`, or install rustup's nightly with \
             `rustup component add rust-src --toolchain nightly`, or set {RUSTC_OVERRIDE}",
            compiler.describe()
        );
    }
    let mut cmd = compiler.cargo(&env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
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
    let mut rustflags = vec![
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ];
    // One load per multi-byte packet field instead of one per byte (see `Header` in
    // scan-ebpf). Kernels for these architectures allow unaligned packet and map
    // reads (CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS); elsewhere the verifier
    // refuses a packet read that is not aligned, so LLVM keeps the byte loads.
    // rustc calls the LLVM feature unstable and warns; build script output only
    // shows when the build fails.
    if matches!(arch.as_str(), "x86_64" | "aarch64") {
        rustflags.push("-Ctarget-feature=+allows-misaligned-mem-access".into());
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));
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

/// `scan_agent_build_info` labels: the git revision, the compiler and the aya version
/// this binary was built with (`SCAN_GIT_REVISION`, `SCAN_RUSTC_VERSION`, `SCAN_AYA_VERSION`).
fn build_info(workspace: &std::path::Path) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .current_dir(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // Rebuilt when HEAD moves: HEAD itself and the ref it points at (a worktree's HEAD
    // lives in its own git dir).
    let head = git(&["rev-parse", "--git-path", "HEAD"]);
    let branch = git(&["symbolic-ref", "-q", "HEAD"])
        .and_then(|name| git(&["rev-parse", "--git-path", &name]));
    // (A missing file would make cargo rerun this script on every build.)
    for file in [head, branch].into_iter().flatten() {
        let file = workspace.join(file);
        if file.exists() {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = std::process::Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    // The resolved aya version, from the committed lock file.
    let lock = workspace.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let aya_version = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| {
            text.split("[[package]]").find_map(|package| {
                let mut lines = package.lines().map(str::trim);
                lines.any(|l| l == "name = \"aya\"").then(|| {
                    package
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("version = "))
                        .map(|v| v.trim_matches('"').to_string())
                })?
            })
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SCAN_GIT_REVISION={revision}");
    println!("cargo:rustc-env=SCAN_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=SCAN_AYA_VERSION={aya_version}");
}
