//! The write jobs of a room actor: everything a batch of new events changes, written in one
//! transaction (the writer wraps the job in a savepoint inside its group commit), and the few
//! writes of a room that are not events of its DAG (an out-of-band membership, a declined
//! out-of-band invite, Linearized join staging). Only the room actor runs them; each checks
//! the cluster fence first. [`event_row`] is the one conversion of a checked PDU into a row.

use weft_protocol::Pdu;

use crate::storage::events::{self, NewEvent};
use crate::storage::state::{self, StateDelta};
use crate::storage::{AnyConnection, StorageResult, rooms};

/// A new state group to store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewGroup {
    pub id: i64,
    /// The parent group and its delta depth (`None` = full snapshot in `entries`).
    pub parent: Option<(i64, i32)>,
    pub entries: StateDelta,
}

/// A change of a user's current membership.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    pub user_id: String,
    pub membership: String,
    pub sender: String,
    pub event_id: String,
    pub stream: i64,
    /// Stripped state shown with an invite.
    pub invite_state: Option<String>,
}

/// A redaction to apply if the target is in this room and the redaction is allowed.
#[derive(Debug, Clone)]
pub struct Redaction {
    pub target: String,
    pub sender: String,
    /// The sender has the redact power level (else only same-server redactions apply).
    pub has_power: bool,
}

/// One event of a batch, with what it brings along.
#[derive(Debug, Clone)]
pub struct PersistEvent {
    pub row: NewEvent,
    pub txn: Option<super::messages::TxnKey>,
    pub redaction: Option<Redaction>,
}

/// Everything a batch writes.
#[derive(Debug, Clone, Default)]
pub struct PersistBatch {
    pub room_id: String,
    /// Set when the batch creates the room: `(version, creator)`.
    pub new_room: Option<(String, Option<String>)>,
    pub groups: Vec<NewGroup>,
    pub events: Vec<PersistEvent>,
    pub memberships: Vec<MembershipChange>,
    pub current_state_delta: StateDelta,
    /// The room's forward extremities after the batch (`None` = unchanged).
    pub extremities: Option<Vec<String>>,
    /// The room's current state group after the batch (`None` = unchanged).
    pub state_group: Option<i64>,
    /// Outbound deliveries: `(destination, event id)` (queue IDs are taken in the transaction).
    pub queue: Vec<(String, String)>,
    /// Linearized Matrix hubs: LPDUs completed in this batch, `(LPDU event id, event id)`.
    pub lpdus: Vec<(String, String)>,
    /// Outliers (events held only to authorize others, already checked against their own
    /// auth events), written before the batch's events. One carrying a `state_before` also
    /// fills in the state before an event already held without one.
    pub outliers: Vec<NewEvent>,
    /// Answers to received federation transactions whose PDUs are in this batch,
    /// `(origin, txn ID, answer)`: stored in the same commit, so a `/send` costs one commit
    /// and its de-duplication record is durable exactly when its PDUs are.
    pub inbound_txns: Vec<(String, String, String)>,
    /// Received events a partial-state room defers (`rooms::partial_state`), kept in the
    /// same commit as the transaction that carried them, so a crash loses neither or both.
    pub deferred: Vec<DeferredRow>,
    /// A partial-state room got its full state at this stream position (the memberships
    /// learned are recorded at it; an incremental `/sync` across it shows them).
    pub partial_completed: Option<i64>,
}

/// A received event deferred until a partial-state room has its full state.
#[derive(Debug, Clone)]
pub struct DeferredRow {
    pub event_id: String,
    pub depth: i64,
    pub json: String,
    pub received_ts: i64,
}

