//! The HTTP routes of the sync server, the credentials each one demands, and the request rate
//! limit.
//!
//! Every call carries `Authorization: Bearer <token>`: the admin token to create users, a
//! user token to register or revoke devices and to compact, a device token to push, pull,
//! ack and list its user's devices. A device token speaks only for its own device and user:
//! pushes naming another device are refused, pulls and acks act on the token's device.
//! Unknown, missing and revoked tokens get 401.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use storex_log_sql::{LogStats, PageBounds, PagePull, SqlSharedLog};
use storex_sync::{
    device_of_another_user, DeviceId, Pull, SharedEntry, SharedLogError, SharedSyncLog,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{
    routes, AckRequest, CompactResponse, DeviceCredentials, DevicesResponse, Health, NewDevice,
    NewUser, PullRequest, PullResponse, PushRequest, PushResponse, UserCredentials, WireDevice,
    MAX_TOPIC_BYTES, MIN_CLIENT_TOKEN_CHARS,
};
use crate::auth::{AuthStore, DeviceToken, UserCreation};
use crate::body_budget::{held_json, BodyBudget, BudgetKey, Budgeted, Reservation, BUSY_WAIT};
use crate::config::{RateLimit, ServerConfig};
use crate::live::LiveUpdates;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::problem::{parse_device, ApiError, JsonBody, OptionalJsonBody};
use crate::token::new_token;

/// How long `/health` reuses its last ping of the database.
const HEALTH_MAX_AGE: Duration = Duration::from_secs(1);

/// Longest user name accepted.
const MAX_USER_NAME: usize = 200;

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) log: SqlSharedLog,
    pub(crate) auth: AuthStore,
    pub(crate) live: Arc<LiveUpdates>,
    pub(crate) notifier: Notifier,
    pub(crate) limiter: Limiter,
    /// The body bytes held at once (requests, and pull replies).
    pub(crate) budget: BodyBudget,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: CancellationToken,
    /// Pushes running in tasks of their own, which the server waits for when it stops.
    pub(crate) pushes: TaskTracker,
    pub(crate) config: ServerConfig,
    /// Whether the database answered `/health`'s last ping.
    pub(crate) health: Recent<Result<(), String>>,
    /// The last totals `/metrics` counted.
    pub(crate) stats: Recent<LogStats>,
}

/// A value worked out at most once per maximum age (for routes that take no token): requests
/// meanwhile get the last one, and concurrent ones wait for one to be worked out.
#[derive(Debug)]
pub(crate) struct Recent<T>(tokio::sync::Mutex<Option<(tokio::time::Instant, T)>>);

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Recent(tokio::sync::Mutex::new(None))
    }
}

impl<T: Clone> Recent<T> {
    /// The last value, if younger than `max_age`; else `work`'s, kept when it succeeds.
    async fn get<E, F>(&self, max_age: Duration, work: impl FnOnce() -> F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        let mut last = self.0.lock().await;
        if let Some((at, value)) = &*last {
            if at.elapsed() < max_age {
                return Ok(value.clone());
            }
        }
        let value = work().await?;
        *last = Some((tokio::time::Instant::now(), value.clone()));
        Ok(value)
    }
}

type Shared = Arc<AppState>;

