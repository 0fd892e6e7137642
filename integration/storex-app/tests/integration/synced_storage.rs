//! An app with a SeaORM data layer turns sync on: its existing rows reach the other device,
//! the device id survives a restart, nothing is logged twice, a missing shared log is
//! reported, a registration whose answer was lost leaves no second device behind, and a first
//! start offline works locally until a sync registers the device.

#![allow(unreachable_pub)] // SeaORM entities must be `pub` inside their modules.

use std::sync::Arc;

use sea_orm::{
    ActiveValue::Set, ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryOrder,
    Schema,
};
use storex_app::{Error, SyncedStorage};
use storex_core::object;
use storex_sync::{MemorySharedLog, SharedSyncLog};
use storex_test::flaky::{Fault, FlakySharedLog};

mod note {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "note")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub title: String,
        pub pinned: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The app's own data layer: a SQLite file and its table.
async fn app_db(path: &std::path::Path) -> DatabaseConnection {
    let db = Database::connect(format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("connect");
    let mut create = Schema::new(db.get_database_backend()).create_table_from_entity(note::Entity);
    db.execute(create.if_not_exists())
        .await
        .expect("create table");
    db
}

async fn open(db: DatabaseConnection, log: &Arc<dyn SharedSyncLog>) -> SyncedStorage {
    SyncedStorage::builder(db)
        .entity(note::Entity)
        .shared_log(log.clone(), "ann")
        .open()
        .await
        .expect("open synced storage")
}

async fn titles(db: &DatabaseConnection) -> Vec<String> {
    note::Entity::find()
        .order_by_asc(note::Column::Title)
        .all(db)
        .await
        .expect("query")
        .into_iter()
        .map(|n| n.title)
        .collect()
}

#[tokio::test]
async fn existing_rows_reach_the_other_device_once() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let phone_db = app_db(&dir.path().join("phone.db")).await;
    for title in ["a", "b", "c"] {
        let row = note::ActiveModel {
            id: Set(storex_core::uuid::Uuid::now_v7()),
            title: Set(title.into()),
            pinned: Set(false),
        };
        note::Entity::insert(row)
            .exec_without_returning(&phone_db)
            .await
            .expect("the app writes");
    }

    let phone = open(phone_db.clone(), &log).await;
    assert_eq!(phone.existing_rows_logged(), 3);
    let id = phone.device_id();
    drop(phone);
    let phone = open(phone_db.clone(), &log).await; // the app restarts
    assert_eq!(phone.device_id(), id, "the device id is kept");
    assert_eq!(
        phone.existing_rows_logged(),
        0,
        "existing rows are logged once"
    );
    phone
        .storage()
        .create("note", object! { "title" => "d", "pinned" => true })
        .await
        .expect("write");
    assert_eq!(phone.sync_once().await.expect("sync").pushed, 4);

    let laptop_db = app_db(&dir.path().join("laptop.db")).await;
    let laptop = open(laptop_db.clone(), &log).await;
    assert_ne!(laptop.device_id(), id);
    laptop.sync_once().await.expect("sync");
    assert_eq!(
        titles(&laptop_db).await,
        vec!["a", "b", "c", "d"],
        "read with plain SeaORM"
    );
    assert_eq!(
        log.devices(id).await.expect("devices").len(),
        2,
        "one registration per device"
    );
}

#[tokio::test]
async fn a_missing_shared_log_is_reported() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = app_db(&dir.path().join("app.db")).await;
    let err = SyncedStorage::builder(db)
        .entity(note::Entity)
        .open()
        .await
        .expect_err("no log");
    assert!(matches!(err, Error::NoSharedLog));
    assert_eq!(
        err.to_string(),
        "no shared log was configured: call `shared_log(log, user)` on the builder"
    );
}

