//! [`HttpSharedLog`]: the [`SharedSyncLog`] of a sync server, over HTTP, with timeouts and
//! retries.
//!
//! Credentials: [`create_device`](SharedSyncLog::create_device) takes the *user token* (from
//! the server's admin, see [`HttpSharedLog::create_user`]) where other logs take a user name,
//! and keeps the device token it receives. An app stores that token
//! ([`HttpSharedLog::device_token`]) and hands it back after a restart
//! ([`HttpSharedLog::add_device`]); [`compact`](SharedSyncLog::compact) takes the user token
//! too.
//!
//! Retries: push, pull, ack, list and compact are idempotent and are retried with exponential
//! backoff and jitter on connection failures, timeouts, 429 and 5xx answers. So are
//! registering a device and creating a user: the client chooses the device's id and token,
//! and the user's token, so a retry after a lost reply registers the same device again, not
//! a second one, and gets the user it created back, not "exists already". A
//! request that cannot be made at all (a token that is not a valid header value) fails at
//! once, as [`SharedLogError::Invalid`].
//!
//! Replies: no more of a reply is read than the call can get (twice the largest reply it
//! expects, and at least 16 MiB; 64 KiB of a refusal). A longer one (a captive portal or a
//! broken proxy streaming on) fails the call as [`SharedLogError::Unavailable`] without a
//! retry, so a phone does not download it again and again; the next sync asks again.
//!
//! Pushes: a push too large for the server (or a proxy), or too slow for the link, is split
//! and sent again in parts. A single entry refused as too large (413), or larger than what
//! [`SLOW_PUSH`] carries at the slowest rate and timed out before an answer, is refused alone
//! ([`SharedLogError::EntryRefused`], with the entries after it given back), so the sync
//! engine pushes the others. For a while after that (30 minutes for a 413,
//! [`SLOW_LINK_PAUSE`] for a timeout), entries at least as large, or as far beyond that
//! budget, are refused without being sent. That memory is the client's, whichever instance
//! refused, and its clock may stand still while the device sleeps.
//!
//! Several instances: [`HttpSharedLog::with_servers`] takes the URLs of several instances of a
//! scaled-out server. Calls go to one of them; after a connection failure, a timeout or a 5xx
//! the next attempt goes to the next one, so a device whose instance died carries on against
//! the others (the instances share one database, so any of them can answer).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use storex_core::{error_chain, BoxFuture};
use storex_sync::{
    split_into_pushes, DeviceId, DeviceInfo, Pull, PulledEntry, SharedEntry, SharedLogError,
    SharedResult, SharedSyncLog, UnreadableEntry,
};

use crate::api::{
    routes, AckRequest, CompactResponse, DeviceCredentials, DevicesResponse, ErrorBody, Health,
    NewDevice, NewUser, PullRequest, PullResponse, PushRequest, PushResponse, UserCredentials,
    WireEntry,
};
use crate::error::Error;
use crate::token::new_token;

const LOG_NAME: &str = "http";
/// Bytes of JSON around one entry's payload in a push (ids, topic up to a few hundred bytes,
/// punctuation), with room to spare.
const ENTRY_OVERHEAD: usize = 512;

/// The size of an entry in a push request body, about (base64 makes 4 bytes of 3).
fn wire_size(entry: &SharedEntry) -> usize {
    entry.payload.len().div_ceil(3) * 4 + entry.topic.len() + ENTRY_OVERHEAD
}

/// What a reply's body that did not come in time is called.
const REST_OF_REPLY: &str = "the rest of the reply";

/// How long a push may take at [`ClientOptions::min_bytes_per_second`].
pub const SLOW_PUSH: Duration = Duration::from_secs(30);

/// After an entry larger than a push carries in [`SLOW_PUSH`] at the slowest rate timed out,
/// other such entries are refused without being sent for this long: the link was too slow
/// for them a moment ago, and each try costs a request timeout of upload while the device's
/// other entries, and its pulls, wait.
pub const SLOW_LINK_PAUSE: Duration = Duration::from_secs(120);

/// True when a request timed out on the way, here or at the server (408): smaller ones may
/// not. (Not a connection that timed out: a smaller request meets the same.)
fn timed_out(error: &SharedLogError) -> bool {
    match error {
        SharedLogError::Unavailable { source, .. } => {
            matches!(source.downcast_ref::<Error>(), Some(Error::TimedOut { .. }))
                || source
                    .downcast_ref::<reqwest::Error>()
                    .is_some_and(|e| e.is_timeout() && !e.is_connect())
                || source.to_string().starts_with("HTTP 408")
        }
        _ => false,
    }
}

/// True when a request timed out before an answer came, here or at the server (408): the
/// server may have stored a push all the same, but did not say so. (Not one whose answer
/// came and whose rest of the reply did not: that push was stored.)
fn timed_out_before_an_answer(error: &SharedLogError) -> bool {
    let rest_of_reply = match error {
        SharedLogError::Unavailable { source, .. } => matches!(
            source.downcast_ref::<Error>(),
            Some(Error::TimedOut { waiting_for, .. }) if *waiting_for == REST_OF_REPLY
        ),
        _ => false,
    };
    timed_out(error) && !rest_of_reply
}

/// True when the server refused a request as too large (413).
fn too_large(error: &SharedLogError) -> bool {
    matches!(error, SharedLogError::Invalid { problem } if problem.starts_with("HTTP 413"))
}

