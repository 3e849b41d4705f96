//! The full-text index behind `POST /search` and the user directory's profiles.
//!
//! * `event_search`: one row per searchable timeline event (the rule for what is searchable
//!   is `weft_protocol::search::searchable`), removed by a redaction. Rows are *derived*: the
//!   search indexer (`crate::search::indexer`) follows the event stream behind the frontier
//!   and writes them, with its position (`search_progress`), in one deferred write job
//!   ([`events_to_index`], [`prepare`], [`store_index`]), off the room's commit. Backfilled
//!   history (negative positions, which the forward stream never passes) is still indexed in
//!   its own transaction by `events::insert_event(s)` ([`index_backfilled`]); outliers,
//!   rejected and soft-failed events are never indexed. The word index differs per dialect and
//!   is all this module writes by hand: SQLite keeps an FTS5 table in step (rows' words
//!   written after each chunk of rows, a trigger removing a deleted row's; `porter
//!   unicode61`: stems and case-folds), PostgreSQL a GIN index over
//!   `to_tsvector('english', value)`. Queries come from `weft_protocol::search` (words of
//!   letters and digits only, each a required prefix), bound as parameters.
//! * A search reads only rooms the user is joined to *now* (a left room is never searched),
//!   and answers candidates with their stream positions; the caller drops what the user's
//!   history visibility hides (`sync::visibility`) before counting and paging.
//! * `user_directory`: the newest name and avatar each user joined a room with (remote
//!   users' profiles come only from there); local users' own profile in `users` wins. Who
//!   may be found is read from `memberships` at search time, so a leave, a join or a
//!   deactivation shows at once.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};

use super::events::{EventRow, NewEvent};
use super::schema::{event_search, events, search_progress};
use super::{AnyConnection, StorageResult};

