//! Two devices syncing through the embedded default: each device keeps its notes in its own
//! SQLite file, and they exchange changes through a shared log in a third SQLite file.
//! Both edit offline (one edit conflicts), sync, and end up holding the same notes.
//!
//! Run with `cargo run -p storex-log-sql --example two_devices`.

use std::path::Path;
use std::sync::Arc;

use storex_core::{object, CollectionDef, FieldType, Query, Registry, StorageBackend, Value};
use storex_log_sql::SqlSharedLog;
use storex_seaorm::SeaOrmBackend;
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, SharedSyncLog, SyncDevice, SyncOptions,
};

fn registry() -> Result<Registry, storex_core::Error> {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .optional_field("done", FieldType::Bool)
                .primary_key(["id"]),
        )
        .build()
}

async fn open(
    dir: &Path,
    name: &str,
    log: &Arc<dyn SharedSyncLog>,
) -> Result<ContinuousSync, Box<dyn std::error::Error>> {
    let id = log.create_device("alice").await?;
    let backend: Arc<dyn StorageBackend> =
        Arc::new(SeaOrmBackend::open_sqlite_file(dir.join(name)).await?);
    let device =
        SyncDevice::open(registry()?, backend, Clock::new(id), SyncOptions::default()).await?;
    Ok(ContinuousSync::new(
        device,
        log.clone(),
        ContinuousOptions::default(),
    ))
}

async fn show(name: &str, sync: &ContinuousSync) -> Result<(), Box<dyn std::error::Error>> {
    let notes = sync
        .device()
        .storage()
        .find_many("note", Query::default().order_asc("title"))
        .await?;
    println!(
        "{name} holds {} notes (digest {}):",
        notes.len(),
        &sync.device().digest("note").await?[..12]
    );
    for note in notes {
        let done = note["done"] == Value::Bool(true);
        println!(
            "  [{}] {}",
            if done { "x" } else { " " },
            note["title"].as_text().unwrap_or("?")
        );
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("shared-log.db").display()
    );
    let log: Arc<dyn SharedSyncLog> = Arc::new(SqlSharedLog::connect(&url).await?);
    let phone = open(dir.path(), "phone.db", &log).await?;
    let laptop = open(dir.path(), "laptop.db", &log).await?;

    // A note both devices know.
    let milk = phone
        .device()
        .storage()
        .create("note", object! { "title" => "buy milk" })
        .await?;
    phone.sync_once().await?;
    laptop.sync_once().await?;

    // Offline edits on both; the laptop's edit of the shared note comes last and wins.
    phone
        .device()
        .storage()
        .create("note", object! { "title" => "call mum" })
        .await?;
    phone
        .device()
        .storage()
        .update_by_pk("note", milk.clone(), object! { "title" => "buy oat milk" })
        .await?;
    laptop
        .device()
        .storage()
        .create("note", object! { "title" => "water the plants" })
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    laptop
        .device()
        .storage()
        .update_by_pk(
            "note",
            milk,
            object! { "done" => true, "title" => "buy milk (done)" },
        )
        .await?;

    for (name, sync) in [("phone", &phone), ("laptop", &laptop), ("phone", &phone)] {
        let report = sync.sync_once().await?;
        println!(
            "{name} synced: pushed {}, pulled {}, applied {}, conflicts {}",
            report.pushed, report.pulled, report.applied, report.conflicts
        );
    }
    show("phone", &phone).await?;
    show("laptop", &laptop).await?;
    let same = phone.device().digest("note").await? == laptop.device().digest("note").await?;
    println!(
        "{}",
        if same {
            "both devices hold the same notes"
        } else {
            "the devices differ!"
        }
    );
    if !same {
        return Err("the devices did not converge".into());
    }
    Ok(())
}
