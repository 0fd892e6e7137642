//! Background sync: writes travel without a manual sync, an outage of the shared log is
//! retried with backoff and caught up, pause holds syncs back, stop ends the task.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::ConnectionTrait;
use storex_app::{
    BackgroundOptions, BackgroundSync, ChangeNotifier, SyncEvent, SyncState, SyncedStorage,
};
use storex_core::{object, CollectionDef, FieldType, Filter, MemoryBackend, Operation, Registry};
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, MemorySharedLog, SharedSyncLog, SyncDevice,
    SyncOptions,
};
use storex_test::flaky::FlakySharedLog;
use tokio::sync::broadcast::error::RecvError;

use crate::common::note;

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

struct App {
    sync: Arc<ContinuousSync>,
    background: BackgroundSync,
}

async fn app(log: Arc<dyn SharedSyncLog>, options: BackgroundOptions) -> App {
    app_with(log, options, SyncOptions::default()).await
}

/// [`app`] on a device opened with `device_options`.
async fn app_with(
    log: Arc<dyn SharedSyncLog>,
    options: BackgroundOptions,
    device_options: SyncOptions,
) -> App {
    let id = log.create_device("ann").await.expect("register");
    let notifier = ChangeNotifier::new();
    let device = SyncDevice::open(
        registry(),
        Arc::new(MemoryBackend::new()),
        Clock::new(id),
        device_options.with_middleware(Arc::new(notifier.clone())),
    )
    .await
    .expect("device");
    let sync = Arc::new(ContinuousSync::new(
        device,
        log,
        ContinuousOptions::default(),
    ));
    let background = BackgroundSync::start(sync.clone(), notifier.signal(), options);
    App { sync, background }
}

fn fast() -> BackgroundOptions {
    BackgroundOptions::default()
        .with_interval(Duration::from_millis(100))
        .with_debounce(Duration::from_millis(10))
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

impl App {
    async fn write(&self, title: &str) {
        self.sync
            .device()
            .storage()
            .create("note", object! { "title" => title })
            .await
            .expect("write");
    }

    /// Waits until the task's first sync succeeded.
    async fn first_sync(&self) {
        eventually("the first sync", || async {
            self.background.status().last_success.is_some()
        })
        .await;
    }

    /// Waits until the task is running a sync.
    async fn sync_under_way(&self) {
        eventually("a sync under way", || async {
            self.background.status().state == SyncState::Syncing
        })
        .await;
    }

    async fn notes(&self) -> u64 {
        self.sync
            .device()
            .storage()
            .count("note", Filter::all())
            .await
            .expect("count")
    }
}

/// Polls `done` every 10 ms for up to 10 s.
async fn eventually<F, Fut>(what: &str, done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(10), done).await
}

/// [`eventually`] within `time` (which costs nothing in a test whose time is paused).
async fn eventually_within<F, Fut>(what: &str, time: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..time.as_millis().div_ceil(10) {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn writes_on_one_device_appear_on_the_other_without_a_manual_sync() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let (a, b) = (app(log.clone(), fast()).await, app(log, fast()).await);
    a.write("from a").await;
    b.write("from b").await;
    eventually("both notes on both devices", || async {
        a.notes().await == 2 && b.notes().await == 2
    })
    .await;
    a.background.stop().await;
    b.background.stop().await;
}

#[tokio::test]
async fn a_local_write_triggers_a_push_long_before_the_interval() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let slow = fast().with_interval(Duration::from_secs(3600));
    let a = app(log.clone(), slow.clone()).await;
    let b = app(log, slow).await;
    eventually("the first syncs", || async {
        a.background.status().last_success.is_some() && b.background.status().last_success.is_some()
    })
    .await;
    a.write("quick").await;
    eventually("the push", || async {
        a.sync.device().log().unshared_count().await.expect("count") == 0
    })
    .await;
    b.background.sync_now(); // what a live-update signal does
    eventually("the note on b", || async { b.notes().await == 1 }).await;
}

