//! Fast sync over real TCP sockets on 127.0.0.1: a database moves, oversized, garbage and
//! cut-off frames from the network end the session with a clear error, an object too large
//! for a frame is named on both sides, and closing towards a peer that stopped reading ends.

use std::sync::Arc;
use std::time::Duration;

use storex_channel_tcp::TcpChannel;
use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Filter, Operation, Registry, StorageBackend,
};
use storex_seaorm::SeaOrmBackend;
use storex_sync::fast_sync::{
    receive_snapshot, send_snapshot, ChannelError, FastSyncChannel, FastSyncError, FastSyncOptions,
    Package,
};
use storex_sync::{Clock, DeviceId, Error, SyncDevice, SyncOptions};
use storex_test::transfer::{assert_identical, count, fill, sqlite_device, three_collections};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .field("body", FieldType::Blob)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

async fn device(dir: &std::path::Path, name: &str) -> SyncDevice {
    let backend: Arc<dyn StorageBackend> = Arc::new(
        SeaOrmBackend::open_sqlite_file(dir.join(name))
            .await
            .expect("open"),
    );
    SyncDevice::open(
        registry(),
        backend,
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device")
}

#[tokio::test]
async fn a_database_moves_over_tcp_on_loopback() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old, new) = (
        device(dir.path(), "old.db").await,
        device(dir.path(), "new.db").await,
    );
    for chunk in 0..5 {
        let steps = (0..1_000)
            .map(|i| {
                BatchStep::new(Operation::create(
                    "note",
                    object! { "title" => format!("note {chunk}-{i}"), "body" => vec![(i % 256) as u8; 200] },
                ))
            })
            .collect();
        old.storage().batch(steps).await.expect("write");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let options = FastSyncOptions::default().with_batch_bytes(64 * 1024);
    let receiving = async {
        let mut channel = TcpChannel::accept(&listener).await.expect("accept");
        receive_snapshot(&new, &mut channel, &options).await
    };
    let sending = async {
        let mut channel = TcpChannel::connect(address).await.expect("connect");
        send_snapshot(&old, &mut channel, &options).await
    };
    let (received, sent) = tokio::join!(receiving, sending);
    let (received, sent) = (received.expect("receive"), sent.expect("send"));
    assert_eq!(received.objects, sent.objects);
    assert!(sent.batches > 10);
    assert_eq!(
        new.storage()
            .count("note", Filter::all())
            .await
            .expect("count"),
        5_000
    );
    assert_eq!(
        old.digest("note").await.expect("digest"),
        new.digest("note").await.expect("digest")
    );
}

