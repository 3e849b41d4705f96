//! The writer's two kinds of commit and the search indexer's storage side, on SQLite and on
//! PostgreSQL (`<test>::sqlite`, `<test>::postgres`; `WEFT_TEST_PG` names the PostgreSQL
//! server as for the integration tests):
//! * a batch of only deferred jobs commits at once, without waiting for an ordinary job, at
//!   the lowered level (SQLite `synchronous = NORMAL`, PostgreSQL `synchronous_commit =
//!   off`), and the next ordinary job runs at the configured level again;
//! * after it, the follower's rows and position are visible to readers;
//! * crash-redo: a lost lazy commit leaves the stored position (and rows) behind; the
//!   indexer's next pass from the stored position writes the same rows, once; a position
//!   another indexer stored first makes a pass write nothing;
//! * redactions between the indexer's read and write, and backfilled history.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::Text;
use serde_json::json;

use super::events::{self, NewEvent};
use super::schema::{event_search, search_progress, user_directory};
use super::search;
use super::test_db::{Backend, TempDb};
use super::{AnyConnection, Db, StorageResult};

struct TestDb {
    db: Arc<Db>,
    _tmp: TempDb,
}

fn open(backend: Backend) -> TestDb {
    let tmp = TempDb::new(backend, "follow", "x");
    let db = Db::open(&tmp.config).expect("open the database");
    TestDb {
        db: Arc::new(db),
        _tmp: tmp,
    }
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name(super::Backend::Postgres)
            }
        }
    )*};
}

both_backends!(
    a_deferred_only_batch_commits_alone_at_the_lowered_level,
    the_indexer_redoes_a_lost_batch_from_its_stored_position,
    a_redaction_between_read_and_write_leaves_no_row,
    backfilled_history_is_indexed_with_its_events,
);

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    v: String,
}

/// The connection's durability level: SQLite's `synchronous` (0 off, 1 normal, 2 full),
/// PostgreSQL's `synchronous_commit`.
fn level(conn: &mut AnyConnection) -> StorageResult<String> {
    let q = match conn {
        AnyConnection::Sqlite(_) => {
            "SELECT CAST(synchronous AS TEXT) AS v FROM pragma_synchronous()"
        }
        AnyConnection::Postgresql(_) => "SELECT current_setting('synchronous_commit') AS v",
    };
    Ok(diesel::sql_query(q).get_result::<Setting>(conn)?.v)
}

fn lowered(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "1",
        Backend::Postgres => "off",
    }
}

fn durable(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "2",
        Backend::Postgres => "on",
    }
}

fn message(id: &str, stream: i64, body: &str) -> NewEvent {
    NewEvent {
        event_id: id.into(),
        room_id: "!r:x".into(),
        stream_ordering: Some(stream),
        depth: stream.abs(),
        event_type: "m.room.message".into(),
        state_key: None,
        sender: "@a:x".into(),
        origin_server_ts: 1_000 + stream,
        json: json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}})
            .to_string(),
        state_before: None,
        state_after: None,
        outlier: false,
        rejected: None,
        soft_failed: false,
        redacted_by: None,
    }
}

fn join(user: &str, stream: i64, name: &str) -> NewEvent {
    NewEvent {
        event_type: "m.room.member".into(),
        state_key: Some(user.into()),
        json: json!({"type": "m.room.member", "state_key": user,
                     "content": {"membership": "join", "displayname": name}})
        .to_string(),
        ..message(&format!("$join{stream}"), stream, "")
    }
}

/// Every search row `(event_id, value)` and profile `(user, name, position)`.
type Rows = (Vec<(String, String)>, Vec<(String, Option<String>, i64)>);

fn rows(db: &Db) -> Rows {
    // SQLite: the FTS5 index holds exactly the rows' words (FTS5 compares an external
    // content table's rows with its index and fails on any difference).
    db.write_blocking("s", |c| {
        if let AnyConnection::Sqlite(s) = c {
            use diesel::connection::SimpleConnection;
            s.batch_execute(
                "INSERT INTO event_search_fts (event_search_fts, rank) \
                 VALUES ('integrity-check', 1)",
            )?;
        }
        Ok(())
    })
    .expect("the FTS5 index matches its rows");
    db.read_blocking(|c| {
        Ok((
            event_search::table
                .select((event_search::event_id, event_search::value))
                .order(event_search::event_id)
                .load(c)?,
            user_directory::table
                .select((
                    user_directory::user_id,
                    user_directory::display_name,
                    user_directory::stream_ordering,
                ))
                .order(user_directory::user_id)
                .load(c)?,
        ))
    })
    .expect("read the index")
}

