//! The middleware chain: order, rewriting, transactions opened by a middleware, origins,
//! validation at both ends, and the UUID key middleware.

use std::sync::{Arc, Mutex};

use storex_core::{
    object, BackendFeatures, BatchStep, BoxFuture, CollectionDef, Error, FieldType, Filter,
    MemoryBackend, Middleware, Next, Operation, Origin, Outcome, Query, Registry, Result, Storage,
    StorageBackend, Transaction, UuidPkMiddleware, Value,
};

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("audit")
                .field("id", FieldType::Uuid)
                .field("what", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()
        .expect("valid registry")
}

/// Records its name when an operation passes, then passes it on.
#[derive(Debug)]
struct Recorder {
    name: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Middleware for Recorder {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        self.seen.lock().expect("lock").push(format!(
            "{}:{}:{:?}",
            self.name,
            op.kind(),
            next.origin()
        ));
        next.run(op)
    }
}

#[tokio::test]
async fn the_first_middleware_added_runs_first() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let storage = Storage::builder(registry(), MemoryBackend::new())
        .with(Recorder {
            name: "outer",
            seen: seen.clone(),
        })
        .with(UuidPkMiddleware::new())
        .with(Recorder {
            name: "inner",
            seen: seen.clone(),
        })
        .build()
        .await
        .expect("build");
    storage
        .create("note", object! { "title" => "a" })
        .await
        .expect("create");
    storage
        .execute_as(Operation::count("note", Filter::all()), Origin::Sync)
        .await
        .expect("count");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        vec![
            "outer:create:App",
            "inner:create:App",
            "outer:count:Sync",
            "inner:count:Sync"
        ]
    );
}

/// Turns every create of a note into a batch that also writes an audit row.
#[derive(Debug)]
struct Auditor;

impl Middleware for Auditor {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        match op {
            Operation::Create { collection, object } if collection == "note" => {
                let what = format!("created {}", object["title"].as_text().unwrap_or("?"));
                let batch = Operation::Batch {
                    steps: vec![
                        BatchStep::new(Operation::create(collection, object)),
                        BatchStep::new(Operation::create("audit", object! { "what" => what })),
                    ],
                };
                Box::pin(async move {
                    match next.run(batch).await? {
                        Outcome::Batch(mut outcomes) if !outcomes.is_empty() => {
                            Ok(outcomes.swap_remove(0))
                        }
                        other => Ok(other),
                    }
                })
            }
            other => next.run(other),
        }
    }
}

#[tokio::test]
async fn a_middleware_can_rewrite_a_create_into_a_batch() {
    // The UUID middleware comes after the auditor, so it fills the audit row's key too.
    let storage = Storage::builder(registry(), MemoryBackend::new())
        .with(Auditor)
        .with(UuidPkMiddleware::new())
        .build()
        .await
        .expect("build");
    let pk = storage
        .create("note", object! { "title" => "milk" })
        .await
        .expect("create");
    assert!(storage
        .find_by_pk("note", pk)
        .await
        .expect("find")
        .is_some());
    let audit = storage
        .find_many("audit", Query::default())
        .await
        .expect("find");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["what"], Value::from("created milk"));
}

#[tokio::test]
async fn a_rewritten_operation_is_validated_before_the_backend() {
    // With the UUID middleware before the auditor, the audit create it adds has no key.
    let storage = Storage::builder(registry(), MemoryBackend::new())
        .with(UuidPkMiddleware::new())
        .with(Auditor)
        .build()
        .await
        .expect("build");
    let err = storage
        .create("note", object! { "title" => "milk" })
        .await
        .expect_err("accepted");
    assert_eq!(
        err.to_string(),
        "batch step 1 failed, nothing of the batch was applied"
    );
    let Error::BatchStep { source, .. } = err else {
        panic!("not a batch error")
    };
    assert_eq!(source.to_string(), "field `id` of `audit` is required");
    assert_eq!(
        storage.count("note", Filter::all()).await.expect("count"),
        0
    );
}

