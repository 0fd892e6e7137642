//! The channel itself on loopback: pairing, packages of every size both ways, limits, bad
//! input from the peer, a peer that goes away, and bad offer and answer strings.

use crate::common;

use std::time::Duration;

use common::{pair, pair_with};
use storex_channel_webrtc::{Error, WebRtcChannel, WebRtcOptions};
use storex_core::object;
use storex_sync::fast_sync::{ChannelError, EncodedObjects, FastSyncChannel, Package};

fn batch(seq: u64, bytes: usize) -> Package {
    Package::Batch {
        seq,
        collection: "note".into(),
        objects: EncodedObjects::encode(&[object! {
            "body" => (0..bytes).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>()
        }]),
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

/// Pairs with a 1 MiB frame limit, lets `peer` write raw messages, and returns what the
/// other side's next `recv` says.
async fn receive_raw(messages: Vec<Vec<u8>>, close: bool) -> Result<Option<Package>, ChannelError> {
    let options = WebRtcOptions::default().with_max_frame(1024 * 1024);
    let (mut a, mut b) = pair_with(&options).await;
    for message in &messages {
        b.send_raw(message).await.expect("send raw");
    }
    if close {
        b.close().await;
    }
    let got = tokio::time::timeout(Duration::from_secs(20), a.recv())
        .await
        .expect("the receiver must not hang");
    a.close().await;
    got
}

fn start(length: u32, data: &[u8]) -> Vec<u8> {
    let mut message = vec![0xF5];
    message.extend_from_slice(&length.to_be_bytes());
    message.extend_from_slice(data);
    message
}

#[tokio::test]
async fn an_oversized_frame_is_refused_from_its_header() {
    let got = receive_raw(vec![start(200_000_000, &[1, 2, 3])], false).await;
    assert!(
        matches!(got, Err(ChannelError::TooLarge { limit: 1_048_576 })),
        "{got:?}"
    );
}

#[tokio::test]
async fn garbage_messages_and_frames_are_malformed() {
    let version = storex_sync::fast_sync::PROTOCOL_VERSION;
    for messages in [
        vec![b"hello, peer".to_vec()],
        vec![vec![0xC0, 1, 2, 3]],
        vec![start(4, &[version, 0xc1, 0xc1, 0xc1])],
        vec![start(10, &[version, 1]), start(1, &[version])],
    ] {
        let got = receive_raw(messages.clone(), false).await;
        assert!(
            matches!(got, Err(ChannelError::Malformed { .. })),
            "{messages:?}: {got:?}"
        );
    }
}

#[tokio::test]
async fn a_frame_of_another_version_is_refused() {
    let mut frame = Package::Finish.encode();
    frame[0] = 7;
    let got = receive_raw(vec![start(frame.len() as u32, &frame)], false).await;
    assert!(
        matches!(got, Err(ChannelError::WrongVersion { found: 7, .. })),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_frame_cut_off_by_a_closing_peer_is_reported_as_closed() {
    let frame = batch(1, 100_000).encode();
    let got = receive_raw(vec![start(frame.len() as u32, &frame[..50_000])], true).await;
    assert!(matches!(got, Err(ChannelError::Closed)), "{got:?}");
}

#[tokio::test]
async fn a_peer_closing_between_packages_ends_the_stream() {
    let (mut a, mut b) = pair().await;
    b.send(Package::Finish).await.expect("send");
    b.close().await;
    assert_eq!(a.recv().await.expect("recv"), Some(Package::Finish));
    let end = tokio::time::timeout(Duration::from_secs(20), a.recv())
        .await
        .expect("the receiver must not hang");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert!(matches!(
        a.send(Package::Done).await,
        Err(ChannelError::Closed)
    ));
}

#[tokio::test]
async fn a_package_over_the_limit_is_not_sent() {
    let options = WebRtcOptions::default().with_max_frame(1024 * 1024);
    let (mut a, mut b) = pair_with(&options).await;
    let err = a
        .send(batch(1, 2 * 1024 * 1024))
        .await
        .expect_err("too large");
    assert!(
        matches!(err, ChannelError::TooLarge { limit: 1_048_576 }),
        "{err:?}"
    );
    // The channel is still usable: nothing of the refused package went out.
    a.send(Package::Finish).await.expect("send");
    assert_eq!(b.recv().await.expect("recv"), Some(Package::Finish));
}

fn pairing_problem(result: Result<impl std::fmt::Debug, Error>) -> Error {
    result.expect_err("the string must be refused")
}

#[tokio::test]
async fn bad_offer_strings_are_refused_with_a_clear_error() {
    let (pending, offer) = WebRtcChannel::offer().await.expect("offer");
    let (_waiting, answer) = WebRtcChannel::accept(&offer).await.expect("accept");
    for (bad, says) in [
        ("", "empty"),
        ("this is not an offer!", "base64"),
        ("aGVsbG8gd29ybGQ=", "not a session description"),
        (&offer[..offer.len() / 2], ""),
        (answer.as_str(), "an answer, not an offer"),
    ] {
        let err = pairing_problem(WebRtcChannel::accept(bad).await);
        let text = err.to_string();
        assert!(
            matches!(err, Error::InvalidOffer { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(text.starts_with("not a valid WebRTC offer: "), "{text}");
        assert!(text.contains(says), "{bad:?}: {text}");
    }
    drop(pending);
}

#[tokio::test]
async fn bad_answer_strings_are_refused_with_a_clear_error() {
    let (_, offer) = WebRtcChannel::offer().await.expect("offer");
    let (_waiting, answer) = WebRtcChannel::accept(&offer).await.expect("accept");
    for (bad, says) in [
        ("", "empty"),
        ("%%%", "base64"),
        (&answer[..answer.len() / 2], ""),
        (offer.as_str(), "an offer, not an answer"),
    ] {
        let (pending, _) = WebRtcChannel::offer().await.expect("offer");
        let err = pairing_problem(pending.connect(bad).await);
        let text = err.to_string();
        assert!(
            matches!(err, Error::InvalidAnswer { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(text.starts_with("not a valid WebRTC answer: "), "{text}");
        assert!(text.contains(says), "{bad:?}: {text}");
    }
}

#[tokio::test]
async fn a_mistyped_answer_checked_first_leaves_the_offer_good() {
    let (pending, offer) = WebRtcChannel::offer().await.expect("offer");
    let (waiting, answer) = WebRtcChannel::accept(&offer).await.expect("accept");
    let err = pending
        .check_answer(&answer[..answer.len() / 2])
        .expect_err("half an answer");
    assert!(matches!(err, Error::InvalidAnswer { .. }), "{err:?}");
    // Typed again, right this time: the same offer connects.
    pending.check_answer(&answer).expect("the whole answer");
    let (a, b) = tokio::join!(pending.connect(&answer), waiting.open());
    let (mut a, mut b) = (a.expect("connect"), b.expect("open"));
    a.send(Package::Finish).await.expect("send");
    assert!(matches!(b.recv().await, Ok(Some(Package::Finish))));
}

#[tokio::test]
async fn an_answer_nobody_connects_to_times_out_clearly() {
    let options = WebRtcOptions::default().with_connect_timeout(Duration::from_secs(2));
    let (pending, offer) = WebRtcChannel::offer_with(&options).await.expect("offer");
    let (waiting, _answer) = WebRtcChannel::accept_with(&offer, &options)
        .await
        .expect("accept");
    let started = std::time::Instant::now();
    let err = waiting.open().await.expect_err("nobody connects");
    assert!(
        matches!(err, Error::Timeout { waited } if waited == Duration::from_secs(2)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(err.to_string().contains("did not open within 2s"), "{err}");
    drop(pending);
}

#[tokio::test]
async fn an_offer_answered_by_a_vanished_peer_does_not_open() {
    let options = WebRtcOptions::default().with_connect_timeout(Duration::from_secs(3));
    let (pending, offer) = WebRtcChannel::offer_with(&options).await.expect("offer");
    let (waiting, answer) = WebRtcChannel::accept_with(&offer, &options)
        .await
        .expect("accept");
    drop(waiting);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = pending.connect(&answer).await.expect_err("nobody answers");
    assert!(
        matches!(err, Error::Timeout { .. } | Error::ConnectionFailed { .. }),
        "{err:?}"
    );
}