/// On PostgreSQL the sync a write in an app transaction wakes runs beside the open
/// transaction and finds nothing to push; the commit wakes another, long before the interval.
/// (On SQLite the woken sync waits for the transaction's write lock, so it sees the write.)
#[tokio::test]
async fn a_write_in_a_transaction_is_pushed_soon_after_its_commit() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let db = sea_orm::Database::connect(url).await.expect("connect");
    let mut create =
        sea_orm::Schema::new(db.get_database_backend()).create_table_from_entity(note::Entity);
    db.execute(create.if_not_exists())
        .await
        .expect("create table");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let phone = SyncedStorage::builder(db)
        .entity(note::Entity)
        .shared_log(log, "ann")
        .open()
        .await
        .expect("open synced storage");
    let background = phone.start_background(fast().with_interval(Duration::from_secs(3600)));
    eventually("the first sync", || async {
        background.status().last_success.is_some()
    })
    .await;
    let before = background.status().last_success;
    let tx = phone.storage().begin().await.expect("begin");
    tx.execute(Operation::create(
        "note",
        object! { "title" => "in a transaction" },
    ))
    .await
    .expect("write");
    eventually("the sync the write woke", || async {
        background.status().last_success != before
    })
    .await;
    let woken = background.status().last_report.expect("a report");
    assert_eq!(woken.pushed, 0, "the woken sync cannot see the write");
    tx.commit().await.expect("commit");
    eventually("the push after the commit", || async {
        phone.device().log().unshared_count().await.expect("count") == 0
    })
    .await;
    background.stop().await;
}

#[tokio::test]
async fn a_sync_asked_for_during_a_long_debounce_runs_at_once() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let options = fast()
        .with_interval(Duration::from_secs(3600))
        .with_debounce(Duration::from_secs(3600));
    let a = app(log, options).await;
    a.first_sync().await;
    a.write("waits for the debounce").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        a.sync.device().log().unshared_count().await.expect("count"),
        1,
        "the debounce holds the write back"
    );
    a.background.sync_now();
    eventually("the sync asked for", || async {
        a.sync.device().log().unshared_count().await.expect("count") == 0
    })
    .await;
    a.background.stop().await;
}

#[tokio::test]
async fn a_minimum_backoff_set_above_the_maximum_is_kept_for_every_retry() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    // The fields set directly, past `with_backoff`'s ordering of them.
    let mut options = fast();
    options.min_backoff = Duration::from_millis(60);
    options.max_backoff = Duration::from_millis(20);
    let a = app(flaky.clone(), options).await;
    let mut events = a.background.subscribe();
    flaky.set_down(true);
    a.write("written during the outage").await;
    let mut delays = Vec::new();
    while delays.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("a failure within 10 s")
            .expect("events");
        if let SyncEvent::Failed { retry_in, .. } = event {
            delays.push(retry_in);
        }
    }
    assert!(
        delays.iter().all(|d| *d >= Duration::from_millis(60)),
        "a retry came sooner than the minimum backoff: {delays:?}"
    );
    a.background.stop().await;
}

#[tokio::test]
async fn an_outage_is_retried_with_backoff_and_caught_up() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    let log: Arc<dyn SharedSyncLog> = flaky.clone();
    let a = app(log.clone(), fast()).await;
    let b = app(log, fast()).await;
    let mut events = a.background.subscribe();
    flaky.set_down(true);
    a.write("written during the outage").await;
    eventually("several failures", || async {
        a.background.status().consecutive_failures >= 3
    })
    .await;
    let status = a.background.status();
    assert_eq!(status.state, SyncState::Backoff);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("injected network failure"),
        "{status:?}"
    );
    assert_eq!(status.pending_entries, 1, "the write waits to be pushed");
    let mut saw_failure = false;
    while let Ok(event) = events.try_recv() {
        if let SyncEvent::Failed { retry_in, .. } = event {
            assert!(
                retry_in <= Duration::from_millis(50) * 2,
                "retry delay {retry_in:?} beyond the backoff range"
            );
            saw_failure = true;
        }
    }
    assert!(saw_failure, "failures are published as events");
    flaky.set_down(false);
    eventually("the note reaching b", || async { b.notes().await == 1 }).await;
    eventually("a recovered", || async {
        let s = a.background.status();
        s.consecutive_failures == 0 && s.last_error.is_none() && s.pending_entries == 0
    })
    .await;
}

