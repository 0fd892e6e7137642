//! Security and input handling of the sync server, driven with raw HTTP requests: user
//! isolation, device identity, revocation, tokens, malformed or oversized input and the rate
//! limit. Every refusal is a 4xx with a JSON error code, and changes nothing.

#![allow(clippy::unwrap_used)] // helpers of tests: a failed unwrap is a failed test

use crate::common;

use common::{config, metric, start, Store, ADMIN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use storex_core::uuid::Uuid;
use storex_log_http::{HttpSharedLog, RateLimit, RunningServer, SyncServer};
use storex_sync::{DeviceId, SharedEntry, SharedLogError, SharedSyncLog};

struct Fixture {
    server: RunningServer,
    http: reqwest::Client,
    log: HttpSharedLog,
    _store: Store,
}

struct Account {
    user_token: String,
    device: DeviceId,
    device_token: String,
}

impl Fixture {
    async fn new() -> Self {
        let store = Store::sqlite();
        let server = start(&store).await;
        let log = HttpSharedLog::new(&server.url()).unwrap();
        Fixture {
            server,
            http: reqwest::Client::new(),
            log,
            _store: store,
        }
    }

    async fn account(&self, name: &str) -> Account {
        let user = self.log.create_user(ADMIN, name).await.unwrap();
        let device = self.log.create_device(&user.token).await.unwrap();
        Account {
            device_token: self.log.device_token(device).unwrap(),
            user_token: user.token,
            device,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &str) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn entries_stored(&self) -> u64 {
        entries_in_metrics(&self.http, &self.server.url()).await
    }

    async fn stop(self) {
        self.server.shutdown().await.unwrap();
    }
}

/// `storex_entries` from the server's /metrics.
async fn entries_in_metrics(http: &reqwest::Client, url: &str) -> u64 {
    metric(http, url, "storex_entries").await
}

fn entry(device: DeviceId, payload: &[u8]) -> SharedEntry {
    SharedEntry {
        id: Uuid::now_v7(),
        device,
        topic: "note".into(),
        payload: payload.to_vec(),
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or("<no JSON error code>")
}

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401_and_changes_nothing() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    let push = json!({"entries": [{"id": Uuid::now_v7(), "device": ann.device.0, "topic": "note", "payload": "aGk="}]}).to_string();
    for token in [
        None,
        Some("stx_not-a-token"),
        Some(""),
        Some(ann.user_token.as_str()),
    ] {
        let (status, body) = f.post("/v1/push", token, &push).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}: {body}");
        assert_eq!(code(&body), "unauthorized");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // A device token is no user token either.
    let (status, body) = f.post("/v1/devices", Some(&ann.device_token), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // A non-Bearer scheme.
    let response = f
        .http
        .post(f.url("/v1/pull"))
        .header("authorization", format!("Basic {}", ann.device_token))
        .json(&json!({"after": 0, "limit": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(f.entries_stored().await, 0);
    f.stop().await;
}

#[tokio::test]
async fn users_are_created_only_with_the_admin_token() {
    let f = Fixture::new().await;
    let (status, body) = f
        .post(
            "/v1/users",
            Some("wrong-admin-token-xxxxxxx"),
            r#"{"name":"eve"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = f.post("/v1/users", Some(ADMIN), r#"{"name":"ann"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = f.post("/v1/users", Some(ADMIN), r#"{"name":"ann"}"#).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "user_exists"));
    let (status, body) = f.post("/v1/users", Some(ADMIN), r#"{"name":"  "}"#).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // A token the client chose: the same request again gets the same user back (its first
    // answer may have been lost); another token for that name is refused; a short one too.
    let chosen = r#"{"name":"bob","token":"stx_a-token-the-client-made-0123456789abcdef"}"#;
    for expected in [StatusCode::CREATED, StatusCode::OK] {
        let (status, body) = f.post("/v1/users", Some(ADMIN), chosen).await;
        assert_eq!(status, expected, "{body}");
        assert_eq!(
            (body["user"].as_str(), body["token"].as_str()),
            (
                Some("bob"),
                Some("stx_a-token-the-client-made-0123456789abcdef")
            )
        );
    }
    let other = r#"{"name":"bob","token":"stx_another-token-the-client-made-0123456789"}"#;
    let (status, body) = f.post("/v1/users", Some(ADMIN), other).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "user_exists"));
    // Refused: a short token, one that is no header value, another user's.
    let short = r#"{"name":"cid","token":"short"}"#;
    let spaced = r#"{"name":"cid","token":"stx_a token with spaces in it 0123456789abc"}"#;
    let bobs = r#"{"name":"cid","token":"stx_a-token-the-client-made-0123456789abcdef"}"#;
    for refused in [short, spaced, bobs] {
        let (status, body) = f.post("/v1/users", Some(ADMIN), refused).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{refused}"
        );
    }

    // A server without an admin token creates no users over HTTP.
    let store = Store::sqlite();
    let mut no_admin = config(&store);
    no_admin.admin_token = None;
    let server = SyncServer::start(no_admin).await.unwrap();
    let response = f
        .http
        .post(format!("{}/v1/users", server.url()))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "eve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    server.shutdown().await.unwrap();
    f.stop().await;
}

#[tokio::test]
async fn a_device_of_one_user_never_reads_or_writes_another_users_entries() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    let bob = f.account("bob").await;
    f.log
        .push(ann.device, vec![entry(ann.device, b"ann's secret")])
        .await
        .unwrap();
    // Bob's device sees nothing of Ann's, whatever cursor it asks for: past the end of Bob's
    // own log (Ann's has an entry at 1), it is told where Bob's ends.
    let pull = f.log.pull(bob.device, 0, 100, None).await.unwrap();
    assert!(pull.entries.is_empty(), "bob pulled {:?}", pull.entries);
    let err = f.log.pull(bob.device, 1, 100, None).await.unwrap_err();
    assert!(
        matches!(err, SharedLogError::CursorAhead { log_end: 0, .. }),
        "{err:?}"
    );
    // Bob's device lists only Bob's devices.
    let devices = f.log.devices(bob.device).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device, bob.device);
    // Bob cannot revoke Ann's device, nor compact Ann's log.
    let err = f
        .log
        .revoke_device(&bob.user_token, ann.device)
        .await
        .unwrap_err();
    assert!(matches!(err, SharedLogError::Invalid { .. }), "{err:?}");
    f.log.compact(&bob.user_token).await.unwrap();
    // Ann's second device still gets the entry.
    let ann2 = f.log.create_device(&ann.user_token).await.unwrap();
    let pull = f.log.pull(ann2, 0, 100, None).await.unwrap();
    assert_eq!(pull.entries.len(), 1);
    assert_eq!(pull.entries[0].entry.payload, b"ann's secret");
    f.stop().await;
}

#[tokio::test]
async fn a_device_cannot_push_as_another_device() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    let ann2 = f.log.create_device(&ann.user_token).await.unwrap();
    let bob = f.account("bob").await;
    for other in [ann2, bob.device, DeviceId(Uuid::now_v7())] {
        let body = json!({"entries": [
            {"id": Uuid::now_v7(), "device": ann.device.0, "topic": "note", "payload": "aGk="},
            {"id": Uuid::now_v7(), "device": other.0, "topic": "note", "payload": "aGk="}
        ]});
        let (status, body) = f
            .post("/v1/push", Some(&ann.device_token), &body.to_string())
            .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FORBIDDEN, "wrong_device"),
            "{body}"
        );
        assert_eq!(body["error"]["other"], json!(other.0));
    }
    assert_eq!(
        f.entries_stored().await,
        0,
        "a refused push stored something"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_revoked_device_is_refused_everywhere() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    let phone = f.log.create_device(&ann.user_token).await.unwrap();
    f.log
        .revoke_device(&ann.user_token, ann.device)
        .await
        .unwrap();
    let err = f
        .log
        .push(ann.device, vec![entry(ann.device, b"x")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, SharedLogError::UnknownDevice { device } if device == ann.device),
        "{err:?}"
    );
    let err = f.log.pull(ann.device, 0, 10, None).await.unwrap_err();
    assert!(
        matches!(err, SharedLogError::UnknownDevice { .. }),
        "{err:?}"
    );
    let (status, body) = f
        .post("/v1/ack", Some(&ann.device_token), r#"{"cursor": 1}"#)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    // The other device works on, and the revoked one is gone from the list.
    let devices = f.log.devices(phone).await.unwrap();
    assert_eq!(
        devices.iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![phone]
    );
    // Revoking twice, or a device that never existed: 404.
    let err = f
        .log
        .revoke_device(&ann.user_token, DeviceId(Uuid::now_v7()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SharedLogError::Invalid { ref problem } if problem.contains("not_found")),
        "{err:?}"
    );
    assert_eq!(f.entries_stored().await, 0);
    f.stop().await;
}

#[tokio::test]
async fn registering_a_device_again_is_idempotent_but_never_revives_or_takes_a_device() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    let bob = f.account("bob").await;
    let token = format!("stx_{}", "a".repeat(43));
    let body = json!({ "device": ann.device.0, "token": token }).to_string();
    // The same request twice (a retry, or a late duplicate): the same token either way.
    for _ in 0..2 {
        let (status, reply) = f.post("/v1/devices", Some(&ann.user_token), &body).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["token"], json!(token));
    }
    let (status, _) = f.post("/v1/ack", Some(&token), r#"{"cursor": 0}"#).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "the chosen token works");
    let (status, _) = f
        .post("/v1/ack", Some(&ann.device_token), r#"{"cursor": 0}"#)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old token was replaced"
    );
    // A token too short to be random is refused.
    let short = json!({ "device": ann.device.0, "token": "stx_short" }).to_string();
    let (status, _) = f.post("/v1/devices", Some(&ann.user_token), &short).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Bob cannot take ann's device, and a revoked device is not revived.
    let err = f
        .log
        .register_device(&bob.user_token, ann.device)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SharedLogError::DeviceRefused { device, .. } if device == ann.device),
        "{err:?}"
    );
    f.log
        .revoke_device(&bob.user_token, bob.device)
        .await
        .unwrap();
    let err = f
        .log
        .register_device(&bob.user_token, bob.device)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SharedLogError::DeviceRefused { device, .. } if device == bob.device),
        "{err:?}"
    );
    let err = f.log.pull(bob.device, 0, 10, None).await.unwrap_err();
    assert!(
        matches!(err, SharedLogError::UnknownDevice { .. }),
        "still revoked: {err:?}"
    );
    // Ann's token chosen again for another device: refused for good (not a 503 retried for
    // ever), and ann's device keeps it.
    let another = json!({ "device": Uuid::now_v7(), "token": token }).to_string();
    let (status, reply) = f.post("/v1/devices", Some(&ann.user_token), &another).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another device's"),
        "{reply}"
    );
    let (status, _) = f.post("/v1/ack", Some(&token), r#"{"cursor": 0}"#).await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "ann's device keeps its token"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_pull_naming_too_many_or_too_long_topics_is_refused() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    let many: Vec<String> = (0..1_025).map(|i| format!("t{i}")).collect();
    let long = vec!["x".repeat(1_025)];
    for topics in [many, long] {
        let body = json!({ "after": 0, "limit": 10, "topics": topics }).to_string();
        let (status, reply) = f.post("/v1/pull", Some(&ann.device_token), &body).await;
        // Refused as the topics are read (422, like a value of the wrong type).
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
        assert_eq!(code(&reply), "invalid_request", "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most"),
            "{reply}"
        );
    }
    let fine: Vec<String> = (0..1_024).map(|i| format!("t{i}")).collect();
    let body = json!({ "after": 0, "limit": 10, "topics": fine }).to_string();
    let (status, reply) = f.post("/v1/pull", Some(&ann.device_token), &body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    f.stop().await;
}

