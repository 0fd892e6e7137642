//! [`SyncedStorage`]: an app's SeaORM connection and entities, made to sync.

use std::collections::BTreeMap;
use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement};
use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Middleware, Operation, Query, Registry, Storage,
    StorageBackend, Value,
};
use storex_seaorm::{collection_from_entity, SeaOrmBackend};
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, DeviceId, SharedLogError, SharedSyncLog, SyncDevice,
    SyncOptions, SyncReport,
};

use crate::background::{BackgroundOptions, BackgroundSync};
use crate::change_notifier::ChangeNotifier;
use crate::device_lock::{DeviceLock, DEVICE_LOCK_WAIT};
use crate::error::{Error, Result};
use crate::registration::{self, Registration};

/// The collection where storex-app keeps its settings (the device id) in the app's database;
/// never synced.
pub const SETTINGS_COLLECTION: &str = "storex_app_settings";
const DEVICE_KEY: &str = "device_id";
/// The id chosen for this device before it is registered (kept once it is).
const PENDING_DEVICE_KEY: &str = "device_id_to_register";
const EXISTING_ROWS_KEY: &str = "existing_rows_logged";
/// The prefix of the settings that keep each synced collection's schema version and fields
/// as of the last open (see [`check_schemas`]).
const SCHEMA_KEY: &str = "schema";
/// The setting of a synced collection's field defaults at the last open, as JSON.
const DEFAULTS_KEY: &str = "schema_defaults";
/// Credentials the shared log issued to this device (a sync server's device token). Kept in the
/// settings collection, which is never synced.
pub(crate) const CREDENTIALS_KEY: &str = "device_credentials";
/// Set while this database's device is not registered with the shared log yet (its first
/// open could not reach the log); removed once it is.
pub(crate) const UNREGISTERED_KEY: &str = "device_not_registered";

fn settings_collection() -> CollectionDef {
    CollectionDef::new(SETTINGS_COLLECTION)
        .field("key", FieldType::Text)
        .field("value", FieldType::Text)
        .primary_key(["key"])
}

/// Builds a [`SyncedStorage`]; see [`SyncedStorage::builder`].
pub struct SyncedStorageBuilder {
    db: DatabaseConnection,
    collections: Vec<std::result::Result<CollectionDef, storex_seaorm::Error>>,
    shared_log: Option<(Arc<dyn SharedSyncLog>, String)>,
    options: ContinuousOptions,
    sync_options: SyncOptions,
    /// How long `open` waits for a database's device lock; none: no lock (see
    /// `without_device_lock`).
    device_lock: Option<std::time::Duration>,
}

/// The user (for the sync server, a user token) is a secret: not shown.
impl std::fmt::Debug for SyncedStorageBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncedStorageBuilder")
            .field("db", &self.db)
            .field("collections", &self.collections)
            .field(
                "shared_log",
                &self
                    .shared_log
                    .as_ref()
                    .map(|(log, _)| (log, "<user redacted>")),
            )
            .field("options", &self.options)
            .field("sync_options", &self.sync_options)
            .finish()
    }
}

impl SyncedStorageBuilder {
    /// Syncs the table of SeaORM entity `E` (its columns, types, nullability and key).
    pub fn entity<E: EntityTrait>(mut self, entity: E) -> Self {
        self.collections.push(collection_from_entity(entity));
        self
    }

    /// Syncs the table of SeaORM entity `E` at schema version `version` (1 for
    /// [`SyncedStorageBuilder::entity`]). Raise it in the app release that adds, removes or
    /// retypes a column: a device still on the older release then holds the changes written
    /// with the new schema until it upgrades, instead of dropping what it does not know.
    /// [`SyncedStorageBuilder::open`] refuses a collection whose fields changed since the
    /// last open under the same version.
    pub fn entity_version<E: EntityTrait>(mut self, entity: E, version: u32) -> Self {
        self.collections
            .push(collection_from_entity(entity).map(|def| def.version(version)));
        self
    }

    /// Syncs a collection described by hand.
    pub fn collection(mut self, def: CollectionDef) -> Self {
        self.collections.push(Ok(def));
        self
    }

