//! Man pages (clap_mangen) and shell completions (clap_complete) generated from the clap
//! definitions, so the packaged documentation always matches the binary.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::config::Cli;

/// `scan-agent generate-docs`.
#[derive(Args, Debug)]
pub struct DocsArgs {
    /// Directory to write `man/*.1` and `completions/*` into (created if missing)
    pub out_dir: PathBuf,
}

/// Writes `man/scan-agent.1`, one `man/scan-agent-SUBCOMMAND.1` per visible subcommand, and
/// completions for bash, zsh and fish under `completions/`.
pub fn generate(out_dir: &Path) -> Result<()> {
    let man = out_dir.join("man");
    let completions = out_dir.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let command = Cli::command();
    clap_mangen::generate_to(command.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command.clone(), "scan-agent", &completions)
            .with_context(|| format!("writing {shell} completions to {}", completions.display()))?;
    }
    Ok(())
}
