//! Push storage: notification rows, unread counts from them, the push worker's position,
//! pushers and the push gateway delivery queue.
//!
//! Counts are not kept as counters: a room's `notification_count` / `highlight_count` for a
//! user are the notification rows after the user's read receipt, counted with the
//! `(user_id, room_id, stream_ordering)` index. A receipt (`m.read` or `m.read.private`)
//! therefore "resets" the counts up to its event by moving the threshold, with no write of
//! its own, and threads fall out of the same rows: an unthreaded receipt covers every
//! thread, a threaded one (`thread_id` = a thread root, or `main`) only its thread, and each
//! row is read when it is at or before either.

use std::collections::{BTreeMap, HashMap};

use diesel::prelude::*;

use super::events::EventRow;
use super::schema::{
    events, memberships, push_notifications, push_outbox, push_progress, pushers, receipts,
};
use super::{AnyConnection, StorageResult};

/// The thread ID of events outside any thread (as receipts name it).
pub const MAIN_THREAD: &str = "main";

/// A user's unread counts in one room: `(notifications, highlights)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomCounts {
    /// Everything in the room (what clients without thread support are shown).
    pub total: (u64, u64),
    /// The main timeline only.
    pub main: (u64, u64),
    /// Per thread root, threads with something unread only.
    pub threads: BTreeMap<String, (u64, u64)>,
}

/// Where a user's read receipts in a room stand, as stream positions.
#[derive(Debug, Clone, Default)]
pub struct ReadUpTo {
    /// The unthreaded receipt (covers every thread).
    pub all: i64,
    /// Threaded receipts (`main` or a thread root).
    pub threads: HashMap<String, i64>,
}

impl ReadUpTo {
    /// Whether a notification at `stream` in `thread` has been read.
    pub fn is_read(&self, thread: &str, stream: i64) -> bool {
        stream <= self.all || self.threads.get(thread).is_some_and(|t| stream <= *t)
    }
}

