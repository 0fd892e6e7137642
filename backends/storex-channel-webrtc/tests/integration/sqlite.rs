//! Fast sync between SQLite databases over a WebRTC data channel on loopback: a large
//! database moves row for row, two devices exchange both ways, a peer that goes away
//! mid-transfer leaves the receiver consistent (and the transfer resumes), and a bad frame
//! from the network ends the session without touching what was applied.

use crate::common;

use std::time::Duration;

use common::pair;
use storex_channel_webrtc::WebRtcChannel;
use storex_core::{object, BoxFuture};
use storex_sync::fast_sync::{
    exchange, receive_snapshot, send_snapshot, ChannelError, CollectionInfo, EncodedObjects,
    FastSyncChannel, FastSyncError, FastSyncOptions, Package, SnapshotSender, Turn,
};
use storex_sync::Error;
use storex_test::transfer::{
    assert_identical, count, fill, rows, sqlite_device as device, three_collections,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_rows_in_three_collections_arrive_identical() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old, new) = (
        device(dir.path(), "old.db", three_collections()).await,
        device(dir.path(), "new.db", three_collections()).await,
    );
    fill(&old, 0, 40_000, 3.0).await;
    let (mut a, mut b) = pair().await;
    let options = FastSyncOptions::default();
    let (sent, received) = tokio::join!(
        send_snapshot(&old, &mut a, &options),
        receive_snapshot(&new, &mut b, &options)
    );
    let (sent, received) = (sent.expect("send"), received.expect("receive"));
    assert_eq!(sent.objects, received.objects);
    assert!(sent.batches > 10, "{sent:?}");
    assert_identical(&old, &new).await;
    for (collection, rows) in [("note", 40_000), ("tag", 40_000), ("event", 20_000)] {
        assert_eq!(count(&new, collection).await, rows, "{collection}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_merges_two_devices_both_ways() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (a, b) = (
        device(dir.path(), "a.db", three_collections()).await,
        device(dir.path(), "b.db", three_collections()).await,
    );
    // Weights like 272/3: a float merged through the sync log must come back bit for bit.
    fill(&a, 0, 3_000, 3.0).await;
    fill(&b, 10_000, 2_000, 3.0).await;
    let (mut ca, mut cb) = pair().await;
    let options = FastSyncOptions::default().with_batch_bytes(32 * 1024);
    let (ra, rb) = tokio::join!(
        exchange(&a, &mut ca, &options, Turn::SendFirst),
        exchange(&b, &mut cb, &options, Turn::ReceiveFirst)
    );
    let (ra, rb) = (ra.expect("a's side"), rb.expect("b's side"));
    assert_eq!(ra.sent.objects, rb.received.objects);
    assert_eq!(rb.sent.objects, ra.received.objects);
    assert_identical(&a, &b).await;
    assert_eq!(count(&a, "note").await, 5_000);
    assert_eq!(count(&b, "tag").await, 5_000);
    assert_eq!(count(&a, "event").await, 2_500);
}

/// The sending peer's side of a connection that goes away after passing `left` packages:
/// its WebRTC channel is then closed, as when the app quits or the device walks away.
#[derive(Debug)]
struct Vanishing {
    inner: Option<WebRtcChannel>,
    left: usize,
}

impl Vanishing {
    async fn pass(&mut self) -> Result<&mut WebRtcChannel, ChannelError> {
        if self.left == 0 {
            if let Some(channel) = self.inner.take() {
                channel.close().await;
            }
        }
        self.left = self.left.saturating_sub(1);
        self.inner.as_mut().ok_or(ChannelError::Closed)
    }
}

