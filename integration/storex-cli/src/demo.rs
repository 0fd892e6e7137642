//! `storex demo`: two devices, one shared log, all on SQLite files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use storex_core::{object, CollectionDef, FieldType, Query, Registry, StorageBackend, Value};
use storex_log_sql::SqlSharedLog;
use storex_seaorm::SeaOrmBackend;
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, SharedSyncLog, SyncDevice, SyncOptions,
};

fn registry() -> Result<Registry> {
    Ok(Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .optional_field("done", FieldType::Bool)
                .primary_key(["id"]),
        )
        .build()?)
}

async fn device(dir: &Path, name: &str, log: &Arc<dyn SharedSyncLog>) -> Result<ContinuousSync> {
    let id = log
        .create_device("demo-user")
        .await
        .context("registering a device")?;
    let file = dir.join(format!("{name}.db"));
    let backend: Arc<dyn StorageBackend> = Arc::new(
        SeaOrmBackend::open_sqlite_file(&file)
            .await
            .with_context(|| format!("opening {}", file.display()))?,
    );
    let device =
        SyncDevice::open(registry()?, backend, Clock::new(id), SyncOptions::default()).await?;
    Ok(ContinuousSync::new(
        device,
        log.clone(),
        ContinuousOptions::default(),
    ))
}

async fn show(name: &str, sync: &ContinuousSync) -> Result<String> {
    let notes = sync
        .device()
        .storage()
        .find_many("note", Query::default().order_asc("title"))
        .await?;
    let digest = sync.device().digest("note").await?;
    say!(
        "{name} holds {} notes (digest {}):",
        notes.len(),
        &digest[..12]
    );
    for note in notes {
        let done = note.get("done") == Some(&Value::Bool(true));
        let title = note.get("title").and_then(Value::as_text).unwrap_or("?");
        say!("  [{}] {title}", if done { "x" } else { " " });
    }
    Ok(digest)
}

/// Runs the demo in `dir`, or in a temporary folder removed afterwards.
pub(crate) async fn run(dir: Option<PathBuf>) -> Result<()> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            run_in(dir).await
        }
        None => {
            // A new folder of its own: never one an earlier demo (killed before it cleaned
            // up) or another user left under a name that could be guessed.
            let dir = tempfile::Builder::new()
                .prefix("storex-demo-")
                .tempdir()
                .context("creating a temporary folder")?;
            let result = run_in(dir.path().to_path_buf()).await;
            // The files were only for the demo; a leftover in the temp folder is harmless.
            let _ = dir.close();
            result
        }
    }
}

async fn run_in(dir: PathBuf) -> Result<()> {
    say!("devices and shared log in {}", dir.display());
    let url = storex_seaorm::sqlite_file_url(&dir.join("shared-log.db"), "rwc")?;
    let log: Arc<dyn SharedSyncLog> = Arc::new(
        SqlSharedLog::connect(&url)
            .await
            .context("opening the shared log")?,
    );
    let phone = device(&dir, "phone", &log).await?;
    let laptop = device(&dir, "laptop", &log).await?;

    let milk = phone
        .device()
        .storage()
        .create("note", object! { "title" => "buy milk" })
        .await?;
    phone.sync_once().await?;
    laptop.sync_once().await?;
    say!("both devices know \"buy milk\"; now they edit offline");

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
    tokio::time::sleep(std::time::Duration::from_millis(5)).await; // the laptop's edit is the later one
    laptop
        .device()
        .storage()
        .update_by_pk(
            "note",
            milk,
            object! { "title" => "buy milk (done)", "done" => true },
        )
        .await?;

    for (name, sync) in [("phone", &phone), ("laptop", &laptop), ("phone", &phone)] {
        let r = sync.sync_once().await?;
        say!(
            "{name} synced: pushed {}, pulled {}, applied {}, conflicts resolved {}",
            r.pushed,
            r.pulled,
            r.applied,
            r.conflicts
        );
    }
    let (a, b) = (show("phone", &phone).await?, show("laptop", &laptop).await?);
    if a != b {
        bail!("the devices did not converge");
    }
    say!("converged: both devices hold the same notes");
    Ok(())
}
