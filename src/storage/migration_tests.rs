//! Migrations that move stored rows, run over rows written by the schema before them, on
//! both dialects.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

use super::connection::{AnyConnection, ConnectionOptions};
use super::push::{self, NotificationRow};
use super::schema::push_notifications;
use super::test_db::{Backend, TempDb};
use super::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};
use crate::config::DatabaseUrl;

/// The embedded migrations of `conn`'s dialect.
fn source(conn: &AnyConnection) -> EmbeddedMigrations {
    match conn {
        AnyConnection::Sqlite(_) => SQLITE_MIGRATIONS,
        AnyConnection::Postgresql(_) => POSTGRES_MIGRATIONS,
    }
}

fn connect(tmp: &TempDb) -> AnyConnection {
    let (url, backend) = match tmp.config.database_url().expect("url") {
        DatabaseUrl::Sqlite(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).expect("data dir");
            }
            (path.to_string_lossy().into_owned(), super::Backend::Sqlite)
        }
        DatabaseUrl::Postgres(u) => (u, super::Backend::Postgres),
    };
    let options = ConnectionOptions {
        backend,
        url,
        sqlite_synchronous: "full".into(),
        sqlite_cache_kib: 2000,
    };
    options.establish().expect("connect")
}

/// Runs the migrations up to and including `last` (a version: the folder's date and
/// number, digits only).
fn migrate_through(conn: &mut AnyConnection, last: &str) {
    loop {
        let pending = conn.pending_migrations(source(conn)).expect("pending");
        let Some(next) = pending.first() else { return };
        let version = next.name().version().to_string().replace('-', "");
        assert!(!version.is_empty(), "a migration without a version");
        if version.as_str() > last {
            return;
        }
        conn.run_migration(next.as_ref()).expect("migration");
    }
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Found {
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = BigInt)]
    stream_ordering: i64,
}

/// The events whose text has `word`, through the dialect's word index.
fn search(conn: &mut AnyConnection, word: &str) -> Vec<Found> {
    match conn {
        AnyConnection::Sqlite(c) => {
            c.batch_execute(
                "INSERT INTO event_search_fts (event_search_fts, rank) \
                 VALUES ('integrity-check', 1)",
            )
            .expect("the FTS5 index matches its rows");
            diesel::sql_query(
                "SELECT s.event_id, s.stream_ordering FROM event_search_fts \
                 JOIN event_search s ON s.id = event_search_fts.rowid \
                 WHERE event_search_fts MATCH ? ORDER BY s.stream_ordering",
            )
            .bind::<Text, _>(word)
            .load(c)
            .expect("search")
        }
        AnyConnection::Postgresql(c) => diesel::sql_query(
            "SELECT event_id, stream_ordering FROM event_search \
             WHERE to_tsvector('english', value) @@ to_tsquery('english', $1) \
             ORDER BY stream_ordering",
        )
        .bind::<Text, _>(word)
        .load(c)
        .expect("search"),
    }
}

fn found(list: &[(&str, i64)]) -> Vec<Found> {
    list.iter()
        .map(|(e, p)| Found {
            event_id: (*e).to_owned(),
            stream_ordering: *p,
        })
        .collect()
}

fn followers_keyed_by_position(backend: Backend) {
    let tmp = TempDb::new(backend, "mig3200", "test.local");
    let mut c = connect(&tmp);
    migrate_through(&mut c, "20261202002900");
    assert!(
        !c.pending_migrations(source(&c))
            .expect("pending")
            .is_empty(),
        "the migration under test is still to run"
    );
    // Rows as the schema before wrote them (on SQLite the insert trigger filled FTS5).
    c.batch_execute(
        "INSERT INTO event_search (event_id, room_id, event_type, sender, key, \
             stream_ordering, value) VALUES \
         ('$a', '!r:x', 'm.room.message', '@u:x', 'content.body', 1, 'hello lovely world'), \
         ('$b', '!r:x', 'm.room.message', '@u:x', 'content.body', 2, 'goodbye'), \
         ('$c', '!r:x', 'm.room.topic', '@u:x', 'content.topic', 3, 'hello again'); \
         INSERT INTO push_notifications (user_id, event_id, room_id, thread_id, \
             stream_ordering, stream_id, ts, actions, highlight) VALUES \
         ('@u:x', '$a', '!r:x', 'main', 1, 10, 0, '[\"notify\"]', false), \
         ('@u:x', '$c', '!r:x', 'main', 3, 11, 0, '[\"notify\"]', true), \
         ('@v:x', '$a', '!r:x', 'main', 1, 10, 0, '[\"notify\"]', false);",
    )
    .expect("rows of the old schema");
    let all = source(&c);
    c.run_pending_migrations(all).expect("migrate");

    // Every row kept, its words still found.
    assert_eq!(search(&mut c, "hello"), found(&[("$a", 1), ("$c", 3)]));
    assert_eq!(search(&mut c, "goodbye"), found(&[("$b", 2)]));
    // Deleting by position takes the words with the row.
    super::search::forget_positions(&mut c, &[1]).expect("forget");
    assert_eq!(search(&mut c, "hello"), found(&[("$c", 3)]));
    assert_eq!(search(&mut c, "lovely"), found(&[]));

    let count = |c: &mut AnyConnection| -> i64 {
        push_notifications::table
            .count()
            .get_result(c)
            .expect("count")
    };
    assert_eq!(count(&mut c), 3);
    // The same user and position again is left alone (a re-evaluated event).
    let again = NotificationRow {
        user_id: "@u:x".into(),
        event_id: "$a".into(),
        room_id: "!r:x".into(),
        thread_id: "main".into(),
        stream_ordering: 1,
        stream_id: 12,
        ts: 0,
        actions: "[]".into(),
        highlight: true,
    };
    push::insert_notifications(&mut c, &[again]).expect("insert");
    assert_eq!(count(&mut c), 3);
    let stream_id: i64 = push_notifications::table
        .filter(push_notifications::user_id.eq("@u:x"))
        .filter(push_notifications::stream_ordering.eq(1))
        .select(push_notifications::stream_id)
        .first(&mut c)
        .expect("row");
    assert_eq!(stream_id, 10, "the stored row stays as it was");
}

#[test]
fn followers_keyed_by_position_sqlite() {
    followers_keyed_by_position(Backend::Sqlite);
}

#[test]
fn followers_keyed_by_position_postgres() {
    followers_keyed_by_position(Backend::Postgres);
}
