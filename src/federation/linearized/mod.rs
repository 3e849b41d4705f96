//! Linearized Matrix over federation: the endpoints a hub serves, the calls a participant
//! makes, and the `/send` path of LM rooms. The room actors' side (ordering, appending) is
//! in `rooms::linearized`; this module does everything that needs the network, so no room
//! actor ever waits on a peer.
//!
//! * [`hub`] — a participant's LPDU (from `/send`, `send_join`, `send_leave`, `send_knock`,
//!   or an `/invite` carrying an LPDU) is checked here (shape, sender's server = the
//!   request's origin, signature, LPDU hash) and handed to the room actor, which completes,
//!   authorizes, appends and fans it out. An invite whose target's server holds nobody in the
//!   room is first sent to that server's `/invite`, between a dry run and the real append.
//!   Also `make_join`/`make_leave`/`make_knock` for LM rooms (through the generic handlers).
//! * [`participant`] — sending our users' LPDUs to the hub; joining through the hub
//!   (`make_join` + `send_join`, replaying the line it returns); taking the hub's PDUs
//!   (both signature layers checked) and filling gaps in the line with `backfill`; inviting
//!   and declining through the hub.
//! * [`invite`] — `/invite` as the invitee's server (and, as a hub, the draft's variant that
//!   carries a participant's LPDU).
//! * [`history`] — `event` and `backfill` as LM peers ask for them.
//!
//! Paths: every endpoint is served under the draft's paths and under the reference
//! implementation's unstable prefix [`UNSTABLE`]; as a client weft uses the unstable prefix,
//! which both serve.

pub mod history;
pub mod hub;
pub mod invite;
pub mod participant;

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};

use actix_web::web;
use parking_lot::Mutex;
use ruma::OwnedRoomId;
use serde_json::Value;
use weft_protocol::RoomVersion;

use super::inbound::send;
use crate::rooms::linearized::{FanoutChange, Role};
use crate::rooms::messages::{StageJoinPdus, UnstageJoinPdus};
use crate::services::Services;
use crate::storage::rooms;

/// The unstable path prefix of the reference implementation (draft -02).
pub const UNSTABLE: &str =
    "/_matrix/federation/unstable/org.matrix.i-d.ralston-mimi-linearized-matrix.02";

/// Registers the LM endpoints (before the generic federation scope, which would otherwise
/// answer 404 for them).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use web::{get, post, put};
    for prefix in [UNSTABLE, "/_matrix/federation/v2", "/_matrix/federation/v3"] {
        let at = |p: &str| format!("{prefix}{p}");
        if prefix != "/_matrix/federation/v3" {
            cfg.route(&at("/send/{txn_id}"), put().to(send::send_transaction))
                .route(&at("/event/{event_id}"), get().to(history::event))
                .route(&at("/backfill/{room_id}"), get().to(history::backfill));
        }
        if prefix != "/_matrix/federation/v2" {
            cfg.route(&at("/invite/{txn_id}"), post().to(invite::invite))
                .route(&at("/send_join/{txn_id}"), post().to(hub::send_join))
                .route(&at("/send_leave/{txn_id}"), post().to(hub::send_leave))
                .route(&at("/send_knock/{txn_id}"), post().to(hub::send_knock));
        }
    }
}

/// Rooms being joined right now. A hub may fan our join, and what follows it, out before it
/// answers our `send_join`: such PDUs are *staged* in the database (`lm_join_staging`, by
/// the room's actor: `StageJoinPdus`) before the `/send` that carried them is answered, and taken out, in order, when the join
/// completes ([`take_staged`]) or at start-up ([`resume_staged`]) — a 200 means stored.
static JOINING: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// Orders staged PDUs (process-wide; seeded from the clock so a restart continues above).
static STAGE_SEQ: LazyLock<AtomicI64> =
    LazyLock::new(|| AtomicI64::new(crate::storage::now_ms().saturating_mul(1000)));

pub(crate) fn begin_join(room: &str) {
    JOINING.lock().insert(room.to_owned());
}

