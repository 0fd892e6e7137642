//! SqlSharedLog passes the shared-log conformance suite and every end-to-end sync scenario,
//! on SQLite (in memory and in a file) and on PostgreSQL.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use storex_log_sql::SqlSharedLog;
use storex_sync::SharedSyncLog;
use storex_test::{shared_log_suite, sync_scenarios};

static FILES: AtomicU32 = AtomicU32::new(0);

fn sqlite_file(dir: &std::path::Path) -> String {
    let n = FILES.fetch_add(1, Ordering::Relaxed);
    format!(
        "sqlite://{}?mode=rwc",
        dir.join(format!("shared-{n}.db")).display()
    )
}

#[tokio::test]
async fn sqlite_in_memory_passes_the_shared_log_suite() {
    shared_log_suite(|| async {
        SqlSharedLog::connect("sqlite::memory:")
            .await
            .expect("connect")
    })
    .await;
}

#[tokio::test]
async fn sqlite_file_passes_the_shared_log_suite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    shared_log_suite(|| {
        let url = sqlite_file(dir.path());
        async move { SqlSharedLog::connect(&url).await.expect("connect") }
    })
    .await;
}

#[tokio::test]
async fn sqlite_file_passes_every_sync_scenario() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().to_owned();
    let make = move || -> BoxFuture<'static, Arc<dyn SharedSyncLog>> {
        let url = sqlite_file(&path);
        async move {
            Arc::new(SqlSharedLog::connect(&url).await.expect("connect")) as Arc<dyn SharedSyncLog>
        }
        .boxed()
    };
    for (name, scenario) in sync_scenarios::all() {
        eprintln!("scenario: {name}");
        scenario(&make).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    fn factory(server: String) -> impl Fn() -> BoxFuture<'static, Arc<dyn SharedSyncLog>> + Sync {
        move || {
            let server = server.clone();
            async move {
                let url = storex_test::fresh_postgres_database(&server).await;
                Arc::new(SqlSharedLog::connect(&url).await.expect("connect"))
                    as Arc<dyn SharedSyncLog>
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn a_postgres_page_of_big_entries_is_cut_by_bytes() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let url = storex_test::fresh_postgres_database(&server).await;
        pages_are_cut_by_bytes(SqlSharedLog::connect(&url).await.expect("connect")).await;
    }

    #[tokio::test]
    async fn postgres_passes_the_shared_log_suite() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        shared_log_suite(|| {
            let server = server.clone();
            async move {
                let url = storex_test::fresh_postgres_database(&server).await;
                SqlSharedLog::connect(&url).await.expect("connect")
            }
        })
        .await;
    }

    /// A server run under a role that may read and write the log's rows, but not create or
    /// alter tables (the usual least-privilege setup), opens a log that is set up already.
    #[tokio::test]
    async fn a_role_without_ddl_rights_opens_a_log_set_up_already() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let url = storex_test::fresh_postgres_database(&server).await;
        let owner = SqlSharedLog::connect(&url).await.expect("set up as owner");
        let a = owner.create_device("ann").await.expect("device");
        let role_url = storex_test::role_without_ddl_rights(&url).await;
        let log = SqlSharedLog::connect(&role_url)
            .await
            .expect("open as a role without DDL rights");
        let b = log
            .create_device("ann")
            .await
            .expect("register as the role");
        let entry = storex_sync::SharedEntry {
            id: storex_core::uuid::Uuid::now_v7(),
            device: a,
            topic: "note".into(),
            payload: b"1".to_vec(),
        };
        owner.push(a, vec![entry]).await.expect("push");
        let pulled = log.pull(b, 0, 10, None).await.expect("pull as the role");
        assert_eq!(pulled.entries.len(), 1);
    }

    /// A device whose process stopped in the middle of a push (it holds the user's counter
    /// lock) holds the others' pushes back for a bounded time, not until its connection
    /// times out: they fail as transient, and are tried again.
    #[tokio::test]
    async fn a_push_waits_a_bounded_time_for_a_stalled_one() {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let url = storex_test::fresh_postgres_database(&server).await;
        let log = SqlSharedLog::connect(&url).await.expect("connect");
        let (a, b) = (
            log.create_device("ann").await.expect("device"),
            log.create_device("ann").await.expect("device"),
        );
        // The stalled push: it took the counter's lock, and its process stopped.
        let other = SqlSharedLog::connect(&url).await.expect("connect");
        let stalled = other.connection().begin().await.expect("begin");
        stalled
            .execute_unprepared(
                "SELECT * FROM storex_shared_users WHERE user_name = 'ann' FOR UPDATE",
            )
            .await
            .expect("lock");
        let push = log.push(b, vec![small_entry(b)]);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(40), push)
            .await
            .expect("the push must give up before the test's bound");
        let error = waited.expect_err("the counter is locked");
        assert!(error.is_transient(), "{error}");
        drop(stalled);
        log.push(a, vec![small_entry(a)])
            .await
            .expect("pushes go on once the lock is free");
    }

    #[tokio::test]
    async fn postgres_passes_every_sync_scenario() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let make = factory(server);
        for (name, scenario) in sync_scenarios::all() {
            eprintln!("scenario: {name}");
            scenario(&make).await;
        }
    }
}