impl FastSyncChannel for Vanishing {
    fn send(&mut self, package: Package) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(async move { self.pass().await?.send(package).await })
    }

    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Package>, ChannelError>> {
        Box::pin(async move { self.pass().await?.recv().await })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_leaves_mid_transfer_leaves_the_receiver_consistent() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old, new) = (
        device(dir.path(), "old.db", three_collections()).await,
        device(dir.path(), "new.db", three_collections()).await,
    );
    fill(&old, 0, 6_000, 3.0).await;
    let options = FastSyncOptions::default()
        .with_batch_bytes(16 * 1024)
        .with_window(4)
        .with_stall_timeout(Duration::from_secs(10));
    let mut sender = SnapshotSender::open(&old, options.clone())
        .await
        .expect("snapshot");

    let (a, mut b) = pair().await;
    let mut a = Vanishing {
        inner: Some(a),
        left: 40,
    };
    let (first_send, first_receive) = tokio::join!(
        sender.send(&mut a),
        receive_snapshot(&new, &mut b, &options)
    );
    assert!(first_send.is_err(), "the sender's connection went away");
    let err = first_receive.expect_err("the receiver's session must end with an error");
    assert!(
        matches!(
            err,
            Error::FastSync(FastSyncError::Channel(ChannelError::Closed))
        ),
        "{err:?}"
    );
    drop(b);

    // What arrived is whole: every row the receiver has is the sender's row, unchanged.
    let mut partial = 0;
    for collection in ["note", "tag", "event"] {
        let theirs = rows(&old, collection).await;
        for row in rows(&new, collection).await {
            assert!(
                theirs.contains(&row),
                "{collection}: a row not as sent: {row:?}"
            );
            partial += 1;
        }
    }
    assert!(partial > 0, "the cut came after some batches were applied");
    assert!(partial < 15_000, "the cut came before the end");

    // A new connection resumes after the last applied batch and completes.
    let (mut a, mut b) = pair().await;
    let (second_send, second_receive) = tokio::join!(
        sender.send(&mut a),
        receive_snapshot(&new, &mut b, &options)
    );
    let (sent, received) = (second_send.expect("send"), second_receive.expect("receive"));
    sender.close().await.expect("close");
    assert!(
        received.resumed_after.is_some_and(|r| r > 0),
        "{received:?}"
    );
    assert_eq!(sent.resumed_after, received.resumed_after);
    assert_identical(&old, &new).await;
}

#[tokio::test]
async fn a_bad_frame_ends_the_session_and_leaves_applied_batches_as_they_were() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let new = device(dir.path(), "new.db", three_collections()).await;
    let (mut a, mut b) = pair().await;
    let hand_made_sender = async {
        a.send(Package::Hello {
            session: storex_core::uuid::Uuid::now_v7(),
            collections: vec![CollectionInfo {
                name: "tag".into(),
                schema_version: 1,
                objects: 3,
            }],
            definitions: Vec::new(),
            cursor: 0,
            latest: None,
            subscription: None,
            quarantined: 0,
            properties: Default::default(),
        })
        .await
        .expect("hello");
        assert!(matches!(
            a.recv().await,
            Ok(Some(Package::Ready {
                resume_after: None,
                merge: false,
                quarantine: false,
            }))
        ));
        a.send(Package::Batch {
            seq: 1,
            collection: "tag".into(),
            objects: EncodedObjects::encode(&[object! { "note" => 1, "name" => "ok" }]),
        })
        .await
        .expect("batch 1");
        assert!(matches!(a.recv().await, Ok(Some(Package::Ack { seq: 1 }))));
        // A frame that announces 100 bytes and brings garbage of that length.
        let mut garbage = vec![0xF5, 0, 0, 0, 100, storex_sync::fast_sync::PROTOCOL_VERSION];
        garbage.extend(std::iter::repeat_n(0xc1, 99));
        a.send_raw(&garbage).await.expect("bad frame");
        a
    };
    let options = FastSyncOptions::default();
    let (a, received) = tokio::join!(hand_made_sender, receive_snapshot(&new, &mut b, &options));
    let err = received.expect_err("a bad frame must end the session");
    assert!(
        matches!(
            err,
            Error::FastSync(FastSyncError::Channel(ChannelError::Malformed { .. }))
        ),
        "{err:?}"
    );
    assert_eq!(
        rows(&new, "tag").await,
        vec![object! { "note" => 1, "name" => "ok" }],
        "the applied batch stays, nothing else"
    );
    a.close().await;
}