#[tokio::test]
async fn pause_holds_syncs_back_until_resume() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let a = app(log.clone(), fast()).await;
    a.first_sync().await;
    a.background.pause();
    a.write("while paused").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        a.sync.device().log().unshared_count().await.expect("count"),
        1,
        "nothing pushed while paused"
    );
    assert_eq!(a.background.status().state, SyncState::Paused);
    a.background.resume();
    eventually("the push after resume", || async {
        a.sync.device().log().unshared_count().await.expect("count") == 0
    })
    .await;
}

#[tokio::test]
async fn stop_ends_the_task_cleanly() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let a = app(log, fast()).await;
    let mut events = a.background.subscribe();
    a.background.stop().await;
    assert_eq!(a.background.status().state, SyncState::Stopped);
    let mut stopped = false;
    while let Ok(event) = events.try_recv() {
        stopped |= event == SyncEvent::Stopped;
    }
    assert!(stopped, "the stop is published");
    a.write("after stop").await;
    a.background.sync_now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        a.sync.device().log().unshared_count().await.expect("count"),
        1,
        "no sync after stop"
    );
    a.background.stop().await; // stopping twice is harmless
}

#[tokio::test]
async fn dropping_the_handle_stops_the_sync_even_when_paused() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let a = app(log, fast()).await;
    a.first_sync().await;
    a.background.pause();
    let App { sync, background } = a;
    drop(background);
    sync.device()
        .storage()
        .create("note", object! { "title" => "after the drop" })
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        sync.device().log().unshared_count().await.expect("count"),
        1,
        "no sync after the handle was dropped"
    );
}

#[tokio::test]
async fn local_writes_do_not_cut_a_backoff_short() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    let log: Arc<dyn SharedSyncLog> = flaky.clone();
    flaky.set_down(true);
    let options = BackgroundOptions::default()
        .with_interval(Duration::from_secs(60))
        .with_debounce(Duration::from_millis(5))
        .with_backoff(Duration::from_millis(300), Duration::from_millis(300));
    let a = app(log, options).await;
    let mut events = a.background.subscribe();
    for n in 0..30 {
        a.write(&format!("autosave {n}")).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let mut attempts = 0;
    while let Ok(event) = events.try_recv() {
        attempts += usize::from(event == SyncEvent::Started);
    }
    // 1.2 s of writes with a backoff of 300 ms (up to 600 ms with jitter): a handful of
    // attempts, not one per write.
    assert!(
        (1..=6).contains(&attempts),
        "{attempts} sync attempts in 1.2 s of writes"
    );
}