/// A log in memory with two devices of one user.
async fn log_with_two_devices() -> (SqlSharedLog, storex_sync::DeviceId, storex_sync::DeviceId) {
    let log = SqlSharedLog::connect("sqlite::memory:")
        .await
        .expect("connect");
    let (a, b) = (
        log.create_device("ann").await.expect("device"),
        log.create_device("ann").await.expect("device"),
    );
    (log, a, b)
}

#[tokio::test]
async fn a_page_of_big_entries_is_cut_by_bytes() {
    let (log, _, _) = log_with_two_devices().await;
    pages_are_cut_by_bytes(log).await;
}

/// Pages of 3 MiB entries, cut by the log's 8 MiB and by a caller's bounds, and a first
/// entry past its bound answered by its size, unread.
async fn pages_are_cut_by_bytes(log: SqlSharedLog) {
    use storex_core::uuid::Uuid;
    use storex_log_sql::{PageBounds, PagePull};
    use storex_sync::SharedEntry;
    const MIB: usize = 1024 * 1024;
    let a = log.create_device("pages").await.expect("device");
    let b = log.create_device("pages").await.expect("device");
    let big: Vec<SharedEntry> = (0..5u8)
        .map(|i| SharedEntry {
            id: Uuid::now_v7(),
            device: a,
            topic: "photo".into(),
            payload: vec![i; 3 * MIB],
        })
        .collect();
    log.push(a, big).await.expect("push");
    let sizes = |page: &storex_sync::Pull| -> Vec<u8> {
        page.entries.iter().map(|e| e.entry.payload[0]).collect()
    };
    let page = log.pull(b, 0, 100, None).await.expect("pull");
    // At most 8 MiB per page: two entries of 3 MiB come, the third would pass it.
    assert_eq!(sizes(&page), [0, 1]);
    assert!(page.more);
    assert_eq!(page.next_cursor, page.entries[1].cursor);
    let rest = log
        .pull(b, page.next_cursor, 100, None)
        .await
        .expect("pull");
    assert_eq!(sizes(&rest), [2, 3]);
    assert!(rest.more);
    let end = log
        .pull(b, rest.next_cursor, 100, None)
        .await
        .expect("pull");
    assert_eq!(sizes(&end), [4]);
    assert!(!end.more);

    // A caller's smaller budget: what fits in it, and always the first entry, alone if it is
    // larger than the budget.
    let within = |bytes: usize| log.pull_within(b, 0, 100, bytes, None);
    let page = within(7 * MIB).await.expect("pull");
    assert_eq!(sizes(&page), [0, 1]);
    let page = within(6 * MIB).await.expect("pull");
    assert_eq!(
        sizes(&page),
        [0, 1],
        "a budget met exactly takes the entry that meets it"
    );
    let page = within(MIB).await.expect("pull");
    assert_eq!(sizes(&page), [0]);
    assert!(page.more);
    assert_eq!(page.next_cursor, page.entries[0].cursor);
    let page = within(0).await.expect("pull");
    assert_eq!(sizes(&page), [0], "a page always moves on");
    // No more than `pull` takes, whatever is asked.
    let page = within(usize::MAX).await.expect("pull");
    assert_eq!(sizes(&page), [0, 1]);
    // The entry count still bounds the page.
    let page = log.pull_within(b, 0, 1, 7 * MIB, None).await.expect("pull");
    assert_eq!(sizes(&page), [0]);
    assert!(page.more);

    // A first entry past its bound is not read: its size comes instead, and the page once
    // the bound lets it through.
    let bounds = |bytes: usize, first_entry_bytes: usize| PageBounds {
        entries: 100,
        bytes,
        first_entry_bytes,
    };
    let page = log
        .pull_page(b, 0, bounds(MIB, 3 * MIB - 1), None)
        .await
        .expect("pull");
    assert!(
        matches!(page, PagePull::FirstEntryTooLarge { payload_bytes } if payload_bytes == 3 * MIB),
        "{page:?}"
    );
    let page = log
        .pull_page(b, 0, bounds(MIB, 3 * MIB), None)
        .await
        .expect("pull");
    let PagePull::Page(page) = page else {
        panic!("a first entry within its bound is read: {page:?}");
    };
    assert_eq!(sizes(&page), [0]);
    assert!(page.more);
    // Only the first entry is held to it; the others to the page's bytes.
    let page = log
        .pull_page(b, 0, bounds(7 * MIB, MIB), None)
        .await
        .expect("pull");
    let PagePull::Page(page) = page else {
        panic!("a first entry within the page's bytes is read: {page:?}");
    };
    assert_eq!(sizes(&page), [0, 1]);
    // Past the first, after a cursor, and on the last page.
    let last = log
        .pull_page(b, rest.next_cursor, bounds(MIB, MIB), None)
        .await
        .expect("pull");
    assert!(
        matches!(last, PagePull::FirstEntryTooLarge { payload_bytes } if payload_bytes == 3 * MIB),
        "{last:?}"
    );
}