/// The one conversion of a checked PDU into a stored row: in the timeline at `stream`, or an
/// outlier (`None`). Rejection, soft failure and state groups are set by the caller.
pub fn event_row(pdu: &Pdu, room_id: &str, stream: Option<i64>) -> NewEvent {
    NewEvent {
        event_id: pdu.event_id().to_string(),
        room_id: room_id.to_owned(),
        stream_ordering: stream,
        depth: pdu.depth().min(i64::MAX as u64) as i64,
        event_type: pdu.kind_str(),
        state_key: pdu.state_key().map(str::to_owned),
        sender: pdu.sender().to_string(),
        origin_server_ts: pdu.origin_server_ts().min(i64::MAX as u64) as i64,
        json: pdu.to_canonical_string(),
        state_before: None,
        state_after: None,
        outlier: stream.is_none(),
        rejected: None,
        soft_failed: false,
        redacted_by: None,
    }
}

fn server_of(user: &str) -> &str {
    user.split_once(':').map(|(_, s)| s).unwrap_or_default()
}

/// An out-of-band membership of a local user in a room we may hold no copy of (an invite or
/// knock kept apart, or our leave a remote server took): the event as an outlier and the
/// user's membership row, refused (`Ok(false)`, nothing written) when the room is one we hold
/// and the user is joined or banned there: that membership changes only by the room's events.
#[derive(Debug, Clone)]
pub struct OutOfBandMembership {
    pub room_id: String,
    /// The version to remember for a room we do not hold.
    pub version: String,
    pub row: NewEvent,
    pub change: MembershipChange,
}

/// Memberships an out-of-band one never replaces in a room we hold.
fn decided_by_room(membership: &str) -> bool {
    matches!(membership, "join" | "ban")
}

impl OutOfBandMembership {
    pub fn run(self, conn: &mut AnyConnection) -> StorageResult<bool> {
        crate::storage::cluster::check_fence(conn, &self.room_id)?;
        let known = rooms::get_room(conn, &self.room_id)?.is_some();
        if known
            && rooms::get_membership(conn, &self.room_id, &self.change.user_id)?
                .is_some_and(|m| decided_by_room(&m.membership))
        {
            return Ok(false);
        }
        events::insert_event(conn, &self.row)?;
        // A room we are in keeps its own version row; others get the version recorded.
        if !known {
            rooms::set_known_version(conn, &self.room_id, &self.version)?;
        }
        let m = &self.change;
        rooms::set_membership(
            conn,
            &self.room_id,
            &m.user_id,
            &m.membership,
            &m.event_id,
            m.stream,
            &m.sender,
            m.invite_state.as_deref(),
        )?;
        Ok(true)
    }
}

/// A local user declining an out-of-band invite (or withdrawing a knock) nobody could be told
/// about: the membership becomes `leave`. Only an `invite` or `knock` is replaced (`Ok(false)`
/// otherwise, nothing written).
pub fn decline_out_of_band(
    conn: &mut AnyConnection,
    room_id: &str,
    user_id: &str,
    stream: i64,
) -> StorageResult<bool> {
    crate::storage::cluster::check_fence(conn, room_id)?;
    let Some(m) = rooms::get_membership(conn, room_id, user_id)? else {
        return Ok(false);
    };
    if !matches!(m.membership.as_str(), "invite" | "knock") {
        return Ok(false);
    }
    rooms::set_membership(
        conn,
        room_id,
        user_id,
        "leave",
        &m.event_id,
        stream,
        user_id,
        None,
    )?;
    Ok(true)
}

/// Linearized join staging: PDUs a hub sent while our join is in progress, written before the
/// `/send` that carried them is answered (`seq` orders them).
pub fn stage_join(
    conn: &mut AnyConnection,
    room_id: &str,
    origin: &str,
    first_seq: i64,
    pdus: &[String],
) -> StorageResult<()> {
    crate::storage::cluster::check_fence(conn, room_id)?;
    crate::storage::linearized::stage_join_pdus(
        conn,
        room_id,
        origin,
        first_seq,
        pdus,
        crate::storage::now_ms(),
    )
}