/// Ends a join (whatever its outcome): no more PDUs are staged for the room.
pub(crate) fn end_join(room: &str) {
    JOINING.lock().remove(room);
}

/// Has the room's actor stage PDUs that arrived for a room being joined; `Err` means they
/// are not acknowledged.
async fn stage(s: &Services, origin: &str, room: &str, raws: &[Value]) -> crate::error::Result<()> {
    let pdus: Vec<String> = raws.iter().map(Value::to_string).collect();
    let first_seq = STAGE_SEQ.fetch_add(pdus.len() as i64, Ordering::Relaxed);
    let room_id = OwnedRoomId::try_from(room)
        .map_err(|_| crate::error::Error::bad_json("invalid room ID"))?;
    let msg = StageJoinPdus {
        origin: origin.to_owned(),
        first_seq,
        pdus,
    };
    s.rooms.send(&room_id, msg).await?
}

/// Has the room's actor remove the PDUs staged for a room up to `upto_seq`.
async fn unstage(s: &Services, room: &str, upto_seq: i64) -> crate::error::Result<()> {
    let room_id = OwnedRoomId::try_from(room)
        .map_err(|_| crate::error::Error::bad_json("invalid room ID"))?;
    s.rooms.send(&room_id, UnstageJoinPdus { upto_seq }).await?
}

/// Takes the PDUs staged for a room (oldest first) through the participant's path, then
/// removes them. Run when a join completes, and again until nothing is left (a `/send`
/// that was staging while the join ended).
pub(crate) async fn take_staged(s: &Services, hub: &str, room: &str) {
    for _ in 0..3 {
        let r = room.to_owned();
        let staged = match s
            .core
            .db
            .read(move |c| crate::storage::linearized::staged_join_pdus(c, &r))
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(room, error = %e, "could not read staged PDUs");
                return;
            }
        };
        let Some(last) = staged.last().map(|(seq, _)| *seq) else {
            return;
        };
        let raws: Vec<Value> = staged
            .iter()
            .filter_map(|(_, p)| serde_json::from_str(p).ok())
            .collect();
        tracing::debug!(room, count = raws.len(), "PDUs that arrived while joining");
        participant::receive(s, hub, room, raws).await;
        if let Err(e) = unstage(s, room, last).await {
            tracing::warn!(room, error = %e, "could not remove staged PDUs");
            return;
        }
    }
}

/// At start-up: PDUs staged by a join the process did not finish taking. A room we now hold
/// as participant takes them; for any other room the join never completed and they go.
pub async fn resume_staged(s: std::sync::Arc<Services>) {
    let rooms = match s
        .core
        .db
        .read(crate::storage::linearized::rooms_with_staged_pdus)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "could not read staged PDUs");
            return;
        }
    };
    for room in rooms {
        match room_kind(&s, &room).await {
            RoomKind::Lm(Role::Participant(p)) => take_staged(&s, p.hub(), &room).await,
            _ => {
                tracing::info!(
                    room,
                    "dropping PDUs staged for a join that did not complete"
                );
                if let Err(e) = unstage(&s, &room, i64::MAX).await {
                    tracing::warn!(room, error = %e, "could not drop staged PDUs");
                }
            }
        }
    }
}

/// What this server is in a room, as far as `/send` cares.
enum RoomKind {
    /// Not a room we hold as LM (a DAG room, or unknown): the generic path.
    Other(Option<RoomVersion>),
    Joining,
    Lm(Role),
}

async fn room_kind(s: &Services, room: &str) -> RoomKind {
    // A version read before needs no read now (it never changes; whether the room is still
    // held is the generic path's question, answered by its own read).
    let cached = (!JOINING.lock().contains(room))
        .then(|| s.rooms.cached_version(room))
        .flatten();
    let version = match cached {
        Some(v) => Some(v),
        None => {
            let r = room.to_owned();
            let row = s.core.db.read(move |c| rooms::get_room(c, &r)).await;
            let v = row
                .ok()
                .flatten()
                .and_then(|row| RoomVersion::parse(&row.room_version));
            if let Some(v) = v {
                s.rooms.remember_version(room, v);
            }
            v
        }
    };
    match (version, OwnedRoomId::try_from(room)) {
        (Some(v), Ok(id)) if v.is_linearized() => RoomKind::Lm(Role::of(&id, s.server_name())),
        (None, _) if JOINING.lock().contains(room) => RoomKind::Joining,
        (v, _) => RoomKind::Other(v),
    }
}