/// What the index keeps of one event.
enum Indexed {
    /// A searchable event's text: its key (`content.body`, ...) and value.
    Text(&'static str, String, i64),
    /// A join: the member, their display name and avatar.
    Join(String, Option<String>, Option<String>, i64),
}

/// What [`index_event`] writes for `ev` (the one rule for both it and [`index_events`]).
fn indexed(ev: &NewEvent) -> Option<Indexed> {
    let pos = ev.stream_ordering?;
    if ev.outlier || ev.rejected.is_some() || ev.soft_failed || ev.redacted_by.is_some() {
        return None;
    }
    let member = ev.event_type == "m.room.member";
    if !member
        && !matches!(
            ev.event_type.as_str(),
            "m.room.message" | "m.room.name" | "m.room.topic"
        )
    {
        return None;
    }
    let json = serde_json::from_str::<serde_json::Value>(&ev.json).ok()?;
    let content = json.get("content")?;
    if member {
        if content.get("membership").and_then(|m| m.as_str()) == Some("join")
            && let Some(user) = ev.state_key.as_deref()
        {
            let text = |k: &str| content.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            return Some(Indexed::Join(
                user.to_owned(),
                text("displayname"),
                text("avatar_url"),
                pos,
            ));
        }
        return None;
    }
    let (key, value) = weft_protocol::search::searchable(&ev.event_type, content)?;
    Some(Indexed::Text(key, value, pos))
}

/// One `event_search` row.
#[derive(Insertable, Clone)]
#[diesel(table_name = event_search, treat_none_as_default_value = false)]
struct SearchRow {
    event_id: String,
    room_id: String,
    event_type: String,
    sender: String,
    key: &'static str,
    stream_ordering: i64,
    value: String,
}

impl SearchRow {
    fn of(ev: &NewEvent, key: &'static str, value: String, stream_ordering: i64) -> Self {
        SearchRow {
            event_id: ev.event_id.clone(),
            room_id: ev.room_id.clone(),
            event_type: ev.event_type.clone(),
            sender: ev.sender.clone(),
            key,
            stream_ordering,
            value,
        }
    }
}

/// A join's profile for `user_directory`: user, display name, avatar, position.
type Profile = (String, Option<String>, Option<String>, i64);

/// Indexes an event's searchable text and, for a join, the member's profile.
pub fn index_event(conn: &mut AnyConnection, ev: &NewEvent) -> StorageResult<()> {
    index_events(conn, &[ev])
}

/// [`index_event`] for each of `rows`, in order, in a few statements: the profiles one by
/// one (joins are few), the searchable text with one DELETE and one multi-row INSERT per
/// chunk (chunks of `events::fixed_chunks` sizes, so the statements stay cached).
pub fn index_events(conn: &mut AnyConnection, rows: &[&NewEvent]) -> StorageResult<()> {
    let mut texts: Vec<SearchRow> = Vec::new();
    for ev in rows {
        match indexed(ev) {
            Some(Indexed::Text(key, value, pos)) => texts.push(SearchRow::of(ev, key, value, pos)),
            Some(Indexed::Join(user, name, avatar, pos)) => {
                upsert_profile(conn, &user, name, avatar, pos)?
            }
            None => {}
        }
    }
    insert_texts(conn, &texts)
}

#[derive(QueryableByName)]
struct MaxId {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The searchable text rows, each replacing a stored row of its event (idempotent). Rows
/// are keyed by their event's stream position, not its ID: positions grow, so a batch's
/// rows land at the end of every index of the table, where random event IDs would dirty a
/// page per row. On SQLite the chunk's words go into the FTS5 table with one statement
/// after the rows (a row's `id` is above every `id` stored before it: SQLite gives a new
/// row the highest `id` plus one, and only this connection writes); a trigger per row, as
/// before, took about three times as long (BENCHMARKS §26).
fn insert_texts(conn: &mut AnyConnection, texts: &[SearchRow]) -> StorageResult<()> {
    for chunk in super::events::fixed_chunks(texts) {
        let at: Vec<i64> = chunk.iter().map(|t| t.stream_ordering).collect();
        diesel::delete(event_search::table.filter(event_search::stream_ordering.eq_any(at)))
            .execute(conn)?;
        match conn {
            AnyConnection::Sqlite(c) => {
                let before =
                    diesel::sql_query("SELECT COALESCE(MAX(id), 0) AS id FROM event_search")
                        .get_result::<MaxId>(c)?
                        .id;
                diesel::insert_into(event_search::table)
                    .values(chunk.to_vec())
                    .execute(c)?;
                diesel::sql_query(
                    "INSERT INTO event_search_fts (rowid, value) \
                     SELECT id, value FROM event_search WHERE id > ?",
                )
                .bind::<BigInt, _>(before)
                .execute(c)?;
            }
            AnyConnection::Postgresql(c) => {
                diesel::insert_into(event_search::table)
                    .values(chunk.to_vec())
                    .execute(c)?;
            }
        };
    }
    Ok(())
}

/// The index rows of the backfilled ones among `rows` (negative positions: the forward
/// stream, which the indexer follows, never passes them), written in the caller's
/// transaction as before the indexer existed. Timeline events at positive positions are
/// left to the indexer.
pub fn index_backfilled(conn: &mut AnyConnection, rows: &[&NewEvent]) -> StorageResult<()> {
    let back: Vec<&NewEvent> = rows
        .iter()
        .copied()
        .filter(|r| r.stream_ordering.is_some_and(|p| p < 0))
        .collect();
    if back.is_empty() {
        return Ok(());
    }
    index_events(conn, &back)
}

// ---- the search indexer's input, rows and position

/// The event types the indexer reads: what it indexes (texts, joins' profiles) and
/// redactions (their targets' rows are checked again, see [`store_index`]).
const INDEXER_TYPES: [&str; 5] = [
    "m.room.message",
    "m.room.name",
    "m.room.topic",
    "m.room.member",
    "m.room.redaction",
];

/// Timeline events in `(after, upto]` the indexer reads (not outliers, rejected or
/// soft-failed; of [`INDEXER_TYPES`]), oldest first, at most `limit`.
pub fn events_to_index(
    conn: &mut AnyConnection,
    after: i64,
    upto: i64,
    limit: i64,
) -> StorageResult<Vec<EventRow>> {
    Ok(events::table
        .filter(events::stream_ordering.gt(after))
        .filter(events::stream_ordering.le(upto))
        .filter(events::outlier.eq(false))
        .filter(events::rejected.is_null())
        .filter(events::soft_failed.eq(false))
        .filter(events::event_type.eq_any(INDEXER_TYPES))
        .order(events::stream_ordering.asc())
        .limit(limit)
        .load(conn)?)
}

/// What the indexer writes for a batch of events: computed off the writer ([`prepare`]),
/// written by [`store_index`].
pub struct IndexBatch {
    texts: Vec<SearchRow>,
    profiles: Vec<Profile>,
    /// Redactions' targets: their rows are dropped again if, by the time the batch is
    /// written, the target is redacted (the batch's own texts are checked the same way).
    targets: Vec<String>,
}

impl IndexBatch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty() && self.profiles.is_empty() && self.targets.is_empty()
    }
}

