//! `storex`: the command-line face of storex-rs.
//!
//! `storex demo` runs two devices on SQLite files and a shared log on SQLite (the embedded
//! default), writes on both (one edit conflicts), syncs them, and shows what each holds.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Local-first sync for apps: keep data in SQLite, sync it between a user's devices.
#[derive(Debug, Parser)]
#[command(name = "storex", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Two devices edit offline, sync through a shared log on SQLite, and converge.
    Demo {
        /// Keep the devices' SQLite files in this folder (created if missing) instead of a
        /// temporary one, to look at them afterwards.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Demo { dir } => runtime.block_on(demo::run(dir)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
