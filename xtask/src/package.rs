//! `cargo xtask package`: the Debian package, built by cargo-deb from the release binary and
//! the deploy kit. The files that differ from the kit (the unit runs /usr/bin/scan-agent; the
//! default config takes the default route's interface) and the generated ones (man pages
//! and completions from the clap definitions, `scan-agent generate-docs`) are staged under
//! target/package/ first; scan-agent/Cargo.toml lists what goes where. lintian checks it.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{cmd, run};

const STAGE: &str = "target/package";
/// cargo-deb release that builds on Rust 1.95 (installed by `cargo xtask setup`).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Copies `from` to `to`, replacing each `(old, new)`; every `old` must occur.
fn adapt(from: &str, to: &Path, replace: &[(&str, &str)]) -> Result<()> {
    let mut text = std::fs::read_to_string(from).with_context(|| format!("reading {from}"))?;
    for (old, new) in replace {
        ensure!(
            text.contains(old),
            "{from} no longer contains {old:?}: update xtask/src/package.rs"
        );
        text = text.replace(old, new);
    }
    std::fs::write(to, text).with_context(|| format!("writing {}", to.display()))
}

/// Builds the .deb (version from Cargo.toml, or `deb_version`), runs lintian on it and
/// returns its path.
pub fn package(deb_version: Option<&str>) -> Result<PathBuf> {
    run(cmd("cargo").args(["build", "--release", "-p", "scan-agent"]))?;
    let stage = Path::new(STAGE);
    if stage.exists() {
        std::fs::remove_dir_all(stage).context("clearing target/package")?;
    }
    for dir in ["units", "etc", "man", "gen"] {
        std::fs::create_dir_all(stage.join(dir))?;
    }
    let unit = stage.join("units/scan-agent.service");
    adapt(
        "deploy/systemd/scan-agent.service",
        &unit,
        &[
            (
                "# /etc/systemd/system/scan-agent.service",
                "# /usr/lib/systemd/system/scan-agent.service (package scan-agent)",
            ),
            (
                "ExecStart=/usr/local/bin/scan-agent ",
                "ExecStart=/usr/bin/scan-agent ",
            ),
        ],
    )?;
    adapt(
        "deploy/systemd/scan-agent.tmpfiles.conf",
        &stage.join("units/scan-agent.tmpfile"),
        &[],
    )?;
    adapt(
        "deploy/systemd/scan-agent.sysusers.conf",
        &stage.join("units/scan-agent.sysusers"),
        &[],
    )?;
    adapt(
        "deploy/systemd/scan-agent.toml",
        &stage.join("etc/scan-agent.toml"),
        &[(
            "iface = [\"eth0\"]",
            "# The package default: the default route's interface. Name yours, e.g.\n#iface = [\"eth0\"]",
        )],
    )?;
    run(cmd("target/release/scan-agent")
        .arg("generate-docs")
        .arg(stage.join("gen")))?;
    for entry in std::fs::read_dir(stage.join("gen/man"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // Pages of hidden subcommands (generate-docs) stay out of the package.
        if name.contains("generate-docs") {
            continue;
        }
        std::fs::copy(&path, stage.join("man").join(name))?;
    }
    run(cmd("gzip").args(["-9n"]).args(
        std::fs::read_dir(stage.join("man"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?,
    ))?;
    std::fs::rename(stage.join("gen/completions"), stage.join("completions"))?;
    let version = match deb_version {
        Some(v) => v.to_string(),
        None => format!("{}-1", agent_version()?),
    };
    changelog(&stage.join("changelog"), &version)?;

    let mut deb = cmd("cargo");
    deb.args(["deb", "-p", "scan-agent", "--no-build", "--output"])
        .arg(stage);
    if let Some(version) = deb_version {
        deb.args(["--deb-version", version]);
    }
    let out = deb
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo deb (installed by cargo xtask setup)")?;
    if !out.status.success() {
        bail!("cargo deb failed ({})", out.status);
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .context("cargo deb printed no package path")?;
    ensure!(
        path.is_file(),
        "cargo deb: {} is not a file",
        path.display()
    );
    println!("package: {}", path.display());
    lintian(&path)?;
    Ok(path)
}

/// `scan-agent --version` of the release build: "0.1.0".
fn agent_version() -> Result<String> {
    let out = Command::new("target/release/scan-agent")
        .arg("--version")
        .output()
        .context("running target/release/scan-agent --version")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(String::from)
        .context("scan-agent --version printed no version")
}

/// A one-entry Debian changelog for `version`, naming the commit it was built from.
fn changelog(path: &Path, version: &str) -> Result<()> {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = Command::new("date")
        .arg("-R")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .context("date -R")?;
    std::fs::write(
        path,
        format!(
            "scan-agent ({version}) unstable; urgency=medium\n\n  \
             * Built by cargo xtask package from commit {commit}.\n\n \
             -- scan-agent maintainers <scan-agent@example.org>  {date}\n"
        ),
    )?;
    Ok(())
}

/// lintian with warnings as failures; overrides (in the package) each carry their reason.
fn lintian(deb: &Path) -> Result<()> {
    let status = Command::new("lintian")
        .args([
            "--fail-on",
            "error,warning",
            "--display-info",
            // embedded-library libyaml: lintian matches libyaml's strings in the binary; they
            // come from unsafe-libyaml, the Rust translation of libyaml that serde_yaml_ng uses to
            // read --web.config.file. There is no shared C library to link instead.
            "--suppress-tags",
            "initial-upload-closes-no-bugs,embedded-library",
        ])
        .arg(deb)
        .status()
        .context("running lintian (Debian package lintian, installed by cargo xtask setup)")?;
    ensure!(
        status.success(),
        "lintian found problems in {} (above)",
        deb.display()
    );
    println!("lintian: {} clean", deb.display());
    Ok(())
}

/// Builds the package twice (its version, then the same with revision 2) and runs
/// deploy/debian/package-test.sh on the pair: install, upgrade, remove, purge under a
/// throwaway systemd.
pub fn test_package() -> Result<()> {
    let keep = Path::new("target/package-test");
    std::fs::create_dir_all(keep)?;
    let first = package(None)?;
    let old = keep.join("old.deb");
    std::fs::copy(&first, &old)?;
    let version = agent_version()?;
    let second = package(Some(&format!("{version}-2")))?;
    let new = keep.join("new.deb");
    std::fs::copy(&second, &new)?;
    run(cmd("bash")
        .arg("deploy/debian/package-test.sh")
        .arg(&old)
        .arg(&new))
}