/// One indexer pass over `(after, upto]`, as `search::indexer` runs it: read and prepare
/// from the pool, then one deferred job storing the position and the rows. Answers whether
/// the job stored anything (`false`: another indexer's position was past `after`).
fn pass(db: &Db, after: i64, upto: i64) -> bool {
    let batch = db
        .read_blocking(|c| {
            Ok(search::prepare(search::events_to_index(
                c, after, upto, 500,
            )?))
        })
        .expect("read the batch");
    run_deferred(db, move |c| {
        if !search::advance_indexed(c, after, upto)? {
            return Ok(false);
        }
        search::store_index(c, &batch)?;
        Ok(true)
    })
}

/// Runs `f` as a deferred job, awaited on a runtime of its own; nothing else is queued.
fn run_deferred<T, F>(db: &Db, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        // Bounded only so that a writer that waits for an ordinary job fails the test
        // instead of hanging it (not a timing assertion: the job has seconds).
        tokio::time::timeout(Duration::from_secs(30), db.write_deferred("search", f))
            .await
            .expect("a deferred-only batch commits without an ordinary job")
            .expect("the deferred job")
    })
}

/// Puts the stored position back to `at` (what a lost commit leaves behind).
fn set_position(c: &mut AnyConnection, at: i64) -> StorageResult<()> {
    diesel::update(search_progress::table)
        .set(search_progress::stream.eq(at))
        .execute(c)?;
    Ok(())
}

fn store_events(db: &Db, evs: Vec<NewEvent>) {
    db.write_blocking("!r:x", move |c| {
        let refs: Vec<&NewEvent> = evs.iter().collect();
        events::insert_events(c, &refs)
    })
    .expect("store the events");
}

fn a_deferred_only_batch_commits_alone_at_the_lowered_level(backend: Backend) {
    let t = open(backend);
    store_events(
        &t.db,
        vec![message("$m1", 1, "hello world"), join("@b:x", 2, "Bee")],
    );
    let (commits, lazy) = (t.db.commits(), t.db.lazy_commits());
    // Nothing else is queued: the deferred job commits on its own, at the lowered level.
    let seen = pass(&t.db, 0, 2);
    assert!(seen);
    let inside = run_deferred(&t.db, level);
    assert_eq!(
        inside,
        lowered(backend),
        "a deferred-only batch runs lowered"
    );
    assert_eq!(t.db.commits(), commits + 2);
    assert_eq!(t.db.lazy_commits(), lazy + 2, "both were lazy commits");
    // The follower's rows and position are visible to readers at once.
    let (texts, profiles) = rows(&t.db);
    assert_eq!(texts, vec![("$m1".to_owned(), "hello world".to_owned())]);
    assert_eq!(
        profiles,
        vec![("@b:x".to_owned(), Some("Bee".to_owned()), 2)]
    );
    assert_eq!(t.db.read_blocking(search::indexed_upto).unwrap(), Some(2));
    // An ordinary job runs at the configured (durable) level again.
    let after = t.db.write_blocking("s", level).unwrap();
    assert_eq!(
        after,
        durable(backend),
        "the ordinary batch after it is durable"
    );
    assert_eq!(t.db.lazy_commits(), lazy + 2);
}

