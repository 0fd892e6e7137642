//! [`Metrics`]: counters of one server instance, shown by `/metrics` (Prometheus text format)
//! next to the totals read from the database.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use storex_log_sql::LogStats;

/// Counters since this instance started.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    entries_pushed: AtomicU64,
    entries_pulled: AtomicU64,
    compacted: AtomicU64,
    compaction_failures: AtomicU64,
    /// Milliseconds since the epoch of the last push that stored something; 0: none.
    last_push_ms: AtomicI64,
    /// Pulls waiting now for new entries (long polls between two reads).
    waiting_pulls: AtomicU64,
}

/// A pull counted as waiting while this lives.
pub(crate) struct WaitingPull<'a>(&'a AtomicU64);

impl Drop for WaitingPull<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub(crate) fn request(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if (400..500).contains(&status) {
            self.client_errors.fetch_add(1, Ordering::Relaxed);
        } else if status >= 500 {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn pushed(&self, entries: usize, stored_any: bool) {
        self.entries_pushed
            .fetch_add(entries as u64, Ordering::Relaxed);
        if stored_any {
            self.last_push_ms
                .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        }
    }

    pub(crate) fn pulled(&self, entries: usize) {
        self.entries_pulled
            .fetch_add(entries as u64, Ordering::Relaxed);
    }

    /// Counts a pull as waiting for new entries until the guard is dropped.
    pub(crate) fn waiting_pull(&self) -> WaitingPull<'_> {
        self.waiting_pulls.fetch_add(1, Ordering::Relaxed);
        WaitingPull(&self.waiting_pulls)
    }

    pub(crate) fn compacted(&self, dropped: u64) {
        self.compacted.fetch_add(dropped, Ordering::Relaxed);
    }

    pub(crate) fn compaction_failed(&self) {
        self.compaction_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// When this instance last stored a push.
    pub(crate) fn last_push(&self) -> Option<DateTime<Utc>> {
        match self.last_push_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// The Prometheus text exposition of the counters, `stats`, and the body budget's
    /// figures: bytes held now, and requests refused `busy` so far.
    pub(crate) fn render(&self, stats: LogStats, buffered_bytes: usize, busy: u64) -> String {
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        line(
            "storex_users",
            "gauge",
            "Users in the shared log.",
            stats.users,
        );
        line(
            "storex_devices",
            "gauge",
            "Registered devices.",
            stats.devices,
        );
        line("storex_entries", "gauge", "Stored entries.", stats.entries);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        line(
            "storex_http_requests_total",
            "counter",
            "Requests answered by this instance.",
            load(&self.requests),
        );
        line(
            "storex_http_client_errors_total",
            "counter",
            "Requests answered with a 4xx status.",
            load(&self.client_errors),
        );
        line(
            "storex_http_server_errors_total",
            "counter",
            "Requests answered with a 5xx status.",
            load(&self.server_errors),
        );
        line(
            "storex_entries_pushed_total",
            "counter",
            "Entries received in pushes by this instance.",
            load(&self.entries_pushed),
        );
        line(
            "storex_entries_pulled_total",
            "counter",
            "Entries returned by pulls of this instance.",
            load(&self.entries_pulled),
        );
        line(
            "storex_entries_compacted_total",
            "counter",
            "Entries dropped by scheduled compaction.",
            load(&self.compacted),
        );
        line(
            "storex_compaction_failures_total",
            "counter",
            "Scheduled compactions that failed.",
            load(&self.compaction_failures),
        );
        line(
            "storex_http_busy_total",
            "counter",
            "Requests refused (503 or 429 `busy`) because the request bodies held at once \
             reached the server's or the user's budget.",
            busy,
        );
        line(
            "storex_http_buffered_bytes",
            "gauge",
            "Request and reply body bytes held now (requests waiting for room not counted).",
            buffered_bytes as u64,
        );
        line(
            "storex_http_waiting_pulls",
            "gauge",
            "Pulls waiting now for new entries of their user (long polls).",
            load(&self.waiting_pulls),
        );
        let last = self.last_push_ms.load(Ordering::Relaxed).max(0) as u64 / 1000;
        line(
            "storex_last_push_timestamp_seconds",
            "gauge",
            "Unix time of the last push this instance stored (0: none).",
            last,
        );
        out
    }
}
