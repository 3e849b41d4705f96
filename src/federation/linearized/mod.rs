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

use std::collections::HashMap;
use std::sync::LazyLock;

use actix_web::web;
use parking_lot::Mutex;
use ruma::OwnedRoomId;
use serde_json::Value;
use weft_protocol::RoomVersion;

use super::inbound::send;
use crate::rooms::linearized::{FanoutChange, Role};
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

/// Rooms being joined right now, with the PDUs that arrived for them meanwhile (a hub may
/// fan our join, and what follows it, out before it answers our `send_join`). One server
/// per process, so this is process-wide.
static JOINING: LazyLock<Mutex<HashMap<String, Vec<Value>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

pub(crate) fn begin_join(room: &str) {
    JOINING.lock().entry(room.to_owned()).or_default();
}

/// Ends a join: the PDUs that arrived during it.
pub(crate) fn end_join(room: &str) -> Vec<Value> {
    JOINING.lock().remove(room).unwrap_or_default()
}

fn buffer_if_joining(room: &str, raws: &[Value]) -> bool {
    match JOINING.lock().get_mut(room) {
        Some(buf) => {
            buf.extend(raws.iter().cloned());
            true
        }
        None => false,
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
    let r = room.to_owned();
    let row = s.core.db.read(move |c| rooms::get_room(c, &r)).await;
    let version = row
        .ok()
        .flatten()
        .and_then(|row| RoomVersion::parse(&row.room_version));
    match (version, OwnedRoomId::try_from(room)) {
        (Some(v), Ok(id)) if v.is_linearized() => RoomKind::Lm(Role::of(&id, s.server_name())),
        (None, _) if JOINING.lock().contains_key(room) => RoomKind::Joining,
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
                buffer_if_joining(&room, &items);
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
