//! `cargo xtask setup`: installs what building and testing need, idempotently.
//!
//! The eBPF crate is built with `-Z build-std=core`, so it needs a compiler whose
//! sysroot holds the library source. A rustup nightly with `rust-src` is used when
//! present; otherwise Debian's `rustc-web` + `rust-web-src` (same version, so
//! build-std works). `bpf-linker` is built against the LLVM major of that compiler.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use scan_toolchain::EbpfCompiler;

use crate::{cmd, run};

/// Debian packages every test or demo uses (besides the compiler's).
const TOOL_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "nftables",
    "netsniff-ng",
    "prometheus",
    "prometheus-alertmanager",
    "python3",
    "procps",
    // deploy/systemd/sandbox-test.sh: a throwaway systemd in namespaces.
    "systemd",
    "util-linux",
    "curl",
    // scan-agent top is tested in a real terminal.
    "tmux",
    // cargo xtask package: the .deb is checked with lintian.
    "lintian",
    // libxdp's dispatcher object (xdp-dispatcher.o), and xdp-filter / xdp-loader for
    // the lab test of sharing the XDP hook.
    "libxdp1",
    "xdp-tools",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    let started = std::time::Instant::now();
    let compiler = EbpfCompiler::detect();
    // Debian's rustc-web 1.96 is built with LLVM 22; its exact major is read back
    // below once installed, so an archive update does not break this.
    let llvm_before_install = compiler.llvm_major().unwrap_or(22);
    let mut packages: Vec<String> = TOOL_PACKAGES.iter().map(|p| p.to_string()).collect();
    if compiler == EbpfCompiler::Debian {
        packages.extend(["rustc-web".into(), "rust-web-src".into()]);
    }
    packages.extend([
        format!("llvm-{llvm_before_install}-dev"),
        format!("libpolly-{llvm_before_install}-dev"),
        format!("clang-{llvm_before_install}"),
    ]);
    install_packages(&packages)?;
    let llvm_major = compiler
        .llvm_major()
        .with_context(|| format!("{} does not report its LLVM version", compiler.describe()))?;
    install_bpf_linker(llvm_major)?;
    install_cargo_deb()?;
    mount_bpffs()?;
    println!(
        "setup: ready in {:.1}s (eBPF compiler: {}, LLVM {llvm_major})",
        started.elapsed().as_secs_f64(),
        compiler.describe()
    );
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn install_packages(packages: &[String]) -> Result<()> {
    let missing: Vec<&String> = packages.iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    if !Path::new("/etc/debian_version").exists() || !is_root() {
        bail!(
            "missing packages: {list}. This set-up installs them only as root on Debian. \
             Install them by hand (`apt-get install {list}` or your distribution's \
             equivalents), then run `cargo xtask setup` again"
        );
    }
    println!("setup: installing {list}");
    run(cmd("apt-get").args(["update", "-qq"]))?;
    run(cmd("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(missing.iter().map(|s| s.as_str()))
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn bpf_linker_llvm_major() -> Option<u32> {
    let path = which("bpf-linker")?;
    let out = Command::new("ldd").arg(&path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lib = text.split_whitespace().find(|w| w.starts_with("libLLVM"))?;
    // libLLVM.so.22.1 or libLLVM-22.so
    lib.trim_start_matches("libLLVM")
        .trim_start_matches(['.', '-'])
        .trim_start_matches("so.")
        .split(['.', '-'])
        .next()?
        .parse()
        .ok()
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn install_bpf_linker(llvm_major: u32) -> Result<()> {
    match bpf_linker_llvm_major() {
        Some(found) if found == llvm_major => return Ok(()),
        Some(found) => {
            println!("setup: bpf-linker uses LLVM {found}, rustc uses {llvm_major}: rebuilding it")
        }
        None => println!("setup: installing bpf-linker {BPF_LINKER_VERSION} for LLVM {llvm_major}"),
    }
    let path = format!(
        "/usr/lib/llvm-{llvm_major}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run(cmd("cargo")
        .args([
            "install",
            "--locked",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("PATH", path))
    .context("building bpf-linker; is llvm-NN-dev installed for the LLVM major above?")
}

/// cargo-deb for `cargo xtask package`, at the version known to build on Rust 1.95.
fn install_cargo_deb() -> Result<()> {
    let version = crate::package::CARGO_DEB_VERSION;
    let found = Command::new("cargo")
        .args(["deb", "--version"])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if found.split_whitespace().any(|w| w == version) {
        return Ok(());
    }
    println!("setup: installing cargo-deb {version}");
    run(cmd("cargo").args(["install", "--locked", "cargo-deb", "--version", version]))
        .context("installing cargo-deb")
}

fn mount_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at /sys/fs/bpf: run `sudo mount -t bpf bpf /sys/fs/bpf`");
    }
    run(cmd("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
