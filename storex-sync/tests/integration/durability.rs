//! A sync makes this device's database durable before others rely on it: before a push
//! carries its writes away, and before an acknowledgement lets the shared log drop what it
//! applied (`StorageBackend::make_durable`), and a fast-sync sender before it takes the
//! snapshot it sends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use storex_core::{
    object, BackendFeatures, BoxFuture, MemoryBackend, Operation, Outcome, Registry,
    Result as CoreResult, StorageBackend, Transaction,
};
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, DeviceId, DeviceInfo, MemorySharedLog, Pull,
    SharedEntry, SharedLogError, SharedResult, SharedSyncLog, SyncDevice, SyncOptions,
};

/// What happened, in order, to one device's database and to the shared log on its behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// A write to the app's data committed to the device's database (not sync's own
    /// bookkeeping: marking entries pushed needs no durability).
    Commit,
    /// The device's database was made durable.
    Durable,
    /// The device pushed.
    Push,
    /// The device acknowledged a cursor.
    Ack,
    /// A snapshot transaction began.
    Snapshot,
}

type Ledger = Arc<Mutex<Vec<Event>>>;

fn record(ledger: &Ledger, event: Event) {
    ledger.lock().expect("ledger").push(event);
}

/// Whether `op` writes the app's data (the `note` collection).
pub(crate) fn writes_notes(op: &Operation) -> bool {
    match op {
        Operation::Batch { steps } => steps.iter().any(|step| writes_notes(&step.operation)),
        op => op.is_write() && op.collection() == Some("note"),
    }
}

/// Once armed, stalls every operation `what` picks (writes to `note`, for
/// [`Stall::notes`]), before it runs or once it has ([`Stall::after_running`]), until
/// `release` is told (never, for one the caller gives up on); `stalled` is told when one
/// stalls. The first `passing` of them go through.
#[derive(Debug)]
pub(crate) struct Stall {
    /// Whether the operations stall.
    pub(crate) armed: std::sync::atomic::AtomicBool,
    /// Told when one stalls.
    pub(crate) stalled: tokio::sync::Notify,
    /// Lets the stalled one go on, once told.
    pub(crate) release: tokio::sync::Notify,
    /// How many of them go through before they stall.
    pub(crate) passing: std::sync::atomic::AtomicUsize,
    what: fn(&Operation) -> bool,
    after: bool,
}

impl Stall {
    /// Stalls the operations `what` picks, once armed.
    pub(crate) fn new(what: fn(&Operation) -> bool) -> Self {
        Stall {
            armed: std::sync::atomic::AtomicBool::new(false),
            stalled: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
            passing: std::sync::atomic::AtomicUsize::new(0),
            what,
            after: false,
        }
    }

    /// Stalls the operations `what` picks once they have run (what they read is read
    /// before the stall), once armed.
    pub(crate) fn after_running(what: fn(&Operation) -> bool) -> Self {
        Stall {
            after: true,
            ..Stall::new(what)
        }
    }

    /// Whether `op` stalls (counting it among those that go through, if it does not).
    fn stalls(&self, op: &Operation) -> bool {
        use std::sync::atomic::Ordering;
        if !(self.what)(op) || !self.armed.load(Ordering::SeqCst) {
            return false;
        }
        let passed = self
            .passing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        passed.is_err()
    }

    /// Stalls writes to `note`, once armed: an apply that waits.
    pub(crate) fn notes() -> Self {
        Stall::new(writes_notes)
    }
}

impl storex_core::Middleware for Stall {
    fn process<'a>(
        &'a self,
        op: storex_core::Operation,
        next: storex_core::Next<'a>,
    ) -> storex_core::BoxFuture<'a, storex_core::Result<storex_core::Outcome>> {
        if !self.stalls(&op) {
            return next.run(op);
        }
        Box::pin(async move {
            if self.after {
                let outcome = next.run(op).await;
                self.stalled.notify_one();
                self.release.notified().await;
                return outcome;
            }
            self.stalled.notify_one();
            self.release.notified().await;
            next.run(op).await
        })
    }
}

/// A memory backend that records its committed writes of notes and when it was made durable.
#[derive(Debug)]
struct LedgerBackend {
    inner: MemoryBackend,
    ledger: Ledger,
}