    /// Exchanges changes through `log`, as a device of `user` (for the sync server's
    /// `HttpSharedLog`, the user's token; the device token it issues is kept in the settings).
    ///
    /// The first open registers this database's device for `user`; later opens keep that
    /// device, and so its account, whatever `user` they are given: a database syncs with one
    /// account. An app that lets a person switch accounts keeps one database per account.
    /// When the first open cannot reach the shared log within
    /// [`crate::FIRST_REGISTRATION_WAIT`] (the app's first start is offline), the storage opens
    /// all the same and works locally; the device is registered, for the `user` of the open
    /// that is running then, by the first sync that reaches the log
    /// ([`SyncedStorage::is_registered`]). A log that answers and refuses (a wrong user token,
    /// say) fails the first open. Should the log refuse the device later (revoked meanwhile,
    /// or another account's), its syncs fail with that error: its changes are logged under
    /// its id, which cannot change; move the data to a fresh database (`storex migrate`).
    pub fn shared_log(mut self, log: Arc<dyn SharedSyncLog>, user: impl Into<String>) -> Self {
        self.shared_log = Some((log, user.into()));
        self
    }

    /// Encrypts every change end to end with `key` (the same on every device of the user).
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.options = self.options.with_encryption_key(key);
        self
    }

    /// Keeps `collection` local: its writes are not synced.
    pub fn exclude(mut self, collection: impl Into<String>) -> Self {
        self.sync_options = self.sync_options.exclude(collection);
        self
    }

    /// Opens without the lock that keeps a database's device to one opener (see
    /// [`SyncedStorageBuilder::open`]). Only for an app that makes sure itself that one
    /// process at a time opens the database, and must hold no file lock while it is suspended
    /// (iOS, a database in an App Group container) or uses PostgreSQL without the crate's
    /// `postgres` feature.
    pub fn without_device_lock(mut self) -> Self {
        self.device_lock = None;
        self
    }

    /// Sets how long [`SyncedStorageBuilder::open`] waits for a SQLite database whose device
    /// is held elsewhere to be let go (default [`crate::DEVICE_LOCK_WAIT`]; zero: not at all).
    pub fn device_lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.device_lock = Some(wait);
        self
    }

    /// Adds a middleware of the app's after the sync logger.
    pub fn with_middleware(mut self, middleware: Arc<dyn Middleware>) -> Self {
        self.sync_options = self.sync_options.with_middleware(middleware);
        self
    }

    /// Opens the storage: adopts the app's tables, registers the device with the shared log
    /// the first time (and remembers it), and logs the rows that existed before sync once.
    ///
    /// A database is synced from one place at a time: while a storage opened on it (or a
    /// clone of it, or a background sync) is alive, another open of the same SQLite file, or
    /// of the same PostgreSQL schema, in this process or another, waits up to
    /// [`crate::DEVICE_LOCK_WAIT`] (or what [`SyncedStorageBuilder::device_lock_wait`] sets)
    /// for it to be let go, then fails with [`Error::DatabaseInUse`]; the lock goes with its
    /// process, however that ends. To open a database again in the same process,
    /// `stop().await` its background sync and drop the storage first. Two openers would keep
    /// two clocks for one device, which can give two changes the same timestamp. A
    /// PostgreSQL device needs the crate's `postgres` feature for its lock (without it, its
    /// open fails with [`Error::DeviceLockUnsupported`]); the lock is held on a connection of
    /// its own, beside the pool, pinged every 10 s and taken again on a new one when its
    /// session ends. Meanwhile the app's writes to synced collections fail with a transient
    /// [`storex_core::Error::Backend`]; if another opener took the lock in between, even if it
    /// let it go since (or the runtime that opened the storage shut down, ending the task that
    /// held the lock), they fail with [`storex_core::Error::Refused`] until the storage is
    /// opened again. Each open marks the lock with a random token in a one-row table of the
    /// schema, `storex_device_lock` (made by the first), and fails if no schema is on the
    /// search path.
    pub async fn open(self) -> Result<SyncedStorage> {
        let (log, user) = self.shared_log.ok_or(Error::NoSharedLog)?;
        let lock = match self.device_lock {
            Some(wait) => DeviceLock::take(&self.db, wait).await?,
            None => None,
        };
        let mut registry = Registry::builder().collection(settings_collection());
        for collection in self.collections {
            registry = registry.collection(collection?);
        }
        let registry = registry.build()?;
        write_ahead_log(&self.db).await?;
        let backend: Arc<dyn StorageBackend> = Arc::new(SeaOrmBackend::new(self.db)?);

        // Settings first, on a plain storage: the device id is needed to open the device.
        let settings = Storage::builder_shared(
            Registry::builder()
                .collection(settings_collection())
                .build()?,
            backend.clone(),
        )
        .build()
        .await?;
        let schemas = check_schemas(&registry, &self.sync_options.excluded, &settings).await?;
        let (device_id, registration) = match read_setting(&settings, DEVICE_KEY).await? {
            Some(text) => {
                let id = DeviceId(
                    text.parse()
                        .map_err(|_| Error::CorruptSetting { key: DEVICE_KEY })?,
                );
                if let Some(credentials) = read_setting(&settings, CREDENTIALS_KEY).await? {
                    log.restore_device_credentials(id, &credentials);
                }
                let registration = if read_setting(&settings, UNREGISTERED_KEY).await?.is_some() {
                    // Opened offline before, and in use since: registered by the first sync
                    // that reaches the log, whose error says why not (not here: an open never
                    // waits for the network once the device has an id). Its id does not change
                    // any more: its writes are logged under it.
                    Registration::pending(log.clone(), settings.clone(), user, id)
                } else {
                    Registration::done(log.clone())
                };
                (id, registration)
            }
            None => {
                // The id is stored before it is registered: if the answer is lost or the app
                // stops before storing it, the next start registers the same id again
                // (registration is idempotent) instead of leaving an orphan device behind,
                // which would hold back the shared log's compaction for good.
                let pending = match read_setting(&settings, PENDING_DEVICE_KEY).await? {
                    Some(text) => Some(DeviceId(text.parse().map_err(|_| {
                        Error::CorruptSetting {
                            key: PENDING_DEVICE_KEY,
                        }
                    })?)),
                    None => None,
                };
                let (id, registered) = match pending {
                    Some(id) => {
                        match registration::register_within_wait(log.as_ref(), &user, id).await {
                            Ok(registered) => (id, registered),
                            // The id kept from an earlier start that stopped before storing it
                            // (never used: a device opened offline keeps its id under
                            // `DEVICE_KEY`) was revoked meanwhile (an orphan someone cleaned up)
                            // or is another user's: start over with a new one. (Any other
                            // refusal, a wrong user token say, keeps it.)
                            Err(SharedLogError::DeviceRefused { .. }) => {
                                register_new_id(&settings, log.as_ref(), &user).await?
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    None => register_new_id(&settings, log.as_ref(), &user).await?,
                };
                // The id with its credentials, or with the mark of a registration still to
                // make, in one transaction: both or neither.
                let mut steps = Vec::new();
                if !registered {
                    steps.push(setting_step(&settings, UNREGISTERED_KEY, "1").await?);
                } else if let Some(credentials) = log.device_credentials(id) {
                    steps.push(setting_step(&settings, CREDENTIALS_KEY, &credentials).await?);
                }
                steps.push(setting_step(&settings, DEVICE_KEY, &id.0.to_string()).await?);
                settings.batch(steps).await?;
                let registration = if registered {
                    Registration::done(log.clone())
                } else {
                    Registration::pending(log.clone(), settings.clone(), user, id)
                };
                (id, registration)
            }
        };

        let mut excluded = self.sync_options.excluded;
        excluded.push(SETTINGS_COLLECTION.to_owned());
        let notifier = ChangeNotifier::new().ignoring(excluded.iter().cloned());
        // The notifier first, so the app's own middleware sees writes after it.
        let mut options = SyncOptions::default().with_middleware(Arc::new(notifier.clone()));
        if let Some(lock) = lock {
            // Held for as long as the storage's chain is.
            options = options.with_middleware(Arc::new(lock.leaving_out(excluded.iter().cloned())));
        }
        options.excluded = excluded;
        options.middleware.extend(self.sync_options.middleware);
        let device = SyncDevice::open(registry, backend, Clock::new(device_id), options).await?;
        let mut steps = Vec::with_capacity(schemas.len());
        for (key, value) in &schemas {
            steps.push(setting_step(&settings, key, value).await?);
        }
        if !steps.is_empty() {
            settings.batch(steps).await?;
        }
        let existing_rows_logged = log_existing_rows(&device, &settings).await?;
        Ok(SyncedStorage {
            sync: Arc::new(ContinuousSync::new(device, log, self.options)),
            notifier,
            existing_rows_logged,
            registration: Arc::new(registration),
        })
    }
}

/// Logs the rows that exist without log entries in each synced collection whose rows were
/// never logged so (all of them on a database's first open; later, a collection an app update
/// brought into sync), and notes each as done; returns how many rows were logged. The note is
/// per collection: a table that had rows before it was synced gets them logged whenever it
/// joins. (The first versions kept one note for the whole database, which names no
/// collection: the collections are checked once more then, and rows with entries are left
/// alone.) The note of a collection not synced now (this version of the app excludes it, or
/// has it no more) is dropped: rows written while it was out have no log entries, and are
/// logged if it joins again.
async fn log_existing_rows(device: &SyncDevice, settings: &Storage) -> Result<u64> {
    let synced = device.synced_collections();
    let prefix = existing_rows_key("");
    let mut gone = Vec::new();
    // The synced collections noted as done (a note whose value reads, as `read_setting`
    // takes one).
    let mut noted: Vec<String> = Vec::new();
    for row in settings
        .find_many(SETTINGS_COLLECTION, Query::default())
        .await?
    {
        let Some(key) = row.get("key").and_then(Value::as_text) else {
            continue;
        };
        let Some(collection) = key.strip_prefix(&prefix) else {
            continue;
        };
        if !synced.contains(&collection) {
            gone.push(BatchStep::new(Operation::delete_by_pk(
                SETTINGS_COLLECTION,
                key,
            )));
        } else if row.get("value").and_then(Value::as_text).is_some() {
            noted.push(collection.to_owned());
        }
    }
    if !gone.is_empty() {
        settings.batch(gone).await?;
    }
    let pending: Vec<&str> = synced
        .iter()
        .copied()
        .filter(|name| !noted.iter().any(|n| n == name))
        .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let logged = device.log_existing_rows_in(&pending).await?;
    let mut steps = Vec::with_capacity(pending.len());
    for name in &pending {
        steps.push(setting_step(settings, &existing_rows_key(name), "logged").await?);
    }
    settings.batch(steps).await?;
    Ok(logged)
}

/// Switches a SQLite file kept with a rollback journal (SQLite's default, and what a plain
/// `Database::connect` leaves) to write-ahead logging: with a rollback journal a reader blocks
/// writers, so a device sending a copy of itself (a pairing, which reads one snapshot for the
/// whole transfer) would make the app's writes fail as "database is locked" meanwhile. The
/// mode stays with the file. In-memory databases and PostgreSQL are left as they are.
async fn write_ahead_log(db: &DatabaseConnection) -> Result<()> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    let mode = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA journal_mode",
        ))
        .await?
        .and_then(|row| row.try_get_by_index::<String>(0).ok())
        .unwrap_or_default();
    if matches!(
        mode.to_ascii_lowercase().as_str(),
        "delete" | "truncate" | "persist"
    ) {
        // Best effort: the switch needs the file to itself (another connection of the app in
        // a transaction refuses it), and sync works without it, only with a pairing blocking
        // writes meanwhile. The next open tries again.
        let _ = db.execute_unprepared("PRAGMA journal_mode = WAL").await;
    }
    Ok(())
}

