//! The channel itself on loopback: pairing, packages of every size both ways, limits, bad
//! input from the peer, a peer that goes away, and bad offer and answer strings.

mod common;

use std::time::Duration;

use common::{pair, pair_with};
use storex_channel_webrtc::{Error, WebRtcChannel, WebRtcOptions};
use storex_core::object;
use storex_sync::fast_sync::{ChannelError, FastSyncChannel, Package};

fn batch(seq: u64, bytes: usize) -> Package {
    Package::Batch {
        seq,
        collection: "note".into(),
        objects: vec![object! {
            "body" => (0..bytes).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>()
        }],
    }
}

#[tokio::test]
async fn packages_of_every_size_cross_both_ways_in_order() {
    let (mut a, mut b) = pair().await;
    let sizes = [0, 1, 100, 65_000, 65_536, 200_000, 5 * 1024 * 1024 + 3];
    let sending = async {
        for (seq, size) in sizes.iter().enumerate() {
            a.send(batch(seq as u64, *size)).await.expect("send");
        }
        for seq in 0..3 {
            assert_eq!(a.recv().await.expect("recv"), Some(Package::Ack { seq }));
        }
        a
    };
    let receiving = async {
        for (seq, size) in sizes.iter().enumerate() {
            let got = b.recv().await.expect("recv").expect("a package");
            assert!(got == batch(seq as u64, *size), "package {seq} differs");
        }
        for seq in 0..3 {
            b.send(Package::Ack { seq }).await.expect("send");
        }
        b
    };
    let (a, b) = tokio::join!(sending, receiving);
    a.close().await;
    drop(b);
}
