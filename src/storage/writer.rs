//! The writer threads: every database write goes through one of them.
//!
//! Each writer owns one connection and a queue of jobs (closures over the connection). It
//! takes the first job, drains whatever else is already queued (up to `max_batch`), and runs
//! them all in ONE transaction, each job inside its own savepoint: a failing job rolls back
//! alone and gets its error, the others commit together. Callers are answered only after the
//! commit, so "acknowledged" always means "durable". Under load the batches grow by
//! themselves, which is what makes throughput possible (one fsync per batch, not per event).
//! On SQLite the savepoint statements are prepared once and kept ([`in_savepoint`]): a batch
//! may hold one job per room for a `/send` that spans 50 rooms.
//!
//! SQLite gets exactly one writer, so two writes never contend for its lock.
//!
//! Each writer's queue is bounded (`database.writer_queue`): when it is full, an async
//! caller waits for room (push-back reaches the handler or actor that is writing, and through
//! it the client or peer), instead of memory growing with the backlog.
//!
//! **Two kinds of commit.** An *ordinary* job is one somebody waits on to answer a request:
//! a batch holding one commits durably (SQLite `synchronous = full`: the commit is an fsync
//! of the WAL; PostgreSQL: `synchronous_commit` as configured, `on`). A *deferred* job
//! ([`Writers::submit_deferred`]) is derived work that follows the event stream and answers
//! nobody (the push worker's notification rows, the search indexer's rows, their stored
//! positions). A batch made ONLY of deferred jobs is committed at once, in the writer's
//! idle time, *without an fsync of its own*: SQLite runs it with `PRAGMA synchronous =
//! NORMAL` (set outside the transaction, set back to the configured level right after; a
//! connection whose level cannot be set back is replaced, so no ordinary batch ever commits
//! below it), PostgreSQL with `SET LOCAL synchronous_commit = off`. A deferred job taken
//! with ordinary ones simply commits in their durable transaction.
//!
//! Why that is safe: both logs are appended in commit order. A lazy commit's WAL frames
//! (SQLite) or commit record (PostgreSQL) come before those of any later commit, so the
//! next durable commit's fsync (or WAL flush) makes every earlier lazy one durable too, and
//! anything a durable commit read from a lazy one is durable with it. A power cut (or a
//! PostgreSQL crash) before that loses only lazy commits, each whole: the follower's rows
//! *and* its stored position together, so on restart it starts from the older stored
//! position and redoes the work (every follower's writes are idempotent). A process crash
//! loses nothing committed (the WAL, or PostgreSQL's buffers, hold it). In a cluster each
//! node's follower moves its position with `advance_progress`-style compare-and-set on the
//! shared row; a node that saw another's lazy commit and gave its batch up depends on it only
//! through later commits, which come after it in PostgreSQL's WAL. "A 200 means stored"
//! holds for every ordinary job, which is never in a lazy batch.
//!
//! A deferred job that needs a notifier position takes it inside the job and completes it
//! from an after-commit hook ([`Writers::submit_deferred_then`]), so a job waiting in the
//! queue holds nothing behind the stream's frontier. (Until this change a deferred-only batch
//! was held up to 50 ms for the next ordinary job and committed inside it: on one chain of
//! `/send`s that put `/send` N's notification rows into `/send` N+1's commit, in its latency.)
//!
//! A job may carry an *after-commit hook* ([`Writers::submit_then`]): the writer thread runs
//! it right after the transaction ends (with whether the job's writes are durable), before
//! the caller is answered. The room actors wake `/sync` waiters from it, one thread hop
//! sooner than from their own answer.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use diesel::Connection;
use tokio::sync::oneshot;

use super::connection::{AnyConnection, ConnectionOptions};
use super::{StorageError, StorageResult};

type AnyBox = Box<dyn Any + Send>;
type JobFn = Box<dyn FnOnce(&mut AnyConnection) -> StorageResult<AnyBox> + Send>;
/// Runs on the writer thread once the job's transaction ended: `true` when its writes
/// committed.
pub type AfterCommit = Box<dyn FnOnce(bool) + Send>;

struct Job {
    run: JobFn,
    reply: Reply,
    /// Nobody waits on it to answer a request: a batch of only such jobs commits without an
    /// fsync of its own (see the module comment).
    deferred: bool,
    after: Option<AfterCommit>,
}

