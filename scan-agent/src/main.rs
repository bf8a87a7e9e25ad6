use anyhow::Result;
use clap::Parser;
use scan_agent::{
    check,
    config::{Cli, Command, ReplayFormat},
    daemon, docs, privsep, replay, sensor, top,
};

fn main() -> std::process::ExitCode {
    // The worker of `run` drops every capability before anything else (before any
    // thread exists: capabilities are per thread, and threads inherit them).
    let mut kept = None;
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == privsep::WORKER_COMMAND)
    {
        match privsep::drop_capabilities() {
            Ok(note) => kept = note,
            Err(e) => {
                eprintln!("error: {}", scan_agent::error_chain(&e));
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Some(note) = kept {
        // Linux < 6.5 with unprivileged BPF disabled: see privsep::maps_need_cap_bpf.
        log::warn!("{note}");
    }
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line for operators, never a backtrace.
            let text = scan_agent::error_chain(e.as_ref());
            eprintln!("error: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            let config = args.resolve()?;
            // The attacher: one thread (plus the link watch); the worker does the rest.
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(daemon::run(config))
        }
        Command::Worker(args) => daemon::worker(args.resolve()?),
        Command::Check(args) => {
            let (report, ok) = check::check(&args);
            print!("{report}");
            if !ok {
                anyhow::bail!("some checks failed (see above)");
            }
            Ok(())
        }
        Command::Replay(args) => {
            let report = replay::replay(&args.file, Some(args.detector()?))?;
            match args.format {
                ReplayFormat::Table => print!("{}", report.render_table()),
                ReplayFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(())
        }
        Command::Top(args) => top::run(args),
        Command::GenerateDocs(args) => docs::generate(&args.out_dir),
        Command::Detach(args) => {
            let removed = sensor::detach_all(&args.pin_path)?;
            if removed.is_empty() {
                println!("nothing to remove under {}", args.pin_path.display());
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(())
        }
    }
}