/// The rows for `events` (as read by [`events_to_index`]), by the one rule [`index_event`]
/// applies.
pub fn prepare(events: Vec<EventRow>) -> IndexBatch {
    let mut batch = IndexBatch {
        texts: Vec::new(),
        profiles: Vec::new(),
        targets: Vec::new(),
    };
    for r in events {
        let ev = NewEvent {
            event_id: r.event_id,
            room_id: r.room_id,
            stream_ordering: r.stream_ordering,
            depth: r.depth,
            event_type: r.event_type,
            state_key: r.state_key,
            sender: r.sender,
            origin_server_ts: r.origin_server_ts,
            json: r.json,
            state_before: r.state_before,
            state_after: r.state_after,
            outlier: r.outlier,
            rejected: r.rejected,
            soft_failed: r.soft_failed,
            redacted_by: r.redacted_by,
        };
        if ev.event_type == "m.room.redaction" {
            // The target: top-level `redacts` (rooms before v11) or `content.redacts`.
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&ev.json) {
                let target = json
                    .get("redacts")
                    .or_else(|| json.get("content").and_then(|c| c.get("redacts")))
                    .and_then(|t| t.as_str());
                if let Some(t) = target {
                    batch.targets.push(t.to_owned());
                }
            }
            continue;
        }
        match indexed(&ev) {
            Some(Indexed::Text(key, value, pos)) => {
                batch.texts.push(SearchRow::of(&ev, key, value, pos));
            }
            Some(Indexed::Join(user, name, avatar, pos)) => {
                batch.profiles.push((user, name, avatar, pos))
            }
            None => {}
        }
    }
    batch
}

/// Writes a batch's rows (idempotent: a text row replaces its event's stored one, a profile
/// never moves back), then drops the rows of the batch's events that are redacted or gone
/// by now. That closes the gap between the indexer's read and its write: a redaction (or a
/// purge) that committed in between found no row to delete. On PostgreSQL, where a
/// redaction may commit on another writer while this runs, the redaction event itself comes
/// later in the stream and its batch checks the target again.
pub fn store_index(conn: &mut AnyConnection, batch: &IndexBatch) -> StorageResult<()> {
    insert_texts(conn, &batch.texts)?;
    for (user, name, avatar, pos) in &batch.profiles {
        upsert_profile(conn, user, name.clone(), avatar.clone(), *pos)?;
    }
    for chunk in batch.texts.chunks(500) {
        let at: Vec<i64> = chunk.iter().map(|t| t.stream_ordering).collect();
        let live = events::table
            .filter(events::stream_ordering.eq_any(at.clone()))
            .filter(events::redacted_by.is_null())
            .select(events::stream_ordering);
        diesel::delete(
            event_search::table
                .filter(event_search::stream_ordering.eq_any(at))
                .filter(event_search::stream_ordering.nullable().ne_all(live)),
        )
        .execute(conn)?;
    }
    for chunk in batch.targets.chunks(500) {
        let redacted = events::table
            .filter(events::event_id.eq_any(chunk))
            .filter(events::redacted_by.is_not_null())
            .select(events::stream_ordering);
        diesel::delete(
            event_search::table.filter(event_search::stream_ordering.nullable().eq_any(redacted)),
        )
        .execute(conn)?;
    }
    Ok(())
}