enum Reply {
    Async(oneshot::Sender<StorageResult<AnyBox>>),
    Blocking(mpsc::Sender<StorageResult<AnyBox>>),
}

impl Reply {
    fn send(self, result: StorageResult<AnyBox>) {
        // The caller may have gone away (timeout, dropped request); nothing to do then.
        match self {
            Self::Async(tx) => {
                let _ = tx.send(result);
            }
            Self::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

struct WriterHandle {
    tx: tokio::sync::mpsc::Sender<Job>,
    depth: Arc<AtomicUsize>,
    /// Transactions committed by this writer.
    commits: Arc<AtomicU64>,
    /// Of those, the deferred-only batches committed without an fsync of their own.
    lazy_commits: Arc<AtomicU64>,
}

pub struct Writers {
    handles: Vec<WriterHandle>,
}

impl Writers {
    pub fn start(
        options: &ConnectionOptions,
        count: usize,
        max_batch: usize,
        queue: usize,
    ) -> StorageResult<Self> {
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            let conn = options.establish()?;
            let (tx, rx) = tokio::sync::mpsc::channel::<Job>(queue.max(1));
            let depth = Arc::new(AtomicUsize::new(0));
            let commits = Arc::new(AtomicU64::new(0));
            let lazy_commits = Arc::new(AtomicU64::new(0));
            let counters = Counters {
                depth: Arc::clone(&depth),
                commits: Arc::clone(&commits),
                lazy_commits: Arc::clone(&lazy_commits),
            };
            let reopen = options.clone();
            std::thread::Builder::new()
                .name(format!("weft-db-writer-{i}"))
                .spawn(move || run_writer(conn, &reopen, rx, counters, max_batch))
                .map_err(|e| StorageError::Connection(format!("spawning writer: {e}")))?;
            handles.push(WriterHandle {
                tx,
                depth,
                commits,
                lazy_commits,
            });
        }
        Ok(Self { handles })
    }

    fn index_of(&self, shard: &str) -> usize {
        // FNV-1a: stable, cheap, good enough to spread rooms over a few writers.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in shard.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        (h % self.handles.len() as u64) as usize
    }

    fn pick(&self, shard: &str) -> &WriterHandle {
        &self.handles[self.index_of(shard)]
    }

    fn boxed<T, F>(f: F) -> JobFn
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        Box::new(move |c| f(c).map(|v| Box::new(v) as AnyBox))
    }

    fn unbox<T: 'static>(r: StorageResult<AnyBox>) -> StorageResult<T> {
        r?.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| StorageError::Task("writer returned the wrong type".into()))
    }

    pub async fn submit<T, F>(&self, shard: &str, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.submit_job(shard, f, false, None).await
    }

    /// [`Writers::submit`] with a hook the writer thread runs after the commit (see the
    /// module comment).
    pub async fn submit_then<T, F>(
        &self,
        shard: &str,
        f: F,
        after: Option<AfterCommit>,
    ) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.submit_job(shard, f, false, after).await
    }

    /// A write nobody waits on to answer a request: taken with ordinary jobs it commits in
    /// their transaction, taken alone (or with other deferred jobs) it commits at once
    /// without an fsync of its own (see the module comment).
    pub async fn submit_deferred<T, F>(&self, shard: &str, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.submit_job(shard, f, true, None).await
    }

    /// [`Writers::submit_deferred`] with an after-commit hook. A deferred job that needs a
    /// notifier position takes it inside the job and completes it from the hook: a position
    /// taken before the job would hold the stream's frontier back while the job is held.
    pub async fn submit_deferred_then<T, F>(
        &self,
        shard: &str,
        f: F,
        after: AfterCommit,
    ) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.submit_job(shard, f, true, Some(after)).await
    }

    /// [`Writers::submit_deferred`] in two steps: waits only until the job is in its
    /// writer's queue, and gives back the wait for its result. Jobs a writer takes later
    /// (on this shard) commit with it or after it.
    pub async fn enqueue_deferred<T, F>(
        &self,
        shard: &str,
        f: F,
    ) -> StorageResult<impl std::future::Future<Output = StorageResult<T>> + use<T, F>>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        let rx = self.enqueue(shard, f, true, None).await?;
        Ok(async move { Self::unbox(rx.await.map_err(|_| StorageError::WriterGone)?) })
    }

    async fn submit_job<T, F>(
        &self,
        shard: &str,
        f: F,
        deferred: bool,
        after: Option<AfterCommit>,
    ) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        let rx = self.enqueue(shard, f, deferred, after).await?;
        Self::unbox(rx.await.map_err(|_| StorageError::WriterGone)?)
    }

    /// Puts a job in its writer's queue (waiting for room); the receiver gets its result.
    async fn enqueue<T, F>(
        &self,
        shard: &str,
        f: F,
        deferred: bool,
        after: Option<AfterCommit>,
    ) -> StorageResult<oneshot::Receiver<StorageResult<AnyBox>>>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let handle = self.pick(shard);
        handle.depth.fetch_add(1, Ordering::Relaxed);
        if handle
            .tx
            .send(Job {
                run: Self::boxed(f),
                reply: Reply::Async(tx),
                deferred,
                after,
            })
            .await
            .is_err()
        {
            handle.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(StorageError::WriterGone);
        }
        Ok(rx)
    }

    pub fn submit_blocking<T, F>(&self, shard: &str, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let handle = self.pick(shard);
        handle.depth.fetch_add(1, Ordering::Relaxed);
        if handle
            .tx
            .blocking_send(Job {
                run: Self::boxed(f),
                reply: Reply::Blocking(tx),
                deferred: false,
                after: None,
            })
            .is_err()
        {
            handle.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(StorageError::WriterGone);
        }
        Self::unbox(rx.recv().map_err(|_| StorageError::WriterGone)?)
    }

    /// A shard key for each writer, in writer order (to reach every writer once).
    pub fn one_shard_per_writer(&self) -> Vec<String> {
        let mut keys: Vec<Option<String>> = vec![None; self.handles.len()];
        let mut missing = self.handles.len();
        for i in 0u32..10_000 {
            if missing == 0 {
                break;
            }
            let key = format!("health-{i}");
            let idx = self.index_of(&key);
            if keys[idx].is_none() {
                keys[idx] = Some(key);
                missing -= 1;
            }
        }
        keys.into_iter().flatten().collect()
    }

    pub fn queue_depths(&self) -> Vec<usize> {
        self.handles
            .iter()
            .map(|h| h.depth.load(Ordering::Relaxed))
            .collect()
    }

    /// Transactions committed so far, all writers together.
    pub fn commits(&self) -> u64 {
        self.handles
            .iter()
            .map(|h| h.commits.load(Ordering::Relaxed))
            .sum()
    }

    /// Of [`Writers::commits`], the deferred-only batches (committed without an fsync).
    pub fn lazy_commits(&self) -> u64 {
        self.handles
            .iter()
            .map(|h| h.lazy_commits.load(Ordering::Relaxed))
            .sum()
    }
}