#[tokio::test]
async fn the_builder_does_not_show_the_user_token_in_debug_output() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = app_db(&dir.path().join("app.db")).await;
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let builder = SyncedStorage::builder(db)
        .entity(note::Entity)
        .shared_log(log, "stx_user_secret_token");
    let shown = format!("{builder:?}");
    assert!(!shown.contains("stx_user_secret_token"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
}

/// An app on a fresh file whose first registration's answer is lost: the log registered the
/// device, the app never heard back.
struct LostAnswer {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    memory: Arc<dyn SharedSyncLog>,
    log: Arc<dyn SharedSyncLog>,
    /// The id the first open chose.
    first_id: Option<storex_sync::DeviceId>,
}

impl LostAnswer {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("app.db");
        let memory: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
        let flaky = Arc::new(FlakySharedLog::new(memory.clone()));
        let log: Arc<dyn SharedSyncLog> = flaky.clone();
        flaky.arm(Fault::RegisterReplyLost);
        let mut lost = LostAnswer {
            _dir: dir,
            path,
            memory,
            log,
            first_id: None,
        };
        // The app opens all the same (as offline), its device to be registered later.
        let first = lost.open_as("ann").await.expect("opens without the answer");
        assert!(flaky.fired());
        assert!(!first.is_registered());
        lost.first_id = Some(first.device_id());
        lost
    }

    async fn open_as(&self, user: &str) -> Result<SyncedStorage, Error> {
        SyncedStorage::builder(app_db(&self.path).await)
            .entity(note::Entity)
            .shared_log(self.log.clone(), user)
            .open()
            .await
    }
}

#[tokio::test]
async fn a_registration_whose_answer_was_lost_is_completed_on_the_next_start() {
    let lost = LostAnswer::new().await;
    let app = lost.open_as("ann").await.expect("open");
    assert!(!app.is_registered(), "an open does not wait for the log");
    app.sync_once().await.expect("the sync registers it");
    assert!(app.is_registered());
    assert_eq!(Some(app.device_id()), lost.first_id);
    let devices = lost
        .memory
        .devices(app.device_id())
        .await
        .expect("the device is registered");
    assert_eq!(
        devices.iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![app.device_id()],
        "one device: the one registered when the answer was lost"
    );
}

#[tokio::test]
async fn a_device_in_use_that_the_log_refuses_keeps_its_id_and_its_sync_says_why() {
    let lost = LostAnswer::new().await;
    // The id is ann's (the log registered it); the app now signs in as bob. It opened once
    // already, so its writes may be logged under that id: it keeps it, and works locally.
    let app = lost.open_as("bob").await.expect("opens");
    assert_eq!(Some(app.device_id()), lost.first_id);
    assert!(!app.is_registered());
    let err = app
        .sync_once()
        .await
        .expect_err("the log refuses bob the id");
    let chain = storex_core::error_chain(&err);
    assert!(chain.contains("cannot be registered"), "{chain}");
}

#[tokio::test]
async fn a_kept_id_never_used_that_the_log_refuses_is_replaced_by_a_new_one() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("app.db");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    // An earlier start chose an id and stopped before storing that it was registered (to
    // ann); the app now signs in as bob, whom the log refuses that id to.
    let kept = storex_sync::DeviceId::random();
    log.register_device("ann", kept)
        .await
        .expect("ann's device");
    let db = app_db(&path).await;
    db.execute_unprepared(&format!(
        "CREATE TABLE storex_app_settings (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL); \
         INSERT INTO storex_app_settings VALUES ('device_id_to_register', '{}')",
        kept.0
    ))
    .await
    .expect("the kept id");
    let app = SyncedStorage::builder(db)
        .entity(note::Entity)
        .shared_log(log.clone(), "bob")
        .open()
        .await
        .expect("a new id for bob");
    assert_ne!(app.device_id(), kept);
    assert!(app.is_registered());
    let devices = log.devices(app.device_id()).await.expect("registered");
    assert_eq!(devices.len(), 1, "bob's one device");
}

/// A phone whose app starts for the first time offline and writes a note.
struct OfflinePhone {
    dir: tempfile::TempDir,
    memory: Arc<dyn SharedSyncLog>,
    flaky: Arc<FlakySharedLog>,
    log: Arc<dyn SharedSyncLog>,
    db: DatabaseConnection,
    app: SyncedStorage,
}

