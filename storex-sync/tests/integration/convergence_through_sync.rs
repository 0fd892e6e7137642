//! The contract of `convergence`, with sync's own bookkeeping in the way: devices push and
//! pull through a MemorySharedLog with [`ContinuousSync`] (pushes from the journal or from
//! the log, in small batches, folded into the versions index at once or left to compaction),
//! compact their client logs, and the shared log compacts what every device acknowledged,
//! fast-sync copies merge one device into another, while entries also travel directly
//! between devices as in `convergence`. Entries a device
//! compacted away still arrive again from the others and from the shared log. Devices but
//! the first may pull one of the two collections only (so copies hand over cursors that hold
//! for fewer collections than the receiver pulls, or more). After the last syncs every device
//! holds, of what it pulls, what applying every entry in timestamp order gives, and so do all
//! of everything once the others' entries are delivered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use storex_core::uuid::Uuid;
use storex_core::MemoryBackend;
use storex_sync::fast_sync::{
    memory_channel_pair, receive_snapshot, send_snapshot, FastSyncOptions,
};
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, DeviceId, EntryCodec, LogEntry, ManualClock,
    MemorySharedLog, SharedSyncLog, SyncDevice, SyncOptions, SyncReport,
};

use crate::convergence::{
    apply_write_in, deliver, known_entries, registry_of, rows_in, sequential_model_in, write, Write,
};

const CASES: u32 = 1_000;
const USER: &str = "user";
/// The collections; a device may pull the first only.
const COLLECTIONS: [&str; 2] = ["item", "memo"];

/// How one device syncs.
#[derive(Clone, Debug)]
struct DeviceSetup {
    /// Its wall clock's skew (ms), up to ten minutes.
    skew: u64,
    /// Entries per push and per pull page.
    batch: usize,
    /// Whether its syncs compact its log (and fold what they push at once).
    compacts: bool,
    /// Whether it pulls items only (not for the first device, which pulls everything).
    items_only: bool,
}

#[derive(Clone, Debug)]
enum Step {
    Write {
        device: usize,
        write: Write,
        tick: u64,
        /// A memo, not an item.
        memo: bool,
    },
    /// The entries of `from` known so far (its log, indexed now, and what it pushed), a
    /// subset, straight to `to`.
    Deliver {
        from: usize,
        to: usize,
        mask: u64,
        batch: usize,
        seed: u64,
    },
    /// One `sync_once` of the device.
    Sync { device: usize },
    /// The device compacts its client log.
    Compact { device: usize },
    /// The shared log drops what every device (the onlooker too) acknowledged.
    CompactShared,
    /// A fast-sync copy of `from` into `to`, which merges it with what it has.
    Copy { from: usize, to: usize },
}

fn step(devices: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..devices, write(), 0u64..3, any::<bool>()).prop_map(|(device, write, tick, memo)| Step::Write { device, write, tick, memo }),
        1 => (0..devices, 0..devices, any::<u64>(), 1usize..6, any::<u64>())
            .prop_map(|(from, to, mask, batch, seed)| Step::Deliver { from, to, mask, batch, seed }),
        3 => (0..devices).prop_map(|device| Step::Sync { device }),
        1 => (0..devices).prop_map(|device| Step::Compact { device }),
        1 => Just(Step::CompactShared),
        1 => (0..devices, 0..devices).prop_map(|(from, to)| Step::Copy { from, to }),
    ]
}

fn scenario() -> impl Strategy<Value = (Vec<DeviceSetup>, Vec<Step>, u64)> {
    (3usize..=4).prop_flat_map(|devices| {
        let setup = (0u64..600_000, 1usize..5, any::<bool>(), any::<bool>()).prop_map(
            |(skew, batch, compacts, items_only)| DeviceSetup {
                skew,
                batch,
                compacts,
                items_only,
            },
        );
        (
            proptest::collection::vec(setup, devices),
            proptest::collection::vec(step(devices), 5..40),
            any::<u64>(),
        )
    })
}

/// Every entry any device made that is known so far, by id.
#[derive(Default)]
struct Ledger {
    entries: BTreeMap<Uuid, LogEntry>,
    /// The onlooker's position in the shared log.
    cursor: u64,
}