/// Writes an audit row for every update-where, in the same transaction, after counting the
/// matches: the pattern the sync logger uses to resolve a where-clause's keys atomically.
#[derive(Debug)]
struct AtomicAuditor {
    fail_after_write: bool,
}

impl AtomicAuditor {
    async fn audited(&self, op: Operation, next: Next<'_>) -> Result<Outcome> {
        let Operation::UpdateWhere {
            collection, filter, ..
        } = &op
        else {
            return next.run(op).await;
        };
        let matched = next
            .run(Operation::count(collection.clone(), filter.clone()))
            .await?;
        let outcome = next.run(op).await?;
        if self.fail_after_write {
            return Err(Error::invalid_operation(
                "audit",
                "injected failure after the write",
            ));
        }
        let what = format!("updated {}", matched.count().unwrap_or_default());
        next.run(Operation::create(
            "audit",
            object! { "id" => storex_core::uuid::Uuid::now_v7(), "what" => what },
        ))
        .await?;
        Ok(outcome)
    }
}

impl Middleware for AtomicAuditor {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            if next.in_transaction() {
                return self.audited(op, next).await;
            }
            let tx = next.begin().await?;
            match self.audited(op, next.within(&*tx)).await {
                Ok(outcome) => {
                    tx.commit().await?;
                    Ok(outcome)
                }
                Err(e) => {
                    tx.rollback().await?;
                    Err(e)
                }
            }
        })
    }
}

async fn audited_storage(fail_after_write: bool) -> Storage {
    let storage = Storage::builder(registry(), MemoryBackend::new())
        .with(UuidPkMiddleware::new())
        .with(AtomicAuditor { fail_after_write })
        .build()
        .await
        .expect("build");
    for title in ["a", "a", "b"] {
        storage
            .create("note", object! { "title" => title })
            .await
            .expect("create");
    }
    storage
}

#[tokio::test]
async fn a_middleware_reads_and_writes_in_one_transaction() {
    let storage = audited_storage(false).await;
    let updated = storage
        .update_where(
            "note",
            Filter::all().eq("title", "a"),
            object! { "title" => "c" },
        )
        .await
        .expect("update");
    assert_eq!(updated, 2);
    let audit = storage
        .find_many("audit", Query::default())
        .await
        .expect("find");
    assert_eq!(audit[0]["what"], Value::from("updated 2"));
}

#[tokio::test]
async fn a_failure_inside_a_middleware_transaction_leaves_nothing() {
    let storage = audited_storage(true).await;
    let err = storage
        .update_where(
            "note",
            Filter::all().eq("title", "a"),
            object! { "title" => "c" },
        )
        .await
        .expect_err("injected failure");
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(
        storage
            .count("note", Filter::all().eq("title", "a"))
            .await
            .expect("count"),
        2
    );
    assert_eq!(
        storage.count("audit", Filter::all()).await.expect("count"),
        0
    );
}

#[tokio::test]
async fn a_middleware_inside_a_storage_transaction_uses_it() {
    let storage = audited_storage(false).await;
    let tx = storage.begin().await.expect("begin");
    tx.execute(Operation::update_where(
        "note",
        Filter::all().eq("title", "b"),
        object! { "title" => "d" },
    ))
    .await
    .expect("update");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        storage.count("audit", Filter::all()).await.expect("count"),
        0
    );
    assert_eq!(
        storage
            .count("note", Filter::all().eq("title", "b"))
            .await
            .expect("count"),
        1
    );
}

