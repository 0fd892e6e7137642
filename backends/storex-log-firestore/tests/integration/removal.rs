//! Removing a device from FirestoreSharedLog, on the emulator: a lost device stops holding
//! compaction back, and its later calls are refused.

use crate::common;

use storex_core::uuid::Uuid;
use storex_sync::{SharedEntry, SharedLogError, SharedSyncLog};

#[tokio::test]
async fn a_removed_device_no_longer_holds_compaction_back_and_is_refused() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let log = common::fresh_log(&project).await;
    let phone = log.create_device("ann").await.expect("device");
    let lost = log.create_device("ann").await.expect("device");
    let entries = (0..3)
        .map(|n| SharedEntry {
            id: Uuid::now_v7(),
            device: phone,
            topic: "note".into(),
            payload: vec![n],
        })
        .collect();
    let end = log.push(phone, entries).await.expect("push");
    log.ack(phone, end).await.expect("ack");
    assert_eq!(
        log.compact("ann").await.expect("compact"),
        0,
        "the lost device holds it"
    );

    assert!(log.remove_device(lost).await.expect("remove"));
    assert!(
        !log.remove_device(lost).await.expect("remove again"),
        "gone already"
    );
    assert_eq!(log.compact("ann").await.expect("compact"), 3);
    let listed: Vec<_> = log
        .devices(phone)
        .await
        .expect("devices")
        .into_iter()
        .map(|info| info.device)
        .collect();
    assert_eq!(listed, vec![phone]);
    match log.pull(lost, 0, 10, None).await {
        Err(SharedLogError::UnknownDevice { device }) => assert_eq!(device, lost),
        other => panic!("expected UnknownDevice, got {other:?}"),
    }
}