/// The positions of the user's read receipts (`m.read`, `m.read.private`) in a room.
pub fn read_up_to(
    conn: &mut AnyConnection,
    user_id: &str,
    room_id: &str,
) -> StorageResult<ReadUpTo> {
    let rows: Vec<(String, String)> = receipts::table
        .filter(receipts::room_id.eq(room_id))
        .filter(receipts::user_id.eq(user_id))
        .filter(receipts::receipt_type.eq_any(["m.read", "m.read.private"]))
        .select((receipts::thread_id, receipts::event_id))
        .load(conn)?;
    let mut out = ReadUpTo {
        all: i64::MIN,
        threads: HashMap::new(),
    };
    if rows.is_empty() {
        return Ok(out);
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let positions: HashMap<String, i64> = events::table
        .filter(events::event_id.eq_any(&ids))
        .filter(events::room_id.eq(room_id))
        .filter(events::stream_ordering.is_not_null())
        .select((events::event_id, events::stream_ordering.assume_not_null()))
        .load::<(String, i64)>(conn)?
        .into_iter()
        .collect();
    for (thread, event) in rows {
        let Some(&p) = positions.get(&event) else {
            continue;
        };
        if thread.is_empty() {
            out.all = out.all.max(p);
        } else {
            let e = out.threads.entry(thread).or_insert(i64::MIN);
            *e = (*e).max(p);
        }
    }
    Ok(out)
}

/// `(notifications, highlights)` in one thread after `after`: one pass over the thread's
/// rows (both counts at once), which is most of what a `/sync` answer costs for a user with
/// many unread notifications.
fn thread_counts(
    conn: &mut AnyConnection,
    user_id: &str,
    room_id: &str,
    thread: &str,
    after: i64,
) -> StorageResult<(u64, u64)> {
    use diesel::sql_types::BigInt;
    let (n, h): (i64, i64) = push_notifications::table
        .filter(push_notifications::user_id.eq(user_id))
        .filter(push_notifications::room_id.eq(room_id))
        .filter(push_notifications::thread_id.eq(thread))
        .filter(push_notifications::stream_ordering.gt(after))
        .select(diesel::dsl::sql::<(BigInt, BigInt)>(
            "COUNT(*), COALESCE(SUM(CASE WHEN highlight THEN 1 ELSE 0 END), 0)",
        ))
        .get_result(conn)?;
    Ok((n.max(0) as u64, h.max(0) as u64))
}

/// A user's unread counts in a room.
pub fn room_counts(
    conn: &mut AnyConnection,
    user_id: &str,
    room_id: &str,
) -> StorageResult<RoomCounts> {
    let read = read_up_to(conn, user_id, room_id)?;
    // The threads with anything after the unthreaded receipt, each counted after the later
    // of that receipt and its own.
    let threads: Vec<String> = push_notifications::table
        .filter(push_notifications::user_id.eq(user_id))
        .filter(push_notifications::room_id.eq(room_id))
        .filter(push_notifications::stream_ordering.gt(read.all))
        .select(push_notifications::thread_id)
        .distinct()
        .load(conn)?;
    let mut out = RoomCounts::default();
    for thread in threads {
        let after = read
            .threads
            .get(&thread)
            .map_or(read.all, |t| (*t).max(read.all));
        let (n, h) = thread_counts(conn, user_id, room_id, &thread, after)?;
        out.total.0 += n;
        out.total.1 += h;
        if thread == MAIN_THREAD {
            out.main = (n, h);
        } else if n > 0 {
            out.threads.insert(thread, (n, h));
        }
    }
    Ok(out)
}

/// The number of rooms in which the user has unread notifications (the badge a push
/// gateway shows).
pub fn rooms_with_unread(conn: &mut AnyConnection, user_id: &str) -> StorageResult<u64> {
    let rooms: Vec<String> = push_notifications::table
        .filter(push_notifications::user_id.eq(user_id))
        .select(push_notifications::room_id)
        .distinct()
        .load(conn)?;
    let mut n = 0;
    for r in rooms {
        if room_counts(conn, user_id, &r)?.total.0 > 0 {
            n += 1;
        }
    }
    Ok(n)
}

/// Rooms whose counts for the user may have changed in `(after, upto]` (notification rows
/// written then, or the user's own receipts), each with the position of its latest such
/// change, so a caller that sent rooms at different positions can tell which are news.
pub fn rooms_with_count_changes(
    conn: &mut AnyConnection,
    user_id: &str,
    after: i64,
    upto: i64,
) -> StorageResult<HashMap<String, i64>> {
    use diesel::dsl::max;
    let notified: Vec<(String, Option<i64>)> = push_notifications::table
        .filter(push_notifications::user_id.eq(user_id))
        .filter(push_notifications::stream_id.gt(after))
        .filter(push_notifications::stream_id.le(upto))
        .group_by(push_notifications::room_id)
        .select((
            push_notifications::room_id,
            max(push_notifications::stream_id),
        ))
        .load(conn)?;
    let read: Vec<(String, Option<i64>)> = receipts::table
        .filter(receipts::user_id.eq(user_id))
        .filter(receipts::stream_id.gt(after))
        .filter(receipts::stream_id.le(upto))
        .group_by(receipts::room_id)
        .select((receipts::room_id, max(receipts::stream_id)))
        .load(conn)?;
    let mut out: HashMap<String, i64> = HashMap::new();
    for (room, pos) in notified.into_iter().chain(read) {
        let Some(pos) = pos else { continue };
        let e = out.entry(room).or_insert(pos);
        *e = (*e).max(pos);
    }
    Ok(out)
}

/// One notification for a user.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = push_notifications, treat_none_as_default_value = false)]
pub struct NotificationRow {
    pub user_id: String,
    pub event_id: String,
    pub room_id: String,
    pub thread_id: String,
    pub stream_ordering: i64,
    pub stream_id: i64,
    pub ts: i64,
    pub actions: String,
    pub highlight: bool,
}

/// Stores notifications; a stored one (the same user and event position) is left alone, so a
/// re-evaluated event is harmless. Multi-row INSERTs in chunks of `events::fixed_chunks`
/// sizes, so the statements keep a few shapes.
pub fn insert_notifications(
    conn: &mut AnyConnection,
    rows: &[NotificationRow],
) -> StorageResult<()> {
    for chunk in super::events::fixed_chunks(rows) {
        match conn {
            AnyConnection::Sqlite(c) => diesel::insert_into(push_notifications::table)
                .values(chunk.to_vec())
                .on_conflict_do_nothing()
                .execute(c)?,
            AnyConnection::Postgresql(c) => diesel::insert_into(push_notifications::table)
                .values(chunk.to_vec())
                .on_conflict_do_nothing()
                .execute(c)?,
        };
    }
    Ok(())
}

/// A user's notifications, newest first, before stream position `before`.
pub fn notifications(
    conn: &mut AnyConnection,
    user_id: &str,
    before: Option<i64>,
    limit: i64,
    only_highlight: bool,
) -> StorageResult<Vec<NotificationRow>> {
    let mut q = push_notifications::table
        .filter(push_notifications::user_id.eq(user_id))
        .into_boxed();
    if let Some(b) = before {
        q = q.filter(push_notifications::stream_ordering.lt(b));
    }
    if only_highlight {
        q = q.filter(push_notifications::highlight.eq(true));
    }
    Ok(q.order(push_notifications::stream_ordering.desc())
        .limit(limit)
        .load(conn)?)
}

/// Deletes a user's notifications older than `before_ts` (retention).
pub fn prune_notifications(conn: &mut AnyConnection, before_ts: i64) -> StorageResult<usize> {
    Ok(
        diesel::delete(push_notifications::table.filter(push_notifications::ts.lt(before_ts)))
            .execute(conn)?,
    )
}

// ---- the push worker's position and input

/// The last stream position evaluated (`None`: never started).
pub fn progress(conn: &mut AnyConnection) -> StorageResult<Option<i64>> {
    Ok(push_progress::table
        .filter(push_progress::id.eq(1))
        .select(push_progress::stream)
        .first::<i64>(conn)
        .optional()?)
}

pub fn set_progress(conn: &mut AnyConnection, stream: i64) -> StorageResult<()> {
    let n = diesel::update(push_progress::table.filter(push_progress::id.eq(1)))
        .set(push_progress::stream.eq(stream))
        .execute(conn)?;
    if n == 0 {
        diesel::insert_into(push_progress::table)
            .values((push_progress::id.eq(1), push_progress::stream.eq(stream)))
            .execute(conn)?;
    }
    Ok(())
}

/// Moves the worker's position from `after` to `upto`, unless another worker (another node
/// of a cluster, which follows the same event stream) already stored a position past
/// `after`: then nothing changes and the answer is `false`. Run first in a batch's
/// transaction: on PostgreSQL the row lock makes a second worker wait for the first to
/// commit, and it then sees the new position and gives its batch up, so each event's
/// notifications and pushes are stored once. The position never moves back.
pub fn advance_progress(conn: &mut AnyConnection, after: i64, upto: i64) -> StorageResult<bool> {
    let n = diesel::update(
        push_progress::table
            .filter(push_progress::id.eq(1))
            .filter(push_progress::stream.le(after)),
    )
    .set(push_progress::stream.eq(upto))
    .execute(conn)?;
    if n > 0 {
        return Ok(true);
    }
    if progress(conn)?.is_some() {
        return Ok(false);
    }
    diesel::insert_into(push_progress::table)
        .values((push_progress::id.eq(1), push_progress::stream.eq(upto)))
        .execute(conn)?;
    Ok(true)
}

/// Timeline events in `(after, upto]` that push applies to: not outliers, not rejected, not
/// soft-failed; oldest first.
pub fn events_to_evaluate(
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
        .order(events::stream_ordering.asc())
        .limit(limit)
        .load(conn)?)
}