/// A transaction of [`LedgerBackend`]: its commit is recorded if it wrote.
#[derive(Debug)]
struct LedgerTransaction {
    inner: Box<dyn Transaction>,
    wrote: AtomicBool,
    ledger: Ledger,
}

impl LedgerBackend {
    fn wrap(
        &self,
        begun: BoxFuture<'static, CoreResult<Box<dyn Transaction>>>,
    ) -> BoxFuture<'static, CoreResult<Box<dyn Transaction>>> {
        let ledger = self.ledger.clone();
        async move {
            Ok(Box::new(LedgerTransaction {
                inner: begun.await?,
                wrote: AtomicBool::new(false),
                ledger,
            }) as Box<dyn Transaction>)
        }
        .boxed()
    }
}

impl StorageBackend for LedgerBackend {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn features(&self) -> BackendFeatures {
        self.inner.features()
    }

    fn prepare<'a>(&'a self, registry: &'a Arc<Registry>) -> BoxFuture<'a, CoreResult<()>> {
        self.inner.prepare(registry)
    }

    fn execute(&self, op: Operation) -> BoxFuture<'_, CoreResult<Outcome>> {
        async move {
            let write = writes_notes(&op);
            let outcome = self.inner.execute(op).await?;
            if write {
                record(&self.ledger, Event::Commit);
            }
            Ok(outcome)
        }
        .boxed()
    }

    fn begin(&self) -> BoxFuture<'_, CoreResult<Box<dyn Transaction>>> {
        let inner = self.inner.clone();
        self.wrap(async move { inner.begin().await }.boxed())
    }

    fn begin_snapshot(&self) -> BoxFuture<'_, CoreResult<Box<dyn Transaction>>> {
        record(&self.ledger, Event::Snapshot);
        self.begin()
    }

    fn make_durable(&self) -> BoxFuture<'_, CoreResult<()>> {
        record(&self.ledger, Event::Durable);
        async { Ok(()) }.boxed()
    }
}

impl Transaction for LedgerTransaction {
    fn execute(&self, op: Operation) -> BoxFuture<'_, CoreResult<Outcome>> {
        if writes_notes(&op) {
            self.wrote.store(true, Ordering::SeqCst);
        }
        self.inner.execute(op)
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, CoreResult<()>> {
        async move {
            let wrote = self.wrote.load(Ordering::SeqCst);
            self.inner.commit().await?;
            if wrote {
                record(&self.ledger, Event::Commit);
            }
            Ok(())
        }
        .boxed()
    }

    fn rollback(self: Box<Self>) -> BoxFuture<'static, CoreResult<()>> {
        self.inner.rollback()
    }
}

/// A memory shared log that records the pushes and acknowledgements of one device. It can
/// be replaced by another, as a log's database restored from a backup is, and then stores
/// `late` entries of another device right after it told this device its cursor is past the
/// log's end (they land while this device pulls again).
#[derive(Debug)]
struct LedgerLog {
    inner: Mutex<Arc<MemorySharedLog>>,
    device: DeviceId,
    ledger: Ledger,
    late: Mutex<Option<(DeviceId, Vec<SharedEntry>)>>,
}

impl LedgerLog {
    fn new(inner: Arc<MemorySharedLog>, device: DeviceId, ledger: Ledger) -> Self {
        LedgerLog {
            inner: Mutex::new(inner),
            device,
            ledger,
            late: Mutex::new(None),
        }
    }

    fn inner(&self) -> Arc<MemorySharedLog> {
        self.inner.lock().expect("log").clone()
    }

    /// From now on the log is `restored`, which stores `late` (of `device`) once it told this
    /// log's device that its cursor is past the end.
    fn restore(&self, restored: Arc<MemorySharedLog>, device: DeviceId, late: Vec<SharedEntry>) {
        *self.inner.lock().expect("log") = restored;
        *self.late.lock().expect("late") = Some((device, late));
    }
}

