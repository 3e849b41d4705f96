//! Storage: one contract over two dialects (SQLite, the embedded default, and PostgreSQL).
//!
//! * Reads go through an r2d2 pool on tokio's blocking threads (`Db::read`).
//! * Writes go through writer threads (`Db::write`, see [`writer`]): each drains its queue and
//!   commits everything it drained in one transaction (group commit), each job in its own
//!   savepoint so one failing job does not fail the others. SQLite has exactly one writer, so
//!   "database is locked" cannot happen; PostgreSQL may have several, and jobs with the same
//!   shard key (a room ID, a user ID) always go to the same writer, so their order holds.
//! * Queries are plain functions over `&mut AnyConnection`, grouped by area in the
//!   submodules, written once with diesel's query builder for both backends. Where the
//!   dialects differ (upserts), the single-writer design lets us use portable
//!   delete-then-insert or select-then-insert inside the write transaction.
//! * Migrations are embedded, one directory per dialect, and run at start.

pub mod account;
pub mod admin;
pub mod backup;
#[cfg(test)]
mod batch_tests;
pub mod cluster;
pub mod connection;
pub mod e2ee;
pub mod events;
pub mod federation;
#[cfg(test)]
mod follower_tests;
pub mod linearized;
pub mod media;
#[cfg(test)]
mod migration_tests;
pub mod partial_state;
pub mod push;
pub mod relations;
pub mod retention;
pub mod rooms;
pub mod schema;
pub mod search;
pub mod sliding;
pub mod state;
#[cfg(test)]
pub(crate) mod test_db;
pub mod users;
pub mod writer;

use std::sync::Arc;

use diesel::r2d2::Pool;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub use connection::AnyConnection;

use crate::config::{Config, DatabaseUrl};

pub(crate) const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub(crate) const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Diesel(#[from] diesel::result::Error),
    #[error("connection error: {0}")]
    Connection(String),
    #[error("migration error: {0}")]
    Migration(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("a blocking task failed: {0}")]
    Task(String),
    /// Cluster mode: a write of a room whose lease this node does not hold (`cluster.rs`).
    #[error("fenced: {0}")]
    Fenced(String),
}

impl From<diesel::r2d2::PoolError> for StorageError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        Self::Connection(e.to_string())
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// Which dialect the database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Handle to the database: a read pool and the writer threads. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<connection::ConnectionOptions>,
    writers: Arc<writer::Writers>,
    backend: Backend,
}

