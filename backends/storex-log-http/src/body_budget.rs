//! [`BodyBudget`]: how many bytes of request bodies the server holds at once, in all and per
//! user, and [`Budgeted`], the extractor that takes a request's share before its body is read.
//!
//! Without it, the body limit bounds one request, not the server: every device of a region
//! reconnecting after an outage, each with a full push, or one user's devices opening
//! hundreds of connections, would make an instance buffer (and decode) that many bodies at
//! once, and run out of memory, taking every other user's syncs down with it. With it, a
//! request that would take the server past [`ServerConfig::max_buffered_bytes`] waits up to
//! [`BUSY_WAIT`] for others to finish, then is answered 503 `busy` with a `Retry-After`; a
//! user past [`ServerConfig::max_buffered_bytes_per_user`] is answered 429 `busy` at once, so
//! that one user cannot take every other user's share. Clients retry both after the wait.
//!
//! A request's share is its announced `Content-Length`, or the body limit when it announces
//! none. It is taken after authentication, so a caller without a valid token takes nothing,
//! and held until the request's handler is done with what it decoded (a push: until its
//! entries are stored).
//!
//! [`ServerConfig::max_buffered_bytes`]: crate::ServerConfig::max_buffered_bytes
//! [`ServerConfig::max_buffered_bytes_per_user`]: crate::ServerConfig::max_buffered_bytes_per_user

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::problem::ApiError;
use crate::routes::AppState;

/// Longest a request waits for the server's budget before it is answered 503.
pub(crate) const BUSY_WAIT: Duration = Duration::from_secs(2);

/// The `Retry-After` of a request refused for the budget, in seconds.
const RETRY_AFTER_SECS: u64 = 2;

/// The budget counts in units of this many bytes (a semaphore's permits are counted in
/// `u32` per acquisition).
const UNIT: usize = 1024;

/// The request-body bytes the server holds at once: in all, and per user.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    /// Units free for the whole server.
    total: Arc<Semaphore>,
    /// The server's budget, in bytes (for messages).
    total_bytes: usize,
    /// Most bytes one user's requests hold at once.
    per_user: usize,
    /// Bytes each user's requests hold now; users holding none are not kept.
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// A request's share of the budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    _units: OwnedSemaphorePermit,
    user: String,
    bytes: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        release(&self.held, &self.user, self.bytes);
    }
}

/// Takes `bytes` off what `user` holds.
fn release(held: &Mutex<HashMap<String, usize>>, user: &str, bytes: usize) {
    // A panic elsewhere while the lock was held leaves plain counts: still usable.
    let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(count) = held.get_mut(user) {
        *count = count.saturating_sub(bytes);
        if *count == 0 {
            held.remove(user);
        }
    }
}

/// How many units `bytes` take (at least one).
fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).max(1)
}

impl BodyBudget {
    /// A budget of `total` bytes for the server and `per_user` for each user (both at least
    /// the body limit: [`crate::ServerConfig`] checks it).
    pub(crate) fn new(total: usize, per_user: usize) -> Self {
        BodyBudget {
            total: Arc::new(Semaphore::new(units(total).min(Semaphore::MAX_PERMITS))),
            total_bytes: total,
            per_user,
            held: Arc::default(),
        }
    }