/// A writer's counters, shared with its handle.
struct Counters {
    depth: Arc<AtomicUsize>,
    commits: Arc<AtomicU64>,
    lazy_commits: Arc<AtomicU64>,
}

/// Runs a job, turning a panic into an error so one bad job cannot stop the writer.
fn catch(run: JobFn, conn: &mut AnyConnection) -> StorageResult<AnyBox> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(conn)))
        .unwrap_or_else(|_| Err(StorageError::Task("write job panicked".into())))
}

/// Runs one job of a batch inside a savepoint, rolled back when the job fails: `(the
/// savepoint's own outcome, the job's result)`, or (SQLite) `Err` when the savepoint could
/// not be released or rolled back, which fails the batch. SQLite's savepoint statements are prepared
/// once and kept ([`Fixed`]): diesel's nested transaction sends them as text, parsed anew
/// for every job (two per job, a batch of one `/send` into 50 rooms holds 50 jobs).
/// PostgreSQL keeps diesel's nested transaction.
type Savepointed = (
    Result<(), diesel::result::Error>,
    Option<StorageResult<AnyBox>>,
);

fn in_savepoint(tx: &mut AnyConnection, run: JobFn) -> Result<Savepointed, diesel::result::Error> {
    use diesel::RunQueryDsl;
    if matches!(tx, AnyConnection::Sqlite(_)) {
        let exec = |tx: &mut AnyConnection, sql: &'static str| match tx {
            AnyConnection::Sqlite(c) => Fixed(sql).execute(c).map(|_| ()),
            _ => Ok(()),
        };
        if let Err(e) = exec(tx, "SAVEPOINT weft_job") {
            return Ok((Err(e), None));
        }
        let result = catch(run, tx);
        if result.is_err() {
            exec(tx, "ROLLBACK TO weft_job")?;
        }
        exec(tx, "RELEASE weft_job")?;
        return Ok((Ok(()), Some(result)));
    }
    let mut job_result: Option<StorageResult<AnyBox>> = None;
    let sp = tx.transaction::<(), diesel::result::Error, _>(|sp| match catch(run, sp) {
        Ok(v) => {
            job_result = Some(Ok(v));
            Ok(())
        }
        Err(e) => {
            job_result = Some(Err(e));
            Err(diesel::result::Error::RollbackTransaction)
        }
    });
    Ok((sp, job_result))
}