#[tokio::test]
async fn a_zero_interval_does_not_make_the_task_spin() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let options = BackgroundOptions::default()
        .with_interval(Duration::ZERO)
        .with_backoff(Duration::ZERO, Duration::ZERO);
    let a = app(log, options).await;
    let mut events = a.background.subscribe();
    let counting = tokio::spawn(async move {
        let mut syncs = 0usize;
        loop {
            match events.recv().await {
                Ok(SyncEvent::Started) => syncs += 1,
                Ok(SyncEvent::Stopped) => return syncs,
                Ok(_) => {}
                // Events lost because they came too fast: a spinning task.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    syncs += usize::try_from(missed).unwrap_or(usize::MAX);
                }
                Err(_) => return syncs,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.background.stop().await;
    let syncs = counting.await.expect("counting");
    // At most one sync per MIN_WAIT (10 ms), plus the first.
    assert!(syncs <= 32, "{syncs} syncs in 300 ms");
}

#[tokio::test]
async fn a_sync_that_never_ends_is_abandoned_and_stop_does_not_wait_for_it() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    let log: Arc<dyn SharedSyncLog> = flaky.clone();
    // Hanging before the first sync: every pull waits for ever.
    flaky.set_hanging(true);
    let a = app(log, fast().with_sync_timeout(Duration::from_millis(200))).await;
    eventually("a failure from the timeout", || async {
        a.background.status().consecutive_failures >= 1
    })
    .await;
    let status = a.background.status();
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("took longer than"),
        "{status:?}"
    );
    // Stopping while the next sync hangs: bounded by the timeout.
    a.background.sync_now();
    tokio::time::timeout(Duration::from_secs(5), a.background.stop())
        .await
        .expect("stop does not wait for ever");
    assert_eq!(a.background.status().state, SyncState::Stopped);
    // The log answers again: a new task syncs as if nothing happened.
    flaky.set_hanging(false);
    a.write("after the hang").await;
    a.sync.sync_once().await.expect("a sync after the hang");
}

/// The app runs a sync of its own (a long first pull, say) while the background sync comes
/// due: the background one waits for it, and that wait is not counted as its own time (it
/// was, so it ended as "took longer than" and backed off).
#[tokio::test]
async fn waiting_for_the_apps_own_sync_does_not_count_towards_the_sync_timeout() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    let log: Arc<dyn SharedSyncLog> = flaky.clone();
    let a = app(log, fast().with_sync_timeout(Duration::from_millis(600))).await;
    a.first_sync().await;
    // Each pull now takes 100 ms (a sync pulls twice or more), and the background sync waits
    // 450 ms for the app's: together more than the timeout, each alone less.
    flaky.set_pull_delay(Duration::from_millis(100));
    let apps_own = a.sync.turn().await;
    // No sync of the device ends while the app holds its turn.
    let mut events = a.background.subscribe();
    a.write("written while the app syncs").await;
    a.background.sync_now();
    a.sync_under_way().await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    drop(apps_own);
    // The first sync to end after the app's, succeeded or failed.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await.expect("events") {
                SyncEvent::Finished(report) => return Ok(report),
                SyncEvent::Failed { error, .. } => return Err(error),
                _ => {}
            }
        }
    })
    .await
    .expect("a sync ended");
    flaky.set_pull_delay(Duration::ZERO);
    let report = ended.expect("the background sync after the app's succeeded");
    assert_eq!(report.pushed, 1, "{report:?}");
}

#[tokio::test]
async fn stop_abandons_a_sync_that_outlasts_the_grace_and_nothing_is_lost() {
    let shared: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let flaky = Arc::new(FlakySharedLog::new(shared.clone()));
    let log: Arc<dyn SharedSyncLog> = flaky.clone();
    // The other device reaches the log on a network of its own.
    let b = app(shared, fast()).await;
    // The default sync timeout (10 minutes): only the grace bounds the stop.
    let a = app(log, fast().with_stop_grace(Duration::from_millis(100))).await;
    a.first_sync().await;
    a.write("pushed by the abandoned sync").await;
    flaky.set_hanging(true);
    a.background.sync_now();
    a.sync_under_way().await;
    tokio::time::timeout(Duration::from_secs(5), a.background.stop())
        .await
        .expect("stop waits no longer than its grace");
    let status = a.background.status();
    assert_eq!(status.state, SyncState::Stopped);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("abandoned after"),
        "{status:?}"
    );
    // The push went out before the pull hung; the next start syncs as if nothing happened.
    flaky.set_hanging(false);
    a.sync.sync_once().await.expect("a sync after the stop");
    eventually("the write on the other device", || async {
        b.notes().await == 1
    })
    .await;
}