    /// Bytes the requests in flight hold now.
    pub(crate) fn held_bytes(&self) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.values().sum()
    }

    /// Takes `bytes` for a request of `user`: at once, or within `wait` once other requests
    /// have given theirs back. Refused with 429 when the user holds too much already, with
    /// 503 when the server stays full for `wait`.
    pub(crate) async fn reserve(
        &self,
        user: &str,
        bytes: usize,
        wait: Duration,
    ) -> Result<Reservation, ApiError> {
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            let now = held.get(user).copied().unwrap_or(0);
            if now.saturating_add(bytes) > self.per_user {
                return Err(ApiError::busy(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "this user's requests in flight hold {now} bytes, and this one may carry \
                         {bytes}: at most {} are taken at once",
                        self.per_user
                    ),
                    RETRY_AFTER_SECS,
                ));
            }
            *held.entry(user.to_owned()).or_insert(0) += bytes;
        }
        let wanted = u32::try_from(units(bytes)).unwrap_or(u32::MAX);
        let acquired =
            tokio::time::timeout(wait, self.total.clone().acquire_many_owned(wanted)).await;
        match acquired {
            Ok(Ok(units)) => Ok(Reservation {
                _units: units,
                user: user.to_owned(),
                bytes,
                held: self.held.clone(),
            }),
            // Timed out (or the semaphore closed, which it never is).
            Ok(Err(_)) | Err(_) => {
                release(&self.held, user, bytes);
                Err(ApiError::busy(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the server holds as many request bytes as it takes at once ({}); try \
                         again in {RETRY_AFTER_SECS} s",
                        self.total_bytes
                    ),
                    RETRY_AFTER_SECS,
                ))
            }
        }
    }
}

/// The user a request's budget is counted for: put in the request's extensions by the
/// extractor that authenticated it.
#[derive(Clone, Debug)]
pub(crate) struct BudgetKey(pub(crate) String);

/// An extractor `E` of the request body, run once the request holds its share of the
/// [`BodyBudget`]; the share is held as long as this value lives.
#[derive(Debug)]
pub(crate) struct Budgeted<E>(pub(crate) E, pub(crate) Reservation);

impl<E> FromRequest<Arc<AppState>> for Budgeted<E>
where
    E: FromRequest<Arc<AppState>, Rejection = ApiError> + Send,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        // A length the server would refuse anyway is left to the body limit (413), and a
        // body without one may be as long as the limit.
        let bytes = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(limit, |announced| announced.min(limit));
        let user = req
            .extensions()
            .get::<BudgetKey>()
            .map_or("", |key| key.0.as_str())
            .to_owned();
        let reservation = state
            .budget
            .reserve(&user, bytes, BUSY_WAIT)
            .await
            .inspect_err(|_| state.metrics.refused_busy())?;
        let value = E::from_request(req, state).await?;
        Ok(Budgeted(value, reservation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    #[tokio::test]
    async fn a_user_past_its_share_is_refused_at_once_and_others_go_on() {
        let budget = BodyBudget::new(100 * KIB, 10 * KIB);
        let first = budget.reserve("ann", 6 * KIB, Duration::ZERO).await;
        let first = first.expect("within the share");
        let refused = budget
            .reserve("ann", 6 * KIB, Duration::from_secs(60))
            .await
            .expect_err("past ann's share");
        assert!(format!("{refused:?}").contains("429"), "{refused:?}");
        let bob = budget.reserve("bob", 10 * KIB, Duration::ZERO).await;
        assert!(bob.is_ok(), "bob has a share of his own");
        assert_eq!(budget.held_bytes(), 16 * KIB);
        drop(first);
        assert_eq!(budget.held_bytes(), 10 * KIB);
        let again = budget.reserve("ann", 6 * KIB, Duration::ZERO).await;
        assert!(again.is_ok(), "ann's share is back");
    }

    #[tokio::test]
    async fn a_full_server_answers_busy_after_the_wait_and_takes_requests_once_one_ends() {
        let budget = Arc::new(BodyBudget::new(10 * KIB, 10 * KIB));
        let held = budget.reserve("ann", 8 * KIB, Duration::ZERO).await;
        let held = held.expect("within the budget");
        let refused = budget
            .reserve("bob", 4 * KIB, Duration::from_millis(50))
            .await
            .expect_err("the server is full");
        assert!(format!("{refused:?}").contains("503"), "{refused:?}");
        assert_eq!(
            budget.held_bytes(),
            8 * KIB,
            "the refused share is given back"
        );
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                budget
                    .reserve("bob", 4 * KIB, Duration::from_secs(60))
                    .await
                    .map(|r| r.bytes)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "bob waits while ann's body is held");
        drop(held);
        let got = waiting
            .await
            .expect("no panic")
            .expect("taken once ann's ended");
        assert_eq!(got, 4 * KIB);
        assert_eq!(budget.held_bytes(), 0, "given back when dropped");
    }
}