/// Removes staged PDUs up to `upto_seq` (taken, or dropped with a join that failed).
pub fn unstage_join(conn: &mut AnyConnection, room_id: &str, upto_seq: i64) -> StorageResult<()> {
    crate::storage::cluster::check_fence(conn, room_id)?;
    crate::storage::linearized::unstage_join_pdus(conn, room_id, upto_seq)
}

/// The operator's history purge as one fenced job: the point resolved to a stream position
/// and the room's non-state events before it deleted (`None`: no such event in the room).
pub fn purge_history_job(
    conn: &mut AnyConnection,
    room_id: &str,
    point: &crate::rooms::messages::PurgePoint,
) -> StorageResult<Option<usize>> {
    use crate::rooms::messages::PurgePoint;
    use crate::storage::admin;
    crate::storage::cluster::check_fence(conn, room_id)?;
    let before = match point {
        PurgePoint::Event(e) => admin::stream_of(conn, room_id, e)?,
        // Everything older than ts: up to and including the newest event before it.
        PurgePoint::Ts(ts) => admin::stream_before_ts(conn, room_id, *ts)?.map(|s| s + 1),
    };
    match before {
        Some(b) => admin::purge_history(conn, room_id, b).map(Some),
        None => Ok(None),
    }
}

impl PersistBatch {
    /// Whether the batch writes only history: outliers, state groups and events outside the
    /// timeline (backfilled, at negative positions, or outliers), with no transaction IDs or
    /// redactions, and none of the rows only the room's orderer writes (current state,
    /// extremities, memberships, the room row, the outbound queue, LPDU records). Such a batch
    /// inserts rows that are written once and ignored when present, under IDs from shared
    /// sequences, so in a cluster any node may write it (backfill and gap filling run where
    /// the request arrived, not only on the room's owner).
    pub fn is_history_only(&self) -> bool {
        self.new_room.is_none()
            && self.memberships.is_empty()
            && self.current_state_delta.is_empty()
            && self.extremities.is_none()
            && self.state_group.is_none()
            && self.queue.is_empty()
            && self.lpdus.is_empty()
            && self.deferred.is_empty()
            && self.partial_completed.is_none()
            && self.events.iter().all(|e| {
                e.txn.is_none()
                    && e.redaction.is_none()
                    && e.row.stream_ordering.is_none_or(|p| p < 0)
            })
    }