#[tokio::test]
async fn a_sync_that_ends_within_the_stop_grace_is_kept() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    let log: Arc<dyn SharedSyncLog> = flaky.clone();
    let a = app(log, fast().with_interval(Duration::from_secs(60))).await;
    a.first_sync().await;
    let synced_before = a.background.status().last_success;
    // A slow network: the sync under way when the app stops takes 300 ms.
    flaky.set_pull_delay(Duration::from_millis(300));
    a.write("saved just before quitting").await;
    a.background.sync_now();
    a.sync_under_way().await;
    a.background.stop().await;
    let status = a.background.status();
    assert_eq!(status.state, SyncState::Stopped);
    assert!(
        status.last_success > synced_before && status.last_error.is_none(),
        "the sync under way finished: {status:?}"
    );
    assert_eq!(
        a.sync.device().log().unshared_count().await.expect("count"),
        0,
        "the write was pushed before the stop returned"
    );
}

#[tokio::test]
async fn a_pause_shows_at_once_without_waiting_for_the_next_sync() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    // Nothing would wake the task for an hour after its first sync.
    let a = app(log, fast().with_interval(Duration::from_secs(3_600))).await;
    a.first_sync().await;
    let mut events = a.background.subscribe();
    a.background.pause();
    eventually("the paused state", || async {
        a.background.status().state == SyncState::Paused
    })
    .await;
    assert_eq!(events.recv().await.expect("an event"), SyncEvent::Paused);
    a.background.resume();
    assert_eq!(events.recv().await.expect("an event"), SyncEvent::Resumed);
    eventually("idle again", || async {
        a.background.status().state == SyncState::Idle
    })
    .await;
    // Writes still sync after the pause.
    a.write("after the pause").await;
    eventually("the push", || async {
        a.sync.device().log().unshared_count().await.expect("count") == 0
    })
    .await;
}

#[tokio::test]
async fn resuming_often_does_not_hold_back_the_timer() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let a = app(log, fast().with_interval(Duration::from_millis(300))).await;
    a.first_sync().await;
    let mut events = a.background.subscribe();
    // An app that resumes on every network event, more often than the interval.
    let mut started = false;
    for _ in 0..30 {
        a.background.resume();
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(event) = events.try_recv() {
            started |= event == SyncEvent::Started;
        }
    }
    assert!(
        started,
        "the timer's sync ran although resume() kept coming"
    );
}

#[tokio::test]
async fn a_pause_during_a_backoff_shows_at_once() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    let log: Arc<dyn SharedSyncLog> = flaky.clone();
    flaky.set_down(true);
    let slow_retry = fast().with_backoff(Duration::from_secs(30), Duration::from_secs(30));
    let a = app(log, slow_retry).await;
    eventually("a failure", || async {
        a.background.status().state == SyncState::Backoff
    })
    .await;
    // A local write waits for the backoff's end; a pause meanwhile shows at once.
    a.write("during the backoff").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.background.pause();
    let paused = async {
        while a.background.status().state != SyncState::Paused {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), paused)
        .await
        .expect("the pause shows long before the backoff ends");
    a.background.resume();
    eventually("back in the backoff", || async {
        a.background.status().state == SyncState::Backoff
    })
    .await;
}

/// Counts the syncs `background` starts until it stops (events lost because they came too
/// fast count as syncs: a spinning task).
fn count_syncs(background: &BackgroundSync) -> tokio::task::JoinHandle<usize> {
    let mut events = background.subscribe();
    tokio::spawn(async move {
        let mut syncs = 0usize;
        loop {
            match events.recv().await {
                Ok(SyncEvent::Started) => syncs += 1,
                Ok(SyncEvent::Stopped) | Err(RecvError::Closed) => return syncs,
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    syncs += usize::try_from(missed).unwrap_or(usize::MAX);
                }
            }
        }
    })
}

