//! [`BodyBudget`]: how many bytes of request and reply bodies an instance holds at once, in
//! all and per user; [`Budgeted`], the extractor that takes a request's share before its
//! body is read; and [`held_json`], a reply that holds its share until it is sent.
//!
//! Without it, the body limit bounds one request, not the server: every device of a region
//! reconnecting after an outage, each with a full push or a page of large entries to pull,
//! or one user's devices opening hundreds of connections, would make an instance hold (and
//! decode) that many bodies at once, and run out of memory, taking every other user's syncs
//! down with it. With it, a request that would take the instance past
//! [`ServerConfig::max_buffered_bytes`] waits up to [`BUSY_WAIT`] for room (any request
//! that fits goes, so small ones do not wait behind a large one), then is answered 503
//! `busy` with a `Retry-After`; a user past [`ServerConfig::max_buffered_bytes_per_user`]
//! (on this instance) is answered 429 `busy` at once, so that one user cannot take every
//! other user's share. Clients try both again after the wait. A refused body is read and
//! dropped, so that a client still sending it gets the answer instead of a reset connection.
//!
//! A request's share is its body's length when known (the body limit when not), taken after
//! authentication (a caller without a valid token takes nothing) and held until the handler
//! is done with what it decoded: a push until its entries are stored, a pull's topics for
//! as long as it waits. A pull also takes a share for each page it reads, estimated from the
//! page's byte budget before the read and set to the encoded reply after it, held until the
//! reply is handed over to the connection. A first entry too large for that share is not
//! read with the page: its size is read first, and it takes a share of its own before it is
//! read. Nothing is counted for a request until its share
//! is granted, so one cancelled while it waits leaves nothing behind.
//!
//! [`ServerConfig::max_buffered_bytes`]: crate::ServerConfig::max_buffered_bytes
//! [`ServerConfig::max_buffered_bytes_per_user`]: crate::ServerConfig::max_buffered_bytes_per_user

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::problem::ApiError;
use crate::routes::AppState;

/// Longest a request waits for the server's budget before it is answered 503.
pub(crate) const BUSY_WAIT: Duration = Duration::from_secs(2);

/// The `Retry-After` of a request refused for the budget, in seconds.
const RETRY_AFTER_SECS: u64 = 2;

/// Longest the server reads (and drops) the body of a request it refused for the budget,
/// so that the client, still sending it, gets the answer rather than a reset connection.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// What is held, under one lock.
#[derive(Debug)]
struct Accounts {
    /// Bytes the server can still grant.
    free: usize,
    /// Bytes granted to each user now; users holding none are not kept.
    by_user: HashMap<String, usize>,
}

/// The accounts and the signal that bytes were given back, shared with the reservations.
#[derive(Debug)]
struct Ledger {
    accounts: Mutex<Accounts>,
    freed: Notify,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, Accounts> {
        // A panic elsewhere while the lock was held leaves plain counts: still usable.
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives back `bytes` of `user`'s, and wakes the requests waiting for room.
    fn give_back(&self, user: &str, bytes: usize) {
        if bytes == 0 {
            return;
        }
        {
            let mut accounts = self.lock();
            accounts.free = accounts.free.saturating_add(bytes);
            if let Some(count) = accounts.by_user.get_mut(user) {
                *count = count.saturating_sub(bytes);
                if *count == 0 {
                    accounts.by_user.remove(user);
                }
            }
        }
        self.freed.notify_waiters();
    }
}

/// The request-body bytes the server holds at once: in all, and per user.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    /// The server's budget, in bytes.
    total: usize,
    /// Most bytes one user's requests hold at once.
    per_user: usize,
    ledger: Arc<Ledger>,
    /// Requests refused so far, for `/metrics`.
    refused: AtomicU64,
}

/// A request's share of the budget, given back when dropped. Nothing is counted for a
/// request until its share is granted, so a request cancelled while it waits (its client
/// gone, or its timeout) leaves nothing behind.
#[derive(Debug)]
pub(crate) struct Reservation {
    user: String,
    bytes: usize,
    ledger: Arc<Ledger>,
}

