//! The error type of storex-seaorm: connecting, and entities storex cannot store.
//!
//! Errors of operations on a connected backend are `storex_core::Error`s: a database failure
//! is wrapped as `storex_core::Error::Backend` with the SeaORM error as its source, a unique
//! violation becomes `storex_core::Error::DuplicateKey`, a write the database refuses for
//! what it writes (another constraint, a value too long) `storex_core::Error::Refused`.

use sea_orm::DbErr;

/// Everything that can go wrong in storex-seaorm outside of running an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database could not be reached or opened.
    #[error("cannot connect to `{url}`")]
    Connect {
        /// The URL, with any password hidden.
        url: String,
        /// The driver's error.
        #[source]
        source: DbErr,
    },
    /// A SQLite file's path that is not valid Unicode: the driver takes a file name as text,
    /// so it would open another file than the one named.
    #[error("the path {path} is not valid Unicode; SQLite files are opened by a path that is (rename the file or a folder on its way)")]
    PathNotUnicode {
        /// The path, with what is not Unicode shown as U+FFFD.
        path: String,
    },
    /// The URL names neither SQLite nor PostgreSQL.
    #[error("`{url}` is not a SQLite (`sqlite:`) or PostgreSQL (`postgres:`) URL")]
    UnsupportedUrl {
        /// The URL, with any password hidden.
        url: String,
    },
    /// A connection to a database other than SQLite or PostgreSQL was given.
    #[error("storex-seaorm supports SQLite and PostgreSQL, not {backend}")]
    UnsupportedDatabase {
        /// The database kind SeaORM reported.
        backend: String,
    },
    /// An entity has a column whose type storex cannot store.
    #[error("column `{column}` of table `{table}` has type {column_type}, which storex cannot store: {hint}")]
    UnsupportedColumn {
        /// The entity's table.
        table: String,
        /// The column.
        column: String,
        /// Its SeaORM column type.
        column_type: String,
        /// What to use instead.
        hint: &'static str,
    },
    /// An entity's table lives in a schema of its own (PostgreSQL): storex names tables
    /// without a schema, so it would write another table than the app reads.
    #[error("table `{table}` is in schema `{schema}`: storex writes tables of the connection's default schema only (set the connection's search_path instead)")]
    UnsupportedSchema {
        /// The entity's table.
        table: String,
        /// Its schema.
        schema: String,
    },
    /// A storage error (for instance a registry derived from entities that is not valid).
    #[error(transparent)]
    Storage(#[from] storex_core::Error),
}

/// The result type of storex-seaorm.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Hides the password of a database URL, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user information ends at the URL's last `@`: a password typed with an unescaped
    // `@`, `/` or `?` must not leave any of itself in view. (An `@` in the query hides the
    // host and database too: more than needed, never the password.)
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        // A password with an unescaped `@` or `/`, and an `@` after the host: none shows it.
        assert_eq!(
            redact("postgres://u:p@ss@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u:pa/ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u:p@a/ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("postgres://u:secret@h/db?application_name=a@b"),
            "postgres://u:***@b"
        );
        assert_eq!(
            redact("postgres://h/db?application_name=a@b"),
            "postgres://h/db?application_name=a@b"
        );
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }
}