    pub fn run(self, conn: &mut AnyConnection) -> StorageResult<()> {
        // Cluster mode: refused unless this node still owns the room (a no-op otherwise);
        // history alone needs no owner.
        if !self.is_history_only() {
            crate::storage::cluster::check_fence(conn, &self.room_id)?;
        }
        let now = crate::storage::now_ms();
        if let Some((version, creator)) = &self.new_room {
            rooms::insert_room(conn, &self.room_id, version, creator.as_deref(), now)?;
        }
        for g in &self.groups {
            state::insert_group(conn, g.id, &self.room_id, g.parent, &g.entries)?;
        }
        // Outliers in multi-row INSERTs (a joined room's state and auth chain: thousands).
        let (outliers, others): (Vec<&NewEvent>, Vec<&NewEvent>) =
            self.outliers.iter().partition(|r| r.outlier);
        events::insert_outliers(conn, &outliers)?;
        for row in others {
            if !events::insert_event(conn, row)?
                && let Some(group) = row.state_before
            {
                events::set_state_before_if_unknown(conn, &row.event_id, group)?;
            }
        }
        // The timeline events in a few multi-row statements (`events::insert_events`), then
        // each one's transaction ID and redaction in order. A redaction applies only to a
        // target stored before it (earlier in this batch, or before it), as one by one.
        let rows: Vec<&NewEvent> = self.events.iter().map(|e| &e.row).collect();
        events::insert_events(conn, &rows)?;
        // (An event named twice: its first place.)
        let index_of: std::collections::HashMap<&str, usize> = rows
            .iter()
            .enumerate()
            .rev()
            .map(|(i, r)| (r.event_id.as_str(), i))
            .collect();
        for (i, ev) in self.events.iter().enumerate() {
            if let Some(t) = &ev.txn {
                events::insert_txn(
                    conn,
                    &t.user_id,
                    &t.device_id,
                    &t.scope,
                    &t.txn_id,
                    &ev.row.event_id,
                )?;
            }
            if let Some(r) = &ev.redaction
                && index_of.get(r.target.as_str()).is_none_or(|&j| j <= i)
                && let Some(target) = events::get_event(conn, &r.target)?
                && target.room_id == self.room_id
                && (r.has_power || server_of(&target.sender) == server_of(&r.sender))
            {
                events::set_redacted_by(conn, &r.target, &ev.row.event_id)?;
            }
        }
        let changes: Vec<rooms::MembershipRowIn<'_>> = self
            .memberships
            .iter()
            .map(|m| {
                (
                    m.user_id.as_str(),
                    m.membership.as_str(),
                    m.event_id.as_str(),
                    m.stream,
                    m.sender.as_str(),
                    m.invite_state.as_deref(),
                )
            })
            .collect();
        rooms::set_memberships(conn, &self.room_id, &changes)?;
        if !self.current_state_delta.is_empty() {
            state::update_current_state(conn, &self.room_id, &self.current_state_delta)?;
        }
        if let Some(ext) = &self.extremities {
            state::set_extremities(conn, &self.room_id, ext)?;
        }
        if let Some(g) = self.state_group {
            rooms::set_state_group(conn, &self.room_id, Some(g))?;
        }
        for (lpdu_id, event_id) in &self.lpdus {
            crate::storage::linearized::record_lpdu(conn, lpdu_id, &self.room_id, event_id)?;
        }
        for (dest, event_id) in &self.queue {
            crate::delivery::enqueue_pdu_in_txn(conn, dest, event_id, now)?;
        }
        for d in &self.deferred {
            crate::storage::partial_state::defer(
                conn,
                &self.room_id,
                &d.event_id,
                d.depth,
                &d.json,
                d.received_ts,
            )?;
        }
        if let Some(p) = self.partial_completed {
            crate::storage::partial_state::record_completed(conn, &self.room_id, p)?;
        }
        for (origin, txn_id, answer) in &self.inbound_txns {
            crate::storage::federation::put_inbound_txn(conn, origin, txn_id, answer, now)?;
        }
        Ok(())
    }
}

/// What completing a partial-state room's history found (see [`complete_partial_groups`]).
#[derive(Debug, Default)]
pub struct PartialCompletion {
    /// How many events were pointed at rebuilt state groups.
    pub moved: usize,
    /// Events accepted during partial state that fail the authorization rules against the
    /// full state before them, now rejected: `(event ID, reason)`.
    pub rejected: Vec<(String, String)>,
    /// The state entries those rejected events set, undone: `(key, rejected event, the
    /// entry before it)`. Wherever a state names the rejected event, it takes the entry
    /// before instead.
    pub undone: Vec<((String, String), String, Option<String>)>,
    /// The events the undone entries go back to (for the actor's current state).
    pub restored: Vec<std::sync::Arc<Pdu>>,
    /// The new forward extremities, when a rejected event was one of them
    /// ([`super::partial_state::extremities_without`]).
    pub extremities: Option<Vec<std::sync::Arc<Pdu>>>,
}

/// A completed group: its ID (new, or the old one when nothing changed) and its state.
type CompletedGroup = (i64, std::sync::Arc<crate::storage::state::StateIds>);

