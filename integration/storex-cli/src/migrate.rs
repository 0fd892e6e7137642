//! `storex migrate send|receive`: a whole SQLite database to a new device over TCP or a WebRTC
//! data channel, with a progress bar; the fast-sync protocol does the work (verified,
//! resumable batches). Over TCP the receiver connects to the address the sender prints; over
//! WebRTC the sender prints an offer code, the receiver (given it) prints an answer code, and
//! the sender reads that answer from its standard input. Over TCP the receiver gives the
//! one-time code the sender printed ([`crate::migrate_code`]). A dropped TCP connection is
//! survived: the sender keeps its snapshot and waits for the receiver, which reconnects and
//! resumes after the last batch it applied; a receiver killed or given up meanwhile keeps
//! what it applied, and run again resumes it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use backon::{ExponentialBuilder, Retryable};
use indicatif::{ProgressBar, ProgressStyle};
use storex_channel_tcp::TcpChannel;
use storex_channel_webrtc::{WebRtcChannel, WebRtcOptions};
use storex_core::uuid::Uuid;
use storex_core::{error_chain, Registry, StorageBackend};
use storex_seaorm::sea_orm::ConnectionTrait;
use storex_seaorm::SeaOrmBackend;
use storex_sync::fast_sync::{
    read_offer, receive_offer, send_snapshot, FastSyncChannel, FastSyncOptions, Offer, Progress,
    SnapshotSender, TransferReport,
};
use storex_sync::{Clock, DeviceId, SyncDevice, SyncOptions};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;

