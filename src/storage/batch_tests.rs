//! The multi-row writes of a batch store exactly what the row-by-row writes store, on SQLite
//! and on PostgreSQL (`<test>::sqlite`, `<test>::postgres`; `WEFT_TEST_PG` names the
//! PostgreSQL server as for the integration tests): a timeline batch's events with their
//! relation rows (`events::insert_events` against `events::insert_event`), then the search
//! and profile rows the search indexer derives from them, and the push worker's notification rows
//! (`push::insert_notifications`). And the forward extremities, written as the difference
//! from the stored set (`state::set_extremities`), are exactly each set written.

use diesel::prelude::*;
use serde_json::json;

use super::events::{self, NewEvent};
use super::push::{self, NotificationRow};
use super::schema::user_directory;
use super::schema::{event_relations, event_search, events as events_t, push_notifications};
use super::search;
use super::test_db::{Backend, TempDb};
use super::{AnyConnection, Db, StorageResult};

/// A fresh database; its directory and PostgreSQL database go when it is dropped.
struct TestDb {
    db: Db,
    _tmp: TempDb,
}

fn open(backend: Backend) -> TestDb {
    let tmp = TempDb::new(backend, "batch", "x");
    let db = Db::open(&tmp.config).expect("open the database");
    TestDb { db, _tmp: tmp }
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
    a_timeline_batch_stores_every_row_as_one_by_one,
    a_batch_naming_an_event_twice_stores_it_as_one_by_one,
    notifications_in_chunks_leave_stored_ones_alone,
    forward_extremities_are_exactly_each_set_written,
);

fn row(
    id: &str,
    kind: &str,
    key: Option<&str>,
    stream: i64,
    content: serde_json::Value,
) -> NewEvent {
    NewEvent {
        event_id: id.into(),
        room_id: "!r:x".into(),
        stream_ordering: Some(stream),
        depth: stream,
        event_type: kind.into(),
        state_key: key.map(str::to_owned),
        sender: format!("@s{}:y", stream % 3),
        origin_server_ts: 1_000 + stream,
        json: json!({"type": kind, "content": content}).to_string(),
        state_before: Some(stream - 1),
        state_after: key.map(|_| stream),
        outlier: false,
        rejected: None,
        soft_failed: false,
        redacted_by: None,
    }
}

/// 75 events of every kind the index treats differently: messages (searchable), names and
/// topics, joins (profiles) and leaves, relations, unindexed types, rejected, soft-failed
/// and already-redacted events.
fn batch() -> Vec<NewEvent> {
    (1..=75i64)
        .map(|i| {
            let id = format!("$e{i}");
            let mut r = match i % 9 {
                0 => row(
                    &id,
                    "m.room.name",
                    Some(""),
                    i,
                    json!({"name": format!("room {i}")}),
                ),
                1 => row(
                    &id,
                    "m.room.topic",
                    Some(""),
                    i,
                    json!({"topic": format!("topic {i}")}),
                ),
                2 => row(
                    &id,
                    "m.room.member",
                    Some(&format!("@u{i}:y")),
                    i,
                    json!({"membership": "join", "displayname": format!("U {i}")}),
                ),
                3 => row(
                    &id,
                    "m.room.member",
                    Some(&format!("@u{}:y", i - 1)),
                    i,
                    json!({"membership": "leave"}),
                ),
                4 => row(
                    &id,
                    "m.room.message",
                    None,
                    i,
                    json!({"body": format!("a reply {i}"), "msgtype": "m.text",
                           "m.relates_to": {"rel_type": "m.thread", "event_id": "$e1"}}),
                ),
                5 => row(&id, "m.room.encrypted", None, i, json!({"ciphertext": "x"})),
                _ => row(
                    &id,
                    "m.room.message",
                    None,
                    i,
                    json!({"body": format!("hello number {i}"), "msgtype": "m.text"}),
                ),
            };
            match i {
                13 => r.rejected = Some("auth".into()),
                14 => r.soft_failed = true,
                15 => r.redacted_by = Some("$later".into()),
                _ => {}
            }
            r
        })
        .collect()
}

/// What was stored before the batch: an outlier copy of `$e20` (promoted by the batch), a
/// timeline copy of `$e21` and a rejected outlier copy of `$e22` (both left alone).
fn before(conn: &mut AnyConnection) -> StorageResult<()> {
    let mut outlier = row("$e20", "m.room.message", None, 0, json!({"body": "old"}));
    outlier.stream_ordering = None;
    outlier.outlier = true;
    outlier.state_before = None;
    let timeline = row(
        "$e21",
        "m.room.message",
        None,
        500,
        json!({"body": "first copy"}),
    );
    let mut rejected = outlier.clone();
    rejected.event_id = "$e22".into();
    rejected.rejected = Some("signatures".into());
    for r in [&outlier, &timeline, &rejected] {
        events::insert_event(conn, r)?;
    }
    Ok(())
}