/// The newest position of a state event in the room's timeline at or after `from` (any
/// position, also past the frontier): when there is none, the room's current state is the
/// state at every event from `from` on.
pub fn last_state_change_from(
    conn: &mut AnyConnection,
    room_id: &str,
    from: i64,
) -> StorageResult<Option<i64>> {
    Ok(events::table
        .filter(events::room_id.eq(room_id))
        .filter(events::stream_ordering.ge(from))
        .filter(events::state_key.is_not_null())
        .filter(events::outlier.eq(false))
        .filter(events::rejected.is_null())
        .select(diesel::dsl::max(events::stream_ordering))
        .first::<Option<i64>>(conn)?)
}

/// A room's joined members with the position of their join.
pub fn joined_members(
    conn: &mut AnyConnection,
    room_id: &str,
) -> StorageResult<Vec<(String, i64)>> {
    Ok(memberships::table
        .filter(memberships::room_id.eq(room_id))
        .filter(memberships::membership.eq("join"))
        .select((memberships::user_id, memberships::stream_ordering))
        .load(conn)?)
}

// ---- pushers

#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = pushers)]
pub struct PusherRow {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    pub data: String,
    pub created_ts: i64,
    /// The device whose access token set it (`None` for pushers older than the column).
    pub device_id: Option<String>,
}

pub fn pushers_of(conn: &mut AnyConnection, user_ids: &[String]) -> StorageResult<Vec<PusherRow>> {
    let mut out = Vec::new();
    for chunk in user_ids.chunks(500) {
        out.extend(
            pushers::table
                .filter(pushers::user_id.eq_any(chunk))
                .order((pushers::user_id, pushers::created_ts))
                .load::<PusherRow>(conn)?,
        );
    }
    Ok(out)
}