impl SharedSyncLog for LedgerLog {
    fn name(&self) -> &'static str {
        "ledger-log"
    }

    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>> {
        Box::pin(async move { self.inner().register_device(user, device).await })
    }

    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>> {
        Box::pin(async move { self.inner().devices(device).await })
    }

    fn push(
        &self,
        device: DeviceId,
        entries: Vec<SharedEntry>,
    ) -> BoxFuture<'_, SharedResult<u64>> {
        if device == self.device {
            record(&self.ledger, Event::Push);
        }
        Box::pin(async move { self.inner().push(device, entries).await })
    }

    fn pull<'a>(
        &'a self,
        device: DeviceId,
        cursor: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, SharedResult<Pull>> {
        Box::pin(async move {
            let log = self.inner();
            let pulled = log.pull(device, cursor, limit, topics).await;
            if let Err(SharedLogError::CursorAhead { .. }) = &pulled {
                let late = self.late.lock().expect("late").take();
                if let Some((other, entries)) = late {
                    log.push(other, entries).await?;
                }
            }
            pulled
        })
    }

    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, SharedResult<()>> {
        if device == self.device {
            record(&self.ledger, Event::Ack);
        }
        Box::pin(async move { self.inner().ack(device, cursor).await })
    }

    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<u64>> {
        Box::pin(async move { self.inner().compact(user).await })
    }
}

/// A device on `backend`, registered with `shared`, syncing through `log`.
async fn device(
    backend: Arc<dyn StorageBackend>,
    shared: &MemorySharedLog,
    log: Arc<dyn SharedSyncLog>,
) -> ContinuousSync {
    let id = shared.create_device("ann").await.expect("register");
    let device = SyncDevice::open(registry(), backend, Clock::new(id), SyncOptions::default())
        .await
        .expect("device");
    ContinuousSync::new(device, log, ContinuousOptions::default())
}

/// The scenarios' registry (`note`, `photo`).
fn registry() -> Registry {
    storex_test::devices::registry()
}

/// The event just before each `event` in `ledger` (none for one at the start).
fn preceded_by(ledger: &[Event], event: Event) -> Vec<Option<Event>> {
    let mut found = Vec::new();
    for (at, seen) in ledger.iter().enumerate() {
        if *seen == event {
            found.push(at.checked_sub(1).map(|before| ledger[before]));
        }
    }
    found
}

#[tokio::test]
async fn a_sync_makes_the_database_durable_before_each_push_and_before_an_acknowledgement() {
    let shared = Arc::new(MemorySharedLog::new());
    let ledger = Ledger::default();
    let backend = Arc::new(LedgerBackend {
        inner: MemoryBackend::new(),
        ledger: ledger.clone(),
    });
    let other = device(Arc::new(MemoryBackend::new()), &shared, shared.clone()).await;
    let here_id = shared.create_device("ann").await.expect("register");
    let here = {
        let log = Arc::new(LedgerLog::new(shared.clone(), here_id, ledger.clone()));
        let device = SyncDevice::open(
            registry(),
            backend,
            Clock::new(here_id),
            SyncOptions::default(),
        )
        .await
        .expect("device");
        // Pushes of two: a later page may hold writes committed after the first was read.
        let options = ContinuousOptions::default().with_batch_size(2);
        ContinuousSync::new(device, log, options)
    };
    let note = |id: &str| object! { "id" => id, "title" => "written offline" };
    for n in 0..5 {
        here.device()
            .storage()
            .create("note", note(&format!("here-{n}")))
            .await
            .expect("write here");
    }
    other
        .device()
        .storage()
        .create("note", note("there"))
        .await
        .expect("write there");
    other.sync_once().await.expect("the other pushes");
    ledger.lock().expect("ledger").clear();

    let report = here.sync_once().await.expect("sync");
    assert_eq!((report.pushed, report.applied), (5, 1), "{report:?}");
    // The snapshots a sync reads the log in do not matter here.
    let mut events = ledger.lock().expect("ledger").clone();
    events.retain(|event| *event != Event::Snapshot);
    assert_eq!(
        preceded_by(&events, Event::Push),
        [Some(Event::Durable); 3],
        "{events:?}"
    );
    assert_eq!(
        preceded_by(&events, Event::Ack),
        [Some(Event::Durable)],
        "{events:?}"
    );

    // Nothing new: the cursor acknowledged again is durable already, nothing is pushed.
    ledger.lock().expect("ledger").clear();
    here.sync_once().await.expect("an idle sync");
    let events = ledger.lock().expect("ledger").clone();
    assert!(!events.contains(&Event::Durable), "{events:?}");
}

