//! Rooms, memberships (by user), aliases and the public room directory.

use diesel::prelude::*;

use super::schema::{memberships, room_aliases, rooms};
use super::{AnyConnection, StorageResult};

#[derive(Debug, Clone, Queryable)]
pub struct RoomRow {
    pub room_id: String,
    pub room_version: String,
    pub creator: Option<String>,
    pub state_group: Option<i64>,
    pub is_public: bool,
    pub created_ts: i64,
}

#[derive(Debug, Clone, Queryable)]
pub struct MembershipRow {
    pub room_id: String,
    pub user_id: String,
    pub membership: String,
    pub event_id: String,
    pub stream_ordering: i64,
    pub sender: String,
    pub invite_state: Option<String>,
    pub forgotten: bool,
}

/// Records a room; an existing row is kept (`Ok(false)`).
pub fn insert_room(
    conn: &mut AnyConnection,
    room_id: &str,
    version: &str,
    creator: Option<&str>,
    now: i64,
) -> StorageResult<bool> {
    if get_room(conn, room_id)?.is_some() {
        return Ok(false);
    }
    diesel::insert_into(rooms::table)
        .values((
            rooms::room_id.eq(room_id),
            rooms::room_version.eq(version),
            rooms::creator.eq(creator),
            rooms::state_group.eq(None::<i64>),
            rooms::is_public.eq(false),
            rooms::created_ts.eq(now),
        ))
        .execute(conn)?;
    Ok(true)
}

pub fn get_room(conn: &mut AnyConnection, room_id: &str) -> StorageResult<Option<RoomRow>> {
    Ok(rooms::table
        .filter(rooms::room_id.eq(room_id))
        .first::<RoomRow>(conn)
        .optional()?)
}

pub fn set_state_group(
    conn: &mut AnyConnection,
    room_id: &str,
    group: Option<i64>,
) -> StorageResult<()> {
    diesel::update(rooms::table.filter(rooms::room_id.eq(room_id)))
        .set(rooms::state_group.eq(group))
        .execute(conn)?;
    Ok(())
}

pub fn set_public(conn: &mut AnyConnection, room_id: &str, public: bool) -> StorageResult<()> {
    diesel::update(rooms::table.filter(rooms::room_id.eq(room_id)))
        .set(rooms::is_public.eq(public))
        .execute(conn)?;
    Ok(())
}

/// Rooms published in the directory, in a stable order.
pub fn public_rooms(conn: &mut AnyConnection) -> StorageResult<Vec<String>> {
    Ok(rooms::table
        .filter(rooms::is_public.eq(true))
        .order(rooms::room_id.asc())
        .select(rooms::room_id)
        .load(conn)?)
}

/// Sets a user's current membership in a room.
#[allow(clippy::too_many_arguments)]
pub fn set_membership(
    conn: &mut AnyConnection,
    room_id: &str,
    user_id: &str,
    membership: &str,
    event_id: &str,
    stream_ordering: i64,
    sender: &str,
    invite_state: Option<&str>,
) -> StorageResult<()> {
    diesel::delete(
        memberships::table
            .filter(memberships::room_id.eq(room_id))
            .filter(memberships::user_id.eq(user_id)),
    )
    .execute(conn)?;
    diesel::insert_into(memberships::table)
        .values((
            memberships::room_id.eq(room_id),
            memberships::user_id.eq(user_id),
            memberships::membership.eq(membership),
            memberships::event_id.eq(event_id),
            memberships::stream_ordering.eq(stream_ordering),
            memberships::sender.eq(sender),
            memberships::invite_state.eq(invite_state),
            memberships::forgotten.eq(false),
        ))
        .execute(conn)?;
    Ok(())
}

/// One row of [`set_memberships`]: `(user, membership, event ID, stream position, sender,
/// invite state)`.
pub type MembershipRowIn<'a> = (&'a str, &'a str, &'a str, i64, &'a str, Option<&'a str>);

