//! An app with an ordinary SeaORM data layer adopts storex without changing its tables:
//! the registry comes from its entities, storex writes through the middleware chain, and the
//! app keeps reading with plain SeaORM.
//!
//! Run with `cargo run -p storex-seaorm --example seaorm_app`.

#![allow(unreachable_pub)] // SeaORM entities must be `pub` inside their modules.

use sea_orm::{ConnectionTrait, Database, EntityTrait, QueryOrder, Schema};
use storex_core::chrono::Utc;
use storex_core::{object, Filter, Registry, Storage, UuidPkMiddleware};
use storex_seaorm::{collection_from_entity, SeaOrmBackend};

/// The app's entity, exactly as a SeaORM app writes it.
mod note {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "note")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub title: String,
        pub body: Option<String>,
        pub done: bool,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("storex-seaorm-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("notes.db").display());

    // The app's own data layer: a connection and its tables.
    let db = Database::connect(&url).await?;
    let mut create = Schema::new(db.get_database_backend()).create_table_from_entity(note::Entity);
    db.execute(create.if_not_exists()).await?;

    // storex on the same connection, with a registry derived from the entity.
    let registry = Registry::builder()
        .collection(collection_from_entity(note::Entity)?)
        .build()?;
    let storage = Storage::builder(registry, SeaOrmBackend::new(db.clone())?)
        .with(UuidPkMiddleware::new())
        .build()
        .await?;

    for title in ["buy milk", "call mum", "water the plants"] {
        storage
            .create(
                "note",
                object! { "title" => title, "done" => false, "created_at" => Utc::now() },
            )
            .await?;
    }
    storage
        .update_where(
            "note",
            Filter::all().eq("title", "call mum"),
            object! { "done" => true },
        )
        .await?;

    // The app reads what storex wrote with plain SeaORM.
    for note in note::Entity::find()
        .order_by_asc(note::Column::Title)
        .all(&db)
        .await?
    {
        println!("{} {}", if note.done { "[x]" } else { "[ ]" }, note.title);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