impl Reservation {
    /// The bytes it holds.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes over what `other` holds (of the same user).
    fn absorb(&mut self, mut other: Reservation) {
        self.bytes += other.bytes;
        // Moved here: nothing left for `other` to give back.
        other.bytes = 0;
    }

    /// Gives back what it holds beyond `bytes`.
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.ledger.give_back(&self.user, self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.ledger.give_back(&self.user, self.bytes);
    }
}

impl BodyBudget {
    /// A budget of `total` bytes for the server and `per_user` for each user (both at least
    /// the body limit: [`crate::ServerConfig`] checks it).
    pub(crate) fn new(total: usize, per_user: usize) -> Self {
        BodyBudget {
            total,
            per_user,
            ledger: Arc::new(Ledger {
                accounts: Mutex::new(Accounts {
                    free: total,
                    by_user: HashMap::new(),
                }),
                freed: Notify::new(),
            }),
            refused: AtomicU64::new(0),
        }
    }

    /// Bytes granted to requests in flight now (not counting those that wait).
    pub(crate) fn held_bytes(&self) -> usize {
        self.total.saturating_sub(self.ledger.lock().free)
    }

    /// Requests refused `busy` so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// [`BodyBudget::grant_either`], counting refusals: a share of `bytes`, or of `smaller`
    /// when `user` holds too much to take `bytes` but not to take `smaller` (decided as the
    /// share is granted), and whether it is the smaller one.
    pub(crate) async fn reserve_either(
        &self,
        user: &str,
        bytes: usize,
        smaller: usize,
        wait: Duration,
    ) -> Result<(Reservation, bool), ApiError> {
        let granted = self.grant_either(user, bytes, smaller, wait).await;
        if granted.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        granted
    }

    /// [`BodyBudget::grant_either`] of `bytes` alone, counting refusals.
    pub(crate) async fn reserve(
        &self,
        user: &str,
        bytes: usize,
        wait: Duration,
    ) -> Result<Reservation, ApiError> {
        self.reserve_either(user, bytes, bytes, wait)
            .await
            .map(|(share, _)| share)
    }

    /// Grows `share` to `bytes` if the room is there now, without waiting; otherwise the
    /// answer that says so (counted as refused), and `share` stays as it is.
    pub(crate) async fn grow(&self, share: &mut Reservation, bytes: usize) -> Result<(), ApiError> {
        let Some(more) = bytes.checked_sub(share.bytes).filter(|more| *more > 0) else {
            return Ok(());
        };
        let (extra, _) = self
            .reserve_either(&share.user, more, more, Duration::ZERO)
            .await?;
        share.absorb(extra);
        Ok(())
    }

    /// Grows `share` to `bytes` if the room is there now, without waiting (nothing is
    /// counted as refused otherwise, and `share` stays as it is): for a reply a little larger
    /// than its estimate, which must not let go of what it holds to wait for all of it.
    pub(crate) async fn top_up(&self, share: &mut Reservation, bytes: usize) -> bool {
        let Some(more) = bytes.checked_sub(share.bytes).filter(|more| *more > 0) else {
            return true;
        };
        match self
            .grant_either(&share.user, more, more, Duration::ZERO)
            .await
        {
            Ok((extra, _)) => {
                share.absorb(extra);
                true
            }
            Err(_) => false,
        }
    }