/// A fixed SQL statement without binds that diesel may keep prepared (its statement cache
/// keys it by the text), unlike `sql_query`, which it prepares for every execution.
struct Fixed(&'static str);

impl diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite> for Fixed {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::sqlite::Sqlite>,
    ) -> diesel::QueryResult<()> {
        out.push_sql(self.0);
        Ok(())
    }
}

impl diesel::query_builder::QueryId for Fixed {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<C> diesel::RunQueryDsl<C> for Fixed {}

/// SQLite: takes the database's write lock first, as `BEGIN IMMEDIATE` would (diesel's
/// multi-connection begins deferred). A deferred transaction that reads and then writes
/// cannot wait for the lock once another process (the CLI beside the server, or the server
/// beside it) has committed since its read began: SQLite answers `database is locked` at
/// once, whatever `busy_timeout` says. A write statement before any read waits for the lock
/// under `busy_timeout` instead, and the transaction then reads the latest data. The
/// statement changes nothing; it names diesel's migration table, which every migrated
/// database has (a bare file, as in unit tests, has none: then there is no lock to take
/// early and the batch runs as before). PostgreSQL: nothing.
fn take_write_lock(conn: &mut AnyConnection) -> Result<(), diesel::result::Error> {
    use diesel::connection::SimpleConnection;
    if let AnyConnection::Sqlite(c) = conn {
        match c.batch_execute("DELETE FROM __diesel_schema_migrations WHERE 0") {
            Err(e) if e.to_string().contains("no such table") => {}
            other => other?,
        }
    }
    Ok(())
}

/// Before a deferred-only batch: SQLite drops to `synchronous = NORMAL` for it (outside the
/// transaction: the level cannot change inside one). PostgreSQL needs nothing here: the
/// batch's transaction says `SET LOCAL synchronous_commit = off` itself ([`lazy_local`]).
fn lazy_begin(conn: &mut AnyConnection) -> Result<(), diesel::result::Error> {
    use diesel::connection::SimpleConnection;
    if let AnyConnection::Sqlite(c) = conn {
        c.batch_execute("PRAGMA synchronous = NORMAL")?;
    }
    Ok(())
}

/// Inside a deferred-only batch's transaction: PostgreSQL commits it without waiting for
/// the WAL flush (for this transaction only). SQLite: nothing (see [`lazy_begin`]).
fn lazy_local(conn: &mut AnyConnection) -> Result<(), diesel::result::Error> {
    use diesel::connection::SimpleConnection;
    if let AnyConnection::Postgresql(c) = conn {
        c.batch_execute("SET LOCAL synchronous_commit = off")?;
    }
    Ok(())
}

/// After a deferred-only batch: SQLite goes back to the configured level, so every
/// ordinary batch commits as configured. PostgreSQL: nothing (`SET LOCAL` ended with the
/// transaction).
fn lazy_end(
    conn: &mut AnyConnection,
    options: &ConnectionOptions,
) -> Result<(), diesel::result::Error> {
    use diesel::connection::SimpleConnection;
    if let AnyConnection::Sqlite(c) = conn {
        c.batch_execute(&format!(
            "PRAGMA synchronous = {}",
            options.sqlite_synchronous_pragma()
        ))?;
    }
    Ok(())
}

/// Replaces the writer's connection (a lost one, or one whose `synchronous` level could not
/// be set back). Answers whether it did.
fn reconnect(conn: &mut AnyConnection, options: &ConnectionOptions) -> bool {
    match options.establish() {
        Ok(c) => {
            tracing::warn!("database writer reconnected");
            *conn = c;
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "database writer cannot reconnect");
            false
        }
    }
}