/// Compares each synced collection's schema version and fields with those of the last open
/// (kept in the settings): fields that changed under the same version are refused
/// ([`Error::SchemaChangedWithoutVersion`]). Returns the settings to store once the device
/// opened (those that are new or changed), as (key, value).
async fn check_schemas(
    registry: &Registry,
    excluded: &[String],
    settings: &Storage,
) -> Result<Vec<(String, String)>> {
    let mut changed = Vec::new();
    let synced = registry
        .collections()
        .filter(|def| def.name() != SETTINGS_COLLECTION)
        .filter(|def| !excluded.iter().any(|name| name == def.name()));
    for def in synced {
        let key = format!("{SCHEMA_KEY}:{}", def.name());
        // In name order: moving a field in the entity changes nothing that syncs.
        let mut fields: Vec<String> = def
            .fields()
            .iter()
            .map(|f| format!("{} {}{}", f.name, f.ty, if f.optional { "?" } else { "" }))
            .collect();
        fields.sort();
        let now = format!("{} {}", def.schema_version(), fields.join(","));
        let before = read_setting(settings, &key).await?;
        if let Some(setting) = check_defaults(def, before.as_deref(), settings).await? {
            changed.push(setting);
        }
        if before.as_deref() == Some(now.as_str()) {
            continue;
        }
        let same_version = before
            .as_deref()
            .and_then(|text| text.split_once(' '))
            .is_some_and(|(version, _)| version == def.schema_version().to_string());
        if same_version {
            return Err(Error::SchemaChangedWithoutVersion {
                collection: def.name().to_owned(),
                version: def.schema_version(),
            });
        }
        changed.push((key, now));
    }
    Ok(changed)
}