/// Accepts one connection as a receiver, while `peer` writes raw bytes to it.
async fn receive_from_raw_peer(bytes: Vec<u8>, close: bool) -> Error {
    let dir = tempfile::tempdir().expect("temporary directory");
    let new = device(dir.path(), "new.db").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let options = FastSyncOptions::default().with_stall_timeout(Duration::from_secs(5));
    let receiving = async {
        let mut channel =
            TcpChannel::with_max_frame(listener.accept().await.expect("accept").0, 1024 * 1024);
        receive_snapshot(&new, &mut channel, &options).await
    };
    let peer = async {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(&bytes).await.expect("write");
        if close {
            drop(stream);
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let (received, ()) = tokio::join!(receiving, peer);
    received.expect_err("the session must fail")
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn channel_error(err: &Error) -> &ChannelError {
    match err {
        Error::FastSync(FastSyncError::Channel(e)) => e,
        other => panic!("not a channel error: {other}"),
    }
}

#[tokio::test]
async fn an_oversized_frame_is_refused_before_it_is_read() {
    let err = receive_from_raw_peer((200_000_000u32).to_be_bytes().to_vec(), false).await;
    assert!(
        matches!(
            channel_error(&err),
            ChannelError::TooLarge { limit: 1_048_576 }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_garbage_frame_is_reported_as_malformed() {
    let err = receive_from_raw_peer(
        frame(&[storex_sync::fast_sync::PROTOCOL_VERSION, 0xc1, 0xc1, 0xc1]),
        false,
    )
    .await;
    assert!(
        matches!(channel_error(&err), ChannelError::Malformed { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_frame_cut_off_by_a_closed_connection_is_reported() {
    let hello = Package::Finish.encode();
    let mut bytes = frame(&hello);
    bytes.truncate(bytes.len() - 1);
    let err = receive_from_raw_peer(bytes, true).await;
    // The peer went away: the same as a connection closed between frames, which a
    // migration resumes from, not a transport failure.
    assert!(
        matches!(channel_error(&err), ChannelError::Closed),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_peer_speaking_another_version_is_refused() {
    let mut hello = Package::Finish.encode();
    hello[0] = 7;
    let err = receive_from_raw_peer(frame(&hello), false).await;
    assert!(
        matches!(
            channel_error(&err),
            ChannelError::WrongVersion { found: 7, .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_hundred_thousand_rows_in_three_collections_arrive_identical() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old, new) = (
        sqlite_device(dir.path(), "old.db", three_collections()).await,
        sqlite_device(dir.path(), "new.db", three_collections()).await,
    );
    fill(&old, 0, 40_000, 3.0).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let options = FastSyncOptions::default();
    let receiving = async {
        let mut channel = TcpChannel::accept(&listener).await.expect("accept");
        receive_snapshot(&new, &mut channel, &options).await
    };
    let sending = async {
        let mut channel = TcpChannel::connect(address).await.expect("connect");
        send_snapshot(&old, &mut channel, &options).await
    };
    let (received, sent) = tokio::join!(receiving, sending);
    received.expect("receive");
    sent.expect("send");
    assert_identical(&old, &new).await;
    for (collection, rows) in [("note", 40_000), ("tag", 40_000), ("event", 20_000)] {
        assert_eq!(count(&new, collection).await, rows, "{collection}");
    }
}

/// A receiver paused longer than the stall timeout, while the sender's window of batches is
/// more than the sockets buffer: the receiver goes on reading during the pause (and keeps
/// what it reads), so the sender's sends do not wait on a full socket and take the pause
/// for a stall; the transfer completes after the pause.
#[tokio::test]
async fn a_receiver_paused_longer_than_the_stall_timeout_does_not_stall_large_batches() {
    use storex_sync::fast_sync::{PauseHandle, Progress};
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old, new) = (
        device(dir.path(), "old.db").await,
        device(dir.path(), "new.db").await,
    );
    let steps = (0..800)
        .map(|i| {
            let body = vec![(i % 256) as u8; 20 * 1024];
            let note = object! { "title" => format!("note {i}"), "body" => body };
            BatchStep::new(Operation::create("note", note))
        })
        .collect();
    old.storage().batch(steps).await.expect("write");
    let pause = PauseHandle::new();
    let trigger = pause.clone();
    let once = std::sync::atomic::AtomicBool::new(false);
    // A stall timeout well above the time one batch takes to read, encode or apply, even
    // with the other tests running beside it (a send may wait for the receiver to apply the
    // batch before), and below the pause.
    let base = FastSyncOptions::default()
        .with_batch_bytes(2 * 1024 * 1024)
        .with_window(8)
        .with_stall_timeout(Duration::from_secs(10));
    let receiving_options = base
        .clone()
        .with_pause(pause.clone())
        .with_progress(Arc::new(move |_: &Progress| {
            if !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                trigger.pause();
            }
        }));
    let resumer = tokio::spawn(async move {
        while !pause.is_paused() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
        pause.resume();
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let receiving = async {
        let mut channel = TcpChannel::accept(&listener).await.expect("accept");
        receive_snapshot(&new, &mut channel, &receiving_options).await
    };
    let sending = async {
        let mut channel = TcpChannel::connect(address).await.expect("connect");
        send_snapshot(&old, &mut channel, &base).await
    };
    let both = async { tokio::join!(receiving, sending) };
    let (received, sent) = tokio::time::timeout(Duration::from_secs(120), both)
        .await
        .expect("the transfer ends");
    sent.expect("send");
    received.expect("receive");
    resumer.await.expect("the receiver paused once");
    assert_eq!(
        old.digest("note").await.expect("digest"),
        new.digest("note").await.expect("digest")
    );
}

#[tokio::test]
async fn closing_towards_a_peer_that_stopped_reading_gives_up_after_a_while() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let mut channel = TcpChannel::connect(address).await.expect("connect");
    // The peer accepts and never reads.
    let (_peer, _) = listener.accept().await.expect("accept");
    let package = Package::Batch {
        seq: 1,
        collection: "blob".into(),
        objects: storex_sync::fast_sync::EncodedObjects::encode(&[
            object! { "b" => vec![7u8; 32 * 1024 * 1024] },
        ]),
    };
    // Far more than the sockets hold: the send gives up halfway, its rest still buffered.
    let sending = tokio::time::timeout(Duration::from_millis(500), channel.send(package)).await;
    assert!(sending.is_err(), "the send cannot finish");
    let started = std::time::Instant::now();
    let closing = tokio::time::timeout(Duration::from_secs(60), channel.close()).await;
    assert!(closing.is_ok(), "close hung");
    let waited = started.elapsed();
    assert!(
        waited >= storex_channel_tcp::CLOSE_WAIT - Duration::from_secs(1),
        "{waited:?}"
    );
}

#[tokio::test]
async fn an_object_larger_than_a_frame_is_named_on_both_sides() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old, new) = (
        device(dir.path(), "old.db").await,
        device(dir.path(), "new.db").await,
    );
    let id = storex_core::uuid::Uuid::now_v7();
    let steps = vec![
        BatchStep::new(Operation::create(
            "note",
            object! { "title" => "small", "body" => vec![1u8; 100] },
        )),
        BatchStep::new(Operation::create(
            "note",
            object! { "id" => id, "title" => "large", "body" => vec![2u8; 2 * 1024 * 1024] },
        )),
    ];
    old.storage().batch(steps).await.expect("write");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let options = FastSyncOptions::default().with_stall_timeout(Duration::from_secs(10));
    let limit = 1024 * 1024;
    let receiving = async {
        let stream = listener.accept().await.expect("accept").0;
        let mut channel = TcpChannel::with_max_frame(stream, limit);
        receive_snapshot(&new, &mut channel, &options).await
    };
    let sending = async {
        let stream = TcpStream::connect(address).await.expect("connect");
        let mut channel = TcpChannel::with_max_frame(stream, limit);
        send_snapshot(&old, &mut channel, &options).await
    };
    let (received, sent) = tokio::join!(receiving, sending);
    let named = format!("object ({id}) takes ");
    let sent = storex_core::error_chain(&sent.expect_err("the large object cannot go"));
    assert!(sent.contains("collection `note`"), "{sent}");
    assert!(sent.contains(&named), "{sent}");
    assert!(
        sent.contains("more than the 1048576 bytes the channel carries in one frame"),
        "{sent}"
    );
    let received = storex_core::error_chain(&received.expect_err("the sender gave up"));
    assert!(received.contains(&named), "{received}");
}

/// Forwards one connection from `listener` to `to`: towards `to` at about 650 kB/s (32 KiB
/// every 50 ms), back as fast as it comes.
async fn slow_link(listener: TcpListener, to: std::net::SocketAddr) {
    use tokio::io::AsyncReadExt;
    let inbound = listener.accept().await.expect("accept").0;
    let outbound = TcpStream::connect(to).await.expect("connect");
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let forward = async {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match in_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = out_write.shutdown().await;
    };
    let back = async {
        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
        let _ = in_write.shutdown().await;
    };
    tokio::join!(forward, back);
}

/// A 3 MiB object takes about five seconds on a slow link: with a stall timeout of two seconds
/// the transfer still completes, since its bytes keep moving (a timeout on the whole frame
/// took it for a stall, and a resume sent it again, for ever). The sockets towards the link
/// buffer little, as a real slow link's do compared with its frames: the sender's wait for
/// the acknowledgement after its last byte is what those buffers hold, not the frame.
#[tokio::test]
async fn a_large_object_on_a_slow_link_is_not_taken_for_a_stall() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old, new) = (
        device(dir.path(), "old.db").await,
        device(dir.path(), "new.db").await,
    );
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    old.storage()
        .create("note", object! { "title" => "large", "body" => body })
        .await
        .expect("write");
    let receiver = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let receiver_address = receiver.local_addr().expect("address");
    let small_buffers = || {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(64 * 1024).expect("send buffer");
        socket
            .set_recv_buffer_size(64 * 1024)
            .expect("receive buffer");
        socket
    };
    let link = small_buffers();
    link.bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let link = link.listen(4).expect("listen");
    let link_address = link.local_addr().expect("address");
    let options = FastSyncOptions::default().with_stall_timeout(Duration::from_secs(2));
    let receiving = async {
        let mut channel = TcpChannel::accept(&receiver).await.expect("accept");
        receive_snapshot(&new, &mut channel, &options).await
    };
    let sending = async {
        let stream = small_buffers()
            .connect(link_address)
            .await
            .expect("connect");
        let mut channel = TcpChannel::new(stream);
        let sent = send_snapshot(&old, &mut channel, &options).await;
        channel.close().await;
        sent
    };
    let started = std::time::Instant::now();
    let (received, sent, ()) = tokio::join!(receiving, sending, slow_link(link, receiver_address));
    let took = started.elapsed();
    sent.expect("sent");
    received.expect("received");
    assert!(
        took > Duration::from_secs(4),
        "the link was not slow: {took:?}"
    );
    assert_eq!(
        old.digest("note").await.expect("digest"),
        new.digest("note").await.expect("digest")
    );
}