/// An `event_relations` row.
type RelationRow = (String, String, String, String, String, String, i64, i64);

/// Every row the batch can write, in a fixed order.
#[derive(Debug, PartialEq)]
struct Dump {
    /// Each event row, as `Debug` shows it.
    events: Vec<String>,
    search: Vec<(String, String, String, String, String, i64, String)>,
    relations: Vec<RelationRow>,
    profiles: Vec<(String, Option<String>, Option<String>, i64)>,
}

fn dump(conn: &mut AnyConnection) -> StorageResult<Dump> {
    Ok(Dump {
        events: events_t::table
            .order(events_t::event_id)
            .load::<events::EventRow>(conn)?
            .iter()
            .map(|r| format!("{r:?}"))
            .collect(),
        search: event_search::table
            .select((
                event_search::event_id,
                event_search::room_id,
                event_search::event_type,
                event_search::sender,
                event_search::key,
                event_search::stream_ordering,
                event_search::value,
            ))
            .order(event_search::event_id)
            .load(conn)?,
        relations: event_relations::table
            .select((
                event_relations::event_id,
                event_relations::room_id,
                event_relations::relates_to,
                event_relations::rel_type,
                event_relations::event_type,
                event_relations::sender,
                event_relations::origin_server_ts,
                event_relations::stream_ordering,
            ))
            .order(event_relations::event_id)
            .load(conn)?,
        profiles: user_directory::table
            .select((
                user_directory::user_id,
                user_directory::display_name,
                user_directory::avatar_url,
                user_directory::stream_ordering,
            ))
            .order(user_directory::user_id)
            .load(conn)?,
    })
}

/// Stores `rows` after [`before`] in a fresh database, all at once or one by one; answers
/// the per-row answers and the dump.
fn store(backend: Backend, rows: Vec<NewEvent>, at_once: bool) -> (Vec<bool>, Dump) {
    let t = open(backend);
    let answers =
        t.db.write_blocking("!r:x", move |c| {
            before(c)?;
            let answers = if at_once {
                let refs: Vec<&NewEvent> = rows.iter().collect();
                events::insert_events(c, &refs)
            } else {
                rows.iter().map(|r| events::insert_event(c, r)).collect()
            }?;
            // The search and profile rows of timeline events are the search indexer's: its
            // pass over everything stored.
            let batch = search::prepare(search::events_to_index(c, 0, i64::MAX, 10_000)?);
            search::store_index(c, &batch)?;
            Ok(answers)
        })
        .expect("store the batch");
    let dump = t.db.read_blocking(dump).expect("read the rows");
    (answers, dump)
}

fn a_timeline_batch_stores_every_row_as_one_by_one(backend: Backend) {
    let rows = batch();
    let (one_by_one, want) = store(backend, rows.clone(), false);
    let (at_once, got) = store(backend, rows, true);
    assert_eq!(at_once, one_by_one);
    assert_eq!(got, want);
    // The batch is what the test means it to be: every kind of row is there, and the
    // stored copies were treated as stored.
    assert_eq!(got.events.len(), 75);
    assert!(got.search.len() > 30, "{:?}", got.search.len());
    assert!(got.search.iter().any(|s| s.4 == "content.name"));
    assert!(
        !got.search
            .iter()
            .any(|s| ["$e13", "$e14", "$e15"].contains(&s.0.as_str()))
    );
    assert!(got.relations.len() > 5);
    assert!(got.profiles.len() > 5);
    assert_eq!(
        at_once.iter().filter(|n| !**n).count(),
        2,
        "$e21 and $e22 were stored"
    );
    let event = |id: &str| {
        got.events
            .iter()
            .find(|e| e.contains(&format!("event_id: \"{id}\",")))
            .unwrap_or_else(|| panic!("{id} not stored"))
    };
    assert!(event("$e21").contains("first copy"));
    assert!(
        event("$e20").contains("outlier: false"),
        "the outlier copy was promoted"
    );
    assert!(
        event("$e22").contains("outlier: true"),
        "the rejected copy was kept"
    );
}