#[tokio::test]
async fn a_live_signal_that_brings_nothing_does_not_make_the_task_sync_in_a_loop() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    // The log keeps saying other devices pushed, but there is nothing to pull (as for a
    // device whose copy has not finished: it pulls nothing).
    flaky.set_live_signal(Some(true));
    let hour = Duration::from_secs(3600);
    let a = app(
        flaky.clone(),
        BackgroundOptions::default().with_interval(hour),
    )
    .await;
    let counting = count_syncs(&a.background);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    a.background.stop().await;
    let syncs = counting.await.expect("counting");
    // The first sync, then one per signal, 1 s and then 2 s apart.
    assert!(syncs <= 4, "{syncs} syncs in 1.5 s");
    assert!(flaky.live_waits() <= 4, "{} long polls", flaky.live_waits());
}

#[tokio::test]
async fn a_sync_that_succeeds_during_a_backoff_brings_the_live_signal_back() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    // The log says other devices pushed, but its pushes and pulls fail: the triggered sync
    // fails, and the task backs off for at least 30 s.
    flaky.set_live_signal(Some(true));
    flaky.set_down(true);
    let options = BackgroundOptions::default()
        .with_interval(Duration::from_secs(3600))
        .with_debounce(Duration::from_millis(10))
        .with_backoff(Duration::from_secs(30), Duration::from_secs(60));
    let a = app(flaky.clone(), options).await;
    eventually("a failed sync", || async {
        a.background.status().last_error.is_some() && flaky.live_waits() >= 1
    })
    .await;
    // Let the watcher take the failure and back off too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = flaky.live_waits();
    // The log is back, and the user asks for a sync, which succeeds.
    flaky.set_down(false);
    flaky.set_live_signal(Some(false));
    a.background.sync_now();
    eventually("a sync that succeeds", || async {
        a.background.status().last_success.is_some()
    })
    .await;
    eventually(
        "the live signal watched again, not after the backoff",
        || async { flaky.live_waits() > before },
    )
    .await;
    a.background.stop().await;
}

#[tokio::test]
async fn a_paused_background_sync_does_not_ask_the_live_signal() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    // A log with a live signal and nothing new, said after 10 ms: the watcher asks again
    // after a second, then two.
    flaky.set_live_signal(Some(false));
    let a = app(
        flaky.clone(),
        fast().with_interval(Duration::from_secs(3600)),
    )
    .await;
    eventually("the live signal watched", || async {
        flaky.live_waits() >= 1
    })
    .await;
    a.background.pause();
    eventually("the pause", || async {
        a.background.status().state == SyncState::Paused
    })
    .await;
    // A long poll under way when the pause came may still end and not be asked again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = flaky.live_waits();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(flaky.live_waits(), before, "long polls while paused");
    a.background.resume();
    eventually("the live signal watched again", || async {
        flaky.live_waits() > before
    })
    .await;
    a.background.stop().await;
}

/// A device on a log with a live signal and nothing new, whose first answer was a panic (a
/// bug), once its watcher has started again.
async fn app_whose_watcher_panicked_once() -> (Arc<FlakySharedLog>, App) {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    flaky.set_live_signal(Some(false));
    flaky.panic_on_next_live_wait();
    let a = app(
        flaky.clone(),
        fast().with_interval(Duration::from_secs(3600)),
    )
    .await;
    eventually("the live signal watched once", || async {
        flaky.live_waits() >= 1
    })
    .await;
    eventually("the live signal watched again after the panic", || async {
        flaky.live_waits() >= 2
    })
    .await;
    (flaky, a)
}

#[tokio::test]
async fn live_updates_start_again_after_the_watcher_panicked() {
    // Started again after a second, not ended for good.
    let (_, a) = app_whose_watcher_panicked_once().await;
    a.background.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_watcher_that_ran_well_for_a_while_restarts_after_the_first_wait_again() {
    let (flaky, a) = app_whose_watcher_panicked_once().await;
    // Ten minutes of a watcher that works, then another panic: not a panic in a row, so the
    // wait is the first one again, not twice the last.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let waits = flaky.live_waits();
    flaky.panic_on_next_live_wait();
    // The panicking call counts, and so does the first one after the restart, which comes
    // once the wait the status names is over. (The watcher asks every 25 s by now: nothing
    // was new for a while.)
    eventually_within(
        "the watcher restarted after the second panic",
        Duration::from_secs(120),
        || async { flaky.live_waits() > waits + 1 },
    )
    .await;
    let status = a.background.status();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("start again in 1 s")),
        "{status:?}"
    );
    a.background.stop().await;
}

