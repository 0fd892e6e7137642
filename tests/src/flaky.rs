//! A shared log that fails on purpose, at one chosen step, once armed: for fault-injection tests.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use storex_core::BoxFuture;
use storex_sync::{
    DeviceId, DeviceInfo, Pull, SharedEntry, SharedLogError, SharedResult, SharedSyncLog,
};

/// Where the failure happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The push never reaches the log.
    PushLostBeforeStoring,
    /// The log stores the push, but the reply is lost.
    PushReplyLost,
    /// The pull request never reaches the log.
    PullLost,
    /// The log answers the pull, but the reply is lost.
    PullReplyLost,
    /// The acknowledgement fails after everything was applied.
    AckLost,
    /// The log registers the device, but the reply is lost (not in [`Fault::ALL`]: the
    /// sync scenarios register before they arm a fault).
    RegisterReplyLost,
}

impl Fault {
    /// Every fault of a push, a pull or an acknowledgement.
    pub const ALL: [Fault; 5] = [
        Fault::PushLostBeforeStoring,
        Fault::PushReplyLost,
        Fault::PullLost,
        Fault::PullReplyLost,
        Fault::AckLost,
    ];

    fn code(self) -> u8 {
        self as u8 + 1
    }
}

/// Wraps a shared log and fails the armed step once.
#[derive(Debug)]
pub struct FlakySharedLog {
    inner: Arc<dyn SharedSyncLog>,
    armed: AtomicU8,
    fired: AtomicBool,
    down: AtomicBool,
    hanging: AtomicBool,
    stuck: AtomicBool,
    /// The live signal's answer: 0 the wrapped log's, 1 news at once, 2 nothing new soon.
    live_signal: AtomicU8,
    live_waits: AtomicUsize,
    live_panic: AtomicBool,
    pull_panic: AtomicBool,
    offline: AtomicBool,
    /// How long every pull waits before it is asked of the wrapped log, in milliseconds.
    pull_delay_ms: AtomicU64,
}

fn lost() -> SharedLogError {
    SharedLogError::Unavailable {
        log: "flaky",
        source: "injected network failure".into(),
    }
}

impl FlakySharedLog {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn SharedSyncLog>) -> Self {
        FlakySharedLog {
            inner,
            armed: AtomicU8::new(0),
            fired: AtomicBool::new(false),
            down: AtomicBool::new(false),
            hanging: AtomicBool::new(false),
            stuck: AtomicBool::new(false),
            live_signal: AtomicU8::new(0),
            live_waits: AtomicUsize::new(0),
            live_panic: AtomicBool::new(false),
            pull_panic: AtomicBool::new(false),
            offline: AtomicBool::new(false),
            pull_delay_ms: AtomicU64::new(0),
        }
    }

    /// Makes the live signal answer `Some(true)`: at once that other devices pushed,
    /// whatever the log holds (a signal that does not settle); `Some(false)`: after 10 ms
    /// that nothing is new (a log with a live signal and quiet devices); `None`: as the
    /// wrapped log does.
    pub fn set_live_signal(&self, answer: Option<bool>) {
        let code = match answer {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        self.live_signal.store(code, Ordering::SeqCst);
    }

    /// Makes the next call for the live signal panic (a bug in a log), then answer as
    /// before.
    pub fn panic_on_next_live_wait(&self) {
        self.live_panic.store(true, Ordering::SeqCst);
    }

    /// Makes the next pull panic (a bug in a log), then answer as before.
    pub fn panic_on_next_pull(&self) {
        self.pull_panic.store(true, Ordering::SeqCst);
    }

    /// How many times the live signal was asked for.
    pub fn live_waits(&self) -> usize {
        self.live_waits.load(Ordering::SeqCst)
    }

    /// Fails the next call that reaches `fault`'s step.
    pub fn arm(&self, fault: Fault) {
        self.fired.store(false, Ordering::SeqCst);
        self.armed.store(fault.code(), Ordering::SeqCst);
    }

    /// Fails nothing.
    pub fn disarm(&self) {
        self.armed.store(0, Ordering::SeqCst);
    }

    /// Makes every push, pull and ack fail while `down` (an outage), or work again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Makes every registration and device listing fail too while `offline`, besides every
    /// push, pull and ack (no network at all), or work again.
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
        self.set_down(offline);
    }

    /// Makes every pull started while `hanging` never answer (a half-open connection), or
    /// answer again.
    pub fn set_hanging(&self, hanging: bool) {
        self.hanging.store(hanging, Ordering::SeqCst);
    }

    /// Makes every pull started from now on wait `delay` before it is asked of the wrapped
    /// log (a slow network; zero: no wait).
    pub fn set_pull_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.pull_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Makes every pull answer, while `stuck`, that more entries follow without moving past
    /// the cursor asked for (a broken log), or answer truly again.
    pub fn set_stuck(&self, stuck: bool) {
        self.stuck.store(stuck, Ordering::SeqCst);
    }

    /// Whether the armed fault fired since it was armed.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Whether a push, pull or ack reaching `fault`'s step fails: always during an outage.
    fn trigger(&self, fault: Fault) -> bool {
        self.down.load(Ordering::SeqCst) || self.hit(fault)
    }

    /// Whether `fault` is armed; disarms it.
    fn hit(&self, fault: Fault) -> bool {
        let hit = self
            .armed
            .compare_exchange(fault.code(), 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if hit {
            self.fired.store(true, Ordering::SeqCst);
        }
        hit
    }
}