impl OfflinePhone {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let memory: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
        let flaky = Arc::new(FlakySharedLog::new(memory.clone()));
        let log: Arc<dyn SharedSyncLog> = flaky.clone();
        flaky.set_offline(true);
        let db = app_db(&dir.path().join("phone.db")).await;
        let app = open(db.clone(), &log).await;
        assert!(!app.is_registered());
        app.storage()
            .create("note", object! { "title" => "offline", "pinned" => false })
            .await
            .expect("the app works offline");
        OfflinePhone {
            dir,
            memory,
            flaky,
            log,
            db,
            app,
        }
    }

    /// Closes the app, then starts it again on the same database (a second open while the
    /// first is alive is refused).
    async fn restart(self) -> Self {
        drop(self.app);
        let app = open(self.db.clone(), &self.log).await;
        OfflinePhone { app, ..self }
    }

    /// Asserts that a laptop joining now gets the phone's note.
    async fn laptop_gets_the_note(&self) {
        let laptop_db = app_db(&self.dir.path().join("laptop.db")).await;
        let laptop = open(laptop_db.clone(), &self.log).await;
        laptop.sync_once().await.expect("sync");
        assert_eq!(titles(&laptop_db).await, vec!["offline"]);
    }
}

#[tokio::test]
async fn a_first_start_offline_works_locally_and_the_first_sync_online_registers() {
    let phone = OfflinePhone::new().await;
    let id = phone.app.device_id();
    assert!(phone.app.sync_once().await.is_err(), "still offline");
    // Restarted, still offline: the same device, still to be registered.
    let phone = phone.restart().await;
    assert_eq!(phone.app.device_id(), id);
    assert!(!phone.app.is_registered());

    phone.flaky.set_offline(false);
    let report = phone.app.sync_once().await.expect("online");
    assert_eq!(report.pushed, 1);
    assert!(phone.app.is_registered());
    assert_eq!(phone.memory.devices(id).await.expect("registered").len(), 1);
    let phone = phone.restart().await;
    assert_eq!(phone.app.device_id(), id, "kept once registered");
    assert!(phone.app.is_registered());
    phone.laptop_gets_the_note().await;
}