/// Compares `def`'s field defaults with those of the last open (kept in the settings; none
/// kept before this check existed): a field of `fields_before` (the last open's schema
/// setting) that still exists, of the same type, and whose default changed is refused
/// ([`Error::DefaultOfExistingField`]); a new field may come with one. Returns the setting to store when the defaults changed.
async fn check_defaults(
    def: &storex_core::CollectionDef,
    fields_before: Option<&str>,
    settings: &Storage,
) -> Result<Option<(String, String)>> {
    let key = format!("{DEFAULTS_KEY}:{}", def.name());
    let now: BTreeMap<&str, &Value> = def
        .fields()
        .iter()
        .filter_map(|f| def.default_of(&f.name).map(|v| (f.name.as_str(), v)))
        .collect();
    let now_text = storex_core::serde_json::to_string(&now)
        .map_err(|_| Error::CorruptSetting { key: DEFAULTS_KEY })?;
    let before_text = read_setting(settings, &key).await?;
    if before_text.as_deref() == Some(now_text.as_str()) {
        return Ok(None);
    }
    // The fields that exist now with the type they had at the last open: "<version>
    // <name> <type>[?],…", as check_schemas writes it (a name may hold a space, a type
    // not). A field removed, or retyped under its new version, keeps no default to compare.
    let existed: Vec<&str> = fields_before
        .and_then(|text| text.split_once(' '))
        .map(|(_, fields)| {
            fields
                .split(',')
                .filter_map(|f| f.rsplit_once(' '))
                .filter(|(name, ty)| {
                    def.field_def(name)
                        .is_some_and(|now| now.ty.to_string() == ty.trim_end_matches('?'))
                })
                .map(|(name, _)| name)
                .collect()
        })
        .unwrap_or_default();
    if let Some(text) = &before_text {
        let before: BTreeMap<String, Value> = storex_core::serde_json::from_str(text)
            .map_err(|_| Error::CorruptSetting { key: DEFAULTS_KEY })?;
        let names = before.keys().map(String::as_str).chain(now.keys().copied());
        for field in names {
            if existed.contains(&field) && before.get(field) != now.get(field).copied() {
                return Err(Error::DefaultOfExistingField {
                    collection: def.name().to_owned(),
                    field: field.to_owned(),
                });
            }
        }
    }
    Ok(Some((key, now_text)))
}