impl SharedSyncLog for FlakySharedLog {
    fn name(&self) -> &'static str {
        "flaky"
    }

    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>> {
        Box::pin(async move {
            if self.offline.load(Ordering::SeqCst) {
                return Err(lost());
            }
            self.inner.register_device(user, device).await?;
            if self.hit(Fault::RegisterReplyLost) {
                return Err(lost());
            }
            Ok(())
        })
    }

    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>> {
        Box::pin(async move {
            if self.offline.load(Ordering::SeqCst) {
                return Err(lost());
            }
            self.inner.devices(device).await
        })
    }

    fn push(
        &self,
        device: DeviceId,
        entries: Vec<SharedEntry>,
    ) -> BoxFuture<'_, SharedResult<u64>> {
        Box::pin(async move {
            if self.trigger(Fault::PushLostBeforeStoring) {
                return Err(lost());
            }
            let stored = self.inner.push(device, entries).await?;
            if self.trigger(Fault::PushReplyLost) {
                return Err(lost());
            }
            Ok(stored)
        })
    }

    fn pull<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, SharedResult<Pull>> {
        Box::pin(async move {
            if self.hanging.load(Ordering::SeqCst) {
                return std::future::pending().await;
            }
            if self.pull_panic.swap(false, Ordering::SeqCst) {
                panic!("injected: a bug in the shared log's pull");
            }
            let delay = self.pull_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if self.stuck.load(Ordering::SeqCst) {
                return Ok(Pull {
                    next_cursor: after,
                    more: true,
                    ..Pull::default()
                });
            }
            if self.trigger(Fault::PullLost) {
                return Err(lost());
            }
            let pull = self.inner.pull(device, after, limit, topics).await?;
            if self.trigger(Fault::PullReplyLost) {
                return Err(lost());
            }
            Ok(pull)
        })
    }

    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, SharedResult<()>> {
        Box::pin(async move {
            if self.trigger(Fault::AckLost) {
                return Err(lost());
            }
            self.inner.ack(device, cursor).await
        })
    }

    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<u64>> {
        self.inner.compact(user)
    }

    fn max_entry_bytes(&self) -> Option<usize> {
        self.inner.max_entry_bytes()
    }

    fn device_credentials(&self, device: DeviceId) -> Option<String> {
        self.inner.device_credentials(device)
    }

    fn restore_device_credentials(&self, device: DeviceId, credentials: &str) {
        self.inner.restore_device_credentials(device, credentials)
    }

    fn live_wait<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        wait: std::time::Duration,
        topics: Option<&'a [String]>,
    ) -> Option<BoxFuture<'a, SharedResult<bool>>> {
        self.live_waits.fetch_add(1, Ordering::SeqCst);
        if self.live_panic.swap(false, Ordering::SeqCst) {
            panic!("injected: a bug in the live signal");
        }
        match self.live_signal.load(Ordering::SeqCst) {
            1 => Some(Box::pin(async { Ok(true) })),
            2 => Some(Box::pin(async {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                Ok(false)
            })),
            _ => self.inner.live_wait(device, after, wait, topics),
        }
    }
}