#[tokio::test]
async fn the_background_sync_registers_a_device_opened_offline() {
    use std::time::Duration;
    let phone = OfflinePhone::new().await;
    let background = phone.app.start_background(
        storex_app::BackgroundOptions::default()
            .with_interval(Duration::from_millis(50))
            .with_backoff(Duration::from_millis(10), Duration::from_millis(50)),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!phone.app.is_registered());
    assert!(background.status().last_error.is_some(), "offline, said so");
    phone.flaky.set_offline(false);
    for _ in 0..500 {
        if background.status().last_success.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    background.stop().await;
    assert!(phone.app.is_registered());
    phone.laptop_gets_the_note().await;
}

#[tokio::test]
async fn a_table_that_joins_sync_later_gets_its_existing_rows_logged() {
    use storex_core::{CollectionDef, FieldType};
    let dir = tempfile::tempdir().expect("temporary directory");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let db = app_db(&dir.path().join("phone.db")).await;
    let phone = open(db.clone(), &log).await;
    assert_eq!(phone.existing_rows_logged(), 0);
    drop(phone);
    // The app keeps tags in a table of its own, then an update brings them into sync.
    db.execute_unprepared(
        "CREATE TABLE tag (name TEXT NOT NULL PRIMARY KEY); \
         INSERT INTO tag (name) VALUES ('home'), ('work')",
    )
    .await
    .expect("the app's tags");
    let tag = CollectionDef::new("tag")
        .field("name", FieldType::Text)
        .primary_key(["name"]);
    let reopen = || async {
        SyncedStorage::builder(db.clone())
            .entity(note::Entity)
            .collection(tag.clone())
            .shared_log(log.clone(), "ann")
            .open()
            .await
            .expect("open with tags")
    };
    let phone = reopen().await;
    assert_eq!(phone.existing_rows_logged(), 2, "the tags that were there");
    assert_eq!(phone.sync_once().await.expect("sync").pushed, 2);
    drop(phone);
    assert_eq!(reopen().await.existing_rows_logged(), 0, "once");
    // A release that leaves tags out of sync; a tag written meanwhile has no log entry.
    let without_tags = SyncedStorage::builder(db.clone())
        .entity(note::Entity)
        .collection(tag.clone())
        .exclude("tag")
        .shared_log(log.clone(), "ann")
        .open()
        .await
        .expect("open without syncing tags");
    without_tags
        .storage()
        .create("tag", object! { "name" => "garden" })
        .await
        .expect("a tag, not logged");
    drop(without_tags);
    // Synced again: that tag is logged then.
    let phone = reopen().await;
    assert_eq!(phone.existing_rows_logged(), 1, "the tag written while out");
    assert_eq!(phone.sync_once().await.expect("sync").pushed, 1);
}

/// The `note` table of a later app release: one more column.
mod note_v2 {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "note")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub title: String,
        pub pinned: bool,
        pub color: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[tokio::test]
async fn a_column_added_without_a_new_schema_version_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("app.db");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    drop(open(app_db(&path).await, &log).await);
    // The next release adds a column to its table and entity.
    let db = app_db(&path).await;
    db.execute_unprepared("ALTER TABLE note ADD COLUMN color TEXT")
        .await
        .expect("add the column");
    let err = SyncedStorage::builder(db.clone())
        .entity(note_v2::Entity)
        .shared_log(log.clone(), "ann")
        .open()
        .await
        .expect_err("fields changed under the same version");
    assert!(
        matches!(&err, Error::SchemaChangedWithoutVersion { collection, version: 1 } if collection == "note"),
        "{err:?}"
    );
    // At version 2 it opens, and then again (the new fields are remembered).
    for _ in 0..2 {
        let synced = SyncedStorage::builder(db.clone())
            .entity_version(note_v2::Entity, 2)
            .shared_log(log.clone(), "ann")
            .open()
            .await
            .expect("a new version");
        drop(synced);
    }
    // Going back to the first release's fields under version 2 is a change too.
    let err = SyncedStorage::builder(db)
        .entity_version(note::Entity, 2)
        .shared_log(log, "ann")
        .open()
        .await
        .expect_err("fields changed back under the same version");
    assert!(
        matches!(&err, Error::SchemaChangedWithoutVersion { version: 2, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_app_database_with_a_rollback_journal_is_switched_to_write_ahead_logging() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = app_db(&dir.path().join("app.db")).await;
    let mode = |db: DatabaseConnection| async move {
        db.query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "PRAGMA journal_mode",
        ))
        .await
        .expect("read the mode")
        .expect("a row")
        .try_get_by_index::<String>(0)
        .expect("text")
    };
    assert_eq!(
        mode(db.clone()).await,
        "delete",
        "a plain connection's default"
    );
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let synced = open(db.clone(), &log).await;
    assert_eq!(mode(db).await, "wal");
    drop(synced);
}

/// `note` entities of later releases, with column defaults.
mod note_defaults {
    /// The title, which existed, gets a default.
    pub mod titled {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "note")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
            #[sea_orm(default_value = "untitled")]
            pub title: String,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    /// A new column, with a default.
    pub mod coloured {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "note")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
            pub title: String,
            #[sea_orm(default_value = "red")]
            pub colour: Option<String>,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    /// The new column's default taken away.
    pub mod plain {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "note")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
            pub title: String,
            pub colour: Option<String>,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

#[tokio::test]
async fn a_default_comes_with_its_field_and_is_kept() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("app.db");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    drop(open(app_db(&path).await, &log).await);
    let db = app_db(&path).await;
    let refused = |result: Result<SyncedStorage, Error>, field: &str| match result {
        Err(Error::DefaultOfExistingField {
            collection,
            field: named,
        }) => assert_eq!((collection.as_str(), named.as_str()), ("note", field)),
        other => panic!("refused for `{field}` expected: {:?}", other.map(|_| ())),
    };
    // A default for a field notes were created without, even under a new version.
    let titled = SyncedStorage::builder(db.clone())
        .entity_version(note_defaults::titled::Entity, 2)
        .shared_log(log.clone(), "ann")
        .open()
        .await;
    refused(titled, "title");
    // A new field may come with one, and keep it.
    db.execute_unprepared("ALTER TABLE note ADD COLUMN colour TEXT DEFAULT 'red'")
        .await
        .expect("add the column");
    for _ in 0..2 {
        let coloured = SyncedStorage::builder(db.clone())
            .entity_version(note_defaults::coloured::Entity, 2)
            .shared_log(log.clone(), "ann")
            .open()
            .await
            .expect("a new field with a default");
        drop(coloured);
    }
    // Taking it away later is refused too.
    let plain = SyncedStorage::builder(db.clone())
        .entity_version(note_defaults::plain::Entity, 3)
        .shared_log(log.clone(), "ann")
        .open()
        .await;
    refused(plain, "colour");
    // Removing the field, default and all, is not.
    SyncedStorage::builder(db)
        .entity_version(note::Entity, 3)
        .shared_log(log, "ann")
        .open()
        .await
        .expect("a release without the field");
}

/// Opens `db` as the app's database, waiting up to `wait` for its device to be let go.
async fn open_waiting(
    db: DatabaseConnection,
    log: &Arc<dyn SharedSyncLog>,
    wait: std::time::Duration,
) -> Result<SyncedStorage, Error> {
    SyncedStorage::builder(db)
        .entity(note::Entity)
        .shared_log(log.clone(), "ann")
        .device_lock_wait(wait)
        .open()
        .await
}

/// Opens `path` as the app's database once more, beside whatever holds it.
async fn open_again(
    path: &std::path::Path,
    log: &Arc<dyn SharedSyncLog>,
) -> Result<SyncedStorage, Error> {
    open_waiting(
        app_db(path).await,
        log,
        std::time::Duration::from_millis(100),
    )
    .await
}

/// Fails unless `opened` was refused as a database in use, its message naming `database`.
fn assert_in_use(opened: Result<SyncedStorage, Error>, database: &str) {
    match opened {
        Err(error @ Error::DatabaseInUse { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains(&format!("{database} is open for sync elsewhere")),
                "{message}"
            );
        }
        other => panic!("a second open of a database in use: {other:?}"),
    }
}

#[tokio::test]
async fn a_database_open_for_sync_is_refused_another_open_until_all_of_the_first_is_gone() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let path = dir.path().join("phone.db");
    let phone = open(app_db(&path).await, &log).await;
    let in_use = |opened| assert_in_use(opened, "phone.db");
    // Two openers would keep two clocks for one device.
    in_use(open_again(&path, &log).await);
    // An app that keeps to one opener itself may open without the lock.
    let unlocked = SyncedStorage::builder(app_db(&path).await)
        .entity(note::Entity)
        .shared_log(log.clone(), "ann")
        .without_device_lock()
        .open()
        .await
        .expect("opened without the lock");
    drop(unlocked);
    // What can still write to the device keeps it: a background sync, a storage's clone.
    let background = phone.start_background(storex_app::BackgroundOptions::default());
    let storage = phone.storage().clone();
    drop(phone);
    in_use(open_again(&path, &log).await);
    background.stop().await;
    in_use(open_again(&path, &log).await);
    drop(storage);
    open_again(&path, &log)
        .await
        .expect("open once the first is gone");
    // Another database is another device.
    open(app_db(&dir.path().join("laptop.db")).await, &log).await;
}

