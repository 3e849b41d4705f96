//! Connections: one diesel `MultiConnection` enum over both dialects, opened with the
//! settings each needs (SQLite: WAL, busy timeout, the configured `synchronous` and page
//! cache size).

use diesel::Connection;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::ManageConnection;
use diesel::sqlite::SqliteConnection;

use super::{Backend, StorageError};

#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

impl AnyConnection {
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgresql(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }
}

/// How to open a connection (also used as the pool's connection customizer).
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    pub backend: Backend,
    pub url: String,
    pub sqlite_synchronous: String,
    /// SQLite `cache_size` of each connection, in KiB.
    pub sqlite_cache_kib: u32,
}

impl ConnectionOptions {
    /// Opens a connection of the configured backend (never guesses from the URL).
    pub fn establish(&self) -> Result<AnyConnection, StorageError> {
        let mut conn = match self.backend {
            Backend::Sqlite => AnyConnection::Sqlite(
                SqliteConnection::establish(&self.url)
                    .map_err(|e| StorageError::Connection(e.to_string()))?,
            ),
            Backend::Postgres => AnyConnection::Postgresql(
                PgConnection::establish(&self.url)
                    .map_err(|e| StorageError::Connection(e.to_string()))?,
            ),
        };
        self.prepare(&mut conn)?;
        Ok(conn)
    }

    /// The configured SQLite `synchronous` level, as the pragma spells it.
    pub fn sqlite_synchronous_pragma(&self) -> &'static str {
        if self.sqlite_synchronous == "normal" {
            "NORMAL"
        } else {
            "FULL"
        }
    }

    fn prepare(&self, conn: &mut AnyConnection) -> Result<(), StorageError> {
        if let AnyConnection::Sqlite(c) = conn {
            let sync = self.sqlite_synchronous_pragma();
            // A negative `cache_size` is a size in KiB (a positive one counts pages).
            let cache_kib = self.sqlite_cache_kib.max(64);
            c.batch_execute(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                 PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; \
                 PRAGMA cache_size = -{cache_kib};"
            ))
            .map_err(|e| StorageError::Connection(e.to_string()))?;
        }
        Ok(())
    }
}

/// The pool opens connections itself with the configured backend: diesel's own manager would
/// try PostgreSQL and then fall back to SQLite, turning a down PostgreSQL into a stray file.
impl ManageConnection for ConnectionOptions {
    type Connection = AnyConnection;
    type Error = StorageError;

    fn connect(&self) -> Result<AnyConnection, StorageError> {
        self.establish()
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), StorageError> {
        conn.batch_execute("SELECT 1")
            .map_err(|e| StorageError::Connection(e.to_string()))
    }

    fn has_broken(&self, _conn: &mut AnyConnection) -> bool {
        false
    }
}