/// The setting noting that `collection`'s existing rows were logged.
fn existing_rows_key(collection: &str) -> String {
    format!("{EXISTING_ROWS_KEY}:{collection}")
}

/// Picks a device id, stores it, then registers it (see [`SyncedStorageBuilder::open`]); with
/// whether it is registered (not when the log cannot be reached).
async fn register_new_id(
    settings: &Storage,
    log: &dyn SharedSyncLog,
    user: &str,
) -> Result<(DeviceId, bool)> {
    let id = DeviceId::random();
    write_setting(settings, PENDING_DEVICE_KEY, &id.0.to_string()).await?;
    let registered = registration::register_within_wait(log, user, id).await?;
    Ok((id, registered))
}

async fn read_setting(settings: &Storage, key: &str) -> Result<Option<String>> {
    let row = settings.find_by_pk(SETTINGS_COLLECTION, key).await?;
    Ok(row.and_then(|r| r.get("value").and_then(Value::as_text).map(str::to_owned)))
}

/// Stores a setting, replacing an older value.
async fn write_setting(settings: &Storage, key: &str, value: &str) -> Result<()> {
    let step = setting_step(settings, key, value).await?;
    settings.batch(vec![step]).await?;
    Ok(())
}

/// The write that sets `key` to `value`: an update if the setting exists, else a create.
pub(crate) async fn setting_step(settings: &Storage, key: &str, value: &str) -> Result<BatchStep> {
    let exists = settings
        .find_by_pk(SETTINGS_COLLECTION, key)
        .await?
        .is_some();
    Ok(BatchStep::new(if exists {
        Operation::update_by_pk(SETTINGS_COLLECTION, key, object! { "value" => value })
    } else {
        Operation::create(
            SETTINGS_COLLECTION,
            object! { "key" => key, "value" => value },
        )
    }))
}