#[tokio::test]
async fn a_device_holds_only_a_few_waiting_pulls() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    let waiting = json!({ "after": 0, "limit": 10, "wait_ms": 3_000 }).to_string();
    // Four pulls wait (nothing is there); a fifth is answered at once.
    let holders: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, token, body) = (
                f.http.clone(),
                f.url("/v1/pull"),
                ann.device_token.clone(),
                waiting.clone(),
            );
            tokio::spawn(async move {
                http.post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let (status, reply) = f.post("/v1/pull", Some(&ann.device_token), &waiting).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1_500),
        "the fifth pull waited {:?}",
        started.elapsed()
    );
    for holder in holders {
        assert_eq!(holder.await.unwrap(), StatusCode::OK);
    }
    f.stop().await;
}

#[tokio::test]
async fn metrics_count_the_log_at_most_once_per_max_age() {
    let store = Store::sqlite();
    let config = config(&store).stats_max_age(std::time::Duration::from_secs(3_600));
    let server = SyncServer::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let log = HttpSharedLog::new(&server.url()).unwrap();
    let user = log.create_user(ADMIN, "ann").await.unwrap();
    let device = log.create_device(&user.token).await.unwrap();
    assert_eq!(entries_in_metrics(&http, &server.url()).await, 0);
    log.push(device, vec![entry(device, b"a")]).await.unwrap();
    // Counted an hour ago, as far as this server is concerned: the same totals.
    assert_eq!(entries_in_metrics(&http, &server.url()).await, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_over_its_rate_waits_as_long_as_the_server_asks() {
    let store = Store::sqlite();
    let config = config(&store).rate_limit(Some(RateLimit {
        per_second: 1,
        burst: 1,
    }));
    let server = SyncServer::start(config).await.unwrap();
    // Retries 10 ms to 40 ms apart would all come too soon for one request a second.
    let options = storex_log_http::ClientOptions {
        retries: 3,
        min_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(40),
        ..Default::default()
    };
    let log = HttpSharedLog::with_options(&server.url(), options).unwrap();
    let user = log.create_user(ADMIN, "ann").await.unwrap();
    let device = log.create_device(&user.token).await.unwrap();
    for round in 0..3 {
        log.pull(device, 0, 10, None)
            .await
            .unwrap_or_else(|e| panic!("pull {round}: {e}"));
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_requests_get_a_clear_4xx_and_change_nothing() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    let token = Some(ann.device_token.as_str());
    let id = Uuid::now_v7();
    let dev = ann.device.0;
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("/v1/push", "{not json".into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/push", "".into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/push", r#"{"entries": "many"}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("/v1/push", json!({"entries": [{"id": "nope", "device": dev, "topic": "t", "payload": ""}]}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("/v1/push", json!({"entries": [{"id": id, "device": dev, "topic": "t", "payload": "!!not base64!!"}]}).to_string(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/push", json!({"entries": [], "extra": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("/v1/pull", r#"{"after": "zero", "limit": 10}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("/v1/pull", r#"{"after": -1, "limit": 10}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("/v1/ack", r#"{"cursor": 1.5}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        // A topic over `MAX_TOPIC_BYTES`: the server would read it back with every page.
        ("/v1/push", json!({"entries": [{"id": id, "device": dev, "topic": "t".repeat(storex_log_http::api::MAX_TOPIC_BYTES + 1), "payload": ""}]}).to_string(), StatusCode::BAD_REQUEST, "invalid_request"),
    ];
    for (path, body, status, expected) in cases {
        let (got, reply) = f.post(path, token, &body).await;
        assert_eq!(
            (got, code(&reply)),
            (status, expected),
            "{path} {body}: {reply}"
        );
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }
    // A decoding error quotes what it refused (each DEL written as `\u{7f}`, then escaped
    // again): the answer carries only the start of it.
    let hostile = json!({"after": "\u{7f}".repeat(256 * 1024), "limit": 1}).to_string();
    let response = f
        .http
        .post(f.url("/v1/pull"))
        .bearer_auth(&ann.device_token)
        .header("content-type", "application/json")
        .body(hostile)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let reply = response.bytes().await.unwrap();
    assert!(reply.len() < 2_048, "an answer of {} bytes", reply.len());
    // Wrong content type.
    let response = f
        .http
        .post(f.url("/v1/push"))
        .bearer_auth(&ann.device_token)
        .body(r#"{"entries": []}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Unknown route, wrong method, bad path parameter.
    let (status, body) = f.post("/v1/nothing", token, "{}").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let response = f.http.get(f.url("/v1/push")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let response = f
        .http
        .delete(f.url("/v1/devices/not-a-uuid"))
        .bearer_auth(&ann.user_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // A device's registration with a body but no content type: refused, not taken for a
    // request without one (which registers a device of the server's choosing).
    let chosen = Uuid::now_v7();
    let response = f
        .http
        .post(f.url("/v1/devices"))
        .bearer_auth(&ann.user_token)
        .body(json!({ "device": chosen }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(f.entries_stored().await, 0);
    let devices = f.log.devices(ann.device).await.unwrap();
    assert_eq!(devices.len(), 1, "no device registered: {devices:?}");
    assert_eq!(devices[0].acked, 0);
    f.stop().await;
}

#[tokio::test]
async fn metrics_count_against_the_limit_per_address() {
    let store = Store::sqlite();
    let config = config(&store).ip_rate_limit(Some(RateLimit {
        per_second: 1,
        burst: 2,
    }));
    let server = SyncServer::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = http
            .get(format!("{}/metrics", server.url()))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    assert_eq!(&statuses[..2], &[StatusCode::OK; 2], "{statuses:?}");
    // (A slow machine may refill one request's worth meanwhile: a 429 among the rest.)
    assert!(
        statuses[2..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_the_client_cannot_make_fails_at_once_and_for_good() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    // A token restored with its line break: no valid header value.
    let log = HttpSharedLog::new(&f.server.url()).unwrap();
    log.add_device(ann.device, format!("{}\n", ann.device_token));
    let started = std::time::Instant::now();
    let err = log.pull(ann.device, 0, 10, None).await.unwrap_err();
    assert!(
        matches!(err, SharedLogError::Invalid { .. }) && !err.is_transient(),
        "{err:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "not retried: {:?}",
        started.elapsed()
    );
    // A server URL that is none.
    let err = HttpSharedLog::new("http://exa mple").unwrap_err();
    assert!(err.to_string().contains("not a URL"), "{err}");
    // HTTPS without TLS built in: said at once, not at the first request.
    if !cfg!(feature = "tls") {
        let err = HttpSharedLog::new("https://sync.example.com").unwrap_err();
        assert!(err.to_string().contains("`tls` feature"), "{err}");
    }
    f.stop().await;
}

#[tokio::test]
async fn waiting_as_long_as_there_is_does_not_overflow() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    let other = f.log.create_device(&ann.user_token).await.unwrap();
    f.log.push(other, vec![entry(other, b"x")]).await.unwrap();
    // Entries are there: the wait ends at once, whatever its bound.
    let more = f
        .log
        .wait_for_entries(ann.device, 0, std::time::Duration::MAX, None)
        .await
        .unwrap();
    assert!(more);
    f.stop().await;
}

#[tokio::test]
async fn oversized_bodies_and_pushes_are_refused_whole() {
    let store = Store::sqlite();
    let mut config = config(&store);
    config.max_body_bytes = 64 * 1024;
    config.max_push_entries = 10;
    let server = SyncServer::start(config).await.unwrap();
    let log = HttpSharedLog::new(&server.url()).unwrap();
    let user = log.create_user(ADMIN, "ann").await.unwrap();
    let device = log.create_device(&user.token).await.unwrap();
    let token = log.device_token(device).unwrap();
    let http = reqwest::Client::new();
    let send = |body: String| {
        http.post(format!("{}/v1/push", server.url()))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let big = "A".repeat(100 * 1024);
    let body = json!({"entries": [{"id": Uuid::now_v7(), "device": device.0, "topic": "t", "payload": big}]});
    let response = send(body.to_string()).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(code(&reply), "payload_too_large");
    let many: Vec<Value> = (0..11)
        .map(|_| json!({"id": Uuid::now_v7(), "device": device.0, "topic": "t", "payload": "aGk="}))
        .collect();
    let response = send(json!({ "entries": many }).to_string()).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(code(&reply), "too_many_entries");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 10"));
    assert_eq!(entries_in_metrics(&http, &server.url()).await, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_with_retry_after() {
    let store = Store::sqlite();
    let config = config(&store).rate_limit(Some(RateLimit {
        per_second: 1,
        burst: 5,
    }));
    let server = SyncServer::start(config).await.unwrap();
    let log = HttpSharedLog::new(&server.url()).unwrap();
    let user = log.create_user(ADMIN, "ann").await.unwrap();
    let device = log.create_device(&user.token).await.unwrap();
    let token = log.device_token(device).unwrap();
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let response = http
            .post(format!("{}/v1/pull", server.url()))
            .bearer_auth(&token)
            .json(&json!({"after": 0, "limit": 1}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
            last = Some(response.json::<Value>().await.unwrap());
        }
    }
    assert!(
        statuses[..5].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(statuses[7], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    assert_eq!(code(last.as_ref().unwrap()), "rate_limited");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_and_metrics_report_totals() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    f.log
        .push(
            ann.device,
            vec![entry(ann.device, b"a"), entry(ann.device, b"b")],
        )
        .await
        .unwrap();
    let health = f.log.health().await.unwrap();
    assert_eq!(health.status, "ok");
    assert!(health.last_push.is_some());
    let metrics = common::metrics_text(&f.http, &f.server.url()).await;
    assert!(metrics.contains("\nstorex_entries 2\n"), "{metrics}");
    assert!(
        metrics.contains("\nstorex_entries_pushed_total 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nstorex_devices 1\n"), "{metrics}");
    f.stop().await;
}

#[tokio::test]
async fn made_up_tokens_are_limited_per_address_before_the_database() {
    let store = Store::sqlite();
    let config = config(&store).ip_rate_limit(Some(RateLimit {
        per_second: 1,
        burst: 3,
    }));
    let server = SyncServer::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for n in 0..6 {
        let response = http
            .post(format!("{}/v1/pull", server.url()))
            .bearer_auth(format!("stx_made-up-{n}"))
            .json(&json!({"after": 0, "limit": 1}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    assert_eq!(
        &statuses[..3],
        &[StatusCode::UNAUTHORIZED; 3],
        "{statuses:?}"
    );
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_push_too_big_for_the_server_is_split_and_an_entry_too_big_for_it_is_reported_alone() {
    use std::sync::Arc;
    use storex_log_http::ClientOptions;

    let store = Store::sqlite();
    let mut config = config(&store);
    config.max_body_bytes = 64 * 1024; // a proxy with a small body limit, say
    let server = SyncServer::start(config).await.unwrap();
    let log = HttpSharedLog::new(&server.url()).unwrap();
    let user = log.create_user(ADMIN, "ann").await.unwrap();
    let a = log.create_device(&user.token).await.unwrap();
    // The client believes 8 MiB may pass: 40 entries of 10 kB go in one request, get 413,
    // and are split until each part fits.
    let entries: Vec<SharedEntry> = (0..40u8).map(|i| entry(a, &[i; 10_000])).collect();
    log.push(a, entries).await.expect("split and pushed");
    assert_eq!(
        entries_in_metrics(&reqwest::Client::new(), &server.url()).await,
        40
    );

    // A client told the real limit reports an entry that cannot fit, and pushes the rest.
    let small = Arc::new(
        HttpSharedLog::with_options(
            &server.url(),
            ClientOptions {
                max_request_bytes: 64 * 1024,
                ..ClientOptions::default()
            },
        )
        .unwrap(),
    );
    let (report, _) = sync_three_notes_of_a_new_user(small, "bob").await;
    assert_eq!(report.pushed, 2, "{report:?}");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(report.problems[0].contains("bytes"), "{report:?}");
    // A client not told: the server refuses that entry alone (413), and the others go.
    let (report, sync) = sync_three_notes_of_a_new_user(Arc::new(log), "cid").await;
    assert_eq!(report.pushed, 2, "{report:?}");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].contains("was refused") && report.problems[0].contains("HTTP 413"),
        "{report:?}"
    );
    // The next sync does not send it again for a while.
    let report = sync.sync_once().await.expect("sync");
    assert_eq!(report.pushed, 0, "{report:?}");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].contains("s ago, and this one has"),
        "{report:?}"
    );
    // Directly: the entry before such an entry goes, the one after it comes back unsent.
    let device = sync.device().device();
    let http = reqwest::Client::new();
    let stored = entries_in_metrics(&http, &server.url()).await;
    let refusals = metric(&http, &server.url(), "storex_http_client_errors_total").await;
    let (first, huge, last) = (
        entry(device, &[1; 100]),
        entry(device, &[2; 200_000]), // larger than the note refused
        entry(device, &[3; 100]),
    );
    let (huge_id, last_id) = (huge.id, last.id);
    match sync
        .shared_log()
        .push(device, vec![first, huge, last])
        .await
    {
        Err(SharedLogError::EntryRefused {
            id,
            problem,
            unsent,
        }) => {
            assert_eq!(id, huge_id, "{problem}");
            assert!(problem.contains("s ago, and this one has"), "{problem}");
            assert_eq!(unsent.iter().map(|e| e.id).collect::<Vec<_>>(), [last_id]);
        }
        other => panic!("not refused alone: {other:?}"),
    }
    assert_eq!(entries_in_metrics(&http, &server.url()).await, stored + 1);
    let refused_since = metric(&http, &server.url(), "storex_http_client_errors_total").await;
    assert_eq!(
        refused_since, refusals,
        "the large entry was not sent again"
    );
    server.shutdown().await.unwrap();
}

/// A device of a new user `name` through `log`, with notes of 100 B, 100 kB and 100 B; what
/// its first sync did, and its sync.
async fn sync_three_notes_of_a_new_user(
    log: std::sync::Arc<HttpSharedLog>,
    name: &str,
) -> (storex_sync::SyncReport, storex_sync::ContinuousSync) {
    use std::sync::Arc;
    use storex_sync::{ContinuousOptions, ContinuousSync, SyncDevice, SyncOptions};

    let user = log.create_user(ADMIN, name).await.unwrap();
    let id = log.create_device(&user.token).await.unwrap();
    let device = SyncDevice::open(
        storex_test::devices::registry(),
        Arc::new(storex_core::MemoryBackend::new()),
        storex_sync::Clock::new(id),
        SyncOptions::default(),
    )
    .await
    .unwrap();
    for (name, size) in [("small", 100), ("huge", 100_000), ("small-2", 100)] {
        device
            .storage()
            .create(
                "note",
                storex_core::object! { "id" => name, "title" => "x".repeat(size) },
            )
            .await
            .unwrap();
    }
    let sync = ContinuousSync::new(device, log, ContinuousOptions::default());
    (sync.sync_once().await.expect("sync"), sync)
}

#[tokio::test]
async fn debug_output_shows_no_device_token() {
    let f = Fixture::new().await;
    let ann = f.account("ann").await;
    let shown = format!("{:?}", f.log);
    assert!(!shown.contains(&ann.device_token), "{shown}");
    assert!(shown.contains(&ann.device.0.to_string()), "{shown}");
}

#[test]
fn debug_output_of_the_wire_types_shows_no_token() {
    use storex_log_http::api::{DeviceCredentials, NewDevice, NewUser, UserCredentials};
    let secret = "stx_a-secret-no-log-may-show".to_owned();
    let device = Uuid::now_v7();
    let shown = [
        format!(
            "{:?}",
            NewUser {
                name: "ann".into(),
                token: Some(secret.clone()),
            }
        ),
        format!(
            "{:?}",
            UserCredentials {
                user: "ann".into(),
                token: secret.clone(),
            }
        ),
        format!(
            "{:?}",
            NewDevice {
                device,
                token: Some(secret.clone()),
            }
        ),
        format!(
            "{:?}",
            DeviceCredentials {
                device,
                token: secret.clone(),
            }
        ),
    ];
    for shown in shown {
        assert!(!shown.contains(&secret), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}

/// Reads from `stream` until the server closes it (`true`) or `within` passes (`false`).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let reading = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                // A 408 or similar answer may come first; the close follows.
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, reading).await.is_ok()
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_request_head_is_closed() {
    use tokio::io::AsyncWriteExt;
    let store = Store::sqlite();
    let mut config = config(&store);
    config.header_timeout = std::time::Duration::from_millis(500);
    let server = SyncServer::start(config).await.unwrap();
    // Half a request line, then nothing (slowloris); and a connection that sends nothing.
    let mut slow = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    slow.write_all(b"POST /v1/push HTTP/1.1\r\n").await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let wait = std::time::Duration::from_secs(10);
    assert!(closed_within(&mut slow, wait).await, "a slow head is cut");
    assert!(
        closed_within(&mut silent, wait).await,
        "an idle connection is cut"
    );
    // Requests that come whole are served as before, also on a kept-alive connection.
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let health = http
            .get(format!("{}/health", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    use tokio::io::AsyncWriteExt;
    let store = Store::sqlite();
    let mut config = config(&store);
    config.max_connections = 2;
    let server = SyncServer::start(config).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        held.push(stream);
    }
    let health = format!("{}/health", server.url());
    let waiting = tokio::spawn(async move { reqwest::get(health).await.map(|r| r.status()) });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection is not served");
    let mut first = held.remove(0);
    first.shutdown().await.unwrap();
    drop(first);
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("served once a connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    drop(held);
    server.shutdown().await.unwrap();
}