fn run_writer(
    mut conn: AnyConnection,
    options: &ConnectionOptions,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    counters: Counters,
    max_batch: usize,
) {
    let Counters {
        depth,
        commits,
        lazy_commits,
    } = counters;
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Nobody waits on any of these to answer a request: commit without an fsync.
        let mut lazy = jobs.iter().all(|j| j.deferred);
        if lazy && let Err(e) = lazy_begin(&mut conn) {
            // Then it is an ordinary, durable batch; the level may be half set: put it back.
            tracing::warn!(error = %e, "writer: cannot lower synchronous; committing durably");
            lazy = false;
            if lazy_end(&mut conn, options).is_err() {
                reconnect(&mut conn, options);
            }
        }
        let n = jobs.len();
        let started = std::time::Instant::now();
        let mut results: Vec<StorageResult<AnyBox>> = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(n);
        let mut afters = Vec::with_capacity(n);
        let outcome = conn.transaction::<(), diesel::result::Error, _>(|tx| {
            if lazy {
                lazy_local(tx)?;
            }
            take_write_lock(tx)?;
            // Set when a job's savepoint could not be released or rolled back: its writes
            // may be in the transaction, so the whole batch fails (every caller hears it).
            let mut broken: Option<diesel::result::Error> = None;
            for job in jobs.drain(..) {
                replies.push(job.reply);
                afters.push(job.after);
                if broken.is_some() {
                    continue;
                }
                // Each job in its own savepoint: its failure rolls back only its own writes.
                match in_savepoint(tx, job.run) {
                    Err(e) => broken = Some(e),
                    Ok((_, Some(r))) => results.push(r),
                    Ok((Err(e), None)) => results.push(Err(StorageError::Diesel(e))),
                    Ok((Ok(()), None)) => {
                        results.push(Err(StorageError::Task("job gave no result".into())))
                    }
                }
            }
            broken.map_or(Ok(()), Err)
        });
        // Back to the configured level before anything else can commit on this connection;
        // a connection that cannot be set back is replaced (a fresh one starts at it).
        let mut replaced = false;
        if lazy && let Err(e) = lazy_end(&mut conn, options) {
            tracing::error!(error = %e, "writer: cannot restore synchronous; reconnecting");
            replaced = reconnect(&mut conn, options);
        }
        depth.fetch_sub(n, Ordering::Relaxed);
        if outcome.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
            if lazy {
                lazy_commits.fetch_add(1, Ordering::Relaxed);
            }
        }
        crate::observe::metrics::db_commit(
            n,
            started.elapsed().as_secs_f64(),
            outcome.is_ok(),
            lazy,
        );
        match outcome {
            Ok(()) => {
                for ((reply, result), after) in replies.into_iter().zip(results).zip(afters) {
                    if let Some(after) = after {
                        after(result.is_ok());
                    }
                    reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = n, "write batch failed to commit");
                let msg = e.to_string();
                for after in afters.into_iter().flatten() {
                    after(false);
                }
                for reply in replies {
                    reply.send(Err(StorageError::Task(format!("commit failed: {msg}"))));
                }
                // A connection the server closed (restart, or a cluster node's transaction
                // ended by `idle_in_transaction_session_timeout` while it was paused) is
                // replaced, or every later batch would fail too.
                if !replaced
                    && diesel::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), &mut conn)
                        .is_err()
                {
                    reconnect(&mut conn, options);
                }
            }
        }
    }
    tracing::info!("database writer stopped");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::Backend;

    /// Two processes on one SQLite file (the server and the CLI beside it): a job that reads
    /// and then writes, while the other process commits in between, waits for the lock
    /// instead of failing with `database is locked`.
    #[actix_rt::test]
    async fn a_read_then_write_job_waits_for_the_other_process() {
        use diesel::connection::SimpleConnection;
        let options = sqlite_options("lock");
        let path = std::path::PathBuf::from(&options.url);
        let mut setup = options.establish().unwrap();
        setup
            .batch_execute(
                "CREATE TABLE __diesel_schema_migrations (version TEXT PRIMARY KEY); \
                 CREATE TABLE t (n INTEGER);",
            )
            .unwrap();
        drop(setup);
        let cli = Arc::new(Writers::start(&options, 1, 8, 2).unwrap());
        let other_options = options.clone();
        let other = cli
            .submit("s", move |c| {
                use diesel::RunQueryDsl;
                diesel::sql_query("SELECT count(*) FROM t").execute(c)?;
                // The other process commits a write now, between this job's read and write.
                let writer = std::thread::spawn(move || {
                    let mut conn = other_options.establish().unwrap();
                    conn.batch_execute("INSERT INTO t VALUES (1)")
                });
                std::thread::sleep(std::time::Duration::from_millis(300));
                diesel::sql_query("INSERT INTO t VALUES (2)").execute(c)?;
                Ok(writer)
            })
            .await;
        let writer = other.expect("the read-then-write job commits");
        writer
            .join()
            .unwrap()
            .expect("the other process writes after it");
        let _ = std::fs::remove_file(&path);
    }

    /// Options for a fresh SQLite file in the temporary directory, named after `tag`.
    fn sqlite_options(tag: &str) -> ConnectionOptions {
        let path = std::env::temp_dir().join(format!(
            "weft-writer-{tag}-{}-{}.db",
            std::process::id(),
            crate::random::random_string(6)
        ));
        ConnectionOptions {
            backend: Backend::Sqlite,
            url: path.display().to_string(),
            sqlite_synchronous: "normal".into(),
            sqlite_cache_kib: 2000,
        }
    }

    /// One SQLite writer (batches of up to 8 jobs, a queue of `queue`) on a fresh file, and
    /// the file's path.
    fn sqlite_writers(tag: &str, queue: usize) -> (Arc<Writers>, std::path::PathBuf) {
        let options = sqlite_options(tag);
        let path = std::path::PathBuf::from(&options.url);
        (
            Arc::new(Writers::start(&options, 1, 8, queue).unwrap()),
            path,
        )
    }

    /// Keeps the writer busy for 200 ms with a job of its own (begun once this returns), so
    /// that what is submitted meanwhile is queued and taken as one batch after it.
    async fn hold(writers: &Arc<Writers>) -> tokio::task::JoinHandle<StorageResult<()>> {
        let w = Arc::clone(writers);
        let busy = tokio::spawn(async move {
            w.submit("s", |_c| {
                std::thread::sleep(Duration::from_millis(200));
                Ok(())
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        busy
    }

    /// A deferred job taken together with an ordinary one commits in the ordinary job's
    /// durable transaction: three jobs, two commits, none of them lazy.
    #[actix_rt::test]
    async fn a_deferred_job_taken_with_an_ordinary_one_commits_durably() {
        let (writers, path) = sqlite_writers("defer", 16);
        // The writer is busy with `busy` while the other two are queued, so it takes them
        // together the moment `busy` commits.
        let busy = hold(&writers).await;
        let w = Arc::clone(&writers);
        let deferred = tokio::spawn(async move { w.submit_deferred("s", |_c| Ok(7u8)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let answer = writers.submit("s", |_c| Ok(8u8)).await.unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!(answer, 8);
        assert_eq!(deferred.await.unwrap().unwrap(), 7);
        assert_eq!(
            writers.commits(),
            2,
            "the deferred job rode in the ordinary job's commit"
        );
        assert_eq!(writers.lazy_commits(), 0);
        let _ = std::fs::remove_file(&path);
    }

    /// A deferred job's hook runs once the batch it rode in has committed, before its caller
    /// is answered, and hears whether its writes are durable: `false` for a job that failed
    /// (the push worker completes the notifier position it took inside the job from there).
    #[actix_rt::test]
    async fn a_deferred_jobs_hook_hears_its_outcome_after_the_ride() {
        let (writers, path) = sqlite_writers("hook", 16);
        let heard: Arc<std::sync::Mutex<Vec<(&str, bool)>>> = Arc::default();
        let h = Arc::clone(&heard);
        let ok = writers.submit_deferred_then(
            "s",
            |_c| Ok(5u8),
            Box::new(move |committed| h.lock().unwrap().push(("ok", committed))),
        );
        let h = Arc::clone(&heard);
        let failing = writers.submit_deferred_then(
            "s",
            |_c| Err::<u8, _>(StorageError::Task("refused".into())),
            Box::new(move |committed| h.lock().unwrap().push(("failing", committed))),
        );
        let ordinary = writers.submit("s", |_c| Ok(()));
        let h = Arc::clone(&heard);
        let ok = async move {
            let v = ok.await;
            // The hook ran before the answer.
            assert!(h.lock().unwrap().contains(&("ok", true)));
            v
        };
        let (ok, failing, ordinary) = tokio::join!(ok, failing, ordinary);
        assert_eq!(ok.unwrap(), 5);
        assert!(failing.is_err());
        ordinary.unwrap();
        let mut got = heard.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, vec![("failing", false), ("ok", true)]);
        let _ = std::fs::remove_file(&path);
    }

    /// Jobs taken in one batch, each in its own savepoint: one that fails after writing, and
    /// one that panics after writing, leave nothing; the others (one of them opening a
    /// transaction of its own inside, which nests) commit together; and the batch's
    /// savepoints leave the connection ready for the next batch.
    #[actix_rt::test]
    async fn a_failing_job_rolls_back_alone_in_its_batch() {
        use diesel::RunQueryDsl;
        use diesel::connection::SimpleConnection;
        let (writers, path) = sqlite_writers("savepoint", 16);
        writers
            .submit("s", |c| {
                c.batch_execute("CREATE TABLE t (n INTEGER)")?;
                Ok(())
            })
            .await
            .unwrap();
        let insert = |c: &mut AnyConnection, n: i32| -> StorageResult<()> {
            diesel::sql_query(format!("INSERT INTO t VALUES ({n})")).execute(c)?;
            Ok(())
        };
        // The writer is busy while the five are queued, so it takes them as one batch.
        let busy = hold(&writers).await;
        let commits = writers.commits();
        let (a, failing, panicking, nested, b) = tokio::join!(
            writers.submit("s", move |c| insert(c, 1)),
            writers.submit("s", move |c| {
                insert(c, 2)?;
                Err::<(), _>(StorageError::Task("refused".into()))
            }),
            writers.submit("s", move |c| -> StorageResult<()> {
                insert(c, 3)?;
                panic!("a job that panics")
            }),
            writers.submit("s", move |c| {
                c.transaction::<(), diesel::result::Error, _>(|t| {
                    diesel::sql_query("INSERT INTO t VALUES (4)").execute(t)?;
                    Ok(())
                })?;
                Ok(())
            }),
            writers.submit("s", move |c| insert(c, 5)),
        );
        busy.await.unwrap().unwrap();
        a.unwrap();
        assert!(failing.is_err(), "the failing job's error");
        assert!(panicking.is_err(), "the panicking job's error");
        nested.unwrap();
        b.unwrap();
        assert_eq!(
            writers.commits() - commits,
            2,
            "the busy job's commit, then the five jobs' as one batch"
        );
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            n: i32,
        }
        let rows = writers
            .submit("s", |c| {
                Ok(diesel::sql_query("SELECT n FROM t ORDER BY n").load::<N>(c)?)
            })
            .await
            .unwrap();
        let ns: Vec<i32> = rows.iter().map(|r| r.n).collect();
        assert_eq!(ns, [1, 4, 5], "only the jobs that succeeded wrote");
        let _ = std::fs::remove_file(&path);
    }

    #[actix_rt::test]
    async fn a_full_queue_pushes_back_and_every_job_completes() {
        let (writers, path) = sqlite_writers("full", 2);
        // 200 writers' callers against a queue of 2: they wait for room in turn, none is
        // lost or refused, and answers match their jobs.
        let jobs = (0..200usize).map(|i| {
            let w = Arc::clone(&writers);
            async move {
                w.submit("s", move |_c| {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    Ok(i)
                })
                .await
            }
        });
        let results = futures_util::future::join_all(jobs).await;
        assert_eq!(results.len(), 200);
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap(), i);
        }
        assert_eq!(writers.queue_depths(), vec![0]);
        let _ = std::fs::remove_file(&path);
    }
}