/// Request rates, in memory: caches that are safe to lose. Before authentication requests
/// are counted per client IP address (so made-up tokens cannot flood the database, and the
/// buckets are bounded by the number of clients); after it, per device, user or admin.
#[derive(Debug)]
pub(crate) struct Limiter {
    per_caller: Option<DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn keyed<K: std::hash::Hash + Eq + Clone>(limit: RateLimit) -> DefaultKeyedRateLimiter<K> {
    let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
}

fn refused(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> ApiError {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    ApiError::rate_limited(wait.as_secs().max(1))
}

impl Limiter {
    pub(crate) fn new(per_caller: Option<RateLimit>, per_ip: Option<RateLimit>) -> Self {
        Limiter {
            per_caller: per_caller.map(keyed),
            per_ip: per_ip.map(keyed),
        }
    }

    /// Counts one request from `ip`, before authentication.
    fn check_ip(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.per_ip, ip) {
            (Some(limiter), Some(ip)) => limiter.check_key(&client_network(ip)).map_err(refused),
            _ => Ok(()),
        }
    }

    /// Counts one request of an authenticated caller.
    fn check_caller(&self, caller: String) -> Result<(), ApiError> {
        match &self.per_caller {
            Some(limiter) => limiter.check_key(&caller).map_err(refused),
            None => Ok(()),
        }
    }

    /// Forgets idle buckets.
    pub(crate) fn trim(&self) {
        if let Some(limiter) = &self.per_caller {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// What the per-IP limit counts a client by: an IPv4 address (mapped into IPv6 or not) as
/// it is, an IPv6 address by its /64 network, since one host may use any address of it.
fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// The router of every route, with the request counter and JSON fallbacks.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route(routes::USERS, post(create_user))
        .route(routes::DEVICES, post(create_device).get(list_devices))
        .route(routes::DEVICE, delete(revoke_device))
        .route(routes::PUSH, post(push))
        .route(routes::PULL, post(pull))
        .route(routes::ACK, post(ack))
        .route(routes::COMPACT, post(compact))
        .route(routes::HEALTH, get(health))
        .route(routes::METRICS, get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Counts every answer by status (outside the request timeout, so 408s count too).
pub(crate) async fn count_requests(
    State(state): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state.metrics.request(response.status().as_u16());
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Applies the per-IP rate limit to a request.
fn limit_ip(parts: &Parts, state: &AppState) -> Result<(), ApiError> {
    let ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    state.limiter.check_ip(ip)
}

/// A request within the per-IP rate limit, for routes that take no token but reach the
/// database (`/metrics` counts whole tables).
struct WithinIpLimit;

impl FromRequestParts<Shared> for WithinIpLimit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        limit_ip(parts, state)?;
        Ok(WithinIpLimit)
    }
}

/// The bearer token of a request, after the per-IP rate limit.
fn bearer(parts: &Parts, state: &AppState) -> Result<String, ApiError> {
    limit_ip(parts, state)?;
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <token>`",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header is not `Bearer <token>`")
        })?;
    Ok(token.to_owned())
}

/// The caller holds the admin token.
struct Admin;

impl FromRequestParts<Shared> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let token = bearer(parts, state)?;
        let Some(admin) = &state.config.admin_token else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this server has no admin token; users cannot be created over HTTP",
            ));
        };
        // Compare digests: equal length, no early exit on the secret's bytes.
        if Sha256::digest(token.as_bytes()) == Sha256::digest(admin.as_bytes()) {
            state.limiter.check_caller("admin".into())?;
            parts.extensions.insert(BudgetKey("admin".into()));
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("wrong admin token"))
        }
    }
}

/// The caller holds a user token.
struct User(String);

impl FromRequestParts<Shared> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let token = bearer(parts, state)?;
        match state.auth.user_by_token(&token).await {
            Ok(Some(user)) => {
                state.limiter.check_caller(format!("user:{user}"))?;
                parts.extensions.insert(BudgetKey::of_user(&user));
                Ok(User(user))
            }
            Ok(None) => Err(ApiError::unauthorized("unknown user token")),
            Err(e) => Err(ApiError::unavailable("cannot check the token", &e)),
        }
    }
}

/// The caller holds a device token of a device that is not revoked.
struct Device {
    device: DeviceId,
    user: String,
}

impl FromRequestParts<Shared> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let token = bearer(parts, state)?;
        match state.auth.device_by_token(&token).await {
            Ok(Some(record)) if record.revoked => Err(ApiError::unauthorized(format!(
                "device {} was revoked",
                record.device
            ))),
            Ok(Some(record)) => {
                state
                    .limiter
                    .check_caller(format!("device:{}", record.device))?;
                // A user's devices share its budget: registering more does not widen it.
                parts.extensions.insert(BudgetKey::of_user(&record.user));
                Ok(Device {
                    device: record.device,
                    user: record.user,
                })
            }
            Ok(None) => Err(ApiError::unauthorized("unknown device token")),
            Err(e) => Err(ApiError::unavailable("cannot check the token", &e)),
        }
    }
}

async fn create_user(
    State(state): State<Shared>,
    _: Admin,
    Budgeted(JsonBody(body), _held): Budgeted<JsonBody<NewUser>>,
) -> Result<(StatusCode, Json<UserCredentials>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > MAX_USER_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "a user name has 1 to {MAX_USER_NAME} bytes and no control characters"
        )));
    }
    let token = match body.token {
        Some(token) => client_token(token)?,
        None => new_token().map_err(|e| ApiError::unavailable("cannot make a token", &e))?,
    };
    let credentials = |status| {
        let user = name.to_owned();
        Ok((
            status,
            Json(UserCredentials {
                user,
                token: token.clone(),
            }),
        ))
    };
    match state.auth.create_user(name, &token).await {
        Ok(UserCreation::Created) => credentials(StatusCode::CREATED),
        // The same request again (its first answer was lost): the same user and token.
        Ok(UserCreation::Repeated) => credentials(StatusCode::OK),
        Ok(UserCreation::Taken) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "user_exists",
            format!("user `{name}` exists already"),
        )),
        Ok(UserCreation::TokenTaken) => Err(ApiError::invalid(
            "the token is another user's: make a new one",
        )),
        Err(e) => Err(ApiError::unavailable("cannot create the user", &e)),
    }
}

/// A token a client chose, if long enough ([`MIN_CLIENT_TOKEN_CHARS`]) and made of visible
/// ASCII characters (it travels in an `Authorization` header).
fn client_token(token: String) -> Result<String, ApiError> {
    if token.len() >= MIN_CLIENT_TOKEN_CHARS && token.chars().all(|c| c.is_ascii_graphic()) {
        Ok(token)
    } else {
        Err(ApiError::invalid(format!(
            "a token a client chooses has at least {MIN_CLIENT_TOKEN_CHARS} characters, all \
             visible ASCII"
        )))
    }
}

async fn create_device(
    State(state): State<Shared>,
    User(user): User,
    Budgeted(OptionalJsonBody(chosen), _held): Budgeted<OptionalJsonBody<NewDevice>>,
) -> Result<(StatusCode, Json<DeviceCredentials>), ApiError> {
    let (device, token) = match chosen {
        Some(new) => (DeviceId(new.device), new.token),
        None => (DeviceId::random(), None),
    };
    let token = match token {
        Some(token) => client_token(token)?,
        None => new_token().map_err(|e| ApiError::unavailable("cannot make a token", &e))?,
    };
    // The device and its token hash in one transaction: both exist or neither does, so no
    // device without a token can hold back compaction.
    let txn = state.log.begin().await?;
    state.log.register_device_in(&txn, &user, device).await?;
    let outcome = state
        .auth
        .add_device(&txn, device, &user, &token)
        .await
        .map_err(|e| ApiError::unavailable("cannot store the device token", &e))?;
    let status = match outcome {
        DeviceToken::Added => StatusCode::CREATED,
        DeviceToken::Replaced => StatusCode::OK,
        DeviceToken::Revoked => {
            return Err(SharedLogError::DeviceRefused {
                device,
                problem: "it was revoked; register a new device".into(),
            }
            .into())
        }
        DeviceToken::OtherUser => return Err(device_of_another_user(device).into()),
        DeviceToken::TokenTaken => {
            return Err(ApiError::invalid(
                "the token is another device's: make a new one",
            ))
        }
    };
    txn.commit()
        .await
        .map_err(|e| ApiError::unavailable("cannot register the device", &e))?;
    Ok((
        status,
        Json(DeviceCredentials {
            device: device.0,
            token,
        }),
    ))
}

async fn revoke_device(
    State(state): State<Shared>,
    User(user): User,
    Path(device): Path<String>,
) -> Result<StatusCode, ApiError> {
    let device = DeviceId(parse_device(&device)?);
    match state.auth.revoke(&user, device).await {
        Ok(true) => {}
        // A device of this user in the log without a token (none can be made any more, but a
        // database may hold one from elsewhere): removing it is all revocation means.
        Ok(false) => match state.log.user_of_device(device).await {
            Ok(owner) if owner == user => {}
            Ok(_) | Err(SharedLogError::UnknownDevice { .. }) => {
                return Err(ApiError::not_found(format!("user has no device {device}")))
            }
            // The log did not answer: not a "no", which the client would not try again.
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(ApiError::unavailable("cannot revoke the device", &e)),
    }
    state.log.remove_device(device).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_devices(
    State(state): State<Shared>,
    caller: Device,
) -> Result<Json<DevicesResponse>, ApiError> {
    let devices = state.log.devices(caller.device).await?;
    Ok(Json(DevicesResponse {
        devices: devices
            .into_iter()
            .map(|d| WireDevice {
                device: d.device.0,
                acked: d.acked,
            })
            .collect(),
    }))
}

async fn push(
    State(state): State<Shared>,
    caller: Device,
    Budgeted(JsonBody(body), held): Budgeted<JsonBody<PushRequest>>,
) -> Result<Json<PushResponse>, ApiError> {
    let limit = state.config.max_push_entries;
    if body.entries.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_entries",
            format!(
                "a push carries at most {limit} entries, this one {}",
                body.entries.len()
            ),
        ));
    }
    if let Some(long) = body
        .entries
        .iter()
        .find(|e| e.topic.len() > MAX_TOPIC_BYTES)
    {
        return Err(ApiError::invalid(format!(
            "entry {}: its topic has {} bytes, at most {MAX_TOPIC_BYTES} are taken",
            long.id,
            long.topic.len()
        )));
    }
    let entries = body
        .entries
        .into_iter()
        .map(|wire| wire.into_entry().map_err(ApiError::invalid))
        .collect::<Result<Vec<SharedEntry>, ApiError>>()?;
    let count = entries.len();
    // Its own task: a request cancelled midway (its client gone, or its timeout) still
    // finishes a push that may have committed, and tells the waiting pulls about it, instead
    // of leaving them to wake at their timeout. A stopping server waits for it.
    let task = state.clone();
    let cursor = state
        .pushes
        .spawn(async move {
            // The decoded entries count against the budget until they are stored.
            let _held = held;
            let cursor = task.log.push(caller.device, entries).await?;
            task.metrics.pushed(count, cursor > 0);
            if cursor > 0 {
                task.notifier.pushed(&task.live, &caller.user, cursor).await;
            }
            Ok::<u64, SharedLogError>(cursor)
        })
        .await
        .map_err(|failure| {
            tracing::error!(error = %failure, "a push failed on a bug");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the push failed on a bug in the server",
            )
        })??;
    Ok(Json(PushResponse { cursor }))
}

async fn pull(
    State(state): State<Shared>,
    caller: Device,
    Budgeted(JsonBody(body), mut request_share): Budgeted<JsonBody<PullRequest>>,
) -> Result<Response, ApiError> {
    // The topics' count and lengths were checked as they were read. Of what the request
    // carried only the topics stay, and hold their share for as long as the pull (a long
    // poll included) keeps them: what they take, which may be more than the body they came
    // in (a `String` each, an empty one too).
    let topics_share = topics_bytes(body.topics.as_deref());
    request_share.shrink_to(topics_share);
    state.budget.grow(&mut request_share, topics_share).await?;
    let limit = body.limit.min(state.config.max_pull_entries);
    // A device may hold a few waiting pulls at once (one per sync, and one left over from a
    // connection that broke); more are answered at once, as if their wait had run out.
    let asked = Duration::from_millis(body.wait_ms).min(state.config.max_wait);
    let slot = match asked.is_zero() {
        true => None,
        false => state.live.wait_slot(caller.device),
    };
    let wait = match &slot {
        Some(_) => asked,
        None => Duration::ZERO,
    };
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before reading, so a push between the read and the wait still wakes us.
    let mut new_entries = state.live.subscribe(&caller.user);
    let page_bytes = page_bytes(body.max_bytes, state.config.max_body_bytes);
    let budget_key = BudgetKey::of_user(&caller.user);
    let topics = body.topics.as_deref();
    let mut woken = false;
    loop {
        // The first read takes the page asked for, unless the user's other requests leave
        // too little room for its share (many devices of one user pulling at once: their
        // long polls starting together after a restart, say), then the smaller page of a
        // wake-up, with `more`, instead of `busy`; a read after a wait, the smaller page.
        let small_page = page_plan(
            page_bytes.min(WAKE_UP_PAGE_BYTES),
            limit.min(WAKE_UP_ENTRIES),
            state.config.max_body_bytes,
        );
        let asked_page = match woken {
            false => page_plan(page_bytes, limit, state.config.max_body_bytes),
            true => small_page,
        };
        // The page read and its reply count against the budget like a request body: many
        // devices pulling large pages at once wait, or are told to come back, instead of
        // running the server out of memory.
        let (share, smaller) = state
            .budget
            .reserve_either(&budget_key.0, asked_page.0, small_page.0, BUSY_WAIT)
            .await?;
        let bounds = match smaller {
            true => small_page.1,
            false => asked_page.1,
        };
        let pull = match state
            .log
            .pull_page(caller.device, body.after, bounds, topics)
            .await?
        {
            PagePull::Page(pull) => pull,
            PagePull::FirstEntryTooLarge { payload_bytes } => {
                // A first entry larger than the page comes alone, with a share of its own
                // taken before it is read, once the page's share and the topics' are given
                // back, so that a user holding nothing else always gets it, whatever its
                // size (a share held meanwhile could never make room).
                drop((share, request_share));
                let share = state
                    .budget
                    .reserve(&budget_key.0, lone_entry_estimate(payload_bytes), BUSY_WAIT)
                    .await?;
                let pull = state
                    .log
                    .pull_within(
                        caller.device,
                        body.after,
                        bounds.entries,
                        bounds.bytes,
                        topics,
                    )
                    .await?;
                return page_reply(&state, &budget_key, pull, share).await;
            }
        };
        let waited_out = tokio::time::Instant::now() >= deadline;
        let found = !pull.entries.is_empty() || !pull.unreadable.is_empty();
        if found || pull.more || waited_out || state.shutdown.is_cancelled() {
            drop(request_share);
            return page_reply(&state, &budget_key, pull, share).await;
        }
        drop((pull, share));
        let waiting = state.metrics.waiting_pull();
        tokio::select! {
            changed = new_entries.changed() => {
                if changed.is_err() {
                    // The channel was dropped; fall back to the deadline.
                    tokio::time::sleep_until(deadline).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.shutdown.cancelled() => {}
        }
        drop(waiting);
        woken = true;
    }
}

/// The payload a pull woken after a wait reads at most: a push wakes every waiting device of
/// its user at once, and each would otherwise reserve a whole page's share of the budget
/// together (beyond about twenty devices, some were answered `busy`). What a wake-up finds
/// is most often one sync's changes; a device woken to more (`more` in the reply) pulls the
/// rest at once, with the page it asks for. A first read whose page's share the user has no
/// room for reads this page too.
const WAKE_UP_PAGE_BYTES: usize = 32 * 1024;

/// The entries a pull woken after a wait reads at most (see [`WAKE_UP_PAGE_BYTES`]).
const WAKE_UP_ENTRIES: usize = 64;

/// The share of the budget a page of at most `page_bytes` of payload in at most `limit`
/// entries reserves, and the bounds of its read.
fn page_plan(page_bytes: usize, limit: usize, max_body_bytes: usize) -> (usize, PageBounds) {
    // No more than a request body may take, so that it fits wherever one does.
    let estimate = reply_estimate(page_bytes, limit).min(max_body_bytes);
    let bounds = PageBounds {
        entries: limit,
        bytes: page_bytes,
        // A first entry larger than the page but within its share is read with the page.
        first_entry_bytes: payload_within(estimate),
    };
    (estimate, bounds)
}

/// The JSON reply of a pulled page, holding `share` of the budget until it is handed to the
/// connection.
async fn page_reply(
    state: &AppState,
    budget_key: &BudgetKey,
    pull: Pull,
    mut share: Reservation,
) -> Result<Response, ApiError> {
    let pulled = pull.entries.len();
    let reply =
        PullResponse::from_pulled(&pull.entries, &pull.unreadable, pull.next_cursor, pull.more);
    drop(pull);
    let json = serde_json::to_vec(&reply)
        .map_err(|e| ApiError::unavailable("cannot encode a pull reply", &e))?;
    drop(reply);
    let held = if json.len() <= share.bytes() {
        share.shrink_to(json.len());
        share
    } else if state.budget.top_up(&mut share, json.len()).await {
        // A little larger than its estimate (long topics), with the room there.
        share
    } else {
        // Otherwise the reply takes what it needs as a request of its own, once its share is
        // given back (a share held meanwhile could never make room when the budget is at
        // its least).
        drop(share);
        state
            .budget
            .reserve(&budget_key.0, json.len(), BUSY_WAIT)
            .await?
    };
    state.metrics.pulled(pulled);
    Ok(held_json(json, held))
}

/// The payload bytes of a page when the client does not say (a client from before
/// `max_bytes`): what clients ask by default.
const DEFAULT_PAGE_BYTES: usize = 1024 * 1024;

/// The payload bytes one page of a pull carries at most (a larger first entry still comes,
/// alone): what the client asked, and no more than a request body carries once encoded
/// (base64 adds a third), so that a reply's share of the budget is no larger than a push's.
fn page_bytes(asked: Option<u64>, max_body_bytes: usize) -> usize {
    let most = (max_body_bytes / 4 * 3).min(storex_log_sql::MAX_PULL_BYTES);
    asked
        .map_or(DEFAULT_PAGE_BYTES, |asked| {
            usize::try_from(asked).unwrap_or(usize::MAX)
        })
        .min(most)
        .max(1)
}

/// About how many bytes a pull's topics take in memory.
fn topics_bytes(topics: Option<&[String]>) -> usize {
    topics.map_or(0, |topics| {
        topics
            .iter()
            .map(|t| t.len().saturating_add(std::mem::size_of::<String>()))
            .sum()
    })
}

/// About how many bytes an entry's reply takes besides its payload: cursor, ids, topic and
/// the JSON around them.
const ENTRY_OVERHEAD: usize = 224;

/// About how many bytes a page's reply takes besides its entries: `next_cursor`, `more` and
/// the JSON around them.
const REPLY_ENVELOPE: usize = 128;

/// About how many bytes the JSON reply of a page of at most `page_bytes` of payload in at
/// most `limit` entries takes: the payload in base64, and the rest of each entry.
fn reply_estimate(page_bytes: usize, limit: usize) -> usize {
    page_bytes
        .div_ceil(3)
        .saturating_mul(4)
        .saturating_add(limit.saturating_mul(ENTRY_OVERHEAD))
        .saturating_add(REPLY_ENVELOPE)
}

/// The most payload one entry may carry for its reply to fit in `reply_bytes`, as
/// [`reply_estimate`] counts.
fn payload_within(reply_bytes: usize) -> usize {
    reply_bytes.saturating_sub(ENTRY_OVERHEAD + REPLY_ENVELOPE) / 4 * 3
}

/// What the reply of one entry with `payload_bytes` of payload takes at most, whatever its
/// topic (one of control characters, escaped six bytes for one).
fn lone_entry_estimate(payload_bytes: usize) -> usize {
    reply_estimate(payload_bytes, 1).saturating_add(6 * MAX_TOPIC_BYTES)
}

async fn ack(
    State(state): State<Shared>,
    caller: Device,
    Budgeted(JsonBody(body), _held): Budgeted<JsonBody<AckRequest>>,
) -> Result<StatusCode, ApiError> {
    state.log.ack(caller.device, body.cursor).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn compact(
    State(state): State<Shared>,
    User(user): User,
) -> Result<Json<CompactResponse>, ApiError> {
    let dropped = state.log.compact(&user).await?;
    Ok(Json(CompactResponse { dropped }))
}

async fn health(State(state): State<Shared>) -> Response {
    // Cheap on purpose: load balancers call it often. Totals are in /metrics. The database
    // is asked at most once a second (the route takes no token and no rate limit): requests
    // meanwhile get that answer, and concurrent ones wait for one ping.
    let pinged = state
        .health
        .get(HEALTH_MAX_AGE, || async {
            Ok::<_, Infallible>(state.auth.ping().await.map_err(|e| e.to_string()))
        })
        .await
        .unwrap_or_else(|never| match never {});
    match pinged {
        Ok(()) => Json(Health {
            status: "ok".into(),
            last_push: state.metrics.last_push(),
        })
        .into_response(),
        Err(e) => ApiError::unavailable("the database does not answer", &std::io::Error::other(e))
            .into_response(),
    }
}

async fn metrics(_: WithinIpLimit, State(state): State<Shared>) -> Response {
    // Counting whole tables is slow on a large log.
    let counted = state
        .stats
        .get(state.config.stats_max_age, || state.log.stats())
        .await;
    match counted {
        Ok(stats) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            state
                .metrics
                .render(stats, state.budget.held_bytes(), state.budget.refused()),
        )
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_within_a_reply_size_has_a_reply_of_at_most_that_size() {
        let least = ENTRY_OVERHEAD + REPLY_ENVELOPE;
        for reply in [
            0, 1, 351, 352, 353, 355, 356, 357, 1_000, 1_048_576, 8_388_608,
        ] {
            let payload = payload_within(reply);
            assert!(reply_estimate(payload, 1) <= reply.max(least), "{reply}");
            if reply >= least + 4 {
                assert!(reply_estimate(payload + 3, 1) > reply, "{reply}: the most");
            }
        }
    }

    /// The JSON reply of `entries` entries with `payload` bytes of payload each and `topic`,
    /// with the longest cursors.
    fn encoded_reply(entries: usize, payload: usize, topic: &str) -> usize {
        let pulled: Vec<storex_sync::PulledEntry> = (0..entries)
            .map(|_| storex_sync::PulledEntry {
                cursor: u64::MAX,
                entry: SharedEntry {
                    id: storex_core::uuid::Uuid::now_v7(),
                    device: DeviceId::random(),
                    topic: topic.to_owned(),
                    payload: vec![0xff; payload],
                },
            })
            .collect();
        let reply = PullResponse::from_pulled(&pulled, &[], u64::MAX, true);
        // A reply that does not encode fails the comparison.
        serde_json::to_vec(&reply).map_or(usize::MAX, |json| json.len())
    }

    #[test]
    fn a_reply_is_no_larger_than_its_estimate() {
        let topic = "a_collection_name_of_forty_bytes_or_so__";
        for payload in [0, 1, 2, 3, 1_000, 1_048_576] {
            assert!(encoded_reply(1, payload, topic) <= reply_estimate(payload, 1));
            assert!(
                encoded_reply(100, payload / 100, topic) <= reply_estimate(payload, 100),
                "{payload} in 100 entries"
            );
        }
        // An entry read alone, whatever its topic.
        let worst = "\u{1}".repeat(MAX_TOPIC_BYTES);
        for payload in [0, 1, 1_048_576] {
            assert!(encoded_reply(1, payload, &worst) <= lone_entry_estimate(payload));
        }
    }

    #[test]
    fn the_ip_limit_counts_an_ipv6_client_by_its_64_network() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_network(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_network(ip("2001:db8:1:2::1")),
            client_network(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            client_network(ip("2001:db8:1:2::1")),
            client_network(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_network(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_network(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