fn the_indexer_redoes_a_lost_batch_from_its_stored_position(backend: Backend) {
    let t = open(backend);
    // The room's commit writes no search rows for timeline events any more.
    store_events(
        &t.db,
        vec![
            message("$m1", 1, "alpha"),
            message("$m2", 2, "beta"),
            join("@b:x", 3, "Bee"),
            message("$m4", 4, "gamma"),
        ],
    );
    assert_eq!(
        rows(&t.db),
        (vec![], vec![]),
        "nothing indexed by the room's commit"
    );
    assert!(pass(&t.db, 0, 2));
    let first = rows(&t.db);
    assert_eq!(first.0.len(), 2);
    assert!(pass(&t.db, 2, 4));
    let want = rows(&t.db);
    assert_eq!(want.0.len(), 3);
    assert_eq!(want.1.len(), 1);
    // A power cut lost the second (lazy) batch: its rows and its position, together.
    t.db.write_blocking("s", |c| {
        diesel::delete(event_search::table.filter(event_search::event_id.eq("$m4"))).execute(c)?;
        diesel::delete(user_directory::table).execute(c)?;
        set_position(c, 2)
    })
    .unwrap();
    assert_eq!(rows(&t.db), first);
    // The indexer starts from its stored position and writes the same rows again.
    let stored = t.db.read_blocking(search::indexed_upto).unwrap();
    assert_eq!(stored, Some(2));
    assert!(pass(&t.db, 2, 4));
    assert_eq!(rows(&t.db), want);
    // Redone once more over rows that did survive (idempotent: no duplicates).
    t.db.write_blocking("s", |c| set_position(c, 0)).unwrap();
    assert!(pass(&t.db, 0, 4));
    assert_eq!(rows(&t.db), want);
    // Another indexer (a cluster node) stored a position past this pass's start: the pass
    // writes nothing.
    store_events(&t.db, vec![message("$m5", 5, "delta")]);
    t.db.write_blocking("s", |c| search::advance_indexed(c, 4, 5).map(|_| ()))
        .unwrap();
    assert!(!pass(&t.db, 4, 5), "the batch was another indexer's");
    assert_eq!(rows(&t.db), want, "and nothing was written for it");
    assert_eq!(t.db.read_blocking(search::indexed_upto).unwrap(), Some(5));
}

fn a_redaction_between_read_and_write_leaves_no_row(backend: Backend) {
    let t = open(backend);
    store_events(
        &t.db,
        vec![message("$m1", 1, "secret words"), message("$m2", 2, "kept")],
    );
    // The indexer read the batch before the redaction committed...
    let batch =
        t.db.read_blocking(|c| Ok(search::prepare(search::events_to_index(c, 0, 2, 500)?)))
            .unwrap();
    let mut redaction = message("$r3", 3, "");
    redaction.event_type = "m.room.redaction".into();
    redaction.json =
        json!({"type": "m.room.redaction", "redacts": "$m1", "content": {}}).to_string();
    t.db.write_blocking("!r:x", move |c| {
        events::insert_events(c, &[&redaction])?;
        events::set_redacted_by(c, "$m1", "$r3")
    })
    .unwrap();
    // ... and writes it after: the redacted event's words are not left behind.
    assert!(run_deferred(&t.db, move |c| {
        search::advance_indexed(c, 0, 2)?;
        search::store_index(c, &batch)?;
        Ok(true)
    }));
    assert_eq!(rows(&t.db).0, vec![("$m2".to_owned(), "kept".to_owned())]);
    // A row written in spite of it (another writer's race on PostgreSQL) goes when the
    // redaction's own position comes by.
    t.db.write_blocking("s", |c| {
        search::index_event(c, &message("$m1", 1, "secret words"))
    })
    .unwrap();
    assert_eq!(rows(&t.db).0.len(), 2, "the racing row is there");
    assert!(pass(&t.db, 2, 3));
    assert_eq!(rows(&t.db).0, vec![("$m2".to_owned(), "kept".to_owned())]);
}

fn backfilled_history_is_indexed_with_its_events(backend: Backend) {
    let t = open(backend);
    store_events(
        &t.db,
        vec![
            message("$old", -5, "ancient words"),
            message("$new", 1, "fresh"),
        ],
    );
    // Backfilled history (a negative position) is indexed in its events' commit...
    assert_eq!(
        rows(&t.db).0,
        vec![("$old".to_owned(), "ancient words".to_owned())]
    );
    // ... and the indexer, following the forward stream, leaves it alone.
    assert!(pass(&t.db, 0, 1));
    assert_eq!(
        rows(&t.db).0,
        vec![
            ("$new".to_owned(), "fresh".to_owned()),
            ("$old".to_owned(), "ancient words".to_owned())
        ]
    );
}