/// The last stream position the indexer has indexed (`None`: a new database, or one never
/// indexed by the indexer: start from the beginning).
pub fn indexed_upto(conn: &mut AnyConnection) -> StorageResult<Option<i64>> {
    Ok(search_progress::table
        .filter(search_progress::id.eq(1))
        .select(search_progress::stream)
        .first::<i64>(conn)
        .optional()?)
}

/// Moves the indexer's position from `after` to `upto`, unless another indexer (another
/// node of a cluster) already stored a position past `after`: then nothing changes and the
/// answer is `false` (the push worker's `advance_progress`, for the index). Run first in the
/// batch's job; the position never moves back.
pub fn advance_indexed(conn: &mut AnyConnection, after: i64, upto: i64) -> StorageResult<bool> {
    let n = diesel::update(
        search_progress::table
            .filter(search_progress::id.eq(1))
            .filter(search_progress::stream.le(after)),
    )
    .set(search_progress::stream.eq(upto))
    .execute(conn)?;
    if n > 0 {
        return Ok(true);
    }
    if indexed_upto(conn)?.is_some() {
        return Ok(false);
    }
    diesel::insert_into(search_progress::table)
        .values((search_progress::id.eq(1), search_progress::stream.eq(upto)))
        .execute(conn)?;
    Ok(true)
}

/// Drops a redacted event's text (found by the event's position: the rows have no index
/// on event IDs, see [`insert_texts`]).
pub fn forget_event(conn: &mut AnyConnection, event_id: &str) -> StorageResult<()> {
    let at = events::table
        .filter(events::event_id.eq(event_id))
        .select(events::stream_ordering);
    diesel::delete(event_search::table.filter(event_search::stream_ordering.nullable().eq_any(at)))
        .execute(conn)?;
    Ok(())
}

/// Drops the texts of the events at `positions` (a purge, before it deletes the events).
pub fn forget_positions(conn: &mut AnyConnection, positions: &[i64]) -> StorageResult<()> {
    for chunk in positions.chunks(500) {
        diesel::delete(event_search::table.filter(event_search::stream_ordering.eq_any(chunk)))
            .execute(conn)?;
    }
    Ok(())
}

/// Keeps the newest profile a user joined with (an older event stored later, from
/// backfill, never overwrites it). An upsert: PostgreSQL writers for different rooms may
/// write the same user at once.
fn upsert_profile(
    conn: &mut AnyConnection,
    user_id: &str,
    display_name: Option<String>,
    avatar_url: Option<String>,
    pos: i64,
) -> StorageResult<()> {
    const SET: &str = "ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name, \
         avatar_url = excluded.avatar_url, stream_ordering = excluded.stream_ordering \
         WHERE excluded.stream_ordering > user_directory.stream_ordering";
    let sql = match conn {
        AnyConnection::Sqlite(_) => format!(
            "INSERT INTO user_directory (user_id, display_name, avatar_url, stream_ordering) \
             VALUES (?, ?, ?, ?) {SET}"
        ),
        AnyConnection::Postgresql(_) => format!(
            "INSERT INTO user_directory (user_id, display_name, avatar_url, stream_ordering) \
             VALUES ($1, $2, $3, $4) {SET}"
        ),
    };
    let q = diesel::sql_query(sql)
        .bind::<Text, _>(user_id)
        .bind::<Nullable<Text>, _>(display_name)
        .bind::<Nullable<Text>, _>(avatar_url)
        .bind::<BigInt, _>(pos);
    match conn {
        AnyConnection::Sqlite(c) => q.execute(c)?,
        AnyConnection::Postgresql(c) => q.execute(c)?,
    };
    Ok(())
}