/// [`set_membership`] for many users of one room in a few statements (a joined room's
/// members arrive all at once). The last change of each user wins.
pub fn set_memberships(
    conn: &mut AnyConnection,
    room_id: &str,
    changes: &[MembershipRowIn<'_>],
) -> StorageResult<()> {
    const CHUNK: usize = 1000;
    let mut last: std::collections::HashMap<&str, &MembershipRowIn<'_>> =
        std::collections::HashMap::new();
    for c in changes {
        last.insert(c.0, c);
    }
    let users: Vec<&str> = last.keys().copied().collect();
    for chunk in users.chunks(CHUNK) {
        diesel::delete(
            memberships::table
                .filter(memberships::room_id.eq(room_id))
                .filter(memberships::user_id.eq_any(chunk)),
        )
        .execute(conn)?;
    }
    let rows: Vec<_> = last
        .values()
        .map(
            |(user, membership, event_id, stream, sender, invite_state)| {
                (
                    memberships::room_id.eq(room_id),
                    memberships::user_id.eq(*user),
                    memberships::membership.eq(*membership),
                    memberships::event_id.eq(*event_id),
                    memberships::stream_ordering.eq(*stream),
                    memberships::sender.eq(*sender),
                    memberships::invite_state.eq(*invite_state),
                    memberships::forgotten.eq(false),
                )
            },
        )
        .collect();
    for chunk in rows.chunks(CHUNK) {
        match conn {
            AnyConnection::Sqlite(c) => diesel::insert_into(memberships::table)
                .values(chunk)
                .execute(c)?,
            AnyConnection::Postgresql(c) => diesel::insert_into(memberships::table)
                .values(chunk)
                .execute(c)?,
        };
    }
    Ok(())
}

pub fn get_membership(
    conn: &mut AnyConnection,
    room_id: &str,
    user_id: &str,
) -> StorageResult<Option<MembershipRow>> {
    Ok(memberships::table
        .filter(memberships::room_id.eq(room_id))
        .filter(memberships::user_id.eq(user_id))
        .first::<MembershipRow>(conn)
        .optional()?)
}

/// Every room a user has a membership in (not forgotten).
pub fn rooms_for_user(
    conn: &mut AnyConnection,
    user_id: &str,
) -> StorageResult<Vec<MembershipRow>> {
    Ok(memberships::table
        .filter(memberships::user_id.eq(user_id))
        .filter(memberships::forgotten.eq(false))
        .load::<MembershipRow>(conn)?)
}

/// The rooms `/sync` looks at: every membership not forgotten, plus forgotten ones that
/// changed after `since` (the client has not seen the leave yet).
pub fn rooms_for_user_since(
    conn: &mut AnyConnection,
    user_id: &str,
    since: Option<i64>,
) -> StorageResult<Vec<MembershipRow>> {
    let Some(since) = since else {
        return rooms_for_user(conn, user_id);
    };
    Ok(memberships::table
        .filter(memberships::user_id.eq(user_id))
        .filter(
            memberships::forgotten
                .eq(false)
                .or(memberships::stream_ordering.gt(since)),
        )
        .load::<MembershipRow>(conn)?)
}

/// Users with the given membership in a room.
pub fn members_with(
    conn: &mut AnyConnection,
    room_id: &str,
    membership: &str,
) -> StorageResult<Vec<String>> {
    Ok(memberships::table
        .filter(memberships::room_id.eq(room_id))
        .filter(memberships::membership.eq(membership))
        .select(memberships::user_id)
        .load(conn)?)
}

/// How many users have `membership` in the room (a count, not the list).
pub fn count_members_with(
    conn: &mut AnyConnection,
    room_id: &str,
    membership: &str,
) -> StorageResult<u64> {
    let n: i64 = memberships::table
        .filter(memberships::room_id.eq(room_id))
        .filter(memberships::membership.eq(membership))
        .count()
        .get_result(conn)?;
    Ok(n.max(0) as u64)
}

pub fn forget(conn: &mut AnyConnection, room_id: &str, user_id: &str) -> StorageResult<()> {
    diesel::update(
        memberships::table
            .filter(memberships::room_id.eq(room_id))
            .filter(memberships::user_id.eq(user_id)),
    )
    .set(memberships::forgotten.eq(true))
    .execute(conn)?;
    Ok(())
}

/// Users who share a joined room with `user_id` (including the user).
pub fn users_sharing_rooms(conn: &mut AnyConnection, user_id: &str) -> StorageResult<Vec<String>> {
    let rooms: Vec<String> = memberships::table
        .filter(memberships::user_id.eq(user_id))
        .filter(memberships::membership.eq("join"))
        .select(memberships::room_id)
        .load(conn)?;
    let mut out: Vec<String> = Vec::new();
    for chunk in rooms.chunks(500) {
        out.extend(
            memberships::table
                .filter(memberships::room_id.eq_any(chunk))
                .filter(memberships::membership.eq("join"))
                .select(memberships::user_id)
                .load::<String>(conn)?,
        );
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Creates an alias; `Ok(false)` if it is taken.
pub fn create_alias(
    conn: &mut AnyConnection,
    alias: &str,
    room_id: &str,
    creator: &str,
) -> StorageResult<bool> {
    if get_alias(conn, alias)?.is_some() {
        return Ok(false);
    }
    diesel::insert_into(room_aliases::table)
        .values((
            room_aliases::alias.eq(alias),
            room_aliases::room_id.eq(room_id),
            room_aliases::creator.eq(creator),
        ))
        .execute(conn)?;
    Ok(true)
}

/// The room and creator of an alias.
pub fn get_alias(conn: &mut AnyConnection, alias: &str) -> StorageResult<Option<(String, String)>> {
    Ok(room_aliases::table
        .filter(room_aliases::alias.eq(alias))
        .select((room_aliases::room_id, room_aliases::creator))
        .first(conn)
        .optional()?)
}

pub fn delete_alias(conn: &mut AnyConnection, alias: &str) -> StorageResult<bool> {
    let n =
        diesel::delete(room_aliases::table.filter(room_aliases::alias.eq(alias))).execute(conn)?;
    Ok(n > 0)
}

pub fn aliases_for_room(conn: &mut AnyConnection, room_id: &str) -> StorageResult<Vec<String>> {
    Ok(room_aliases::table
        .filter(room_aliases::room_id.eq(room_id))
        .order(room_aliases::alias.asc())
        .select(room_aliases::alias)
        .load(conn)?)
}

/// Remembers the version of a room we hold no copy of (an invite from another server).
pub fn set_known_version(
    conn: &mut AnyConnection,
    room_id: &str,
    version: &str,
) -> StorageResult<()> {
    use super::schema::room_versions;
    diesel::delete(room_versions::table.filter(room_versions::room_id.eq(room_id)))
        .execute(conn)?;
    diesel::insert_into(room_versions::table)
        .values((
            room_versions::room_id.eq(room_id),
            room_versions::room_version.eq(version),
        ))
        .execute(conn)?;
    Ok(())
}

/// The version of a room: ours, or one learnt from an invite.
pub fn room_version(conn: &mut AnyConnection, room_id: &str) -> StorageResult<Option<String>> {
    use super::schema::room_versions;
    if let Some(r) = get_room(conn, room_id)? {
        return Ok(Some(r.room_version));
    }
    Ok(room_versions::table
        .filter(room_versions::room_id.eq(room_id))
        .select(room_versions::room_version)
        .first(conn)
        .optional()?)
}
