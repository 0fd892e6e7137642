//! Setup shared by the Firestore tests: fresh logs on the emulator, each in its own
//! collection namespace so that tests never see each other's data.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use storex_log_firestore::FirestoreSharedLog;

/// A collection prefix no other log of any test run uses.
pub(crate) fn fresh_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "t{}_{}_{}_",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000_000
    )
}

/// The emulator's project id, or `None` when the emulator is not configured (outside CI;
/// under `CI=true` this panics instead).
pub(crate) fn emulator_project() -> Option<String> {
    storex_test::firestore_emulator().map(|(_, project)| project)
}

/// A fresh, empty log on the emulator.
pub(crate) async fn fresh_log(project: &str) -> FirestoreSharedLog {
    FirestoreSharedLog::connect(project, &fresh_prefix())
        .await
        .expect("connect to the Firestore emulator")
}