/// How long entries at least as large as one a server or proxy refused alone as too large
/// (413) are refused without being sent: such limits change rarely, and each try may upload
/// the whole entry again.
const TOO_LARGE_PAUSE: Duration = Duration::from_secs(30 * 60);

/// Single entries a push was refused for lately: the smallest refused as too large, and when;
/// when one beyond the slow-link budget last timed out.
#[derive(Debug, Default)]
struct RecentRefusals {
    too_large: Option<(usize, Instant)>,
    slow_link: Option<Instant>,
}

impl RecentRefusals {
    /// An entry of `size` bytes on the wire was refused alone as too large, `now`.
    fn too_large(&mut self, size: usize, now: Instant) {
        let smallest = match self.too_large_ago(now) {
            Some((smallest, _)) => smallest.min(size),
            None => size,
        };
        self.too_large = Some((smallest, now));
    }

    /// An entry beyond the slow-link budget timed out, `now`.
    fn slow_link(&mut self, now: Instant) {
        self.slow_link = Some(now);
    }

    /// The smallest size refused as too large within [`TOO_LARGE_PAUSE`] before `now`, and
    /// how long before.
    fn too_large_ago(&self, now: Instant) -> Option<(usize, Duration)> {
        let (size, at) = self.too_large?;
        let ago = now.saturating_duration_since(at);
        (ago < TOO_LARGE_PAUSE).then_some((size, ago))
    }

    /// How long before `now` an entry beyond the slow-link budget timed out, within
    /// [`SLOW_LINK_PAUSE`]. (Time the device spent suspended may not count.)
    fn slow_link_ago(&self, now: Instant) -> Option<Duration> {
        let ago = now.saturating_duration_since(self.slow_link?);
        (ago < SLOW_LINK_PAUSE).then_some(ago)
    }

    /// Why `entry` is refused `now` without being sent, if an entry like it was refused
    /// lately (`budget`: the push budget, see [`SLOW_PUSH`]).
    fn refusal_of(&self, entry: &SharedEntry, budget: usize, now: Instant) -> Option<String> {
        let size = wire_size(entry);
        if let Some((smallest, ago)) = self.too_large_ago(now) {
            if size >= smallest {
                return Some(format!(
                    "an entry of {smallest} bytes in a request was refused as too large (HTTP \
                     413) {} s ago, and this one has {size}: such entries are sent again once \
                     {} s have passed (see `ClientOptions::max_request_bytes`)",
                    ago.as_secs(),
                    TOO_LARGE_PAUSE.as_secs()
                ));
            }
        }
        match self.slow_link_ago(now) {
            Some(ago) if size > budget => Some(format!(
                "an entry larger than {budget} bytes timed out on this link {} s ago: such \
                 entries are sent again once {} s have passed",
                ago.as_secs(),
                SLOW_LINK_PAUSE.as_secs()
            )),
            _ => None,
        }
    }
}

/// Puts `chunk` back on `pending` (the next request last) in two parts cut at `at`, the first
/// next.
fn cut_back(mut chunk: Vec<SharedEntry>, at: usize, pending: &mut Vec<Vec<SharedEntry>>) {
    let second = chunk.split_off(at);
    pending.push(second);
    pending.push(chunk);
}

/// The refusal of `entry`, sent alone, with `pending` (the requests not sent yet, the next
/// last) given back.
fn refused(entry: &SharedEntry, pending: Vec<Vec<SharedEntry>>, problem: String) -> SharedLogError {
    SharedLogError::EntryRefused {
        id: entry.id,
        problem,
        unsent: pending.into_iter().rev().flatten().collect(),
    }
}

/// Timeouts, retries and batch sizes of an [`HttpSharedLog`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Longest wait for the answer to a request (a long poll gets its wait on top, and a
    /// large body the time it takes at `min_bytes_per_second`), and then for the rest of the
    /// reply (with the time its announced size takes at that rate on top). Default 15 s.
    pub timeout: Duration,
    /// Retries after the first attempt of a retryable call. Default 6.
    pub retries: usize,
    /// First backoff delay. Default 50 ms.
    pub min_backoff: Duration,
    /// Longest backoff delay. Default 2 s.
    pub max_backoff: Duration,
    /// Entries per push request; larger pushes are split. Default 500 (servers accept 1,000
    /// unless configured otherwise).
    pub max_push_entries: usize,
    /// Largest push request body, in bytes (JSON, payloads in base64); larger pushes are
    /// split, and an entry that cannot fit alone is reported by the sync engine instead of
    /// pushed (see `SharedSyncLog::max_entry_bytes`). Default 8 MiB, the server's default
    /// limit; set it to the smallest body limit on the way (e.g. a proxy's 1 MiB). A push the
    /// server still refuses as too large is split in halves and sent again; an entry refused
    /// alone is refused to the sync engine (`SharedLogError::EntryRefused`), and for 30
    /// minutes entries at least as large are refused without being sent.
    pub max_request_bytes: usize,
    /// The slowest link the client must work over, in bytes per second: the wait for an
    /// answer grows by the time the request's body takes at this rate, and the wait for the
    /// rest of the reply by the time the reply takes, so that a large push or pull on a slow
    /// link is not cut off (and retried) for ever; and a push carries at most what takes
    /// [`SLOW_PUSH`] at this rate (an entry larger still goes alone), well within the minute
    /// after which servers answer 408. Default 64 KiB/s.
    pub min_bytes_per_second: u64,
    /// Payload bytes one pull asks the server for at most (the first entry comes whatever
    /// its size). Default 1 MiB: at `min_bytes_per_second`, about 20 s of reply.
    pub max_pull_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(15),
            retries: 6,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_push_entries: 500,
            max_request_bytes: 8 * 1024 * 1024,
            min_bytes_per_second: 64 * 1024,
            max_pull_bytes: 1024 * 1024,
        }
    }
}