/// Creates or replaces a pusher; unless `append`, the same app ID and pushkey of other users
/// go (the spec's `append: false`).
pub fn set_pusher(conn: &mut AnyConnection, row: &PusherRow, append: bool) -> StorageResult<()> {
    if !append {
        diesel::delete(
            pushers::table
                .filter(pushers::app_id.eq(&row.app_id))
                .filter(pushers::pushkey.eq(&row.pushkey))
                .filter(pushers::user_id.ne(&row.user_id)),
        )
        .execute(conn)?;
    }
    delete_pusher(conn, &row.user_id, &row.app_id, &row.pushkey)?;
    diesel::insert_into(pushers::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// Removes a pusher and what is queued for it; whether it existed.
pub fn delete_pusher(
    conn: &mut AnyConnection,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
) -> StorageResult<bool> {
    let n = diesel::delete(
        pushers::table
            .filter(pushers::user_id.eq(user_id))
            .filter(pushers::app_id.eq(app_id))
            .filter(pushers::pushkey.eq(pushkey)),
    )
    .execute(conn)?;
    diesel::delete(
        push_outbox::table
            .filter(push_outbox::user_id.eq(user_id))
            .filter(push_outbox::app_id.eq(app_id))
            .filter(push_outbox::pushkey.eq(pushkey)),
    )
    .execute(conn)?;
    Ok(n > 0)
}

/// Removes the pushers a device's access token set, and their queue (the device is being
/// deleted); how many there were.
pub fn delete_pushers_of_device(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<usize> {
    let keys: Vec<(String, String)> = pushers::table
        .filter(pushers::user_id.eq(user_id))
        .filter(pushers::device_id.eq(device_id))
        .select((pushers::app_id, pushers::pushkey))
        .load(conn)?;
    for (app_id, pushkey) in &keys {
        delete_pusher(conn, user_id, app_id, pushkey)?;
    }
    Ok(keys.len())
}

/// Removes every pusher of a user, and their queue (deactivation).
pub fn delete_pushers_of(conn: &mut AnyConnection, user_id: &str) -> StorageResult<()> {
    diesel::delete(pushers::table.filter(pushers::user_id.eq(user_id))).execute(conn)?;
    diesel::delete(push_outbox::table.filter(push_outbox::user_id.eq(user_id))).execute(conn)?;
    Ok(())
}

// ---- the delivery queue

#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = push_outbox)]
pub struct OutboxRow {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub event_id: String,
    pub url: String,
    pub body: String,
    pub attempts: i32,
    pub next_attempt_ts: i64,
    pub created_ts: i64,
}

pub fn enqueue(conn: &mut AnyConnection, row: &OutboxRow) -> StorageResult<()> {
    let exists: i64 = push_outbox::table
        .filter(push_outbox::user_id.eq(&row.user_id))
        .filter(push_outbox::app_id.eq(&row.app_id))
        .filter(push_outbox::pushkey.eq(&row.pushkey))
        .filter(push_outbox::event_id.eq(&row.event_id))
        .count()
        .get_result(conn)?;
    if exists == 0 {
        diesel::insert_into(push_outbox::table)
            .values(row)
            .execute(conn)?;
    }
    Ok(())
}

/// Queued pushes due at `now`, oldest first.
pub fn due(conn: &mut AnyConnection, now: i64, limit: i64) -> StorageResult<Vec<OutboxRow>> {
    Ok(push_outbox::table
        .filter(push_outbox::next_attempt_ts.le(now))
        .order(push_outbox::next_attempt_ts.asc())
        .limit(limit)
        .load(conn)?)
}

/// When the next queued push is due.
pub fn next_due(conn: &mut AnyConnection) -> StorageResult<Option<i64>> {
    Ok(push_outbox::table
        .select(diesel::dsl::min(push_outbox::next_attempt_ts))
        .first::<Option<i64>>(conn)?)
}

pub fn delivered(
    conn: &mut AnyConnection,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
    event_id: &str,
) -> StorageResult<()> {
    diesel::delete(
        push_outbox::table
            .filter(push_outbox::user_id.eq(user_id))
            .filter(push_outbox::app_id.eq(app_id))
            .filter(push_outbox::pushkey.eq(pushkey))
            .filter(push_outbox::event_id.eq(event_id)),
    )
    .execute(conn)?;
    Ok(())
}

pub fn reschedule(
    conn: &mut AnyConnection,
    row: &OutboxRow,
    attempts: i32,
    next_attempt_ts: i64,
) -> StorageResult<()> {
    diesel::update(
        push_outbox::table
            .filter(push_outbox::user_id.eq(&row.user_id))
            .filter(push_outbox::app_id.eq(&row.app_id))
            .filter(push_outbox::pushkey.eq(&row.pushkey))
            .filter(push_outbox::event_id.eq(&row.event_id)),
    )
    .set((
        push_outbox::attempts.eq(attempts),
        push_outbox::next_attempt_ts.eq(next_attempt_ts),
    ))
    .execute(conn)?;
    Ok(())
}