fn small_entry(device: storex_sync::DeviceId) -> storex_sync::SharedEntry {
    storex_sync::SharedEntry {
        id: storex_core::uuid::Uuid::now_v7(),
        device,
        topic: "note".into(),
        payload: b"x".to_vec(),
    }
}

#[tokio::test]
async fn a_log_created_when_entry_ids_were_unique_across_users_takes_one_id_from_two_users() {
    use sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().expect("dir");
    let url = sqlite_file(dir.path());
    let log = SqlSharedLog::connect(&url).await.expect("connect");
    // The index of the first versions, unique on the id alone.
    log.connection()
        .execute_unprepared(
            r#"CREATE UNIQUE INDEX "storex_shared_entries_id_key" ON "storex_shared_entries" ("id")"#,
        )
        .await
        .expect("the old index");
    drop(log);
    let log = SqlSharedLog::connect(&url).await.expect("reopen");
    let (ann, bob) = (
        log.create_device("ann").await.expect("device"),
        log.create_device("bob").await.expect("device"),
    );
    let mut entry = small_entry(ann);
    log.push(ann, vec![entry.clone()])
        .await
        .expect("ann's push");
    entry.device = bob;
    log.push(bob, vec![entry])
        .await
        .expect("bob's entry with the same id is his own");
}

