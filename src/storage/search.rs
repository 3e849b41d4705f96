//! The full-text index behind `POST /search` and the user directory's profiles.
//!
//! * `event_search`: one row per searchable timeline event (the rule for what is searchable
//!   is `weft_protocol::search::searchable`), written by `events::insert_event` in the
//!   event's own transaction, removed by a redaction. The word index differs per dialect and
//!   is all this module writes by hand: SQLite keeps an FTS5 table in step with triggers
//!   (`porter unicode61`: stems and case-folds), PostgreSQL a GIN index over
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

use super::events::NewEvent;
use super::schema::event_search;
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
struct SearchRow<'a> {
    event_id: &'a str,
    room_id: &'a str,
    event_type: &'a str,
    sender: &'a str,
    key: &'static str,
    stream_ordering: i64,
    value: String,
}

impl<'a> SearchRow<'a> {
    fn of(ev: &'a NewEvent, key: &'static str, value: String, stream_ordering: i64) -> Self {
        SearchRow {
            event_id: &ev.event_id,
            room_id: &ev.room_id,
            event_type: &ev.event_type,
            sender: &ev.sender,
            key,
            stream_ordering,
            value,
        }
    }
}

/// Indexes an event's searchable text and, for a join, the member's profile.
pub fn index_event(conn: &mut AnyConnection, ev: &NewEvent) -> StorageResult<()> {
    match indexed(ev) {
        Some(Indexed::Join(user, name, avatar, pos)) => {
            upsert_profile(conn, &user, name, avatar, pos)
        }
        Some(Indexed::Text(key, value, pos)) => {
            forget_event(conn, &ev.event_id)?;
            diesel::insert_into(event_search::table)
                .values(SearchRow::of(ev, key, value, pos))
                .execute(conn)?;
            Ok(())
        }
        None => Ok(()),
    }
}

/// [`index_event`] for each of `rows`, in order, in a few statements: the profiles one by
/// one (joins are few), the searchable text with one DELETE and one multi-row INSERT per
/// chunk (chunks of `events::fixed_chunks` sizes, so the statements stay cached).
pub fn index_events(conn: &mut AnyConnection, rows: &[&NewEvent]) -> StorageResult<()> {
    let mut texts: Vec<SearchRow<'_>> = Vec::new();
    for ev in rows {
        match indexed(ev) {
            Some(Indexed::Text(key, value, pos)) => texts.push(SearchRow::of(ev, key, value, pos)),
            Some(Indexed::Join(user, name, avatar, pos)) => {
                upsert_profile(conn, &user, name, avatar, pos)?
            }
            None => {}
        }
    }
    for chunk in super::events::fixed_chunks(&texts) {
        let ids: Vec<&str> = chunk.iter().map(|t| t.event_id).collect();
        diesel::delete(event_search::table.filter(event_search::event_id.eq_any(ids)))
            .execute(conn)?;
        match conn {
            AnyConnection::Sqlite(c) => diesel::insert_into(event_search::table)
                .values(chunk.to_vec())
                .execute(c)?,
            AnyConnection::Postgresql(c) => diesel::insert_into(event_search::table)
                .values(chunk.to_vec())
                .execute(c)?,
        };
    }
    Ok(())
}

/// Drops a redacted event's text.
pub fn forget_event(conn: &mut AnyConnection, event_id: &str) -> StorageResult<()> {
    diesel::delete(event_search::table.filter(event_search::event_id.eq(event_id)))
        .execute(conn)?;
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
