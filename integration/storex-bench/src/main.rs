//! `storex-bench`: measures storex's real code paths and prints one line per figure,
//! `bench: <name> <value> <unit>`. A comparison is measured against its baseline in the same
//! run and printed as a ratio.
//!
//! Run with `cargo run --release -p storex-bench -- <suite>`.

mod allocations;
mod continuous_suite;
mod core_suite;
mod fastsync_suite;
mod report;
mod seaorm_suite;
mod server_suite;
mod synclog_suite;

use clap::{Parser, ValueEnum};

/// With the `mimalloc` feature, the figures are measured with mimalloc as the allocator, as
/// the `storex` command runs; by default with the system's, as an app that sets none runs
/// (storex allocates through whatever allocator the app sets).
#[cfg(all(feature = "mimalloc", not(feature = "allocations")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With the `allocations` feature, the system allocator, counting what is allocated
/// (`allocations.rs` reads the counts); it takes the place of mimalloc if both are on.
#[cfg(feature = "allocations")]
#[global_allocator]
static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// The allocator in use, as the notes on stderr name it.
const ALLOCATOR_NAME: &str = if cfg!(feature = "allocations") {
    "the system allocator, counting allocations"
} else if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "the system allocator"
};

/// Benchmarks for storex.
#[derive(Debug, Parser)]
#[command(name = "storex-bench", version)]
struct Args {
    /// Which suite to run.
    suite: Suite,
    /// Operations per measurement (each suite has a sensible default).
    #[arg(long)]
    ops: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Suite {
    /// Operations per second through the middleware chain on MemoryBackend.
    Core,
    /// Rows per second through storex and through plain SeaORM on one SQLite file.
    Seaorm,
    /// Logged writes against unlogged ones, and reconcile+apply throughput, on SQLite files.
    Synclog,
    /// Push and pull+apply through the SQL shared log on SQLite, and one write's travel time.
    Continuous,
    /// A whole SQLite database to another over TCP and WebRTC on loopback, against plain
    /// `insert_many`.
    Fastsync,
    /// Pushes and pulls per second through the HTTP sync server, 1 and 3 instances.
    Server,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // The server suite runs servers and clients together, the continuous and fastsync suites
    // two devices at once: they need every core.
    let mut builder = match args.suite {
        Suite::Server | Suite::Continuous | Suite::Fastsync => {
            tokio::runtime::Builder::new_multi_thread()
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = builder.enable_all().build()?;
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build; run with --release for meaningful figures");
    }
    eprintln!("note: allocating with {ALLOCATOR_NAME}");
    match args.suite {
        Suite::Core => runtime.block_on(core_suite::run(args.ops.unwrap_or(100_000)))?,
        Suite::Seaorm => runtime.block_on(seaorm_suite::run(args.ops.unwrap_or(2_000)))?,
        Suite::Synclog => runtime.block_on(synclog_suite::run(args.ops.unwrap_or(2_000)))?,
        Suite::Continuous => {
            runtime.block_on(continuous_suite::run(args.ops.unwrap_or(100_000)))?
        }
        Suite::Fastsync => runtime.block_on(fastsync_suite::run(args.ops))?,
        Suite::Server => runtime.block_on(server_suite::run(args.ops.unwrap_or(50)))?,
    }
    Ok(())
}