/// A state group of a partial-state room, completed: the full state's entries it lacked
/// ([`super::partial_state::fill_missing`]), and the undone entries of rejected events.
/// Stored as a new group (a delta of the old one) unless nothing changed; `cache` maps
/// the old groups already done to the new ones and their states.
fn complete_group(
    conn: &mut AnyConnection,
    next_group: &dyn Fn() -> i64,
    room_id: &str,
    full: &crate::storage::state::StateIds,
    undone: &[((String, String), String, Option<String>)],
    cache: &mut std::collections::HashMap<i64, CompletedGroup>,
    group: Option<i64>,
) -> StorageResult<Option<CompletedGroup>> {
    let Some(g) = group else { return Ok(None) };
    if let Some((n, st)) = cache.get(&g) {
        return Ok(Some((*n, std::sync::Arc::clone(st))));
    }
    let old = state::load_group(conn, g)?;
    let mut filled = super::partial_state::fill_missing(&old, full);
    for (key, rejected, before) in undone {
        if filled.get(key) == Some(rejected) {
            match before {
                Some(b) => filled.insert(key.clone(), b.clone()),
                None => filled.remove(key),
            };
        }
    }
    let mut entries: StateDelta = filled
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    entries.extend(
        old.keys()
            .filter(|k| !filled.contains_key(*k))
            .map(|k| (k.clone(), None)),
    );
    let id = if entries.is_empty() {
        g
    } else {
        let id = next_group();
        let depth = state::group_depth(conn, g)?;
        if depth + 1 < state::MAX_DELTA_DEPTH {
            state::insert_group(conn, id, room_id, Some((g, depth)), &entries)?;
        } else {
            let all: StateDelta = filled
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            state::insert_group(conn, id, room_id, None, &all)?;
        }
        id
    };
    let filled = std::sync::Arc::new(filled);
    cache.insert(g, (id, std::sync::Arc::clone(&filled)));
    Ok(Some((id, filled)))
}

