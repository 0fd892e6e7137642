//! Hybrid logical clock: timestamps that order changes causally and survive clock skew.
//!
//! An [`Hlc`] is (physical milliseconds, counter, device). [`Clock::now`] never goes
//! backwards, even when the wall clock does: it keeps the largest time it has issued and
//! counts up from it. [`Clock::observe`] moves the clock past a timestamp received from
//! another device, so anything written after seeing a change orders after it; a timestamp
//! further ahead of the local wall clock than the allowed drift is refused instead of
//! dragging the clock into the future. The device id makes two timestamps from different
//! devices always differ, so last-writer-wins never meets a tie.
//!
//! ```
//! use storex_sync::{Clock, DeviceId};
//! let clock = Clock::new(DeviceId::random());
//! let a = clock.now();
//! let b = clock.now();
//! assert!(a < b);
//! assert_eq!(b.to_string().parse::<storex_sync::Hlc>().unwrap(), b);
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use storex_core::uuid::Uuid;

use crate::error::{Error, Result};

/// The identity of one device of a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub Uuid);

impl DeviceId {
    /// A new random device id.
    pub fn random() -> Self {
        DeviceId(Uuid::now_v7())
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A hybrid logical clock timestamp, ordered by milliseconds, then counter, then device.
///
/// Its text form (`Display`/`FromStr`) sorts like the timestamps themselves, so it can be
/// stored in a text column and ordered by the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Physical time, milliseconds since the Unix epoch.
    pub millis: u64,
    /// Logical counter within one millisecond.
    pub counter: u32,
    /// The device that issued it.
    pub device: DeviceId,
}

impl Hlc {
    /// The smallest timestamp of `device`.
    pub fn zero(device: DeviceId) -> Self {
        Hlc {
            millis: 0,
            counter: 0,
            device,
        }
    }
}

/// The largest physical time with the 15 digits of [`Hlc::clock_text`] (about the year
/// 33,658), which sorts like the timestamps only up to there.
pub(crate) const MAX_MILLIS: u64 = 999_999_999_999_999;

impl Hlc {
    /// The physical and logical parts as text that sorts like them, without the device:
    /// what the client log stores beside the entry's device column.
    pub fn clock_text(&self) -> String {
        format!("{:015}-{:010}", self.millis, self.counter)
    }

    /// Reads [`Hlc::clock_text`] back, for `device`.
    pub fn from_clock_text(text: &str, device: DeviceId) -> Result<Self> {
        let bad = || Error::BadTimestamp {
            text: text.to_owned(),
        };
        let (millis, counter) = text.split_once('-').ok_or_else(bad)?;
        // More than 15 digits: a timestamp beyond the year 33,000, which the clock refuses
        // and the log keeps as a held entry; it must still read back.
        if millis.len() < 15 || counter.len() != 10 {
            return Err(bad());
        }
        Ok(Hlc {
            millis: millis.parse().map_err(|_| bad())?,
            counter: counter.parse().map_err(|_| bad())?,
            device,
        })
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:015}-{:010}-{}",
            self.millis,
            self.counter,
            self.device.0.simple()
        )
    }
}

impl FromStr for Hlc {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || Error::BadTimestamp {
            text: text.to_owned(),
        };
        let mut parts = text.splitn(3, '-');
        let (Some(millis), Some(counter), Some(device)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if millis.len() != 15 || counter.len() != 10 || device.len() != 32 {
            return Err(bad());
        }
        Ok(Hlc {
            millis: millis.parse().map_err(|_| bad())?,
            counter: counter.parse().map_err(|_| bad())?,
            device: DeviceId(Uuid::try_parse(device).map_err(|_| bad())?),
        })
    }
}