impl Db {
    /// Opens the database named in the config, runs pending migrations and starts the writers.
    pub fn open(config: &Config) -> StorageResult<Self> {
        let url = config
            .database_url()
            .map_err(|e| StorageError::Connection(e.to_string()))?;
        let (conn_url, backend, writers) = match &url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(parent) = path.parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        StorageError::Connection(format!("{}: {e}", parent.display()))
                    })?;
                }
                (path.to_string_lossy().into_owned(), Backend::Sqlite, 1)
            }
            DatabaseUrl::Postgres(u) => {
                (u.clone(), Backend::Postgres, config.database.writers.max(1))
            }
        };
        let options = connection::ConnectionOptions {
            backend,
            url: conn_url,
            sqlite_synchronous: config.database.sqlite_synchronous.clone(),
            sqlite_cache_kib: config.database.sqlite_cache_kib,
        };
        // Migrations first, on a dedicated connection.
        {
            let mut conn = options.establish()?;
            let migrations = match backend {
                Backend::Sqlite => SQLITE_MIGRATIONS,
                Backend::Postgres => POSTGRES_MIGRATIONS,
            };
            let applied = conn
                .run_pending_migrations(migrations)
                .map_err(|e| StorageError::Migration(e.to_string()))?;
            for m in applied {
                tracing::info!(migration = %m, "applied migration");
            }
        }
        // r2d2 checks each connection on checkout with a `SELECT 1` (parsed every time, on
        // every read). A PostgreSQL connection can die with the server and needs it; a
        // SQLite connection is a file handle that cannot go stale, so it is not checked.
        //
        // The pool keeps `pool_min_idle` connections at rest and opens more when reads
        // wait (each open connection holds memory: schema, statements, page cache); one
        // thread opens and closes them (r2d2's default is three).
        let max = config.database.pool_size.max(1);
        let pool = Pool::builder()
            .max_size(max)
            .min_idle(Some(config.database.pool_min_idle.clamp(1, max)))
            .idle_timeout(Some(std::time::Duration::from_secs(
                config.database.pool_idle_secs.max(1),
            )))
            .thread_pool(Arc::new(
                scheduled_thread_pool::ScheduledThreadPool::builder()
                    .num_threads(1)
                    .thread_name_pattern("weft-db-pool")
                    .build(),
            ))
            .test_on_check_out(backend == Backend::Postgres)
            .build(options.clone())
            .map_err(|e| StorageError::Connection(e.to_string()))?;
        let writers = writer::Writers::start(
            &options,
            writers,
            config.database.max_batch.max(1),
            config.database.writer_queue,
        )?;
        Ok(Self {
            pool,
            writers: Arc::new(writers),
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs a read-only query on a pooled connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// Runs a write job on the writer for `shard` (jobs with the same shard run in order).
    /// Resolves once the job's transaction has committed.
    pub async fn write<T, F>(&self, shard: &str, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.writers.submit(shard, f).await
    }

    /// A write nobody waits on to answer a request (a follower's derived rows and position):
    /// it commits in the transaction of ordinary writes taken with it, or at once without an
    /// fsync of its own; the next durable commit makes it durable
    /// ([`writer::Writers::submit_deferred`]).
    pub async fn write_deferred<T, F>(&self, shard: &str, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.writers.submit_deferred(shard, f).await
    }

    /// [`Db::write_deferred`] without waiting for the commit: once the job is queued (the
    /// wait for room in the queue is the push-back), gives back the wait for its result.
    /// Later jobs of the same shard commit with it or after it.
    pub async fn write_deferred_queued<T, F>(
        &self,
        shard: &str,
        f: F,
    ) -> StorageResult<impl std::future::Future<Output = StorageResult<T>> + use<T, F>>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.writers.enqueue_deferred(shard, f).await
    }

    /// [`Db::write_deferred`] with a hook run on the writer thread once its batch has ended
    /// (`true`: committed) ([`writer::Writers::submit_deferred_then`]).
    pub async fn write_deferred_then<T, F>(
        &self,
        shard: &str,
        f: F,
        after: writer::AfterCommit,
    ) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.writers.submit_deferred_then(shard, f, after).await
    }

    /// Transactions the writers have committed since start.
    pub fn commits(&self) -> u64 {
        self.writers.commits()
    }

    /// Of [`Db::commits`], the batches of only deferred jobs, committed without an fsync of
    /// their own ([`writer`]'s module comment).
    pub fn lazy_commits(&self) -> u64 {
        self.writers.lazy_commits()
    }

    /// [`Database::write`] with a hook run on the writer thread right after the commit
    /// (`true`: the job's writes are durable), before the caller is answered.
    pub async fn write_then<T, F>(
        &self,
        shard: &str,
        f: F,
        after: writer::AfterCommit,
    ) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.writers.submit_then(shard, f, Some(after)).await
    }

    /// Synchronous read for CLI commands and start-up (never call from an async context).
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&mut AnyConnection) -> StorageResult<T>,
    ) -> StorageResult<T> {
        let mut conn = self.pool.get()?;
        f(&mut conn)
    }

    /// Synchronous write for CLI commands (never call from an async context).
    pub fn write_blocking<T, F>(&self, shard: &str, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.writers.submit_blocking(shard, f)
    }

    /// Queue depth of each writer (for the status page).
    pub fn writer_queue_depths(&self) -> Vec<usize> {
        self.writers.queue_depths()
    }

    /// Read pool connections `(in_use, idle)`.
    pub fn pool_state(&self) -> (u32, u32) {
        let st = self.pool.state();
        (
            st.connections.saturating_sub(st.idle_connections),
            st.idle_connections,
        )
    }

    /// Readiness: a read on the pool and an (empty) job through every writer, each bounded
    /// by `timeout`. Returns `(database_ok, writers_ok)`.
    pub async fn health(&self, timeout: std::time::Duration) -> (bool, bool) {
        let read = tokio::time::timeout(
            timeout,
            self.read(|c| {
                use diesel::RunQueryDsl;
                diesel::sql_query("SELECT 1").execute(c)?;
                Ok(())
            }),
        )
        .await;
        let db_ok = matches!(read, Ok(Ok(())));
        let mut writers_ok = true;
        for shard in self.writers.one_shard_per_writer() {
            let w = tokio::time::timeout(timeout, self.write(&shard, |_| Ok(()))).await;
            writers_ok &= matches!(w, Ok(Ok(())));
        }
        (db_ok, writers_ok)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read pool starts with `pool_min_idle` connections and opens more when reads
    /// wait: concurrent reads that each hold a connection all complete, at most
    /// `pool_size` at once, and the pool grew past its idle minimum to serve them.
    #[actix_rt::test]
    async fn the_read_pool_grows_under_load_and_serves_every_read() {
        let dir = std::env::temp_dir().join(format!(
            "weft-pool-{}-{}",
            std::process::id(),
            crate::random::random_string(6)
        ));
        let mut config = Config::default();
        config.database.url = Some(format!("sqlite://{}", dir.join("weft.db").display()));
        config.database.pool_size = 4;
        config.database.pool_min_idle = 1;
        let db = Db::open(&config).unwrap();
        let (in_use, idle) = db.pool_state();
        assert!(
            in_use + idle <= 1,
            "starts with the idle minimum: {in_use} + {idle}"
        );
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let reads = (0..12).map(|i| {
            let (db, busy, most) = (db.clone(), Arc::clone(&busy), Arc::clone(&most));
            async move {
                db.read(move |c| {
                    use diesel::RunQueryDsl;
                    use std::sync::atomic::Ordering;
                    let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    diesel::sql_query("SELECT 1").execute(c)?;
                    busy.fetch_sub(1, Ordering::SeqCst);
                    Ok(i)
                })
                .await
            }
        });
        let got: Vec<usize> = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(got, (0..12).collect::<Vec<_>>());
        let most = most.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            most > 1,
            "reads ran on more than the one idle connection: {most}"
        );
        assert!(most <= 4, "never more than pool_size at once: {most}");
        let (in_use, idle) = db.pool_state();
        assert!(in_use + idle > 1, "the pool grew: {in_use} + {idle}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