#[tokio::test]
async fn damaged_counters_are_reported_not_wrapped() {
    use sea_orm::ConnectionTrait;
    let (log, a, b) = log_with_two_devices().await;
    log.push(a, vec![small_entry(a)]).await.expect("push");
    log.connection()
        .execute_unprepared(r#"UPDATE "storex_shared_users" SET "next_cursor" = -5"#)
        .await
        .expect("damage");
    let pushed = log.push(a, vec![small_entry(a), small_entry(a)]).await;
    assert!(pushed.is_err(), "{pushed:?}");
    let pulled = log.pull(b, 0, 10, None).await;
    assert!(pulled.is_err(), "{pulled:?}");
}

#[tokio::test]
async fn a_push_of_a_device_whose_user_row_is_gone_is_refused_not_lost() {
    use sea_orm::ConnectionTrait;
    let (log, a, b) = log_with_two_devices().await;
    log.connection()
        .execute_unprepared(r#"DELETE FROM "storex_shared_users""#)
        .await
        .expect("damage");
    // Neither one entry (which would be stored at cursor 0, where no pull looks, and
    // answered as nothing new) nor more is taken.
    for entries in [vec![small_entry(a)], vec![small_entry(a), small_entry(a)]] {
        let pushed = log.push(a, entries).await;
        let problem = format!("{:?}", pushed.expect_err("refused"));
        assert!(problem.contains("has no row"), "{problem}");
    }
    let pulled = log.pull(b, 0, 10, None).await.expect("pull");
    assert!(pulled.entries.is_empty(), "{pulled:?}");
}

fn cursors(pull: &storex_sync::Pull) -> (Vec<u64>, Vec<u64>) {
    (
        pull.entries.iter().map(|p| p.cursor).collect(),
        pull.unreadable.iter().map(|u| u.cursor).collect(),
    )
}

#[tokio::test]
async fn an_entry_row_that_does_not_read_is_passed_over_and_named() {
    use sea_orm::ConnectionTrait;
    let (log, a, b) = log_with_two_devices().await;
    let entries = vec![small_entry(a), small_entry(a), small_entry(a)];
    log.push(a, entries).await.expect("push");
    log.connection()
        .execute_unprepared(
            r#"UPDATE "storex_shared_entries" SET "device" = 'not a device' WHERE "cursor" = 2"#,
        )
        .await
        .expect("damage");
    let page = log.pull(b, 0, 10, None).await.expect("pull");
    assert_eq!(cursors(&page), (vec![1, 3], vec![2]));
    assert!(page.unreadable[0].problem.contains("device"), "{page:?}");
    assert_eq!((page.next_cursor, page.more), (3, false));
    // A page cut right after it goes on after it.
    let page = log.pull(b, 0, 2, None).await.expect("pull");
    assert_eq!(cursors(&page), (vec![1], vec![2]));
    assert_eq!((page.next_cursor, page.more), (2, true));
    let page = log.pull(b, 2, 2, None).await.expect("pull");
    assert_eq!(cursors(&page), (vec![3], vec![]));
}

/// Devices `a` (index 0) and `b` (1) on a SQL log, `a` having pushed three notes; then
/// `damage`, a statement run on the log's tables.
async fn three_pushed_then(damage: &str) -> storex_test::devices::Devices {
    use sea_orm::ConnectionTrait;
    let log = Arc::new(
        SqlSharedLog::connect("sqlite::memory:")
            .await
            .expect("connect"),
    );
    let mut devices = storex_test::devices::Devices::new(log.clone()).await;
    let a = devices.add().await;
    devices.add().await;
    for n in 0..3 {
        devices.note(a, &format!("note-{n}"), "v").await;
    }
    devices.sync(a).await;
    log.connection()
        .execute_unprepared(damage)
        .await
        .expect("damage");
    devices
}

#[tokio::test]
async fn a_sync_passes_over_an_entry_the_log_cannot_read_reports_it_once_and_applies_the_rest() {
    let devices = three_pushed_then(
        r#"UPDATE "storex_shared_entries" SET "id" = 'not an id' WHERE "cursor" = 2"#,
    )
    .await;
    let (a, b) = (0, 1);
    let report = devices.sync(b).await;
    assert_eq!((report.unreadable, report.integrated), (1, 2), "{report:?}");
    assert!(
        report.problems.iter().any(|p| p.contains("cursor 2")),
        "{report:?}"
    );
    assert_eq!(devices.count(b).await, 2);
    // Passed over for good: the next sync neither stops at it nor names it again.
    devices.note(a, "note-3", "v").await;
    devices.sync(a).await;
    let report = devices.sync(b).await;
    assert_eq!((report.unreadable, report.integrated), (0, 1), "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
}

#[tokio::test]
async fn a_page_mostly_unreadable_fails_the_sync_instead_of_being_passed_over() {
    // As if the log's ids were all written in a form this version does not read.
    let devices = three_pushed_then(
        r#"UPDATE "storex_shared_entries" SET "id" = 'x' || "cursor" WHERE "cursor" >= 2"#,
    )
    .await;
    let b = 1;
    let failed = devices
        .try_sync(b)
        .await
        .expect_err("two of three do not read");
    assert!(failed.is_transient(), "{failed}");
    assert!(format!("{failed:?}").contains("too many"), "{failed:?}");
    assert_eq!(devices.count(b).await, 0, "nothing of the page applied");
}

#[tokio::test]
async fn a_sqlite_file_log_syncs_every_commit_to_disk() {
    use sea_orm::{ConnectionTrait, Statement};
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = SqlSharedLog::connect(&sqlite_file(dir.path()))
        .await
        .expect("connect");
    // Each pooled connection: as many reads at once as the pool holds.
    let db = log.connection();
    let read = || async {
        let statement = Statement::from_string(db.get_database_backend(), "PRAGMA synchronous");
        let row = db.query_one_raw(statement).await.expect("pragma");
        row.expect("a row")
            .try_get_by_index::<i32>(0)
            .expect("a number")
    };
    let levels = futures::future::join_all((0..4).map(|_| read())).await;
    // 2 is FULL: with NORMAL (1), a power cut before a checkpoint undoes confirmed pushes.
    assert!(levels.iter().all(|level| *level == 2), "{levels:?}");
}