/// Who the credentials of a call speak for: decides how a 401 is reported.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Device(DeviceId),
    UserOrAdmin,
    /// The user registering this device.
    Registering(DeviceId),
}

/// One failed attempt, and whether another may follow.
#[derive(Debug)]
struct Attempt {
    error: SharedLogError,
    retry: bool,
    /// How long the server asked to wait before the next try (`Retry-After` of a 429 or a
    /// 503), when it said.
    retry_after: Option<Duration>,
}

/// The longest `Retry-After` a client waits for between two tries; a longer one is cut to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A shared sync log served by a storex sync server (`storex serve`).
pub struct HttpSharedLog {
    /// Base URLs of the server's instances, without a trailing slash.
    bases: Vec<String>,
    /// Index (modulo `bases.len()`) of the instance calls go to.
    current: AtomicUsize,
    http: reqwest::Client,
    options: ClientOptions,
    tokens: Mutex<HashMap<DeviceId, String>>,
    /// Tokens made to register devices, kept until a registration is answered: registering
    /// the device again reuses its token, so that an earlier request the server finishes
    /// late sets the same token instead of replacing the one the device goes on with.
    registering: Mutex<HashMap<DeviceId, String>>,
    /// The server refused a pull's `max_bytes` (a server from before it): pulls go without.
    no_max_bytes: AtomicBool,
    /// Pushes of single entries refused lately, to refuse entries like them unsent.
    refusals: Mutex<RecentRefusals>,
}

/// Device tokens are secrets: only their devices are shown.
impl std::fmt::Debug for HttpSharedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let devices: Vec<DeviceId> = self
            .tokens
            .lock()
            .map(|tokens| tokens.keys().copied().collect())
            .unwrap_or_default();
        f.debug_struct("HttpSharedLog")
            .field("bases", &self.bases)
            .field("current", &self.current)
            .field("options", &self.options)
            .field("devices_with_tokens", &devices)
            .finish_non_exhaustive()
    }
}