/// The app's PostgreSQL database at `url`, on a pool of one connection.
async fn app_db_on_one_connection(url: &str) -> DatabaseConnection {
    let mut options = sea_orm::ConnectOptions::new(url);
    options.max_connections(1);
    let db = Database::connect(options).await.expect("connect");
    let mut create = Schema::new(db.get_database_backend()).create_table_from_entity(note::Entity);
    db.execute(create.if_not_exists())
        .await
        .expect("create table");
    db
}

/// On PostgreSQL the device is the schema the tables are in; its lock is held on a connection
/// of its own, so an app whose pool has one connection still writes.
#[tokio::test]
async fn a_postgres_database_open_for_sync_is_refused_another_open_until_the_first_is_gone() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let phone = open(app_db_on_one_connection(&url).await, &log).await;
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        phone.storage().execute(storex_core::Operation::create(
            "note",
            object! { "title" => "on one connection", "pinned" => false },
        )),
    )
    .await
    .expect("the pool's one connection is the app's")
    .expect("write");
    let wait = std::time::Duration::from_millis(100);
    let opened = open_waiting(app_db_on_one_connection(&url).await, &log, wait).await;
    // The name is followed by who holds the lock, then by the rest of the message.
    assert!(
        matches!(&opened, Err(Error::DatabaseInUse { database })
            if database.starts_with("schema `public` of the PostgreSQL database")),
        "a second open of a schema in use: {:?}",
        opened.as_ref().err()
    );
    drop(phone);
    // The server lets go once it sees the lock's connection closed.
    let wait = std::time::Duration::from_secs(10);
    open_waiting(app_db_on_one_connection(&url).await, &log, wait)
        .await
        .expect("open once the first is gone");
}