    /// Takes `bytes` for a request of `user`: at once, or within `wait` once other requests
    /// have given back enough (any request that fits goes, so small ones are not held
    /// behind a large one; a large one that finds no room in time is answered busy, and its
    /// client tries again). Refused with 429 when the user holds too much already, unless it
    /// holds nothing (a request alone always gets its turn), and with 503 when the server
    /// has no room for `wait`. A request larger than the whole budget waits for all of it.
    /// When the user holds too much to take `bytes` but not `smaller`, it takes `smaller`
    /// (and says so).
    async fn grant_either(
        &self,
        user: &str,
        bytes: usize,
        smaller: usize,
        wait: Duration,
    ) -> Result<(Reservation, bool), ApiError> {
        let (asked, smaller) = (bytes.min(self.total), smaller.min(bytes).min(self.total));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so that bytes given back meanwhile wake it.
            let freed = self.ledger.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut accounts = self.ledger.lock();
                let now = accounts.by_user.get(user).copied().unwrap_or(0);
                let too_much = |bytes: usize| now > 0 && now.saturating_add(bytes) > self.per_user;
                let (bytes, is_smaller) = match too_much(asked) {
                    true => (smaller, smaller < asked),
                    false => (asked, false),
                };
                if too_much(bytes) {
                    return Err(ApiError::busy(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "this user's requests in flight on this server hold {now} bytes, \
                             and this one may take {bytes}: at most {} are taken at once",
                            self.per_user
                        ),
                        RETRY_AFTER_SECS,
                    ));
                }
                if accounts.free >= bytes {
                    accounts.free -= bytes;
                    *accounts.by_user.entry(user.to_owned()).or_insert(0) += bytes;
                    let share = Reservation {
                        user: user.to_owned(),
                        bytes,
                        ledger: self.ledger.clone(),
                    };
                    return Ok((share, is_smaller));
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(ApiError::busy(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the server holds as many request bytes as it takes at once ({}); try \
                         again in {RETRY_AFTER_SECS} s",
                        self.total
                    ),
                    RETRY_AFTER_SECS,
                ));
            }
        }
    }
}

/// The user a request's budget is counted for: put in the request's extensions by the
/// extractor that authenticated it.
#[derive(Clone, Debug)]
pub(crate) struct BudgetKey(pub(crate) String);

impl BudgetKey {
    /// The key of `user`'s requests, its devices' included.
    pub(crate) fn of_user(user: &str) -> Self {
        BudgetKey(format!("user:{user}"))
    }
}

/// A JSON response of `json` that holds `held` until its body has been handed over to the
/// connection (or dropped, the client gone): a reply counts against the budget while the
/// server holds it. The body goes out in slices of the one buffer, so the reservation is
/// given back about when the last slice is written.
pub(crate) fn held_json(json: Vec<u8>, held: Reservation) -> Response {
    const SLICE: usize = 64 * 1024;
    let json = Bytes::from(json);
    let length = json.len();
    let slices = (0..length)
        .step_by(SLICE)
        .map(move |start| Ok::<Bytes, Infallible>(json.slice(start..(start + SLICE).min(length))));
    let body = Body::from_stream(futures::stream::iter(slices).map(move |slice| {
        let _holding = &held;
        slice
    }));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

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
        // The body's length when it is known (announced, or none at all); a body of unknown
        // length may be as long as the limit. A length past the limit is left to it (413).
        let bytes = req.body().size_hint().upper().map_or(limit, |upper| {
            usize::try_from(upper).unwrap_or(limit).min(limit)
        });
        let user = req
            .extensions()
            .get::<BudgetKey>()
            .map_or("", |key| key.0.as_str())
            .to_owned();
        match state.budget.reserve(&user, bytes, BUSY_WAIT).await {
            Ok(reservation) => {
                let value = E::from_request(req, state).await?;
                Ok(Budgeted(value, reservation))
            }
            Err(refused) => {
                drain(req.into_body(), limit).await;
                Err(refused)
            }
        }
    }
}