#[tokio::test]
async fn waits_too_long_for_the_clock_are_kept_within_a_year() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    // `Duration::MAX` for "no timer" (and no retry): the next sync's time would overflow.
    let options = BackgroundOptions::default()
        .with_interval(Duration::MAX)
        .with_debounce(Duration::MAX)
        .with_backoff(Duration::MAX, Duration::MAX)
        .with_sync_timeout(Duration::MAX);
    let a = app(log, options).await;
    a.first_sync().await;
    // Still alive: a sync asked for runs.
    a.write("asked for").await;
    a.background.sync_now();
    eventually("the sync asked for", || async {
        a.background.status().pending_entries == 0 && a.background.status().state == SyncState::Idle
    })
    .await;
    let status = a.background.status();
    assert_eq!(status.last_error, None, "{status:?}");
    a.background.stop().await;
    assert_eq!(a.background.status().state, SyncState::Stopped);
}

#[tokio::test]
async fn a_sync_that_panics_fails_and_is_tried_again() {
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    let log: Arc<dyn SharedSyncLog> = flaky.clone();
    let a = app(log.clone(), fast()).await;
    let b = app(log, fast()).await;
    a.first_sync().await;
    flaky.panic_on_next_pull();
    a.write("written before the panic").await;
    eventually("the panicking sync reported", || async {
        let status = a.background.status();
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("a bug in the shared log's pull"))
    })
    .await;
    // Not stopped for good: the next sync carries the note over.
    eventually("the note reaching b", || async { b.notes().await == 1 }).await;
    eventually("a recovered", || async {
        let s = a.background.status();
        s.state != SyncState::Stopped && s.last_error.is_none() && s.pending_entries == 0
    })
    .await;
    a.background.stop().await;
}

/// Once armed, panics on every count of the client log's rows (what the background sync
/// reads after each sync: the entries still to push).
#[derive(Debug, Default)]
struct PanicOnLogCount {
    armed: std::sync::atomic::AtomicBool,
}

impl storex_core::Middleware for PanicOnLogCount {
    fn process<'a>(
        &'a self,
        op: Operation,
        next: storex_core::Next<'a>,
    ) -> storex_core::BoxFuture<'a, storex_core::Result<storex_core::Outcome>> {
        let counts_log = matches!(&op, Operation::Count { collection, .. }
            if collection == storex_sync::LOG_COLLECTION);
        if counts_log && self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("a bug in counting the log");
        }
        next.run(op)
    }
}

#[tokio::test]
async fn a_count_of_what_waits_that_panics_does_not_stop_the_background_sync() {
    use std::sync::atomic::Ordering;
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let counting = Arc::new(PanicOnLogCount::default());
    let device_options = SyncOptions::default().with_middleware(counting.clone());
    let a = app_with(log.clone(), fast(), device_options).await;
    let b = app(log, fast()).await;
    a.first_sync().await;
    counting.armed.store(true, Ordering::SeqCst);
    a.write("written while counting panics").await;
    eventually("the first note reaching b", || async {
        b.notes().await == 1
    })
    .await;
    // The sync goes on after the count panicked.
    a.write("written after").await;
    eventually("the second note reaching b", || async {
        b.notes().await == 2
    })
    .await;
    assert_ne!(a.background.status().state, SyncState::Stopped);
    // And says so in its report.
    eventually("the panic in the report", || async {
        let report = a.background.status().last_report;
        report.is_some_and(|r| r.problems.iter().any(|p| p.contains("panicked")))
    })
    .await;
    counting.armed.store(false, Ordering::SeqCst);
    a.background.stop().await;
    b.background.stop().await;
}