/// The storage job completing a partial-state room's history: every state group of our
/// join and of the timeline events after it (`from_stream` on) gets the entries it lacked
/// from `full`, as a new group; the events are pointed at the new groups. Each event that
/// was accepted against the partial state is authorized again against the full state
/// before it (as step 5 of admission does, `admission::state_before`); one that fails now
/// is rejected (never served to clients again) and, if it is a state event, what it set is
/// undone in the states after it, and if it is one of the room's forward `extremities`,
/// the extremities are worked out again without it. `known` holds events of the full state
/// (looked up before the database).
#[allow(clippy::too_many_arguments)]
pub fn complete_partial_groups(
    conn: &mut AnyConnection,
    next_group: &dyn Fn() -> i64,
    room_id: &str,
    version: weft_protocol::RoomVersion,
    from_stream: i64,
    full: &crate::storage::state::StateIds,
    known: &std::collections::HashMap<String, std::sync::Arc<Pdu>>,
    extremities: &[String],
) -> StorageResult<PartialCompletion> {
    use std::cell::RefCell;
    use std::sync::Arc;

    use crate::storage::partial_state as ps;
    let rows = ps::timeline_since(conn, room_id, from_stream)?;
    let mut cache = std::collections::HashMap::new();
    let mut out = PartialCompletion::default();
    let loaded: RefCell<std::collections::HashMap<String, Option<Arc<Pdu>>>> = Default::default();
    // `(event ID, JSON, decided before)` of every row, for the extremities.
    let mut timeline: Vec<(String, String, bool)> = Vec::with_capacity(rows.len());
    for row in rows {
        timeline.push((row.event_id.clone(), row.json.clone(), row.decided));
        let before = complete_group(
            conn,
            next_group,
            room_id,
            full,
            &out.undone,
            &mut cache,
            row.before,
        )?;
        let nb = before.as_ref().map(|b| b.0);
        if !row.decided
            && nb != row.before
            && let Some((_, state_before)) = &before
        {
            let pdu = super::actor::parse_row(&row.event_id, &row.json, version)?;
            let verdict = {
                let db = RefCell::new(&mut *conn);
                let lookup = |id: &str| -> Option<Arc<Pdu>> {
                    if let Some(e) = known.get(id) {
                        return Some(Arc::clone(e));
                    }
                    if let Some(e) = loaded.borrow().get(id) {
                        return e.clone();
                    }
                    let e = events::get_event(&mut db.borrow_mut(), id)
                        .ok()
                        .flatten()
                        .and_then(|r| super::actor::parse_row(&r.event_id, &r.json, version).ok())
                        .map(Arc::new);
                    loaded.borrow_mut().insert(id.to_owned(), e.clone());
                    e
                };
                crate::rooms::admission::state_before::check(version, &pdu, state_before, lookup)
            };
            if let Err(reason) = verdict {
                let reason = format!("after the partial state was completed: {reason}");
                ps::reject(conn, &row.event_id, &reason)?;
                if let Some(k) = pdu.state_key() {
                    let key = (pdu.kind_str(), k.to_owned());
                    let prior = state_before.get(&key).cloned();
                    out.undone.push((key, row.event_id.clone(), prior));
                    // The groups done so far may name the rejected event: done again.
                    cache.clear();
                }
                out.rejected.push((row.event_id.clone(), reason));
            }
        }
        let na = complete_group(
            conn,
            next_group,
            room_id,
            full,
            &out.undone,
            &mut cache,
            row.after,
        )?
        .map(|a| a.0);
        if (nb, na) != (row.before, row.after) {
            ps::set_event_groups(conn, &row.event_id, nb, na)?;
            out.moved += 1;
        }
    }
    let rejected: std::collections::HashSet<String> =
        out.rejected.iter().map(|(id, _)| id.clone()).collect();
    if extremities.iter().any(|e| rejected.contains(e)) {
        let mut prevs = std::collections::HashMap::with_capacity(timeline.len());
        let mut accepted = Vec::new();
        let mut pdus = std::collections::HashMap::new();
        for (id, json, decided) in timeline {
            let pdu = super::actor::parse_row(&id, &json, version)?;
            prevs.insert(
                id.clone(),
                pdu.prev_events().iter().map(|p| p.to_string()).collect(),
            );
            if !decided && !rejected.contains(&id) {
                accepted.push(id.clone());
                pdus.insert(id, Arc::new(pdu));
            }
        }
        let tips =
            super::partial_state::extremities_without(extremities, &rejected, &prevs, &accepted);
        out.extremities = Some(tips.iter().filter_map(|t| pdus.get(t).cloned()).collect());
    }
    for (_, _, prior) in &out.undone {
        let Some(id) = prior else { continue };
        let e = match known.get(id) {
            Some(e) => Some(Arc::clone(e)),
            None => events::get_event(conn, id)?
                .map(|r| super::actor::parse_row(&r.event_id, &r.json, version))
                .transpose()?
                .map(Arc::new),
        };
        out.restored.extend(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    fn row(id: &str, stream: Option<i64>) -> NewEvent {
        NewEvent {
            event_id: id.into(),
            room_id: "!r:x".into(),
            stream_ordering: stream,
            depth: 1,
            event_type: "m.room.message".into(),
            state_key: None,
            sender: "@a:x".into(),
            origin_server_ts: 0,
            json: "{}".into(),
            state_before: None,
            state_after: None,
            outlier: stream.is_none(),
            rejected: None,
            soft_failed: false,
            redacted_by: None,
        }
    }

    fn event(stream: Option<i64>) -> PersistEvent {
        PersistEvent {
            row: row("$e", stream),
            txn: None,
            redaction: None,
        }
    }

    /// Which batches a node that does not own the room may write (cluster mode).
    #[test]
    fn only_history_is_written_without_the_lease() {
        let base = || PersistBatch {
            room_id: "!r:x".into(),
            ..Default::default()
        };
        let group = NewGroup {
            id: 7,
            parent: None,
            entries: vec![(("m.room.create".into(), String::new()), Some("$c".into()))],
        };
        let cases: Vec<(&str, PersistBatch, bool)> = vec![
            ("empty", base(), true),
            (
                "outliers and groups",
                PersistBatch {
                    outliers: vec![row("$o", None)],
                    groups: vec![group.clone()],
                    ..base()
                },
                true,
            ),
            (
                "backfilled events",
                PersistBatch {
                    events: vec![event(Some(-3)), event(None)],
                    groups: vec![group],
                    ..base()
                },
                true,
            ),
            (
                "a timeline event",
                PersistBatch {
                    events: vec![event(Some(-3)), event(Some(12))],
                    ..base()
                },
                false,
            ),
            (
                "a transaction ID",
                PersistBatch {
                    events: vec![PersistEvent {
                        txn: Some(crate::rooms::messages::TxnKey {
                            user_id: "@a:x".into(),
                            device_id: "D".into(),
                            scope: "[]".into(),
                            txn_id: "t".into(),
                        }),
                        ..event(Some(-1))
                    }],
                    ..base()
                },
                false,
            ),
            (
                "a redaction",
                PersistBatch {
                    events: vec![PersistEvent {
                        redaction: Some(Redaction {
                            target: "$t".into(),
                            sender: "@a:x".into(),
                            has_power: true,
                        }),
                        ..event(Some(-1))
                    }],
                    ..base()
                },
                false,
            ),
            (
                "extremities",
                PersistBatch {
                    extremities: Some(vec!["$e".into()]),
                    ..base()
                },
                false,
            ),
            (
                "current state group",
                PersistBatch {
                    state_group: Some(7),
                    ..base()
                },
                false,
            ),
            (
                "current state",
                PersistBatch {
                    current_state_delta: vec![(("m.room.name".into(), String::new()), None)],
                    ..base()
                },
                false,
            ),
            (
                "a membership",
                PersistBatch {
                    memberships: vec![MembershipChange {
                        user_id: "@a:x".into(),
                        membership: "join".into(),
                        sender: "@a:x".into(),
                        event_id: "$e".into(),
                        stream: 3,
                        invite_state: None,
                    }],
                    ..base()
                },
                false,
            ),
            (
                "a new room",
                PersistBatch {
                    new_room: Some(("10".into(), None)),
                    ..base()
                },
                false,
            ),
            (
                "outbound queue",
                PersistBatch {
                    queue: vec![("y".into(), "$e".into())],
                    ..base()
                },
                false,
            ),
            (
                "an LPDU",
                PersistBatch {
                    lpdus: vec![("$l".into(), "$e".into())],
                    ..base()
                },
                false,
            ),
        ];
        for (name, batch, want) in cases {
            assert_eq!(batch.is_history_only(), want, "{name}");
        }
    }
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use weft_protocol::RoomVersion;

    use super::*;
    use crate::config::Config;

    const ROOM: &str = "!r:remote.test";
    const ALICE: &str = "@alice:local.test";

    struct TempCore {
        core: std::sync::Arc<crate::core::Core>,
        dir: std::path::PathBuf,
    }

    impl Drop for TempCore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn open() -> TempCore {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("weft-persist-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config {
            server_name: "local.test".into(),
            data_dir: dir.clone(),
            ..Config::default()
        };
        let core = crate::core::Core::open(config).expect("open core");
        TempCore { core, dir }
    }

    fn member_event(id: &str, sender: &str, membership: &str) -> Pdu {
        let json = json!({
            "event_id": id, "type": "m.room.member", "state_key": ALICE, "room_id": ROOM,
            "sender": sender, "content": {"membership": membership}, "origin_server_ts": 1,
            "depth": 5, "prev_events": [], "auth_events": [], "hashes": {"sha256": "h"},
            "signatures": {},
        });
        Pdu::from_received(json, RoomVersion::V1).expect("pdu")
    }

    fn out_of_band(pdu: &Pdu, stream: i64) -> OutOfBandMembership {
        OutOfBandMembership {
            room_id: ROOM.into(),
            version: "1".into(),
            row: event_row(pdu, ROOM, None),
            change: MembershipChange {
                user_id: ALICE.into(),
                membership: pdu.membership().unwrap_or_default(),
                sender: pdu.sender().to_string(),
                event_id: pdu.event_id().to_string(),
                stream,
                invite_state: Some("[]".into()),
            },
        }
    }

    fn membership(t: &TempCore) -> Option<(String, String)> {
        t.core
            .db
            .read_blocking(|c| rooms::get_membership(c, ROOM, ALICE))
            .expect("read")
            .map(|m| (m.membership, m.event_id))
    }

    #[test]
    fn an_out_of_band_invite_is_kept_for_a_room_we_do_not_hold() {
        let t = open();
        let invite = member_event("$inv:remote.test", "@eve:remote.test", "invite");
        let job = out_of_band(&invite, 1);
        let ok = t.core.db.write_blocking(ROOM, move |c| job.run(c));
        assert!(
            ok.expect("write"),
            "an invite to an unknown room is recorded"
        );
        assert_eq!(
            membership(&t),
            Some(("invite".into(), "$inv:remote.test".into()))
        );
        let version = t
            .core
            .db
            .read_blocking(|c| rooms::room_version(c, ROOM))
            .expect("read");
        assert_eq!(version.as_deref(), Some("1"));
        let row = t
            .core
            .db
            .read_blocking(|c| events::get_event(c, "$inv:remote.test"))
            .expect("read")
            .expect("the invite is stored");
        assert!(
            row.outlier && row.stream_ordering.is_none(),
            "kept as an outlier"
        );
    }

    #[test]
    fn an_out_of_band_membership_never_replaces_a_join_or_a_ban() {
        for held in ["join", "ban"] {
            let t = open();
            t.core
                .db
                .write_blocking(ROOM, move |c| {
                    rooms::insert_room(c, ROOM, "1", None, 0)?;
                    rooms::set_membership(c, ROOM, ALICE, held, "$held:x", 1, ALICE, None)
                })
                .expect("seed");
            let invite = member_event("$inv:remote.test", "@eve:remote.test", "invite");
            let job = out_of_band(&invite, 2);
            let ok = t.core.db.write_blocking(ROOM, move |c| job.run(c));
            assert!(!ok.expect("write"), "an invite over a {held} is refused");
            assert_eq!(membership(&t), Some((held.into(), "$held:x".into())));
            let row = t
                .core
                .db
                .read_blocking(|c| events::get_event(c, "$inv:remote.test"))
                .expect("read");
            assert!(row.is_none(), "nothing is written when refused");
        }
    }

    #[test]
    fn declining_replaces_only_an_invite_or_a_knock() {
        for (held, declined) in [
            ("invite", true),
            ("knock", true),
            ("join", false),
            ("ban", false),
            ("leave", false),
        ] {
            let t = open();
            t.core
                .db
                .write_blocking(ROOM, move |c| {
                    rooms::set_membership(c, ROOM, ALICE, held, "$m:x", 1, "@eve:x", None)
                })
                .expect("seed");
            let changed = t
                .core
                .db
                .write_blocking(ROOM, |c| decline_out_of_band(c, ROOM, ALICE, 2))
                .expect("write");
            assert_eq!(changed, declined, "declining over {held}");
            let want = if declined { "leave" } else { held };
            assert_eq!(membership(&t), Some((want.into(), "$m:x".into())), "{held}");
        }
        let t = open();
        let changed = t
            .core
            .db
            .write_blocking(ROOM, |c| decline_out_of_band(c, ROOM, ALICE, 2))
            .expect("write");
        assert!(!changed, "no membership: nothing to decline");
        assert_eq!(membership(&t), None);
    }
}