impl HttpSharedLog {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8787`) with default
    /// options.
    pub fn new(base_url: &str) -> Result<Self, Error> {
        Self::with_options(base_url, ClientOptions::default())
    }

    /// A client with `options`.
    pub fn with_options(base_url: &str, options: ClientOptions) -> Result<Self, Error> {
        Self::with_servers(&[base_url], options)
    }

    /// A client of a server with several instances (see the module docs); the first URL is
    /// tried first.
    pub fn with_servers(base_urls: &[&str], options: ClientOptions) -> Result<Self, Error> {
        if base_urls.is_empty() {
            return Err(Error::Config {
                problem: "at least one server URL is needed".into(),
            });
        }
        let mut bases = Vec::with_capacity(base_urls.len());
        for url in base_urls {
            let base = url.trim_end_matches('/').to_owned();
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(Error::Config {
                    problem: format!("server URL `{url}` must start with http:// or https://"),
                });
            }
            if let Err(e) = reqwest::Url::parse(&base) {
                return Err(Error::Config {
                    problem: format!("server URL `{url}` is not a URL: {e}"),
                });
            }
            if base.starts_with("https://") && !cfg!(feature = "tls") {
                return Err(Error::Config {
                    problem: format!(
                        "server URL `{url}` is HTTPS, and storex-log-http was built without \
                         TLS: enable its `tls` feature (the `storex` command's `tls` feature)"
                    ),
                });
            }
            bases.push(base);
        }
        if options.max_push_entries == 0 {
            return Err(Error::Config {
                problem: "max_push_entries must be at least 1".into(),
            });
        }
        if options.min_bytes_per_second == 0 || options.max_pull_bytes == 0 {
            return Err(Error::Config {
                problem: "min_bytes_per_second and max_pull_bytes must be at least 1".into(),
            });
        }
        if options.max_request_bytes < 8 * ENTRY_OVERHEAD {
            return Err(Error::Config {
                problem: format!(
                    "max_request_bytes must be at least {} bytes",
                    8 * ENTRY_OVERHEAD
                ),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // A redirect is answered as a wrong URL: followed, one to another scheme or host
            // would drop the token (and answer 401, read as an unknown device), and one that
            // turns a POST into a GET would be refused as a bad request.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::Client)?;
        Ok(HttpSharedLog {
            bases,
            current: AtomicUsize::new(0),
            http,
            options,
            tokens: Mutex::new(HashMap::new()),
            registering: Mutex::new(HashMap::new()),
            no_max_bytes: AtomicBool::new(false),
            refusals: Mutex::default(),
        })
    }

    /// The base URL of the instance calls go to now (it changes after failures when the
    /// client knows several instances).
    pub fn current_server(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Uses `token` for `device` (credentials kept from an earlier registration).
    pub fn add_device(&self, device: DeviceId, token: impl Into<String>) {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device, token.into());
    }

    /// The token of a device this client registered or was given.
    pub fn device_token(&self, device: DeviceId) -> Option<String> {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&device)
            .cloned()
    }

    /// The token to register `device` with: the one made for an earlier registration of it
    /// that was not answered (it may still reach the server), or a new one.
    fn registration_token(&self, device: DeviceId) -> SharedResult<String> {
        let mut registering = self
            .registering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(token) = registering.get(&device) {
            return Ok(token.clone());
        }
        let token = new_token().map_err(|e| SharedLogError::Unavailable {
            log: LOG_NAME,
            source: Box::new(e),
        })?;
        registering.insert(device, token.clone());
        Ok(token)
    }

    /// Forgets the token made to register `device` (answered, or refused as it is).
    fn forget_registration(&self, device: DeviceId) {
        self.registering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&device);
    }

    /// The most bytes a push request carries: the request limit, or less if that would take
    /// longer than [`SLOW_PUSH`] at the slowest rate the link may have.
    fn push_budget(&self) -> usize {
        let in_time = self
            .options
            .min_bytes_per_second
            .saturating_mul(SLOW_PUSH.as_secs());
        self.options
            .max_request_bytes
            .min(usize::try_from(in_time).unwrap_or(usize::MAX))
    }

    /// `entries` cut into requests within the entry and byte limits.
    fn chunks(&self, entries: Vec<SharedEntry>) -> Vec<Vec<SharedEntry>> {
        split_into_pushes(
            entries,
            self.options.max_push_entries,
            self.push_budget(),
            wire_size,
        )
    }

    fn token_of(&self, device: DeviceId) -> SharedResult<String> {
        self.device_token(device)
            .ok_or(SharedLogError::UnknownDevice { device })
    }

    /// Creates a user on the server (needs the server's admin token); returns its token.
    ///
    /// The token is made here and every retry of the request carries it, so a retry after a
    /// lost answer (the user was created, the reply never came) gets the same user and
    /// token back rather than "exists already". A user of that name created earlier, with
    /// another token, is refused ([`SharedLogError::Invalid`], naming `user_exists`).
    pub async fn create_user(
        &self,
        admin_token: &str,
        name: &str,
    ) -> SharedResult<UserCredentials> {
        let token = new_token().map_err(|e| SharedLogError::Unavailable {
            log: LOG_NAME,
            source: Box::new(e),
        })?;
        let create = |token: Option<String>| {
            let body = NewUser {
                name: name.to_owned(),
                token,
            };
            async move {
                self.call(
                    Method::POST,
                    routes::USERS,
                    admin_token,
                    Some(&body),
                    Duration::ZERO,
                    Caller::UserOrAdmin,
                )
                .await
            }
        };
        match create(Some(token)).await {
            // A server from before clients chose user tokens refuses the field: asked again
            // without it (that server makes the token, and a retry after a lost answer meets
            // "exists already", as it did).
            Err(SharedLogError::Invalid { problem })
                if problem.contains("unknown field `token`") =>
            {
                create(None).await
            }
            other => other,
        }
    }

    /// Revokes `device` of the user whose token is `user_token`: the device's token stops
    /// working at once, on every server instance.
    pub async fn revoke_device(&self, user_token: &str, device: DeviceId) -> SharedResult<()> {
        let path = routes::DEVICE.replace("{device}", &device.0.to_string());
        self.call_empty(
            Method::DELETE,
            &path,
            user_token,
            None::<&()>,
            Caller::UserOrAdmin,
        )
        .await
    }

    /// The server's health and totals.
    pub async fn health(&self) -> SharedResult<Health> {
        self.call(
            Method::GET,
            routes::HEALTH,
            "",
            None::<&()>,
            Duration::ZERO,
            Caller::UserOrAdmin,
        )
        .await
    }

    /// Waits up to `wait` (the server caps it, 30 s by default) until the other devices have
    /// entries above `after` for `device`; true when there are some. Returns at once when
    /// there are some already. For the live updates of a background sync.
    pub async fn wait_for_entries(
        &self,
        device: DeviceId,
        after: u64,
        wait: Duration,
        topics: Option<&[String]>,
    ) -> SharedResult<bool> {
        let pull = self.pull_page(device, after, 1, topics, wait).await?;
        Ok(!pull.entries.is_empty() || !pull.unreadable.is_empty() || pull.more)
    }

    async fn pull_page(
        &self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&[String]>,
        wait: Duration,
    ) -> SharedResult<Pull> {
        let token = self.token_of(device)?;
        let mut body = PullRequest {
            after,
            limit,
            topics: topics.map(<[String]>::to_vec),
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            max_bytes: (!self.no_max_bytes.load(Ordering::Relaxed))
                .then_some(self.options.max_pull_bytes as u64),
        };
        // A reply of that many payload bytes in base64 (or of the largest entry, which comes
        // whatever its size), with each entry's fields (servers send 1,000 entries at most
        // unless configured otherwise).
        let largest = self
            .options
            .max_pull_bytes
            .max(self.max_entry_bytes().unwrap_or(0));
        let reply = largest
            .saturating_mul(4)
            .div_ceil(3)
            .saturating_add(limit.min(1_000) * ENTRY_OVERHEAD);
        let token = token.as_str();
        let pull = |body: PullRequest| async move {
            self.call_with_reply::<_, PullResponse>(
                Method::POST,
                routes::PULL,
                token,
                Some(&body),
                (wait, reply),
                Caller::Device(device),
            )
            .await
        };
        let asked_for_bytes = body.max_bytes.is_some();
        let response = match pull(body.clone()).await {
            // A server from before `max_bytes` refuses the field: asked again without it,
            // and from now on.
            Err(SharedLogError::Invalid { problem })
                if asked_for_bytes && problem.contains("max_bytes") =>
            {
                self.no_max_bytes.store(true, Ordering::Relaxed);
                body.max_bytes = None;
                pull(body).await?
            }
            other => other?,
        };
        let mut entries = Vec::with_capacity(response.entries.len());
        // The server encodes entries it has read: one that does not decode was damaged on
        // the way (or by the server), not in the log, so the pull fails and is tried again.
        for pulled in response.entries {
            let entry = pulled
                .entry
                .into_entry()
                .map_err(|problem| bad_reply(&problem))?;
            entries.push(PulledEntry {
                cursor: pulled.cursor,
                entry,
            });
        }
        let unreadable = response
            .unreadable
            .into_iter()
            .map(|u| UnreadableEntry::new(u.cursor, u.problem))
            .collect();
        Ok(Pull {
            entries,
            unreadable,
            next_cursor: response.next_cursor,
            more: response.more,
        })
    }

    /// A call whose success has a JSON body.
    #[allow(clippy::too_many_arguments)]
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&B>,
        wait: Duration,
        caller: Caller,
    ) -> SharedResult<R> {
        self.call_with_reply(method, path, token, body, (wait, 0), caller)
            .await
    }

    /// [`HttpSharedLog::call`] for a reply of up to `reply_bytes` bytes (`wait` and
    /// `reply_bytes` as a pair): its timeout allows for them.
    #[allow(clippy::too_many_arguments)]
    async fn call_with_reply<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&B>,
        (wait, reply_bytes): (Duration, usize),
        caller: Caller,
    ) -> SharedResult<R> {
        let bytes = self
            .send(method, path, token, body, (wait, reply_bytes), caller, true)
            .await?;
        decode_reply(&bytes)
    }

    /// An idempotent call whose success has no body.
    async fn call_empty<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&B>,
        caller: Caller,
    ) -> SharedResult<()> {
        self.send(method, path, token, body, (Duration::ZERO, 0), caller, true)
            .await
            .map(|_| ())
    }

    /// Sends a request and returns the reply's body, retrying with backoff (and moving to the
    /// next instance) on failures that may pass. A request that timed out (or was answered
    /// 408) is retried only if `retry_timeouts`: a caller that can make the request smaller
    /// gets the timeout at once instead of the same request, as slow, up to
    /// [`ClientOptions::retries`] times.
    #[allow(clippy::too_many_arguments)]
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&B>,
        (wait, reply_bytes): (Duration, usize),
        caller: Caller,
        retry_timeouts: bool,
    ) -> SharedResult<Vec<u8>> {
        let body = match body {
            Some(body) => Some(
                serde_json::to_vec(body).map_err(|e| SharedLogError::Invalid {
                    problem: format!("cannot encode the request: {e}"),
                })?,
            ),
            None => None,
        };
        let attempt = || async {
            let instance = self.current.load(Ordering::Relaxed);
            let result = self
                .attempt(
                    &method,
                    instance,
                    path,
                    token,
                    body.as_deref(),
                    (wait, reply_bytes),
                    caller,
                )
                .await;
            if matches!(&result, Err(a) if a.error.is_transient()) && self.bases.len() > 1 {
                // Move on to the next instance, unless another call did already.
                let _ = self.current.compare_exchange(
                    instance,
                    instance.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            result
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.options.min_backoff)
            .with_max_delay(self.options.max_backoff)
            .with_max_times(self.options.retries)
            .with_jitter();
        attempt
            .retry(backoff)
            .when(|a: &Attempt| a.retry && (retry_timeouts || !timed_out(&a.error)))
            // Not sooner than the server asked (a 429 says when its rate limit lets it in).
            .adjust(|a: &Attempt, next| {
                next.map(|next| next.max(a.retry_after.unwrap_or_default()))
            })
            .await
            .map_err(|a| a.error)
    }

    /// One attempt of a call against instance `instance`.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        method: &Method,
        instance: usize,
        path: &str,
        token: &str,
        body: Option<&[u8]>,
        (wait, reply_bytes): (Duration, usize),
        caller: Caller,
    ) -> Result<Vec<u8>, Attempt> {
        let base = &self.bases[instance % self.bases.len()];
        let url = format!("{base}{path}");
        // The answer's head comes within the timeout, the wait the server may hold the
        // request, and the time the body takes at the slowest rate the link may have; the
        // reply then within the timeout and the time it takes at that rate. (Not one deadline
        // for the largest reply the call may get: a server that never answers would hold even
        // a small pull for minutes.)
        let min_rate = self.options.min_bytes_per_second;
        let head_within = self
            .options
            .timeout
            .saturating_add(wait)
            .saturating_add(transfer_time(body.map_or(0, <[u8]>::len), min_rate));
        let mut request = self.http.request(method.clone(), &url);
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let sent = within(head_within, "an answer", request.send()).await?;
        let response = sent.map_err(|e| match e.is_builder() {
            // The request cannot be made at all (a token that is no header value, say):
            // retrying, now or later, makes the same one.
            true => Attempt {
                retry: false,
                error: SharedLogError::Invalid {
                    problem: format!("the request cannot be made: {}", error_chain(&e)),
                },
                retry_after: None,
            },
            false => Attempt {
                retry: true,
                error: unavailable(e),
                retry_after: None,
            },
        })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("nowhere said")
                .chars()
                .take(200)
                .collect::<String>();
            return Err(Attempt {
                retry: false,
                error: SharedLogError::Invalid {
                    problem: format!(
                        "HTTP {status}: the server at `{base}` redirects `{path}` to \
                         `{location}`; give the client the URL it redirects to (it does not \
                         follow redirects, which could drop its token)"
                    ),
                },
                retry_after: None,
            });
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
        // A refusal's explanation is short: whatever follows the first bytes is not read.
        let limit = match status.is_success() {
            true => reply_limit(reply_bytes),
            false => ERROR_REPLY_BYTES,
        };
        let reply_within = self.options.timeout.saturating_add(transfer_time(
            response.content_length().map_or(reply_bytes, |announced| {
                usize::try_from(announced).unwrap_or(usize::MAX).min(limit)
            }),
            min_rate,
        ));
        let read = within(reply_within, REST_OF_REPLY, read_reply(response, limit)).await?;
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(ReplyError::Transport(e)) => {
                return Err(Attempt {
                    retry: true,
                    error: unavailable(e),
                    retry_after: None,
                })
            }
            Err(ReplyError::TooLarge(_)) if !status.is_success() => Vec::new(),
            // Not a server of this protocol (a captive portal, a broken proxy): asking again
            // at once would only download as much again; the next sync asks again.
            Err(ReplyError::TooLarge(read)) => {
                return Err(Attempt {
                    retry: false,
                    error: bad_reply(&format!(
                        "the reply is larger than the {limit} bytes this call can get \
                         ({read} read, the rest left unread)"
                    )),
                    retry_after: None,
                })
            }
        };
        if status.is_success() {
            return Ok(bytes);
        }
        Err(Attempt {
            retry_after,
            ..refusal(status, &bytes, caller)
        })
    }
}

/// `step`'s output if it ends within `limit`; otherwise a retryable attempt that timed out
/// waiting for `waiting_for`.
async fn within<T>(
    limit: Duration,
    waiting_for: &'static str,
    step: impl std::future::Future<Output = T>,
) -> Result<T, Attempt> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| Attempt {
            retry: true,
            error: unavailable(Error::TimedOut {
                waiting_for,
                after: limit,
            }),
            retry_after: None,
        })
}

/// The most bytes of a refusal's body that are read.
const ERROR_REPLY_BYTES: usize = 64 * 1024;

/// The most bytes of any successful reply that are read, whatever the call expects.
const MIN_REPLY_LIMIT: usize = 16 * 1024 * 1024;

/// The most bytes a successful reply may have when the call expects up to `expected`: twice
/// that, and never under [`MIN_REPLY_LIMIT`]. A reply beyond is not of a sync server (or not
/// of one this client understands), and reading on would hold memory without bound.
fn reply_limit(expected: usize) -> usize {
    expected.saturating_mul(2).max(MIN_REPLY_LIMIT)
}

/// Why a reply's body was not read whole.
enum ReplyError {
    /// The connection failed.
    Transport(reqwest::Error),
    /// The body is longer than allowed; this many bytes were read (or announced).
    TooLarge(u64),
}

/// Reads `response`'s body, stopping as soon as it is known to pass `limit` bytes (announced
/// by its `Content-Length`, or read).
async fn read_reply(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReplyError> {
    let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
    if let Some(announced) = response.content_length().filter(|&n| n > limit_u64) {
        return Err(ReplyError::TooLarge(announced));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReplyError::Transport)? {
        if body.len().saturating_add(chunk.len()) > limit {
            let read = body.len().saturating_add(chunk.len());
            return Err(ReplyError::TooLarge(read.try_into().unwrap_or(u64::MAX)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How long `bytes` take at `bytes_per_second` (at most a day: a longer wait is no bound).
fn transfer_time(bytes: usize, bytes_per_second: u64) -> Duration {
    let seconds = bytes as f64 / bytes_per_second.max(1) as f64;
    Duration::from_secs_f64(seconds.min(86_400.0))
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> SharedLogError {
    SharedLogError::Unavailable {
        log: LOG_NAME,
        source: Box::new(error),
    }
}

/// A successful reply's body as `R`.
fn decode_reply<R: DeserializeOwned>(body: &[u8]) -> SharedResult<R> {
    serde_json::from_slice(body).map_err(|e| bad_reply(&e.to_string()))
}

fn bad_reply(problem: &str) -> SharedLogError {
    SharedLogError::Unavailable {
        log: LOG_NAME,
        source: format!("the server sent a reply this client cannot read: {problem}").into(),
    }
}

/// The error of a non-2xx answer.
fn refusal(status: StatusCode, body: &[u8], caller: Caller) -> Attempt {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let message = detail
        .as_ref()
        .map(|d| d.message.clone())
        .unwrap_or_else(|| format!("HTTP {status}"));
    let code = detail.as_ref().map(|d| d.code.as_str()).unwrap_or("");
    let transient = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT
    ) || status.is_server_error();
    if transient {
        return Attempt {
            retry: true,
            error: SharedLogError::Unavailable {
                log: LOG_NAME,
                source: format!("HTTP {status}: {message}").into(),
            },
            retry_after: None,
        };
    }
    let error = match (code, caller) {
        ("cursor_compacted", _) => SharedLogError::CursorCompacted {
            cursor: detail.as_ref().and_then(|d| d.cursor).unwrap_or(0),
            compacted_through: detail
                .as_ref()
                .and_then(|d| d.compacted_through)
                .unwrap_or(0),
        },
        ("cursor_ahead", _) => SharedLogError::CursorAhead {
            cursor: detail.as_ref().and_then(|d| d.cursor).unwrap_or(0),
            log_end: detail.as_ref().and_then(|d| d.log_end).unwrap_or(0),
            compacted_through: detail
                .as_ref()
                .and_then(|d| d.compacted_through)
                .unwrap_or(0),
        },
        ("device_refused", Caller::Registering(device)) => SharedLogError::DeviceRefused {
            device,
            problem: message,
        },
        ("wrong_device", Caller::Device(device)) => SharedLogError::WrongDevice {
            device,
            other: DeviceId(detail.as_ref().and_then(|d| d.other).unwrap_or_default()),
        },
        (_, Caller::Device(device)) if status == StatusCode::UNAUTHORIZED => {
            SharedLogError::UnknownDevice { device }
        }
        _ if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => {
            SharedLogError::Unauthorized { problem: message }
        }
        _ => SharedLogError::Invalid {
            problem: format!("HTTP {status} {code}: {message}"),
        },
    };
    Attempt {
        retry: false,
        error,
        retry_after: None,
    }
}

impl SharedSyncLog for HttpSharedLog {
    fn name(&self) -> &'static str {
        LOG_NAME
    }

    fn max_entry_bytes(&self) -> Option<usize> {
        // The largest payload whose request (base64 and the JSON around it) fits the limit.
        Some((self.options.max_request_bytes - ENTRY_OVERHEAD - 1024) / 4 * 3)
    }

    fn device_credentials(&self, device: DeviceId) -> Option<String> {
        self.device_token(device)
    }

    fn restore_device_credentials(&self, device: DeviceId, credentials: &str) {
        self.add_device(device, credentials);
    }

    fn live_wait<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        wait: Duration,
        topics: Option<&'a [String]>,
    ) -> Option<BoxFuture<'a, SharedResult<bool>>> {
        Some(Box::pin(self.wait_for_entries(device, after, wait, topics)))
    }

    /// Registers `device` of the user whose **token** is `user`, with a device token made
    /// here, which every retry of the request carries, and so does a later registration of
    /// the device by this client until one is answered: a retried request sets the same
    /// token, whichever attempt the server finishes last. Registering it again after an
    /// answer replaces the token. A revoked device is refused.
    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>> {
        Box::pin(async move {
            let token = self.registration_token(device)?;
            let request = NewDevice {
                device: device.0,
                token: Some(token),
            };
            let credentials: DeviceCredentials = self
                .call(
                    Method::POST,
                    routes::DEVICES,
                    user,
                    Some(&request),
                    Duration::ZERO,
                    Caller::Registering(device),
                )
                .await
                .inspect_err(|e| {
                    if matches!(e, SharedLogError::Invalid { .. }) {
                        // Refused as it is (a token another device has, say): a new one next.
                        self.forget_registration(device);
                    }
                })?;
            if credentials.device != device.0 {
                return Err(SharedLogError::Invalid {
                    problem: format!(
                        "the server registered device {} instead of {device}",
                        credentials.device
                    ),
                });
            }
            self.forget_registration(device);
            self.add_device(device, credentials.token);
            Ok(())
        })
    }

    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>> {
        Box::pin(async move {
            let token = self.token_of(device)?;
            let response: DevicesResponse = self
                .call(
                    Method::GET,
                    routes::DEVICES,
                    &token,
                    None::<&()>,
                    Duration::ZERO,
                    Caller::Device(device),
                )
                .await?;
            Ok(response
                .devices
                .into_iter()
                .map(|d| DeviceInfo {
                    device: DeviceId(d.device),
                    acked: d.acked,
                })
                .collect())
        })
    }

    fn push(
        &self,
        device: DeviceId,
        entries: Vec<SharedEntry>,
    ) -> BoxFuture<'_, SharedResult<u64>> {
        Box::pin(async move {
            let token = self.token_of(device)?;
            if let Some(other) = entries.iter().find(|e| e.device != device) {
                return Err(SharedLogError::WrongDevice {
                    device,
                    other: other.device,
                });
            }
            // Requests bounded by count and bytes; one the server refuses as too large, or
            // that times out, is split in halves and sent again (a proxy may allow less than
            // we were told, a link may be slower than the slowest we were told of); one of
            // several entries that times out is not retried as it is first. One entry alone is
            // retried after a timeout, unless it is beyond what the slowest link carries in
            // time: sent again as slowly, it would only time out again. One entry alone that is
            // too large, or beyond that budget and timed out before an answer, is refused
            // alone (`EntryRefused`, with the entries after it given back): the sync engine
            // pushes the others and a later sync tries it again. For a while after such a
            // refusal, entries like it are refused (or split off) without being sent.
            let budget = self.push_budget();
            let mut pending: Vec<Vec<SharedEntry>> = self.chunks(entries);
            pending.reverse();
            let mut last = 0;
            while let Some(chunk) = pending.pop() {
                // An entry like one refused lately: the entries before it go on their own,
                // then it is refused unsent.
                let known = {
                    let refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
                    let now = Instant::now();
                    let refusal = |e| refusals.refusal_of(e, budget, now);
                    chunk
                        .iter()
                        .enumerate()
                        .find_map(|(at, e)| Some((at, refusal(e)?)))
                };
                if let Some((at, problem)) = known {
                    let mut chunk = chunk;
                    if at == 0 {
                        let first = chunk.remove(0);
                        pending.push(chunk);
                        return Err(refused(&first, pending, problem));
                    }
                    cut_back(chunk, at, &mut pending);
                    continue;
                }
                let body = PushRequest {
                    entries: chunk.iter().map(WireEntry::from_entry).collect(),
                };
                let sent = self
                    .send(
                        Method::POST,
                        routes::PUSH,
                        &token,
                        Some(&body),
                        (Duration::ZERO, 0),
                        Caller::Device(device),
                        matches!(chunk.as_slice(), [alone] if wire_size(alone) <= budget),
                    )
                    .await
                    .and_then(|reply| decode_reply::<PushResponse>(&reply));
                match sent {
                    Ok(response) => last = last.max(response.cursor),
                    // Too large for a proxy, or too slow for the link: in halves.
                    Err(error) if (too_large(&error) || timed_out(&error)) && chunk.len() > 1 => {
                        let half = chunk.len() / 2;
                        cut_back(chunk, half, &mut pending);
                    }
                    Err(error) => match chunk.as_slice() {
                        [alone] if too_large(&error) => {
                            self.refusals
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .too_large(wire_size(alone), Instant::now());
                            let problem = format!(
                                "{error}: the server, or a proxy on the way, allows less than \
                                 this entry alone (see `ClientOptions::max_request_bytes`)"
                            );
                            return Err(refused(alone, pending, problem));
                        }
                        [alone]
                            if timed_out_before_an_answer(&error) && wire_size(alone) > budget =>
                        {
                            self.refusals
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .slow_link(Instant::now());
                            let problem = format!(
                                "it timed out ({error}), and may have been stored all the same; \
                                 at the slowest rate the link may have ({} bytes a second) it \
                                 takes longer than {} s",
                                self.options.min_bytes_per_second,
                                SLOW_PUSH.as_secs()
                            );
                            return Err(refused(alone, pending, problem));
                        }
                        _ => return Err(error),
                    },
                }
            }
            Ok(last)
        })
    }

    fn pull<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, SharedResult<Pull>> {
        Box::pin(self.pull_page(device, after, limit, topics, Duration::ZERO))
    }

    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, SharedResult<()>> {
        Box::pin(async move {
            let token = self.token_of(device)?;
            self.call_empty(
                Method::POST,
                routes::ACK,
                &token,
                Some(&AckRequest { cursor }),
                Caller::Device(device),
            )
            .await
        })
    }

    /// Compacts the log of the user whose **token** is `user`.
    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<u64>> {
        Box::pin(async move {
            let response: CompactResponse = self
                .call(
                    Method::POST,
                    routes::COMPACT,
                    user,
                    None::<&()>,
                    Duration::ZERO,
                    Caller::UserOrAdmin,
                )
                .await?;
            Ok(response.dropped)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(waiting_for: &'static str) -> SharedLogError {
        unavailable(Error::TimedOut {
            waiting_for,
            after: Duration::from_secs(1),
        })
    }

    #[test]
    fn a_push_whose_answer_came_late_in_part_is_not_taken_for_one_unanswered() {
        assert!(timed_out_before_an_answer(&timeout("an answer")));
        assert!(timed_out(&timeout(REST_OF_REPLY)));
        assert!(!timed_out_before_an_answer(&timeout(REST_OF_REPLY)));
    }

    #[test]
    fn the_smallest_entry_refused_as_too_large_is_remembered_for_a_while() {
        let start = Instant::now();
        let later = |secs| start + Duration::from_secs(secs);
        let mut refusals = RecentRefusals::default();
        assert!(refusals.too_large_ago(start).is_none());
        refusals.too_large(5_000, start);
        refusals.too_large(9_000, later(10));
        let remembered = refusals.too_large_ago(later(20));
        assert_eq!(remembered, Some((5_000, Duration::from_secs(10))));
        let forgotten = later(10) + TOO_LARGE_PAUSE;
        assert!(refusals.too_large_ago(forgotten).is_none());
        refusals.too_large(9_000, forgotten);
        let remembered = refusals.too_large_ago(forgotten);
        assert_eq!(remembered.map(|(size, _)| size), Some(9_000));
        refusals.slow_link(start);
        assert_eq!(
            refusals.slow_link_ago(later(100)),
            Some(Duration::from_secs(100))
        );
        assert!(refusals.slow_link_ago(start + SLOW_LINK_PAUSE).is_none());
    }
}