#[tokio::test]
async fn uuid_keys_are_filled_inside_batches_and_kept_when_given() {
    let storage = Storage::builder(registry(), MemoryBackend::new())
        .with(UuidPkMiddleware::new())
        .build()
        .await
        .expect("build");
    let given = storex_core::uuid::Uuid::now_v7();
    let outcomes = storage
        .batch(vec![
            BatchStep::new(Operation::create("note", object! { "title" => "filled" })),
            BatchStep::new(Operation::create(
                "note",
                object! { "id" => given, "title" => "given" },
            )),
            BatchStep::new(Operation::create(
                "note",
                object! { "id" => Value::Null, "title" => "null" },
            )),
        ])
        .await
        .expect("batch");
    let filled = outcomes[0]
        .created_pk()
        .and_then(|pk| pk.single())
        .and_then(Value::as_uuid);
    assert_eq!(filled.map(|u| u.get_version_num()), Some(7));
    assert_eq!(
        outcomes[1].created_pk().and_then(|pk| pk.single()),
        Some(&Value::Uuid(given))
    );
    let from_null = outcomes[2]
        .created_pk()
        .and_then(|pk| pk.single())
        .and_then(Value::as_uuid);
    assert_eq!(
        from_null.map(|u| u.get_version_num()),
        Some(7),
        "a null key is filled too"
    );
}

#[tokio::test]
async fn without_the_uuid_middleware_a_missing_key_is_refused() {
    let storage = Storage::builder(registry(), MemoryBackend::new())
        .build()
        .await
        .expect("build");
    let err = storage
        .create("note", object! { "title" => "x" })
        .await
        .expect_err("accepted");
    assert_eq!(err.to_string(), "field `id` of `note` is required");
}

/// A middleware that must never be reached.
#[derive(Debug)]
struct Unreachable;

impl Middleware for Unreachable {
    fn process<'a>(&'a self, op: Operation, _next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        panic!("middleware reached with invalid operation {op:?}")
    }
}

#[tokio::test]
async fn invalid_operations_never_reach_middleware() {
    let storage = Storage::builder(registry(), MemoryBackend::new())
        .with(Unreachable)
        .build()
        .await
        .expect("build");
    let err = storage
        .create("notes", object! { "title" => "x" })
        .await
        .expect_err("accepted");
    assert_eq!(err.to_string(), "unknown collection `notes`");
}

/// A backend that declares no optional features.
#[derive(Debug, Default)]
struct Plain(MemoryBackend);

impl StorageBackend for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }
    fn prepare<'a>(&'a self, registry: &'a Arc<Registry>) -> BoxFuture<'a, Result<()>> {
        self.0.prepare(registry)
    }
    fn execute(&self, op: Operation) -> BoxFuture<'_, Result<Outcome>> {
        if matches!(op, Operation::FindValues { .. }) {
            // Not read by this backend: storage must not ask it.
            return Box::pin(async {
                Err(Error::Unsupported {
                    backend: "plain",
                    what: "reading values".into(),
                })
            });
        }
        self.0.execute(op)
    }
    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn Transaction>>> {
        self.0.begin()
    }
}

#[tokio::test]
async fn a_backend_that_reads_no_values_is_asked_for_objects_instead() {
    let storage = Storage::builder(registry(), Plain::default())
        .with(UuidPkMiddleware::new())
        .build()
        .await
        .expect("build");
    for title in ["b", "a", "c"] {
        storage
            .create("note", object! { "title" => title })
            .await
            .expect("create");
    }
    let rows = storage
        .find_values(
            "note",
            Query::default().order_asc("title").limit(2),
            &["title", "title"],
        )
        .await
        .expect("values from the objects found");
    assert_eq!(
        rows,
        vec![
            vec![Value::from("a"), Value::from("a")],
            vec![Value::from("b"), Value::from("b")],
        ]
    );
}