use crate::migrate_code::{self, CodeRefused};
use crate::schema_notes::{received_notes, SchemaNotes};
use crate::tables::{tables_of, warn_not_carried};

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg:<24} [{bar:40}] {pos}/{len} objects ({per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Options whose progress drives `bar`, one collection at a time.
fn options(bar: &ProgressBar) -> FastSyncOptions {
    let bar = bar.clone();
    FastSyncOptions::default().with_progress(Arc::new(move |p: &Progress| {
        if bar.message() != p.collection {
            bar.set_message(p.collection.clone());
        }
        if bar.length() != Some(p.objects_total) {
            bar.set_length(p.objects_total);
        }
        bar.set_position(p.objects_done);
    }))
}

async fn open_device(backend: Arc<dyn StorageBackend>, registry: Registry) -> Result<SyncDevice> {
    Ok(SyncDevice::open(
        registry,
        backend,
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await?)
}

fn summary(report: &TransferReport, verb: &str) {
    // After a reconnection the report counts what its last connection moved.
    let (what, connection) = match report.resumed_after {
        Some(batch) => (
            " the rest:",
            format!(" on a connection that resumed after batch {batch}"),
        ),
        None => ("", String::new()),
    };
    say!(
        "{verb}{what} {} objects ({:.1} MB) in {} batches in {:.1} s{connection}",
        report.objects,
        report.bytes as f64 / 1_048_576.0,
        report.batches,
        report.duration.as_secs_f64()
    )
}

/// Whether the transfer can resume on a new connection after `error`: the connection lost
/// (closed, failed, or silent for the stall timeout), or a failure that may pass on either
/// side (a database busy for a moment; the peer says so in its cancel). Other failures (a
/// refusal, a cancel for good) would only happen again.
fn resumable(error: &storex_sync::Error) -> bool {
    error.is_transient()
}

/// How long closing a channel may take: a peer that vanished leaves a frame unsent, which
/// the system would otherwise keep trying to deliver for many minutes.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Closes `channel`, waiting at most [`CLOSE_WAIT`] for what it still has to deliver.
async fn close(channel: &mut dyn FastSyncChannel) {
    let _ = tokio::time::timeout(CLOSE_WAIT, channel.close()).await;
}

/// How the two devices meet.
#[derive(Debug)]
pub(crate) enum Transport {
    /// The sender listens on `listen`; the receiver connects to it, and again within
    /// `reconnect` after the connection drops.
    Tcp {
        /// Where to listen.
        listen: String,
        /// How long to wait for the receiver after the connection drops.
        reconnect: Duration,
        /// The code the receiver must give ([`migrate_code::sender_code`]).
        code: String,
    },
    /// Offer and answer codes, exchanged by the person running both commands; the local
    /// address offered.
    WebRtc(IpAddr),
}

/// How long a WebRTC peer waits for the data channel to open: the person running both
/// commands copies a code from one device to the other meanwhile.
const WEBRTC_WAIT: Duration = Duration::from_secs(5 * 60);

/// The WebRTC options of the command: `bind` (any port) and a wait long enough for a person.
fn webrtc_options(bind: IpAddr) -> WebRtcOptions {
    WebRtcOptions::default()
        .with_bind(SocketAddr::new(bind, 0))
        .with_connect_timeout(WEBRTC_WAIT)
}

/// Sends the database at `db` to the first device that connects.
pub(crate) async fn send(db: &Path, transport: Transport) -> Result<()> {
    if !db.is_file() {
        bail!("no database at {}", db.display());
    }
    let backend = SeaOrmBackend::open_sqlite_file(db)
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let tables = tables_of(backend.connection(), db).await?;
    warn_not_carried(&tables);
    let notes = SchemaNotes::of(&tables);
    let device = SyncDevice::open(
        tables.registry,
        Arc::new(backend),
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await?;
    let report = match transport {
        Transport::Tcp {
            listen,
            reconnect,
            code,
        } => send_over_tcp(&device, &listen, reconnect, &code, &notes).await?,
        Transport::WebRtc(bind) => send_over_webrtc(&device, bind, &notes).await?,
    };
    summary(&report, "sent");
    if report.unpushed > 0 {
        eprintln!(
            "warning: {} changes of this device were never pushed to a shared log; the new \
             device has them, other devices get them only when this one syncs: sync it before \
             wiping it",
            report.unpushed
        );
    }
    if report.quarantine_left > 0 {
        eprintln!(
            "warning: {} changes this device pulled but could not open stayed behind (the \
             receiving storex is older and did not ask for them); the new device gets them \
             only through a copy from a device that opened them",
            report.quarantine_left
        );
    }
    if !report.damaged.is_empty() {
        eprintln!(
            "warning: {} rows of this device's sync log or versions did not read and were \
             passed over; their objects were sent with the history that reads:",
            report.damaged.len()
        );
        for problem in &report.damaged {
            eprintln!("  {problem}");
        }
    }
    Ok(())
}

/// Sends `device` to the first receiver that connects on `listen` and gives `code`. The
/// snapshot is taken first, so that a receiver that connects gets the offer at once; it stays
/// open while the connection is down: a receiver that reconnects within `reconnect` resumes
/// after the last batch it applied.
async fn send_over_tcp(
    device: &SyncDevice,
    listen: &str,
    reconnect: Duration,
    code: &str,
    notes: &SchemaNotes,
) -> Result<TransferReport> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let bar = progress_bar();
    let options = notes.with_offer(options(&bar));
    let mut sender = SnapshotSender::open(device, options).await?;
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(e) => {
            let _ = sender.close().await;
            return Err(e.into());
        }
    };
    if address.ip().is_unspecified() {
        // Not an address to connect to: the receiver needs one of this machine's own.
        say!(
            "listening on {address}: on every address of this machine; the receiver connects \
             to this machine's address on its network, port {}",
            address.port()
        );
    } else {
        say!("listening on {address}");
    }
    say!("code: {code} (on the new device: storex migrate receive --db NEW.db --connect ADDRESS --code {code})");
    if !address.ip().is_loopback() {
        eprintln!(
            "warning: the data crosses the network unencrypted: use a network you trust (the \
             code keeps others from receiving it, not from reading it on the way)"
        );
    }
    let mut channel = migrate_code::accept(&listener, code).await;
    let report = loop {
        let sent = sender.send(&mut channel).await;
        close(&mut channel).await;
        match sent {
            Err(dropped) if resumable(&dropped) && !reconnect.is_zero() => {
                // Twice the receiver's time to reconnect: once it gives up, the same command
                // run again on its side still finds this one waiting, and resumes.
                let wait = reconnect.saturating_mul(2);
                bar.suspend(|| {
                    say!(
                        "the transfer broke off ({}); waiting up to {} s for the receiver to \
                         reconnect",
                        error_chain(&dropped),
                        wait.as_secs()
                    )
                });
                match tokio::time::timeout(wait, migrate_code::accept(&listener, code)).await {
                    Ok(accepted) => channel = accepted,
                    Err(_) => {
                        break Err(anyhow::Error::from(dropped).context(format!(
                            "the receiver did not reconnect within {} s (if it printed \
                             `received …`, the transfer is complete: only the last \
                             acknowledgement was lost)",
                            wait.as_secs()
                        )))
                    }
                }
            }
            sent => break sent.map_err(anyhow::Error::from),
        }
    };
    bar.finish_and_clear();
    // The snapshot's transaction ends either way; the transfer's outcome comes first.
    let closed = sender.close().await;
    let report = report?;
    closed?;
    Ok(report)
}

/// Sends `device` over a WebRTC data channel: prints the offer, reads the answer from
/// standard input. A dropped channel ends the transfer (a new one needs new codes).
async fn send_over_webrtc(
    device: &SyncDevice,
    bind: IpAddr,
    notes: &SchemaNotes,
) -> Result<TransferReport> {
    let (pending, offer) = WebRtcChannel::offer_with(&webrtc_options(bind))
        .await
        .context("preparing the WebRTC offer")?;
    say!("offer: {offer}");
    say!("run `storex migrate receive --db NEW.db --offer <the offer>` on the new device, then paste its answer here:");
    let mut input = tokio::io::BufReader::new(tokio::io::stdin());
    let answer = loop {
        let mut answer = String::new();
        input
            .read_line(&mut answer)
            .await
            .context("reading the answer")?;
        if answer.trim().is_empty() {
            bail!("no answer was given");
        }
        // A mistyped answer is asked for again: the offer stays good.
        match pending.check_answer(answer.trim()) {
            Ok(()) => break answer,
            Err(e) => say!("{e}; paste the new device's answer again:"),
        }
    };
    let mut channel = pending
        .connect(answer.trim())
        .await
        .context("connecting to the new device")?;
    let bar = progress_bar();
    let options = notes.with_offer(options(&bar));
    let report = send_snapshot(device, &mut channel, &options).await;
    // Before the process ends: a WebRTC channel still delivers in the background.
    close(&mut channel).await;
    bar.finish_and_clear();
    Ok(report?)
}

/// How the receiver reaches the sender.
#[derive(Debug)]
pub(crate) enum Source {
    /// The address the sender printed, reached again within `reconnect` after the connection
    /// drops.
    Tcp {
        /// The sender's address.
        connect: String,
        /// How long to try to reach the sender again after the connection drops.
        reconnect: Duration,
        /// The code the sender printed.
        code: String,
    },
    /// The offer code the sender printed, and the local address to answer with.
    WebRtc(String, IpAddr),
}

/// Receives from a sender and writes what it sends into a new database at `db`.
pub(crate) async fn receive(db: &Path, source: Source) -> Result<()> {
    if let Source::Tcp { code, .. } = &source {
        migrate_code::checked(code)?;
    }
    // Its write-ahead log and rollback journal too: SQLite would replay an earlier database's
    // log or journal left beside the target into the new file.
    if let Some(found) = sqlite_files(db).into_iter().find(|file| file.exists()) {
        bail!(
            "{} already exists; the migration writes a new database (remove the old one's \
             files first)",
            found.display()
        );
    }
    let mut channel: Box<dyn FastSyncChannel> = match &source {
        Source::Tcp { connect, code, .. } => Box::new(migrate_code::connect(connect, code).await?),
        Source::WebRtc(offer, bind) => {
            let (pending, answer) =
                WebRtcChannel::accept_with(offer.trim(), &webrtc_options(*bind))
                    .await
                    .context("reading the offer")?;
            say!("answer: {answer}");
            say!("paste this answer into the sender; waiting for it to connect…");
            Box::new(pending.open().await.context("waiting for the sender")?)
        }
    };
    let bar = progress_bar();
    let options = options(&bar);
    let mut offer = read_offer(channel.as_mut(), &options).await?;
    let registry = offer.registry().context("the sender's schema")?;
    let notes = received_notes(offer.properties());
    let session = offer.session();
    // Written beside the target and renamed once complete, so that a failed or killed
    // transfer leaves no half-written database under the target's name. What a transfer cut
    // short left there is resumed if this offer continues it.
    let partial = sqlite_files(&with_suffix(db, ".partial"));
    let (backend, device) = open_partial(&partial, &registry, session).await?;
    let report = loop {
        let received = receive_offer(&device, channel.as_mut(), offer, &options).await;
        // The last acknowledgement must reach the sender before this process ends.
        close(channel.as_mut()).await;
        match (received, &source) {
            (
                Err(dropped),
                Source::Tcp {
                    connect,
                    reconnect,
                    code,
                },
            ) if resumable(&dropped) && !reconnect.is_zero() => {
                bar.suspend(|| {
                    say!(
                        "the transfer broke off ({}); reaching {connect} again for up to {} s",
                        error_chain(&dropped),
                        reconnect.as_secs()
                    )
                });
                match reconnect_to(connect, code, *reconnect, session, &options).await {
                    Ok((again, resumed)) => (channel, offer) = (Box::new(again), resumed),
                    Err(e) => {
                        let resumable = e.downcast_ref::<NewSnapshot>().is_none()
                            && e.downcast_ref::<CodeRefused>().is_none();
                        let e = e.context(format!("it broke off ({})", error_chain(&dropped)));
                        break Err((e, resumable));
                    }
                }
            }
            (received, source) => {
                break received.map_err(|e| {
                    // Over WebRTC the sender ends with its channel: nothing to resume from.
                    let resumable = matches!(source, Source::Tcp { .. }) && resumable(&e);
                    (anyhow::Error::from(e), resumable)
                });
            }
        }
    };
    bar.finish_and_clear();
    let report = match report {
        Ok(report) => report,
        Err((e, resumable)) => {
            // Kept when the sender may still wait for it: the same command run again resumes.
            // A progress that does not read keeps it too: the next run looks again, and
            // starts over only if it still does not.
            let kept = match resumable {
                true => device.transfer_resumes_after(session).await.transpose(),
                false => None,
            };
            drop(device);
            let _ = backend.connection().close_by_ref().await;
            let resumes = match kept {
                None => {
                    remove_files(&partial);
                    return Err(e.context(format!(
                        "the transfer failed; {} was not written",
                        db.display()
                    )));
                }
                Some(Ok(batch)) => format!("after batch {batch}"),
                Some(Err(unread)) => {
                    format!("(how far it came does not read: {})", error_chain(&unread))
                }
            };
            return Err(e.context(format!(
                "the transfer broke off {resumes}; {} was not written, what arrived is kept in \
                 {}: run the same command again while the sender still waits, and it resumes \
                 (from a new sender it starts over)",
                db.display(),
                partial[0].display()
            )));
        }
    };
    drop(device);
    // Said before anything can fail: they hold for the partial file too.
    for warning in &notes.warnings {
        eprintln!("warning: {warning}");
    }
    // The transfer committed: a failure from here on leaves the whole database in the
    // partial file, which the error names (running the command again would start over).
    let arrived = |what: String| {
        format!(
            "{what}; the whole database arrived and is kept in {}: move it to {} yourself \
             (with its `-wal` file, if one is beside it)",
            partial[0].display(),
            db.display()
        )
    };
    if let Some(version) = notes.user_version {
        backend
            .connection()
            .execute_unprepared(&format!("PRAGMA user_version = {version}"))
            .await
            .with_context(|| {
                arrived(format!(
                    "setting the schema version of the received database (to {version}, which \
                     it does not have yet)"
                ))
            })?;
    }
    let closed = backend.connection().close_by_ref().await;
    closed.with_context(|| arrived("closing the received database".to_owned()))?;
    if !partial[0].is_file() {
        bail!(
            "the received database {} is gone; {} was not written",
            partial[0].display(),
            db.display()
        );
    }
    for (from, to) in partial.iter().zip(sqlite_files(db)) {
        if from.exists() {
            move_without_replacing(from, &to)?;
        }
    }
    summary(&report, "received");
    Ok(())
}

/// Moves the received file `from` to `to`, unless a file appeared at `to` during the transfer
/// (an app or a second `receive` made it): that one is left as it is, and the received
/// database stays where it is, named in the error. A hard link makes the move and the check
/// one step where the file system has them; elsewhere (FAT, say) the check comes just before
/// the rename.
fn move_without_replacing(from: &Path, to: &Path) -> Result<()> {
    let appeared = || {
        anyhow::anyhow!(
            "{} appeared during the transfer and was left as it is; the received database is \
             in {}: move it there yourself once the other is out of the way",
            to.display(),
            from.display()
        )
    };
    match std::fs::hard_link(from, to) {
        Ok(()) => std::fs::remove_file(from)
            .with_context(|| format!("removing {} once linked", from.display())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(appeared()),
        Err(_) if to.exists() => Err(appeared()),
        Err(_) => std::fs::rename(from, to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display())),
    }
}

/// Opens the database the transfer writes into, at `partial[0]`: the one an earlier
/// transfer of `session` left there, to resume, or else a new one (anything else found there
/// is removed).
async fn open_partial(
    partial: &[PathBuf; 4],
    registry: &Registry,
    session: Uuid,
) -> Result<(Arc<SeaOrmBackend>, SyncDevice)> {
    if partial[0].exists() {
        match resumable_partial(&partial[0], registry, session).await {
            Ok(Some((backend, device, batch))) => {
                say!(
                    "resuming the transfer kept in {} after batch {batch}",
                    partial[0].display()
                );
                return Ok((backend, device));
            }
            Ok(None) => say!(
                "{} holds no transfer this sender continues; starting over",
                partial[0].display()
            ),
            Err(e) => say!(
                "{} does not open ({}); starting over",
                partial[0].display(),
                error_chain(e.as_ref())
            ),
        }
    }
    remove_files(partial);
    let backend = Arc::new(
        SeaOrmBackend::open_sqlite_file(&partial[0])
            .await
            .with_context(|| format!("opening {}", partial[0].display()))?,
    );
    let device = open_device(backend.clone() as Arc<dyn StorageBackend>, registry.clone()).await?;
    Ok((backend, device))
}

/// The database at `path`, if a transfer of `session` into it broke off after applying a
/// batch: it, its device and that batch.
async fn resumable_partial(
    path: &Path,
    registry: &Registry,
    session: Uuid,
) -> Result<Option<(Arc<SeaOrmBackend>, SyncDevice, u64)>> {
    let backend = Arc::new(SeaOrmBackend::open_sqlite_file(path).await?);
    let opened = async {
        let device =
            open_device(backend.clone() as Arc<dyn StorageBackend>, registry.clone()).await?;
        let batch = device.transfer_resumes_after(session).await?;
        Ok::<_, anyhow::Error>(batch.map(|batch| (device, batch)))
    }
    .await;
    match opened {
        Ok(Some((device, batch))) => Ok(Some((backend, device, batch))),
        other => {
            // Closed before its files are removed.
            let _ = backend.connection().close_by_ref().await;
            other.map(|_| None)
        }
    }
}

/// The sender reached again took a new snapshot: the transfer cannot resume.
#[derive(Debug)]
struct NewSnapshot(String);

impl std::fmt::Display for NewSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the sender at {} took a new snapshot (was it restarted?); the transfer starts \
             over when you run `storex migrate receive` again (and `storex migrate send`, if \
             it is no longer waiting)",
            self.0
        )
    }
}