/// An app's storage, synced: what [`SyncedStorageBuilder::open`] returns.
#[derive(Debug)]
pub struct SyncedStorage {
    sync: Arc<ContinuousSync>,
    notifier: ChangeNotifier,
    existing_rows_logged: u64,
    pub(crate) registration: Arc<Registration>,
}

impl SyncedStorage {
    /// Starts the setup for an app's SeaORM connection (SQLite or PostgreSQL).
    pub fn builder(db: DatabaseConnection) -> SyncedStorageBuilder {
        SyncedStorageBuilder {
            db,
            collections: Vec::new(),
            shared_log: None,
            options: ContinuousOptions::default(),
            sync_options: SyncOptions::default(),
            device_lock: Some(DEVICE_LOCK_WAIT),
        }
    }

    /// The storage the app writes through (UUID keys, sync logging).
    pub fn storage(&self) -> &Storage {
        self.sync.device().storage()
    }

    /// The sync device (log, clock, digests).
    pub fn device(&self) -> &SyncDevice {
        self.sync.device()
    }

    /// This device's id with the shared log.
    pub fn device_id(&self) -> DeviceId {
        self.sync.device().device()
    }

    /// How many rows that existed before sync were logged when this storage was opened: on
    /// the first open, those of every synced collection; on a later one, those of the
    /// collections that joined sync since (an app update that syncs one more), usually none.
    pub fn existing_rows_logged(&self) -> u64 {
        self.existing_rows_logged
    }

    /// Pushes, pulls and applies once; first registers the device if its first open could
    /// not reach the shared log.
    pub async fn sync_once(&self) -> Result<SyncReport> {
        self.registration.ensure().await?;
        Ok(self.sync.sync_once().await?)
    }

    /// Whether this device is registered with the shared log. It is not when its first open
    /// could not reach the log (the app's first start was offline): the storage works, and
    /// the device is registered by the next [`SyncedStorage::sync_once`] or background sync
    /// that reaches the log.
    pub fn is_registered(&self) -> bool {
        self.registration.is_registered()
    }

    /// The continuous sync, to share with other tasks. (A device not registered yet, see
    /// [`SyncedStorage::is_registered`], is registered by [`SyncedStorage::sync_once`] and
    /// the background sync, not by syncing through this directly.)
    pub fn continuous(&self) -> &Arc<ContinuousSync> {
        &self.sync
    }

    /// Starts syncing in the background, woken by local writes too (it registers the device
    /// first if it is not yet, see [`SyncedStorage::is_registered`]). Start one per storage:
    /// two would share the writes' signal, each woken by some of them (see
    /// [`BackgroundSync::start`], also for where it may be called).
    pub fn start_background(&self, options: BackgroundOptions) -> BackgroundSync {
        BackgroundSync::start_registering(
            self.sync.clone(),
            self.notifier.signal(),
            options,
            Some(self.registration.clone()),
        )
    }
}
