//! The error type of storex-core: everything a registry, a validation or a backend can refuse.

use std::error::Error as StdError;

use crate::value::FieldType;

/// A boxed error from a backend's native driver, kept as the `source` of [`Error::Backend`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in storex-core.
///
/// Messages are lowercase and name the collection and field at fault, so an app developer can
/// tell from the message alone what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A collection definition is not valid; nothing was registered.
    #[error("invalid definition of collection `{collection}`: {problem}")]
    InvalidDefinition {
        /// The collection whose definition is wrong.
        collection: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Two definitions of the same collection were given.
    #[error("collection `{collection}` is defined twice")]
    DuplicateCollection {
        /// The collection defined twice.
        collection: String,
    },
    /// An operation names a collection the registry does not have.
    #[error("unknown collection `{collection}`")]
    UnknownCollection {
        /// The name that was asked for.
        collection: String,
    },
    /// An operation names a field its collection does not have.
    #[error("collection `{collection}` has no field `{field}`")]
    UnknownField {
        /// The collection.
        collection: String,
        /// The field that was named.
        field: String,
    },
    /// A value does not have the type its field was declared with.
    #[error("field `{field}` of `{collection}` takes {expected}, got {found}")]
    TypeMismatch {
        /// The collection.
        collection: String,
        /// The field.
        field: String,
        /// The declared type.
        expected: FieldType,
        /// A short description of the value that came instead.
        found: String,
    },
    /// A required field is missing or null.
    #[error("field `{field}` of `{collection}` is required")]
    MissingField {
        /// The collection.
        collection: String,
        /// The field.
        field: String,
    },
    /// An operation is malformed in a way the other variants do not describe.
    #[error("invalid operation on `{collection}`: {problem}")]
    InvalidOperation {
        /// The collection the operation is about (empty for a batch as a whole).
        collection: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A step of a batch failed; no step of the batch was applied.
    #[error("batch step {step} failed, nothing of the batch was applied")]
    BatchStep {
        /// Index of the failing step, from 0.
        step: usize,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
    /// A write would give two objects the same primary key or the same unique-index values.
    #[error("duplicate key in `{collection}`: {detail}")]
    DuplicateKey {
        /// The collection.
        collection: String,
        /// Which key, as far as the backend can tell.
        detail: String,
    },
    /// The database refused the write itself: a constraint beyond the registry's (a foreign
    /// key, a check), or a value an adopted column cannot hold (too long, out of range).
    /// Retrying the write unchanged fails again.
    #[error("the database refused a write to `{collection}`: {detail}")]
    Refused {
        /// The collection.
        collection: String,
        /// The database's message.
        detail: String,
    },
    /// The backend does not support what was asked; nothing was done.
    #[error("backend `{backend}` does not support {what}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What it does not support.
        what: String,
    },
    /// A transaction was used after it ended, or could not be started or finished.
    #[error("transaction error: {problem}")]
    Transaction {
        /// What went wrong.
        problem: String,
    },
    /// A backend answered an operation with an outcome of the wrong kind.
    #[error("backend answered a {operation} with an unexpected outcome: {outcome}")]
    UnexpectedOutcome {
        /// The operation's kind.
        operation: &'static str,
        /// The outcome it gave.
        outcome: String,
    },
    /// The backend's database or driver failed.
    #[error("backend `{backend}` failed")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The native error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Wraps a native driver error as [`Error::Backend`].
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }

    /// Builds an [`Error::InvalidOperation`].
    pub fn invalid_operation(collection: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::InvalidOperation {
            collection: collection.into(),
            problem: problem.into(),
        }
    }

    /// True when the same operation may succeed if retried later (a database or driver
    /// failure), false when the operation itself is at fault.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Backend { .. } | Error::Transaction { .. } => true,
            Error::BatchStep { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

/// An error's message followed by those of its causes, joined by `: ` (a database's own
/// message is usually the last), for reports and logs.
pub fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// The result type of storex-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