impl std::error::Error for NewSnapshot {}

/// Reaches the sender at `address` again, trying for up to `window` in all (0.1 s to 5 s
/// apart), and reads its offer, which must continue `session` (a restarted sender took a new
/// snapshot: the transfer has to start over).
async fn reconnect_to(
    address: &str,
    code: &str,
    window: Duration,
    session: Uuid,
    options: &FastSyncOptions,
) -> Result<(TcpChannel, Offer)> {
    let attempt = || async {
        let mut channel = migrate_code::connect(address, code).await?;
        let offer = read_offer(&mut channel, options).await?;
        Ok::<_, anyhow::Error>((channel, offer))
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    // The window bounds the attempts too: a host that is gone never answers them.
    // A refused code is refused again: not retried.
    let retrying = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &anyhow::Error| e.downcast_ref::<CodeRefused>().is_none());
    let unreachable = || {
        format!(
            "the sender at {address} could not be reached again within {} s",
            window.as_secs()
        )
    };
    let (channel, offer) = match tokio::time::timeout(window, retrying).await {
        // The sender answered, and refused the code: said as it is.
        Ok(Err(e)) if e.downcast_ref::<CodeRefused>().is_some() => return Err(e),
        Ok(reached) => reached.with_context(unreachable)?,
        Err(_) => bail!(unreachable()),
    };
    if offer.session() != session {
        return Err(NewSnapshot(address.to_owned()).into());
    }
    Ok((channel, offer))
}