/// Whether a raw event is an LPDU ([E]'s test: no `auth_events`).
pub(crate) fn is_lpdu(raw: &Value) -> bool {
    raw.get("auth_events").is_none()
}

fn lpdu_id_of(raw: &Value) -> Option<String> {
    let mut obj = weft_protocol::canonical::value_to_object(raw.clone()).ok()?;
    obj.remove("event_id");
    Some(weft_protocol::lm::event_id(&obj))
}

/// The `/send` path of LM rooms: takes the PDUs of LM rooms (and LPDUs sent to DAG rooms)
/// out of a transaction and processes them; returns their results (keyed by LPDU event ID
/// for LPDUs) and the PDUs left for the generic path.
pub async fn take_lm_pdus(
    s: &Services,
    origin: &str,
    raws: Vec<Value>,
) -> (Vec<(String, Option<String>)>, Vec<Value>) {
    let mut rest = Vec::new();
    let mut order: Vec<String> = Vec::new();
    let mut by_room: HashMap<String, Vec<Value>> = HashMap::new();
    for raw in raws {
        match raw.get("room_id").and_then(Value::as_str) {
            Some(r) => {
                if !by_room.contains_key(r) {
                    order.push(r.to_owned());
                }
                by_room.entry(r.to_owned()).or_default().push(raw);
            }
            None => rest.push(raw),
        }
    }
    let mut results = Vec::new();
    let mut work = Vec::new();
    for room in order {
        let items = by_room.remove(&room).unwrap_or_default();
        match room_kind(s, &room).await {
            RoomKind::Other(version) => {
                for raw in items {
                    match (version, is_lpdu(&raw) && raw.get("hub_server").is_some()) {
                        (Some(v), true) => {
                            let id = lpdu_id_of(&raw).unwrap_or_default();
                            results.push((
                                id,
                                Some(format!(
                                    "room {room} has version {v}, not Linearized Matrix: \
                                     it takes no LPDUs"
                                )),
                            ));
                        }
                        _ => rest.push(raw),
                    }
                }
            }
            RoomKind::Joining => {
                // Acknowledged (not listed as failed) only once durably staged.
                if let Err(e) = stage(s, origin, &room, &items).await {
                    tracing::warn!(room, error = %e, "could not stage PDUs for a room being joined");
                    for raw in &items {
                        let id = if is_lpdu(raw) {
                            lpdu_id_of(raw).unwrap_or_default()
                        } else {
                            weft_protocol::canonical::value_to_object(raw.clone())
                                .ok()
                                .and_then(|o| {
                                    weft_protocol::pdu::compute_event_id(
                                        &o,
                                        RoomVersion::Linearized,
                                    )
                                    .ok()
                                })
                                .map(|i| i.to_string())
                                .unwrap_or_default()
                        };
                        results.push((id, Some(format!("not stored: {e}"))));
                    }
                }
            }
            RoomKind::Lm(role) => work.push((room, role, items)),
        }
    }
    let per_room = work.into_iter().map(|(room, role, items)| async move {
        match role {
            Role::Hub(_) => hub::submit_from_send(s, origin, &room, items).await,
            Role::Participant(p) => participant::receive(s, p.hub(), &room, items).await,
        }
    });
    for r in futures_util::future::join_all(per_room).await {
        results.extend(r);
    }
    (results, rest)
}

/// The fan-out change for an event answered directly to `origin`.
pub(crate) fn answered_to(origin: &str) -> FanoutChange {
    FanoutChange {
        skip: Some(origin.to_owned()),
        add: None,
    }
}