#[tokio::test]
async fn a_sync_that_pulled_again_from_a_restored_log_makes_the_database_durable_before_its_acknowledgement(
) {
    let note = |id: &str| object! { "id" => id, "title" => "written there" };
    let pull_as = |log: Arc<MemorySharedLog>, device: DeviceId| async move {
        let pull = log.pull(device, 0, 100, None).await.expect("pull");
        pull.entries
            .into_iter()
            .map(|p| p.entry)
            .collect::<Vec<_>>()
    };
    let shared = Arc::new(MemorySharedLog::new());
    let ledger = Ledger::default();
    let other = device(Arc::new(MemoryBackend::new()), &shared, shared.clone()).await;
    let other_id = other.device().device();
    let here_id = shared.create_device("ann").await.expect("register");
    let log = Arc::new(LedgerLog::new(shared.clone(), here_id, ledger.clone()));
    let here = ContinuousSync::new(
        SyncDevice::open(
            registry(),
            Arc::new(LedgerBackend {
                inner: MemoryBackend::new(),
                ledger: ledger.clone(),
            }),
            Clock::new(here_id),
            SyncOptions::default(),
        )
        .await
        .expect("device"),
        log.clone(),
        ContinuousOptions::default(),
    );
    // Two notes from the other device: this one pulls them and acknowledges cursor 2.
    for id in ["one", "two"] {
        let storage = other.device().storage();
        storage.create("note", note(id)).await.expect("write");
    }
    other.sync_once().await.expect("the other pushes");
    assert_eq!(here.sync_once().await.expect("sync").cursor, 2);
    // The other device writes two more notes; the log's database is then restored from a
    // backup that has only the first of them (end 1, behind this device's cursor), and the
    // second lands while this device pulls again: both take the cursors it had acknowledged.
    let staging = Arc::new(MemorySharedLog::new());
    let onlooker = staging.create_device("ann").await.expect("onlooker");
    staging
        .register_device("ann", other_id)
        .await
        .expect("other");
    let other_staged = ContinuousSync::new(
        other.device().clone(),
        staging.clone(),
        ContinuousOptions::default(),
    );
    for id in ["three", "four"] {
        let storage = other.device().storage();
        storage.create("note", note(id)).await.expect("write");
    }
    other_staged.sync_once().await.expect("the other pushes");
    let mut written = pull_as(staging, onlooker).await;
    assert_eq!(written.len(), 2);
    let late = written.split_off(1);
    let restored = Arc::new(MemorySharedLog::new());
    for device in [other_id, here_id] {
        restored
            .register_device("ann", device)
            .await
            .expect("register");
    }
    restored.push(other_id, written).await.expect("backup");
    log.restore(restored, other_id, late);
    ledger.lock().expect("ledger").clear();

    let report = here.sync_once().await.expect("sync");
    assert_eq!((report.cursor, report.applied), (2, 2), "{report:?}");
    let mut events = ledger.lock().expect("ledger").clone();
    events.retain(|event| *event != Event::Snapshot);
    assert_eq!(
        preceded_by(&events, Event::Ack),
        [Some(Event::Durable)],
        "the notes applied since were not made durable before cursor 2 was acknowledged \
         again: {events:?}"
    );
}

#[tokio::test]
async fn a_fast_sync_sender_makes_the_database_durable_before_its_snapshot() {
    use storex_sync::fast_sync::{
        memory_channel_pair, receive_snapshot, send_snapshot, FastSyncOptions,
    };
    let ledger = Ledger::default();
    let open = |backend: Arc<dyn StorageBackend>| {
        SyncDevice::open(
            registry(),
            backend,
            Clock::new(DeviceId::random()),
            SyncOptions::default(),
        )
    };
    let old = open(Arc::new(LedgerBackend {
        inner: MemoryBackend::new(),
        ledger: ledger.clone(),
    }))
    .await
    .expect("old device");
    let new = open(Arc::new(MemoryBackend::new()))
        .await
        .expect("new device");
    old.storage()
        .create("note", object! { "id" => "n", "title" => "moving house" })
        .await
        .expect("write");
    ledger.lock().expect("ledger").clear();
    let (mut a, mut b) = memory_channel_pair(8);
    let options = FastSyncOptions::default();
    let (sent, received) = tokio::join!(
        send_snapshot(&old, &mut a, &options),
        receive_snapshot(&new, &mut b, &options)
    );
    sent.expect("sent");
    received.expect("received");
    let events = ledger.lock().expect("ledger").clone();
    assert_eq!(
        preceded_by(&events, Event::Snapshot),
        [Some(Event::Durable)],
        "{events:?}"
    );
}