impl Ledger {
    fn add(&mut self, entries: impl IntoIterator<Item = LogEntry>) {
        for entry in entries {
            self.entries.insert(entry.id, entry);
        }
    }

    fn made_by(&self, device: DeviceId) -> Vec<LogEntry> {
        self.entries
            .values()
            .filter(|e| e.device == device)
            .cloned()
            .collect()
    }

    /// Reads what was pushed since the last time through `onlooker`, a device of the user
    /// that never writes, and acknowledges it (so that the shared log may compact it).
    async fn read_shared(&mut self, shared: &MemorySharedLog, onlooker: DeviceId) {
        let codec = EntryCodec::plain();
        loop {
            let pull = shared
                .pull(onlooker, self.cursor, 7, None)
                .await
                .expect("pull");
            for pulled in &pull.entries {
                let entry = codec.decode(&pulled.entry).expect("decode");
                self.entries.insert(entry.id, entry);
            }
            self.cursor = pull.next_cursor;
            if !pull.more {
                break;
            }
        }
        shared.ack(onlooker, self.cursor).await.expect("ack");
    }
}

/// A fast-sync copy of `from` into `to` over an in-memory channel.
async fn copy(from: &SyncDevice, to: &SyncDevice) {
    let options = FastSyncOptions::default().with_batch_bytes(256);
    let (mut a, mut b) = memory_channel_pair(options.window * 2);
    let (sent, received) = tokio::join!(
        send_snapshot(from, &mut a, &options),
        receive_snapshot(to, &mut b, &options)
    );
    sent.expect("send");
    received.expect("receive");
}

fn check(report: SyncReport) {
    assert_eq!(report.held, 0, "nothing is held here: {report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
}

/// One `sync_once` of device `d`. (It never meets a compacted cursor: the shared log drops
/// only what every device acknowledged, and a device starts over from the beginning only
/// when it took a copy before its first sync, whose acknowledgement the log still waits
/// for.)
async fn sync(devices: &[ContinuousSync], d: usize) {
    check(devices[d].sync_once().await.expect("sync"));
}

async fn run(setups: Vec<DeviceSetup>, steps: Vec<Step>, final_seed: u64) {
    let base = 1_700_000_000_000u64;
    let shared = Arc::new(MemorySharedLog::new());
    let onlooker = DeviceId::random();
    shared
        .register_device(USER, onlooker)
        .await
        .expect("register");
    let mut walls = Vec::new();
    let mut devices = Vec::new();
    for (i, setup) in setups.iter().enumerate() {
        let wall = ManualClock::new(base + setup.skew);
        let clock = Clock::with_wall_clock(DeviceId::random(), wall.clone())
            .with_max_drift(Duration::from_secs(3600));
        let device = SyncDevice::open(
            registry_of(&COLLECTIONS),
            Arc::new(MemoryBackend::new()),
            clock,
            SyncOptions::default(),
        )
        .await
        .expect("open");
        shared
            .register_device(USER, device.device())
            .await
            .expect("register");
        let mut options = ContinuousOptions::default()
            .with_batch_size(setup.batch)
            .with_compact_per_sync(if setup.compacts { 10_000 } else { 0 });
        if i > 0 && setup.items_only {
            options = options.with_collections([COLLECTIONS[0]]);
        }
        walls.push(wall);
        devices.push(ContinuousSync::new(device, shared.clone(), options));
    }
    let mut ledger = Ledger::default();
    for step in &steps {
        match step {
            Step::Write {
                device,
                write,
                tick,
                memo,
            } => {
                walls[*device].advance(Duration::from_millis(*tick));
                let collection = COLLECTIONS[usize::from(*memo)];
                apply_write_in(devices[*device].device(), collection, write).await;
            }
            Step::Deliver {
                from,
                to,
                mask,
                batch,
                seed,
            } => {
                if from == to {
                    continue;
                }
                let sender = devices[*from].device();
                ledger.add(known_entries(sender).await);
                let entries: Vec<LogEntry> = ledger
                    .made_by(sender.device())
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> (i % 64) & 1 == 1)
                    .map(|(_, e)| e)
                    .collect();
                deliver(devices[*to].device(), entries, *batch, *seed).await;
            }
            Step::Sync { device } => {
                sync(&devices, *device).await;
                ledger.read_shared(&shared, onlooker).await;
            }
            Step::Compact { device } => {
                devices[*device]
                    .device()
                    .log()
                    .compact()
                    .await
                    .expect("compact");
            }
            Step::CompactShared => {
                shared.compact(USER).await.expect("compact shared");
            }
            Step::Copy { from, to } => {
                if from != to {
                    copy(devices[*from].device(), devices[*to].device()).await;
                }
            }
        }
    }
    // What no sync pushed yet, then everything everywhere: twice through the shared log (the
    // first round pushes, the second pulls), then the others' entries straight from the
    // ledger, in a different order for each device (all duplicates by now). Never a device's
    // own entries: no shared log sends those back, and they would mend what a device lost of
    // its own writes.
    for device in &devices {
        ledger.add(known_entries(device.device()).await);
    }
    for _ in 0..2 {
        for d in 0..devices.len() {
            sync(&devices, d).await;
        }
    }
    ledger.read_shared(&shared, onlooker).await;
    let all: Vec<LogEntry> = ledger.entries.into_values().collect();
    // Through the shared log alone, each device has all of what it pulls.
    for (i, (device, setup)) in devices.iter().zip(&setups).enumerate() {
        let pulled = if i > 0 && setup.items_only {
            &COLLECTIONS[..1]
        } else {
            &COLLECTIONS[..]
        };
        for collection in pulled {
            assert_eq!(
                rows_in(device.device(), collection).await,
                sequential_model_in(all.clone(), collection),
                "device {i}'s {collection} after syncing"
            );
        }
    }
    for (i, device) in devices.iter().enumerate() {
        let me = device.device().device();
        let others = all.iter().filter(|e| e.device != me).cloned().collect();
        deliver(
            device.device(),
            others,
            3 + i,
            final_seed.wrapping_add(i as u64),
        )
        .await;
    }
    for collection in COLLECTIONS {
        let expected = sequential_model_in(all.clone(), collection);
        let digest = devices[0].device().digest(collection).await;
        let digest = digest.expect("digest");
        for (i, device) in devices.iter().enumerate() {
            assert_eq!(
                rows_in(device.device(), collection).await,
                expected,
                "device {i}'s {collection} differs from the sequential model"
            );
            let theirs = device.device().digest(collection).await;
            assert_eq!(theirs.expect("digest"), digest, "device {i}'s {collection}");
        }
    }
}