/// Reads and drops what is left of a refused request's body (at most `limit` bytes, for at
/// most [`DRAIN_FOR`]), holding none of it: a client still sending would otherwise have its
/// connection reset by the server's close, and see a broken connection instead of the
/// answer that tells it when to try again.
async fn drain(body: Body, limit: usize) {
    let mut chunks = body.into_data_stream();
    let mut read = 0usize;
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        while let Some(Ok(chunk)) = chunks.next().await {
            read = read.saturating_add(chunk.len());
            if read > limit {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    #[tokio::test]
    async fn a_share_is_topped_up_when_the_room_is_there_and_left_as_it_is_otherwise() {
        let budget = BodyBudget::new(10 * KIB, 10 * KIB);
        let mut share = budget
            .reserve("ann", 4 * KIB, Duration::ZERO)
            .await
            .unwrap();
        assert!(budget.top_up(&mut share, 6 * KIB).await);
        assert_eq!((share.bytes(), budget.held_bytes()), (6 * KIB, 6 * KIB));
        let bob = budget
            .reserve("bob", 3 * KIB, Duration::ZERO)
            .await
            .unwrap();
        // 2 KiB more would pass the budget: refused at once, not counted, nothing changed.
        let started = tokio::time::Instant::now();
        assert!(!budget.top_up(&mut share, 8 * KIB).await);
        assert!(started.elapsed() < Duration::from_secs(1), "no wait");
        assert_eq!((share.bytes(), budget.held_bytes()), (6 * KIB, 9 * KIB));
        assert_eq!(budget.refused(), 0);
        drop((share, bob));
        assert_eq!(budget.held_bytes(), 0, "all given back, the top-up too");
    }

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
    async fn a_user_without_room_for_a_share_takes_the_smaller_one_when_it_fits() {
        let budget = BodyBudget::new(100 * KIB, 10 * KIB);
        let (alone, smaller) = budget
            .reserve_either("ann", 8 * KIB, KIB, Duration::ZERO)
            .await
            .expect("a request alone gets its turn");
        assert_eq!((alone.bytes(), smaller), (8 * KIB, false));
        let (second, smaller) = budget
            .reserve_either("ann", 8 * KIB, KIB, Duration::ZERO)
            .await
            .expect("the smaller share fits");
        assert_eq!((second.bytes(), smaller), (KIB, true));
        let refused = budget
            .reserve_either("ann", 8 * KIB, 2 * KIB, Duration::ZERO)
            .await
            .expect_err("not even the smaller share fits");
        assert!(format!("{refused:?}").contains("429"), "{refused:?}");
        assert_eq!(budget.refused(), 1);
        assert_eq!(budget.held_bytes(), 9 * KIB);
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

    #[tokio::test]
    async fn a_request_cancelled_while_it_waits_leaves_nothing_behind() {
        let budget = BodyBudget::new(10 * KIB, 10 * KIB);
        let held = budget.reserve("ann", 8 * KIB, Duration::ZERO).await;
        let held = held.expect("within the budget");
        let cancelled = tokio::time::timeout(
            Duration::from_millis(50),
            budget.reserve("bob", 4 * KIB, Duration::from_secs(60)),
        )
        .await;
        assert!(cancelled.is_err(), "bob waited, and was cancelled");
        assert_eq!(budget.held_bytes(), 8 * KIB);
        assert_eq!(budget.ledger.lock().by_user.get("bob"), None);
        drop(held);
        assert_eq!(budget.held_bytes(), 0);
        assert!(budget.ledger.lock().by_user.is_empty());
    }

    #[tokio::test]
    async fn a_small_request_goes_while_a_large_one_waits_for_room() {
        let budget = Arc::new(BodyBudget::new(10 * KIB, 10 * KIB));
        let _ann = budget.reserve("ann", 6 * KIB, Duration::ZERO).await;
        let large = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let _ = budget
                    .reserve("bob", 8 * KIB, Duration::from_secs(60))
                    .await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!large.is_finished(), "bob's large request waits");
        let small = budget.reserve("carol", 2 * KIB, Duration::ZERO).await;
        assert!(small.is_ok(), "carol's fits beside ann's: {small:?}");
        large.abort();
    }

    #[tokio::test]
    async fn a_request_alone_larger_than_its_share_or_the_budget_waits_for_all_of_it() {
        let budget = BodyBudget::new(10 * KIB, 4 * KIB);
        let huge = budget.reserve("ann", 20 * KIB, Duration::ZERO).await;
        let huge = huge.expect("alone, it goes");
        assert_eq!(huge.bytes(), 10 * KIB);
        let more = budget.reserve("ann", KIB, Duration::ZERO).await;
        assert!(format!("{more:?}").contains("429"), "{more:?}");
        let mut huge = huge;
        huge.shrink_to(3 * KIB);
        assert_eq!(budget.held_bytes(), 3 * KIB);
        let more = budget.reserve("ann", KIB, Duration::ZERO).await;
        assert!(more.is_ok(), "within the share once shrunk: {more:?}");
    }
}