/// `path` with `suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A SQLite database's files: the database, its write-ahead log, its shared memory and its
/// rollback journal.
fn sqlite_files(db: &Path) -> [PathBuf; 4] {
    [
        db.to_path_buf(),
        with_suffix(db, "-wal"),
        with_suffix(db, "-shm"),
        with_suffix(db, "-journal"),
    ]
}

fn remove_files(files: &[PathBuf]) {
    for file in files {
        // Missing is fine: there is nothing to remove.
        let _ = std::fs::remove_file(file);
    }
}

#[cfg(test)]
mod tests {
    use super::move_without_replacing;

    #[test]
    fn the_received_file_moves_to_a_free_name() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (from, to) = (dir.path().join("new.db.partial"), dir.path().join("new.db"));
        std::fs::write(&from, b"received").expect("write");
        move_without_replacing(&from, &to).expect("moved");
        assert!(!from.exists());
        assert_eq!(std::fs::read(&to).expect("read"), b"received");
    }

    #[test]
    fn a_file_that_appeared_at_the_target_is_left_as_it_is() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (from, to) = (dir.path().join("new.db.partial"), dir.path().join("new.db"));
        std::fs::write(&from, b"received").expect("write");
        std::fs::write(&to, b"the app's own").expect("write");
        let error = move_without_replacing(&from, &to).expect_err("replaced");
        assert!(error.to_string().contains("new.db.partial"), "{error}");
        assert_eq!(std::fs::read(&to).expect("read"), b"the app's own");
        assert_eq!(std::fs::read(&from).expect("read"), b"received");
    }
}