/// A matching event: where it is and how well it matched (higher is better).
#[derive(Debug, Clone, QueryableByName)]
pub struct Hit {
    #[diesel(sql_type = Text)]
    pub event_id: String,
    #[diesel(sql_type = Text)]
    pub room_id: String,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Text)]
    pub sender: String,
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = BigInt)]
    pub stream_ordering: i64,
    #[diesel(sql_type = Double)]
    pub rank: f64,
}

/// Every indexed event matching all `words` in the rooms `user_id` is joined to.
pub fn search(
    conn: &mut AnyConnection,
    user_id: &str,
    words: &[String],
) -> StorageResult<Vec<Hit>> {
    if words.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match conn {
        AnyConnection::Sqlite(c) => diesel::sql_query(
            "SELECT s.event_id, s.room_id, s.event_type, s.sender, s.key, s.stream_ordering, \
                    -bm25(event_search_fts) AS rank \
             FROM event_search_fts JOIN event_search s ON s.id = event_search_fts.rowid \
             WHERE event_search_fts MATCH ? \
               AND s.room_id IN (SELECT room_id FROM memberships \
                                 WHERE user_id = ? AND membership = 'join')",
        )
        .bind::<Text, _>(weft_protocol::search::fts5_query(words))
        .bind::<Text, _>(user_id)
        .load::<Hit>(c)?,
        AnyConnection::Postgresql(c) => diesel::sql_query(
            "SELECT s.event_id, s.room_id, s.event_type, s.sender, s.key, s.stream_ordering, \
                    ts_rank_cd(to_tsvector('english', s.value), q)::float8 AS rank \
             FROM event_search s, to_tsquery('english', $1) q \
             WHERE to_tsvector('english', s.value) @@ q \
               AND s.room_id IN (SELECT room_id FROM memberships \
                                 WHERE user_id = $2 AND membership = 'join')",
        )
        .bind::<Text, _>(weft_protocol::search::tsquery(words))
        .bind::<Text, _>(user_id)
        .load::<Hit>(c)?,
    })
}

/// A user the directory may show.
#[derive(Debug, Clone, QueryableByName)]
pub struct DirectoryUser {
    #[diesel(sql_type = Text)]
    pub user_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub display_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub avatar_url: Option<String>,
}

/// The users `user_id` may find: those joined to a room `user_id` is joined to, and those
/// joined to a room published in the room directory; deactivated local users left out.
/// Profiles: the local user's own, else the newest one they joined a room with.
pub fn directory_candidates(
    conn: &mut AnyConnection,
    user_id: &str,
) -> StorageResult<Vec<DirectoryUser>> {
    const BODY: &str = "FROM (SELECT DISTINCT m.user_id FROM memberships m \
               WHERE m.membership = 'join' AND m.room_id IN ( \
                   SELECT room_id FROM memberships WHERE user_id = {P} AND membership = 'join' \
                   UNION SELECT room_id FROM rooms WHERE is_public)) c \
         LEFT JOIN users u ON u.user_id = c.user_id \
         LEFT JOIN user_directory d ON d.user_id = c.user_id \
         WHERE u.deactivated IS NULL OR NOT u.deactivated \
         ORDER BY c.user_id";
    let select = "SELECT c.user_id, \
         CASE WHEN u.user_id IS NULL THEN d.display_name ELSE u.displayname END AS display_name, \
         CASE WHEN u.user_id IS NULL THEN d.avatar_url ELSE u.avatar_url END AS avatar_url ";
    Ok(match conn {
        AnyConnection::Sqlite(c) => {
            diesel::sql_query(format!("{select}{}", BODY.replace("{P}", "?")))
                .bind::<Text, _>(user_id)
                .load::<DirectoryUser>(c)?
        }
        AnyConnection::Postgresql(c) => {
            diesel::sql_query(format!("{select}{}", BODY.replace("{P}", "$1")))
                .bind::<Text, _>(user_id)
                .load::<DirectoryUser>(c)?
        }
    })
}