fn a_batch_naming_an_event_twice_stores_it_as_one_by_one(backend: Backend) {
    let mut rows = batch();
    rows.truncate(10);
    let mut again = rows[3].clone();
    again.json = json!({"content": {"body": "second"}}).to_string();
    rows.push(again);
    let (one_by_one, want) = store(backend, rows.clone(), false);
    let (at_once, got) = store(backend, rows, true);
    assert_eq!(at_once, one_by_one);
    assert_eq!(got, want);
}

fn notification(user: &str, event: &str, at: i64, actions: &str) -> NotificationRow {
    NotificationRow {
        user_id: user.into(),
        event_id: event.into(),
        room_id: "!r:x".into(),
        thread_id: "main".into(),
        stream_ordering: at,
        stream_id: 900,
        ts: 5,
        actions: actions.into(),
        highlight: at % 4 == 0,
    }
}

fn notifications_in_chunks_leave_stored_ones_alone(backend: Backend) {
    let t = open(backend);
    let mut rows: Vec<NotificationRow> = (1..=45)
        .map(|i| {
            notification(
                &format!("@u{}:x", i % 2),
                &format!("$e{i}"),
                i,
                "[\"notify\"]",
            )
        })
        .collect();
    // Named twice in the batch: the first is kept, as one by one.
    rows.push(notification("@u1:x", "$e1", 1, "[\"again\"]"));
    let want = rows.len() - 1;
    let stored = notification("@u0:x", "$e2", 2, "[\"stored\"]");
    let got: Vec<(String, String, String, bool)> =
        t.db.write_blocking("push", move |c| {
            push::insert_notifications(c, std::slice::from_ref(&stored))?;
            push::insert_notifications(c, &rows)?;
            Ok(push_notifications::table
                .select((
                    push_notifications::user_id,
                    push_notifications::event_id,
                    push_notifications::actions,
                    push_notifications::highlight,
                ))
                .order((push_notifications::user_id, push_notifications::event_id))
                .load(c)?)
        })
        .expect("store the notifications");
    assert_eq!(got.len(), want);
    let actions = |u: &str, e: &str| {
        got.iter()
            .find(|r| r.0 == u && r.1 == e)
            .map(|r| r.2.clone())
    };
    assert_eq!(actions("@u0:x", "$e2").as_deref(), Some("[\"stored\"]"));
    assert_eq!(actions("@u1:x", "$e1").as_deref(), Some("[\"notify\"]"));
    assert_eq!(actions("@u1:x", "$e45").as_deref(), Some("[\"notify\"]"));
    assert!(got.iter().any(|r| r.1 == "$e4" && r.3));
}

#[test]
fn a_batch_is_cut_into_chunks_of_a_few_sizes() {
    let sizes = |n: usize| -> Vec<usize> {
        let rows = vec![0u8; n];
        events::fixed_chunks(&rows)
            .iter()
            .map(|c| c.len())
            .collect()
    };
    assert_eq!(sizes(0), Vec::<usize>::new());
    assert_eq!(sizes(1), vec![1]);
    assert_eq!(sizes(50), vec![32, 16, 2]);
    assert_eq!(sizes(63), vec![32, 16, 8, 4, 2, 1]);
    assert_eq!(sizes(100), vec![32, 32, 32, 4]);
}

/// `set_extremities` writes only the difference from the stored set; after each write the
/// room's extremities are exactly the set written (order aside, a repeat once), and another
/// room's are untouched.
fn forward_extremities_are_exactly_each_set_written(backend: Backend) {
    use super::state;
    let t = open(backend);
    let steps: &[&[&str]] = &[
        &["$a"],
        &["$a"],
        &["$b"],
        &["$b", "$c", "$d", "$e"],
        &["$f", "$c", "$d", "$e"],
        &["$c", "$g"],
        &["$h", "$h"],
        &[],
        &["$i"],
    ];
    t.db.write_blocking("!other:x", |c| {
        state::set_extremities(c, "!other:x", &["$a".to_owned(), "$z".to_owned()])
    })
    .expect("the other room's extremities");
    for step in steps {
        let ids: Vec<String> = step.iter().map(|s| s.to_string()).collect();
        let stored =
            t.db.write_blocking("!r:x", move |c| {
                state::set_extremities(c, "!r:x", &ids)?;
                state::extremities(c, "!r:x")
            })
            .expect("set the extremities");
        let mut stored = stored;
        stored.sort();
        let mut want: Vec<String> = step.iter().map(|s| s.to_string()).collect();
        want.sort();
        want.dedup();
        assert_eq!(stored, want, "after writing {step:?}");
    }
    let mut other =
        t.db.read_blocking(|c| state::extremities(c, "!other:x"))
            .expect("read the other room");
    other.sort();
    assert_eq!(other, ["$a", "$z"], "another room's extremities");
}