#[tokio::test]
async fn unsupported_operations_are_refused_before_anything_is_done() {
    assert_eq!(Plain::default().features(), BackendFeatures::none());
    let storage = Storage::builder(registry(), Plain::default())
        .with(UuidPkMiddleware::new())
        .build()
        .await
        .expect("build");
    storage
        .create("note", object! { "title" => "a" })
        .await
        .expect("plain create works");
    let err = storage
        .update_where("note", Filter::all(), object! { "title" => "b" })
        .await
        .expect_err("accepted");
    assert_eq!(
        err.to_string(),
        "backend `plain` does not support where-clause writes"
    );
    let err = storage
        .batch(vec![BatchStep::new(Operation::create(
            "note",
            object! { "title" => "c" },
        ))])
        .await
        .expect_err("accepted");
    assert_eq!(err.to_string(), "backend `plain` does not support batches");
    let err = storage.begin().await.expect_err("accepted");
    assert_eq!(
        err.to_string(),
        "backend `plain` does not support transactions"
    );
    assert_eq!(
        storage
            .count("note", Filter::all().eq("title", "a"))
            .await
            .expect("count"),
        1
    );
}

/// Answers every read with a count, as a faulty middleware might.
#[derive(Debug)]
struct CountsForReads;

impl Middleware for CountsForReads {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        match op {
            Operation::FindOne { .. } | Operation::FindMany { .. } => {
                Box::pin(async { Ok(Outcome::Counted(3)) })
            }
            op => next.run(op),
        }
    }
}

#[tokio::test]
async fn a_read_answered_with_another_outcome_is_an_error_not_nothing_found() {
    let storage = Storage::builder(registry(), MemoryBackend::new())
        .with(UuidPkMiddleware::new())
        .with(CountsForReads)
        .build()
        .await
        .expect("build");
    storage
        .create("note", object! { "title" => "x" })
        .await
        .expect("create");
    let many = storage.find_many("note", Query::new(Filter::all())).await;
    assert!(
        matches!(many, Err(Error::UnexpectedOutcome { .. })),
        "{many:?}"
    );
    let one = storage.find_one("note", Query::new(Filter::all())).await;
    assert!(
        matches!(one, Err(Error::UnexpectedOutcome { .. })),
        "{one:?}"
    );
}

/// Counts the commits of app transactions it is told of.
#[derive(Debug, Default)]
struct CommitWatcher {
    commits: std::sync::atomic::AtomicUsize,
}

impl Middleware for CommitWatcher {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        next.run(op)
    }

    fn app_transaction_committed(&self) {
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn middleware_is_told_of_the_commit_of_an_app_transaction_that_wrote() {
    let watcher = Arc::new(CommitWatcher::default());
    let storage = Storage::builder(registry(), MemoryBackend::new())
        .with(UuidPkMiddleware::new())
        .with_arc(watcher.clone())
        .build()
        .await
        .expect("build");
    let commits = || watcher.commits.load(std::sync::atomic::Ordering::SeqCst);
    let create = || Operation::create("note", object! { "title" => "a" });

    let tx = storage.begin().await.expect("begin");
    tx.execute(create()).await.expect("create");
    assert_eq!(commits(), 0, "not before the commit");
    tx.commit().await.expect("commit");
    assert_eq!(commits(), 1, "an app write, committed");

    let tx = storage.begin().await.expect("begin");
    tx.execute(create()).await.expect("create");
    tx.rollback().await.expect("rollback");
    let tx = storage.begin().await.expect("begin");
    tx.execute(Operation::count("note", Filter::all()))
        .await
        .expect("count");
    tx.commit().await.expect("commit");
    let tx = storage.begin().await.expect("begin");
    tx.execute_as(create(), Origin::Sync).await.expect("create");
    tx.commit().await.expect("commit");
    let tx = storage.begin().await.expect("begin");
    let refused = Operation::create("note", object! { "title" => 1 });
    assert!(tx.execute(refused).await.is_err(), "a title must be text");
    tx.commit().await.expect("commit");
    storage
        .create("note", object! { "title" => "b" })
        .await
        .expect("create");
    assert_eq!(
        commits(),
        1,
        "not after a rollback, reads only, sync's writes, a refused write or a write alone"
    );
}
