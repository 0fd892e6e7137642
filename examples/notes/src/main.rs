//! `notes`: a small notes app on SeaORM, on two devices (a laptop and a phone) that sync
//! through a storex sync server, all on this machine.
//!
//! The app is ordinary SeaORM: an entity, a SQLite file per device, queries with
//! `Entity::find()`. Sync adds three things: `SyncedStorage` around the connection (writes go
//! through `storage()` so they are logged), an `HttpSharedLog` to the server, and a background
//! sync that pushes soon after each write and pulls at once when the other device pushed (the
//! server's live updates). The run: the laptop writes two notes, the phone edits one and adds
//! one, the laptop deletes one; each time the other device shows the change without a manual
//! sync. It exits with an error unless both devices end with the same notes.
//!
//! Run with `cargo run -p notes-example`.

#![allow(unreachable_pub)] // SeaORM entities must be `pub` inside their modules.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryOrder, Schema};
use storex_app::{BackgroundOptions, BackgroundSync, SyncedStorage};
use storex_core::{object, uuid::Uuid};
use storex_log_http::{HttpSharedLog, ServerConfig, SyncServer};
use storex_sync::SharedSyncLog;

type Error = Box<dyn std::error::Error>;

/// The app's one entity.
mod note {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "note")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub title: String,
        pub body: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

const ADMIN: &str = "notes-example-admin-token";

/// One device of the app: its database, synced.
struct Device {
    name: &'static str,
    db: DatabaseConnection,
    synced: SyncedStorage,
    background: BackgroundSync,
}

impl Device {
    async fn open(
        name: &'static str,
        dir: &Path,
        server: &str,
        user_token: &str,
    ) -> Result<Self, Error> {
        // The app's own setup: a SQLite file and its table.
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.join(format!("{name}.db")).display()
        );
        let db = Database::connect(&url).await?;
        let mut create =
            Schema::new(db.get_database_backend()).create_table_from_entity(note::Entity);
        db.execute(create.if_not_exists()).await?;
        // Sync: the same connection, wrapped.
        let log: Arc<dyn SharedSyncLog> = Arc::new(HttpSharedLog::new(server)?);
        let synced = SyncedStorage::builder(db.clone())
            .entity(note::Entity)
            .shared_log(log, user_token)
            .open()
            .await?;
        let background = synced.start_background(
            BackgroundOptions::default().with_debounce(Duration::from_millis(50)),
        );
        Ok(Device {
            name,
            db,
            synced,
            background,
        })
    }

    async fn add(&self, title: &str, body: &str) -> Result<Uuid, Error> {
        let id = Uuid::now_v7();
        self.synced
            .storage()
            .create(
                "note",
                object! { "id" => id, "title" => title, "body" => body },
            )
            .await?;
        Ok(id)
    }

    async fn rename(&self, id: Uuid, title: &str) -> Result<(), Error> {
        self.synced
            .storage()
            .update_by_pk("note", id, object! { "title" => title })
            .await?;
        Ok(())
    }

    async fn remove(&self, id: Uuid) -> Result<(), Error> {
        self.synced.storage().delete_by_pk("note", id).await?;
        Ok(())
    }

    /// The notes, read with plain SeaORM.
    async fn notes(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(note::Entity::find()
            .order_by_asc(note::Column::Title)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|n| (n.title, n.body))
            .collect())
    }

    fn show(&self, notes: &[(String, String)]) {
        println!("  {} has {} notes:", self.name, notes.len());
        for (title, body) in notes {
            println!("    - {title}: {body}");
        }
    }
}

/// Waits (up to 10 s) until both devices show the same notes.
async fn until_same(a: &Device, b: &Device, what: &str) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        let (left, right) = (a.notes().await?, b.notes().await?);
        if left == right {
            println!(
                "{what}: both devices agree after {:.0} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
            a.show(&left);
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            a.show(&left);
            b.show(&right);
            return Err(format!("{what}: the devices did not converge").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let server = SyncServer::start(
        ServerConfig::new(format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("server.db").display()
        ))
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .admin_token(ADMIN),
    )
    .await?;
    println!("sync server on {}", server.url());
    let user = HttpSharedLog::new(&server.url())?
        .create_user(ADMIN, "ann")
        .await?;

    let laptop = Device::open("laptop", dir.path(), &server.url(), &user.token).await?;
    let phone = Device::open("phone", dir.path(), &server.url(), &user.token).await?;

    let groceries = laptop.add("groceries", "milk, bread").await?;
    let ideas = laptop.add("ideas", "a notes app that syncs").await?;
    until_same(&laptop, &phone, "the laptop wrote two notes").await?;

    phone.rename(groceries, "groceries for Sunday").await?;
    phone.add("call", "the plumber, Monday").await?;
    until_same(&laptop, &phone, "the phone renamed one and added one").await?;

    laptop.remove(ideas).await?;
    until_same(&laptop, &phone, "the laptop deleted one").await?;

    for device in [&laptop, &phone] {
        device.background.stop().await;
        let status = device.background.status();
        println!(
            "{}: {} pending, last error: {}",
            device.name,
            status.pending_entries,
            status.last_error.as_deref().unwrap_or("none")
        );
    }
    server.shutdown().await?;
    Ok(())
}
