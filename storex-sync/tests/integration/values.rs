//! Every field type survives the trip through the sync log exactly: the value another device
//! applies is bit for bit the value written (a float that came back a few ulps off would make
//! the devices' digests differ forever).

use std::sync::Arc;

use storex_core::{object, CollectionDef, FieldType, MemoryBackend, Registry, Value};
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, MemorySharedLog, SharedSyncLog, SyncDevice,
    SyncOptions,
};

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("sample")
                .field("id", FieldType::Text)
                .field("f", FieldType::Float)
                .field("i", FieldType::Int)
                .field("t", FieldType::Text)
                .field("b", FieldType::Blob)
                .field("d", FieldType::DateTime)
                .field("j", FieldType::Json)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

async fn device(log: &Arc<dyn SharedSyncLog>) -> ContinuousSync {
    let id = log.create_device("ann").await.expect("device");
    let device = SyncDevice::open(
        registry(),
        Arc::new(MemoryBackend::new()),
        Clock::new(id),
        SyncOptions::default(),
    )
    .await
    .expect("open");
    ContinuousSync::new(device, log.clone(), ContinuousOptions::default())
}

#[tokio::test]
async fn values_reach_the_other_device_bit_for_bit() {
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let (a, b) = (device(&log).await, device(&log).await);
    let floats = [
        272.0 / 3.0,
        0.1 + 0.2,
        1e-300,
        f64::MAX,
        f64::MIN_POSITIVE,
        -0.0,
        std::f64::consts::PI,
        123_456_789.123_456_79,
    ];
    let when = storex_core::chrono::DateTime::parse_from_rfc3339("2026-11-23T21:40:01.123456Z")
        .expect("date")
        .with_timezone(&storex_core::chrono::Utc);
    for (n, f) in floats.iter().enumerate() {
        a.device()
            .storage()
            .create(
                "sample",
                object! {
                    "id" => format!("s{n}"),
                    "f" => *f,
                    "i" => i64::MIN + n as i64,
                    "t" => "ünïcødé \u{1F600} \"quoted\" \\ back",
                    "b" => vec![0u8, 255, 10, 13],
                    "d" => when,
                    "j" => Value::Json(storex_core::serde_json::json!({"x": f, "nested": [1, "two", null]})),
                },
            )
            .await
            .expect("write");
    }
    a.sync_once().await.expect("push");
    b.sync_once().await.expect("pull");
    for (n, expected) in floats.iter().enumerate() {
        let id = format!("s{n}");
        let on_a = a
            .device()
            .storage()
            .find_by_pk("sample", id.as_str())
            .await
            .expect("read");
        let on_b = b
            .device()
            .storage()
            .find_by_pk("sample", id.as_str())
            .await
            .expect("read");
        let (on_a, on_b) = (on_a.expect("on a"), on_b.expect("on b"));
        assert_eq!(on_a, on_b, "sample {n} differs");
        let float = |row: &storex_core::Object| match row.get("f") {
            Some(Value::Float(f)) => f.to_bits(),
            other => panic!("not a float: {other:?}"),
        };
        // Storage keeps -0.0 as 0.0 (SQL compares them equal); every other float is exact.
        let stored = if *expected == 0.0 { 0.0 } else { *expected };
        assert_eq!(float(&on_a), stored.to_bits(), "float {expected} as stored");
        assert_eq!(
            float(&on_b),
            stored.to_bits(),
            "float {expected} changed on the way"
        );
    }
    assert_eq!(
        a.device().digest("sample").await.expect("digest"),
        b.device().digest("sample").await.expect("digest")
    );
}