/// Where a [`Clock`] reads physical time.
pub trait WallClock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A wall clock set by hand, for tests and simulations. Clones share the time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `millis`.
    pub fn new(millis: u64) -> Self {
        ManualClock {
            millis: Arc::new(AtomicU64::new(millis)),
        }
    }

    /// Sets the time (it may go backwards).
    pub fn set(&self, millis: u64) {
        self.millis.store(millis, Ordering::SeqCst);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_add(by, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.millis.load(Ordering::SeqCst)
    }
}

/// The default allowed drift of a remote timestamp ahead of the local wall clock.
pub const DEFAULT_MAX_DRIFT: Duration = Duration::from_secs(24 * 60 * 60);

/// Issues [`Hlc`] timestamps for one device.
#[derive(Debug)]
pub struct Clock {
    device: DeviceId,
    wall: Box<dyn WallClock>,
    max_drift_ms: u64,
    last: Mutex<(u64, u32)>,
    /// The wall-clock times (ms) from which the timestamps [`Clock::observe`] refused are
    /// within the allowed drift, until [`Clock::take_refusal_due`] says they are due.
    refused_due: Mutex<BTreeSet<u64>>,
}

impl Clock {
    /// A clock for `device` on the system clock, allowing [`DEFAULT_MAX_DRIFT`].
    pub fn new(device: DeviceId) -> Self {
        Self::with_wall_clock(device, SystemClock)
    }

    /// A clock for `device` reading `wall`.
    pub fn with_wall_clock(device: DeviceId, wall: impl WallClock + 'static) -> Self {
        Clock {
            device,
            wall: Box::new(wall),
            max_drift_ms: u64::try_from(DEFAULT_MAX_DRIFT.as_millis()).unwrap_or(u64::MAX),
            last: Mutex::new((0, 0)),
            refused_due: Mutex::new(BTreeSet::new()),
        }
    }