proptest! {
    // Seeds that once failed are kept beside this file and run first.
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/integration/convergence_through_sync.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn devices_that_push_pull_and_compact_hold_the_same_data((setups, steps, seed) in scenario()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(run(setups, steps, seed));
    }
}

/// The case the property exists for, spelled out: a device folds its pushed update into its
/// versions, and an older concurrent update of the same field arrives afterwards.
#[tokio::test]
async fn a_pushed_and_folded_write_still_beats_an_older_concurrent_one() {
    let setup = |compacts| DeviceSetup {
        skew: 0,
        batch: 2,
        compacts,
        items_only: false,
    };
    let all = u64::MAX;
    let steps = vec![
        Step::Write {
            device: 0,
            write: Write::Create {
                id: 1,
                a: 1,
                b: None,
            },
            tick: 1,
            memo: false,
        },
        Step::Deliver {
            from: 0,
            to: 1,
            mask: all,
            batch: 5,
            seed: 0,
        },
        // Stamped right after the create (b's clock is behind a's)...
        Step::Write {
            device: 1,
            write: Write::Update {
                id: 1,
                a: Some(2),
                b: None,
                c: None,
            },
            tick: 0,
            memo: false,
        },
        // ...and a's update after it.
        Step::Write {
            device: 0,
            write: Write::Update {
                id: 1,
                a: Some(3),
                b: None,
                c: None,
            },
            tick: 5,
            memo: false,
        },
        Step::Sync { device: 0 },
        Step::Compact { device: 0 },
        Step::Sync { device: 1 },
        Step::Sync { device: 0 },
    ];
    run(vec![setup(true), setup(false), setup(false)], steps, 0).await;
}
