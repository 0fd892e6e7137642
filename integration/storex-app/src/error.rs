//! The error type of storex-app.

/// What setting up sync for an app can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A storage operation failed.
    #[error("storage operation failed")]
    Storage(#[from] storex_core::Error),
    /// The sync engine failed.
    #[error("sync failed")]
    Sync(#[from] storex_sync::Error),
    /// An entity could not be turned into a collection, or the database is not supported.
    #[error("the app's schema cannot be synced")]
    Schema(#[from] storex_seaorm::Error),
    /// The app's database failed while it was set up for sync (its journal mode, its file).
    #[error("the app's database failed")]
    Database(#[from] sea_orm::DbErr),
    /// Registering the device with the shared log failed.
    #[error("registering this device with the shared log failed")]
    SharedLog(#[from] storex_sync::SharedLogError),
    /// Pairing with another device failed (a bad code, a peer that cannot be reached).
    #[error("pairing with the other device failed")]
    Pairing(#[from] storex_channel_webrtc::Error),
    /// The builder was not given a shared log.
    #[error("no shared log was configured: call `shared_log(log, user)` on the builder")]
    NoSharedLog,
    /// The fields of a synced collection changed since this database was last opened, but
    /// its schema version did not.
    #[error("the fields of `{collection}` changed since this database was last opened, but its schema version is still {version}: raise it (`SyncedStorageBuilder::entity_version`), so that devices still running the older app hold the changes of the new fields until they upgrade, instead of dropping them")]
    SchemaChangedWithoutVersion {
        /// The collection.
        collection: String,
        /// Its schema version, the same as before.
        version: u32,
    },
    /// A field that existed at the last open has another default now (one given, changed or
    /// taken away). Sync gives a field's default to the logged creates that leave the field
    /// out: those made before it had one would read differently on the devices that rebuild
    /// them from the log than on those that stored them.
    #[error("the default of field `{field}` of `{collection}` changed since this database was last opened: a field's default is given with the field, in the release that adds it, and kept from then on (the creates logged before without the field would otherwise read differently on devices that rebuild them from the log)")]
    DefaultOfExistingField {
        /// The collection.
        collection: String,
        /// The field.
        field: String,
    },
    /// The database is open for sync elsewhere: in another process, or in another
    /// [`crate::SyncedStorage`] of this one.
    #[error("the database {database} is open for sync elsewhere (another process, or another SyncedStorage of this one): one device's database syncs from one place at a time, or two clocks could give two changes the same timestamp and devices could disagree on which wins; close the other first")]
    DatabaseInUse {
        /// The database: a SQLite file's path, or a PostgreSQL database and schema.
        database: String,
    },
    /// This build cannot keep a device of this kind of database to one opener.
    #[error("storex-app was built without its `{feature}` feature, which keeps a {database} device to one opener: enable the feature, or open with `without_device_lock()` if the app opens the database as a device from one place only")]
    DeviceLockUnsupported {
        /// The kind of database.
        database: &'static str,
        /// The crate feature that adds the lock.
        feature: &'static str,
    },
    /// The file that keeps a database's device to one opener could not be opened or locked.
    #[error(
        "cannot lock {}, which keeps the database's device to one opener (where files cannot \
         be locked, as on a network file system mounted without locks, open the database \
         `.without_device_lock()` and keep to one opener yourself)",
        path.display()
    )]
    DeviceLock {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// A stored setting does not hold what it should.
    #[error("the stored setting `{key}` is corrupt")]
    CorruptSetting {
        /// The setting.
        key: &'static str,
    },
}

/// The result type of storex-app.
pub type Result<T, E = Error> = std::result::Result<T, E>;