    /// Sets how far ahead of the wall clock a remote timestamp may be.
    pub fn with_max_drift(mut self, max_drift: Duration) -> Self {
        self.max_drift_ms = u64::try_from(max_drift.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The device this clock belongs to.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// A new timestamp, greater than every one issued or observed before.
    pub fn now(&self) -> Hlc {
        let wall = self.wall.now_millis();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let (millis, counter) = *last;
        *last = if wall > millis {
            (wall, 0)
        } else if counter == u32::MAX {
            (millis.saturating_add(1), 0)
        } else {
            (millis, counter + 1)
        };
        Hlc {
            millis: last.0,
            counter: last.1,
            device: self.device,
        }
    }

    /// The first of `n` consecutive timestamps (same millisecond, counters `c` to
    /// `c + n - 1`), all later than any issued before and earlier than any issued after:
    /// one write stamps all of its changes at once. `n` of 0 counts as 1.
    pub(crate) fn now_many(&self, n: u32) -> Hlc {
        let n = n.max(1);
        let wall = self.wall.now_millis();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let (millis, counter) = *last;
        let (millis, first) = if wall > millis {
            (wall, 0)
        } else if counter.checked_add(n).is_none() {
            (millis.saturating_add(1), 0)
        } else {
            (millis, counter + 1)
        };
        *last = (millis, first + (n - 1));
        Hlc {
            millis,
            counter: first,
            device: self.device,
        }
    }

    /// Moves the clock past `remote`, so later timestamps order after it. Refuses (and
    /// leaves the clock as it was) a timestamp further ahead of the wall clock than the
    /// allowed drift.
    pub fn observe(&self, remote: Hlc) -> Result<()> {
        let wall = self.wall.now_millis();
        // Whatever the drift allowed (even none, `Duration::MAX`): from `MAX_MILLIS` on, the
        // clock's next timestamps would lose the text form's order, and a clock near
        // `u64::MAX` would wrap around.
        let limit = wall.saturating_add(self.max_drift_ms).min(MAX_MILLIS - 1);
        if remote.millis > limit {
            // Remembered to be tried again once the wall clock is near, unless it never is.
            if remote.millis < MAX_MILLIS {
                self.refused_due
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(remote.millis.saturating_sub(self.max_drift_ms));
            }
            return Err(Error::ClockDrift {
                remote,
                ahead_ms: remote.millis.saturating_sub(wall),
                max_drift_ms: limit.saturating_sub(wall),
            });
        }
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if (remote.millis, remote.counter) > *last {
            *last = (remote.millis, remote.counter);
        }
        Ok(())
    }

    /// True once the wall clock has come within the allowed drift of a timestamp
    /// [`Clock::observe`] refused (an entry held for clock drift may apply now); the refusals
    /// that are due are then forgotten, so the caller retries the held entries (those still
    /// too far ahead are refused, and remembered, again). Refusals not yet due are kept: one
    /// made while the retry reads (by an attempt that has not stored its held entry yet) is
    /// not lost.
    pub(crate) fn take_refusal_due(&self) -> bool {
        let wall = self.wall.now_millis();
        let mut refused = self
            .refused_due
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let later = refused.split_off(&wall.saturating_add(1));
        let due = !refused.is_empty();
        *refused = later;
        due
    }

    /// Restores the clock after a restart from the largest timestamp the device stored,
    /// without the drift check (the device wrote it itself).
    pub fn restore(&self, stored: Hlc) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if (stored.millis, stored.counter) > *last {
            *last = (stored.millis, stored.counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u128) -> DeviceId {
        DeviceId(Uuid::from_u128(n))
    }

    #[test]
    fn text_form_sorts_like_the_timestamps() {
        let a = Hlc {
            millis: 9,
            counter: 10,
            device: device(2),
        };
        let b = Hlc {
            millis: 10,
            counter: 0,
            device: device(1),
        };
        let c = Hlc {
            millis: 10,
            counter: 0,
            device: device(3),
        };
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
        for hlc in [a, b, c] {
            assert_eq!(hlc.to_string().parse::<Hlc>().expect("parse"), hlc);
            assert_eq!(
                Hlc::from_clock_text(&hlc.clock_text(), hlc.device).expect("parse"),
                hlc
            );
        }
        assert!(a.clock_text() < b.clock_text());
    }

    #[test]
    fn garbage_is_not_a_timestamp() {
        for text in [
            "",
            "1-2-3",
            "000000000000001-0000000000-zz",
            "x00000000000001-0000000000-00000000000000000000000000000000",
        ] {
            assert!(text.parse::<Hlc>().is_err(), "{text}");
        }
    }

    #[test]
    fn wall_clock_going_backwards_keeps_timestamps_increasing() {
        let wall = ManualClock::new(1_000_000);
        let clock = Clock::with_wall_clock(device(1), wall.clone());
        let before = clock.now();
        wall.set(500_000);
        let after = clock.now();
        assert!(after > before);
        assert_eq!(after.millis, 1_000_000);
        assert_eq!(after.counter, 1);
        wall.set(2_000_000);
        let later = clock.now();
        assert_eq!((later.millis, later.counter), (2_000_000, 0));
    }

    #[test]
    fn a_run_of_timestamps_fits_between_the_ones_before_and_after() {
        let wall = ManualClock::new(1_000);
        let clock = Clock::with_wall_clock(device(1), wall.clone());
        let before = clock.now();
        let first = clock.now_many(3);
        assert_eq!((first.millis, first.counter), (1_000, 1));
        let after = clock.now();
        assert_eq!(
            (after.millis, after.counter),
            (1_000, 4),
            "after the run's last"
        );
        assert!(before < first);
        // A run that would overflow the counter starts in the next millisecond.
        clock.restore(Hlc {
            millis: 1_000,
            counter: u32::MAX - 1,
            device: device(1),
        });
        let run = clock.now_many(5);
        assert_eq!((run.millis, run.counter), (1_001, 0));
        assert_eq!(clock.now().counter, 5);
        wall.set(5_000);
        assert_eq!(
            clock.now_many(0).counter,
            0,
            "an empty run takes one timestamp"
        );
        assert_eq!(clock.now().counter, 1);
    }

    #[test]
    fn two_devices_ten_minutes_apart_order_causally() {
        let wall_a = ManualClock::new(10 * 60 * 1000 + 5_000);
        let wall_b = ManualClock::new(5_000); // ten minutes behind
        let a = Clock::with_wall_clock(device(1), wall_a);
        let b = Clock::with_wall_clock(device(2), wall_b);
        let written_on_a = a.now();
        b.observe(written_on_a)
            .expect("ten minutes is within the drift");
        let written_on_b_after_seeing_a = b.now();
        assert!(
            written_on_b_after_seeing_a > written_on_a,
            "causality survives the skew"
        );
    }

    #[test]
    fn a_timestamp_beyond_the_max_drift_is_refused_and_does_not_move_the_clock() {
        let wall = ManualClock::new(1_000);
        let clock = Clock::with_wall_clock(device(1), wall).with_max_drift(Duration::from_secs(60));
        let before = clock.now();
        let remote = Hlc {
            millis: 1_000 + 61_000,
            counter: 0,
            device: device(2),
        };
        let err = clock.observe(remote).expect_err("accepted");
        assert_eq!(
            err.to_string(),
            format!("timestamp {remote} is 61000 ms ahead of this device's clock, more than the allowed 60000 ms")
        );
        let after = clock.now();
        assert_eq!(
            (after.millis, after.counter),
            (before.millis, before.counter + 1)
        );
    }

    #[test]
    fn a_timestamp_whose_successor_needs_sixteen_digits_is_refused_even_with_no_drift_limit() {
        let clock = Clock::with_wall_clock(device(1), ManualClock::new(1_000))
            .with_max_drift(Duration::MAX);
        let at = |millis, counter| Hlc {
            millis,
            counter,
            device: device(2),
        };
        for far in [MAX_MILLIS, u64::MAX] {
            assert!(clock.observe(at(far, u32::MAX)).is_err(), "{far}");
        }
        assert!(!clock.take_refusal_due(), "never to be tried again");
        let last = at(MAX_MILLIS - 1, u32::MAX);
        clock
            .observe(last)
            .expect("its successor still has 15 digits");
        let next = clock.now();
        assert_eq!((next.millis, next.counter), (MAX_MILLIS, 0));
        assert!(next.clock_text() > last.clock_text());
    }

    #[test]
    fn a_refused_timestamp_is_due_once_the_wall_clock_comes_within_the_drift_of_the_earliest() {
        let wall = ManualClock::new(1_000);
        let clock =
            Clock::with_wall_clock(device(1), wall.clone()).with_max_drift(Duration::from_secs(60));
        let at = |millis| Hlc {
            millis,
            counter: 0,
            device: device(2),
        };
        assert!(!clock.take_refusal_due(), "nothing refused yet");
        clock.observe(at(1_000 + 90_000)).expect_err("accepted");
        clock.observe(at(1_000 + 70_000)).expect_err("accepted");
        // Due at 10,000 + 1,000 (the earlier one), not at 30,000 + 1,000.
        wall.advance(Duration::from_millis(9_999));
        assert!(!clock.take_refusal_due());
        wall.advance(Duration::from_millis(1));
        assert!(clock.take_refusal_due());
        assert!(!clock.take_refusal_due(), "said once, then forgotten");
        // The later one is kept until it is due in its turn.
        wall.advance(Duration::from_millis(20_000));
        assert!(clock.take_refusal_due());
        assert!(!clock.take_refusal_due(), "nothing else refused");
    }

    #[test]
    fn the_counter_overflows_into_the_next_millisecond() {
        let clock = Clock::with_wall_clock(device(1), ManualClock::new(7));
        clock.restore(Hlc {
            millis: 7,
            counter: u32::MAX,
            device: device(1),
        });
        let next = clock.now();
        assert_eq!((next.millis, next.counter), (8, 0));
    }
}
