//! `storex`: the command-line face of storex-rs.
//!
//! `storex demo` runs two devices on SQLite files and a shared log on SQLite (the embedded
//! default), writes on both (one edit conflicts), syncs them, and shows what each holds.
//! `storex migrate send|receive` moves a whole SQLite database to a new device over TCP or
//! WebRTC;
//! `storex log` and `storex status` show what a device's client sync log holds (writes still
//! in its journal are counted, not indexed).
//! `storex serve` runs the sync server; `storex user` creates a user on it; `storex sync` syncs
//! a device's database once with a server or a shared-log file.

/// Prints a line to stdout; a closed stdout (`storex demo | head`) is not worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say(format_args!($($arg)*))
    };
}

mod demo;
mod inspect;
mod migrate;
mod migrate_code;
mod schema_notes;
mod serve;
mod sync;
mod tables;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The command's allocator: mimalloc. On Linux, glibc's `malloc` and `free` take about a
/// quarter of the CPU time of syncing, which mimalloc cuts (docs/performance.md has the
/// figures). Build with `--no-default-features` for the system's allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Moves a whole SQLite database from an old device to a new one, over TCP or WebRTC.
    #[command(subcommand)]
    Migrate(Migrate),
    /// Shows the last entries of a device's client sync log.
    Log {
        /// The device's SQLite database.
        #[arg(long)]
        db: PathBuf,
        /// How many entries to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Shows how far a device's sync is: log entries, unpushed, held, cursor.
    Status {
        /// The device's SQLite database.
        #[arg(long)]
        db: PathBuf,
    },
    /// Syncs a device's SQLite database once with a sync server or a shared-log file. Exits
    /// with 1 also when the sync went through but left problems (named on standard error).
    Sync(sync::SyncArgs),
    /// Runs the sync server: the shared log over HTTP, in PostgreSQL or SQLite.
    Serve(serve::ServeArgs),
    /// Creates a user on a sync server and prints its token.
    User {
        /// The server's URL.
        #[arg(long, env = "STOREX_SERVER")]
        server: String,
        /// The server's admin token.
        #[arg(long, env = "STOREX_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// The new user's name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum Migrate {
    /// On the old device: offer the database and wait for the new device.
    Send {
        /// The SQLite database to send.
        #[arg(long)]
        db: PathBuf,
        /// Over TCP: where to listen (the printed address is what the receiver connects to).
        #[arg(long, default_value = "127.0.0.1:0", conflicts_with = "webrtc")]
        listen: String,
        /// Over a WebRTC data channel: print an offer code, then read the receiver's answer
        /// code from standard input.
        #[arg(long)]
        webrtc: bool,
        /// Over WebRTC: the local address to offer (this device's address on the network
        /// the two devices share, e.g. 192.168.1.20; the default works on one machine only).
        #[arg(long, default_value = "127.0.0.1", requires = "webrtc")]
        webrtc_bind: std::net::IpAddr,
        /// Over TCP: how long the receiver tries, in seconds, to come back after the
        /// connection drops (give both sides the same); the transfer then resumes after the
        /// last batch it applied. The sender waits twice as long, so that a receiver that gave
        /// up can run its command again (0: no second connection).
        #[arg(long, default_value_t = 120, conflicts_with = "webrtc")]
        reconnect_secs: u64,
        /// Over TCP: the code the receiver must give (at least 8 letters and digits); by
        /// default a new random one, printed. Only a receiver that gives it gets the data.
        /// (Not used over WebRTC, whose codes do the same.)
        #[arg(long, env = migrate_code::CODE_ENV, hide_env_values = true)]
        code: Option<String>,
    },
    /// On the new device: reach the sender and write the database to a new file.
    Receive {
        /// The new SQLite database to create (it must not exist yet). It is written as
        /// `<db>.partial` until complete; a transfer cut short keeps that file, and the same
        /// command run again while the sender waits resumes it.
        #[arg(long)]
        db: PathBuf,
        /// Over TCP: the sender's address, as it printed it.
        #[arg(long, required_unless_present = "offer", conflicts_with = "offer")]
        connect: Option<String>,
        /// Over WebRTC: the sender's offer code, as it printed it.
        #[arg(long)]
        offer: Option<String>,
        /// Over WebRTC: the local address to answer with (this device's address on the
        /// network the two devices share; the default works on one machine only).
        #[arg(long, default_value = "127.0.0.1", requires = "offer")]
        webrtc_bind: std::net::IpAddr,
        /// Over TCP: how long to try, in seconds, to reach the sender again after the
        /// connection drops; the transfer then resumes after the last batch applied (0: no
        /// second connection; give both sides the same).
        #[arg(long, default_value_t = 120, conflicts_with = "offer")]
        reconnect_secs: u64,
        /// Over TCP: the code the sender printed (not used over WebRTC).
        #[arg(
            long,
            env = migrate_code::CODE_ENV,
            hide_env_values = true,
            required_unless_present = "offer"
        )]
        code: Option<String>,
    },
}

fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server uses every core; the other commands are one conversation at a time.
    let mut builder = match cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Demo { dir } => runtime.block_on(demo::run(dir)),
        Command::Log { db, limit } => runtime.block_on(inspect::log(&db, limit)),
        Command::Status { db } => runtime.block_on(inspect::status(&db)),
        Command::Serve(args) => runtime.block_on(serve::serve(args)),
        Command::Sync(args) => runtime.block_on(sync::sync(args)),
        Command::User {
            server,
            admin_token,
            name,
        } => runtime.block_on(serve::create_user(&server, &admin_token, &name)),
        Command::Migrate(Migrate::Send {
            db,
            listen,
            webrtc,
            webrtc_bind,
            reconnect_secs,
            code,
        }) => {
            // A chosen code is checked before the database is opened.
            let transport = if webrtc {
                Ok(migrate::Transport::WebRtc(webrtc_bind))
            } else {
                migrate_code::sender_code(code).map(|code| migrate::Transport::Tcp {
                    listen,
                    reconnect: Duration::from_secs(reconnect_secs),
                    code,
                })
            };
            transport.and_then(|transport| runtime.block_on(migrate::send(&db, transport)))
        }
        Command::Migrate(Migrate::Receive {
            db,
            connect,
            offer,
            webrtc_bind,
            reconnect_secs,
            code,
        }) => match (connect, offer) {
            (_, Some(offer)) => runtime.block_on(migrate::receive(
                &db,
                migrate::Source::WebRtc(offer, webrtc_bind),
            )),
            (Some(connect), None) => runtime.block_on(migrate::receive(
                &db,
                migrate::Source::Tcp {
                    connect,
                    reconnect: Duration::from_secs(reconnect_secs),
                    code: code.unwrap_or_default(),
                },
            )),
            (None, None) => Err(anyhow::anyhow!("give --connect ADDR or --offer CODE")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
