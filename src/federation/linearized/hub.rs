//! The hub's federation side: taking participants' LPDUs, the invite round trip, and the
//! membership endpoints (`send_join`, `send_leave`, `send_knock`; the `make_*` templates go
//! through the generic handlers, which defer to [`require_hub`] for LM rooms).
//!
//! Checks on an LPDU, in order (each refusal names what is wrong; nothing is appended or
//! fanned out): a canonical JSON object of at most 64 KiB; an LPDU (no `auth_events` /
//! `prev_events`, `hashes.lpdu`), for this room, naming this server as `hub_server`; its
//! sender a user of the server that sent the request; the sender's server's signature over
//! the redacted LPDU; the LPDU hash ([E] rejects mismatching LPDUs, and a hub must not build
//! on one). Then the room actor completes it and runs the auth rules against the current
//! state.

use std::collections::{HashMap, HashSet};

use actix_web::{HttpResponse, web};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId};
use serde_json::{Value, json};
use weft_protocol::signatures::HashCheck;
use weft_protocol::{MAX_PDU_BYTES, Pdu, RoomVersion, canonical, lm};

use super::{UNSTABLE, answered_to};
use crate::error::{Error, Result};
use crate::federation::FederationOf;
use crate::federation::auth::Signed;
use crate::federation::client::{FedError, enc};
use crate::rooms::linearized::{Appended, FanoutChange, HubAppend, HubInput, hub_of};
use crate::services::Services;
use crate::storage::{events, linearized as lstore, rooms};

type Data = web::Data<Services>;

/// Requires `room` to be an LM room hubbed here.
pub async fn require_hub(s: &Services, room: &str) -> Result<()> {
    let r = room.to_owned();
    let row = s
        .core
        .db
        .read(move |c| rooms::get_room(c, &r))
        .await?
        .ok_or_else(|| Error::not_found("unknown room"))?;
    if RoomVersion::parse(&row.room_version) != Some(RoomVersion::Linearized) {
        return Err(Error::IncompatibleRoomVersion(format!(
            "room {room} has version {}, not Linearized Matrix",
            row.room_version
        )));
    }
    let id = OwnedRoomId::try_from(room).map_err(|_| Error::invalid_param("invalid room ID"))?;
    match hub_of(&id) {
        Some(h) if s.core.is_local(&h) => Ok(()),
        Some(h) => Err(Error::WrongServer(format!(
            "{h} is the hub of this room, not this server"
        ))),
        None => Err(Error::invalid_param("invalid room ID")),
    }
}

/// A participant's LPDU, parsed and checked up to (not including) the room's rules.
pub struct CheckedLpdu {
    pub id: String,
    pub json: CanonicalJsonObject,
}

fn str_field<'a>(obj: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match obj.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// Shape, origin, signature and LPDU hash of a participant's LPDU for `room`. The error
/// carries the LPDU event ID when it could be computed.
pub async fn check_lpdu(
    s: &Services,
    origin: &str,
    room: &str,
    raw: &Value,
) -> std::result::Result<CheckedLpdu, (Option<String>, Error)> {
    let mut json = canonical::value_to_object(raw.clone()).map_err(|e| {
        (
            None,
            Error::bad_json(format!("the LPDU is not canonical JSON: {e}")),
        )
    })?;
    // Added by some peers' dumps; never part of the event.
    json.remove("event_id");
    let id = lm::event_id(&json);
    let fail = |e: Error| (Some(id.clone()), e);
    let size = canonical::write_object(&json).len();
    if size > MAX_PDU_BYTES {
        return Err(fail(Error::bad_json(format!(
            "the LPDU is {size} bytes; at most {MAX_PDU_BYTES} are allowed"
        ))));
    }
    if json.contains_key("auth_events") || json.contains_key("prev_events") {
        return Err(fail(Error::bad_json(
            "this server is the room's hub: it takes LPDUs (no auth_events or prev_events)",
        )));
    }
    let has_lpdu_hash = matches!(json.get("hashes"),
        Some(CanonicalJsonValue::Object(h)) if h.len() == 1 && h.contains_key("lpdu"));
    if !has_lpdu_hash {
        return Err(fail(Error::bad_json(
            "an LPDU carries exactly one hash: hashes.lpdu",
        )));
    }
    let subject = lm::auth::Subject::of_json(&json).map_err(|e| fail(Error::BadJson(e.0)))?;
    if subject.room_id != room {
        return Err(fail(Error::bad_json("the LPDU is for another room")));
    }
    match str_field(&json, "hub_server") {
        Some(h) if s.core.is_local(h) => {}
        Some(h) => {
            return Err(fail(Error::bad_json(format!(
                "the LPDU names {h} as its hub; this room's hub is {}",
                s.server_name()
            ))));
        }
        None => return Err(fail(Error::bad_json("the LPDU names no hub_server"))),
    }
    let sender_server = lm::domain_of(&subject.sender)
        .unwrap_or_default()
        .to_owned();
    if sender_server != origin {
        return Err(fail(Error::forbidden(format!(
            "the sender {} is not a user of {origin}, which sent this LPDU",
            subject.sender
        ))));
    }
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| fail(Error::forbidden("federation is disabled")))?;
    let key_ids: Vec<String> = match json.get("signatures") {
        Some(CanonicalJsonValue::Object(sigs)) => match sigs.get(&sender_server) {
            Some(CanonicalJsonValue::Object(k)) => k.keys().cloned().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let ts = match json.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
        _ => 0,
    };
    fed.keys.ensure(&sender_server, &key_ids, ts).await;
    match lm::verify_lpdu(&json, &fed.keys.lookup()) {
        Ok(HashCheck::Valid) => Ok(CheckedLpdu { id, json }),
        Ok(HashCheck::ContentMismatch) => Err(fail(Error::forbidden(
            "the LPDU's hashes.lpdu does not match its content",
        ))),
        Err(e) => Err(fail(Error::forbidden(format!("bad LPDU signature: {e}")))),
    }
}

fn is_invite(input: &HubInput) -> bool {
    let (kind, content) = match input {
        HubInput::Local(d) => (d.kind.clone(), d.content.clone()),
        HubInput::Lpdu(l) => (
            str_field(l, "type").unwrap_or_default().to_owned(),
            l.get("content")
                .map(|c| serde_json::to_value(c).unwrap_or_default())
                .unwrap_or_default(),
        ),
    };
    kind == "m.room.member" && content.get("membership").and_then(Value::as_str) == Some("invite")
}

/// Why an invitee's server did not sign an invite.
enum TargetAnswer {
    Signed(CanonicalJsonObject),
    /// It already holds the room ([E]: 400 `M_UNKNOWN`): deliver the invite with `/send`.
    KnowsRoom,
}

/// Sends an invite to its target's server before the hub appends it (§9.3).
async fn invite_target(s: &Services, target: &str, appended: &Appended) -> Result<TargetAnswer> {
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::forbidden("federation is disabled"))?;
    let pdu = &appended.pdu;
    let body = json!({
        "event": pdu.to_federation_value(),
        "room_version": RoomVersion::Linearized.as_str(),
        "invite_room_state": appended.invite_state,
    });
    let path = format!("{UNSTABLE}/invite/{}", enc(pdu.event_id().as_str()));
    let resp = match fed.client.request("POST", target, &path, Some(&body)).await {
        Ok(r) => r,
        Err(e @ FedError::Http { status: 400, .. }) if e.errcode() == Some("M_UNKNOWN") => {
            tracing::info!(target, error = %e, "the invitee's server knows the room; inviting through /send");
            return Ok(TargetAnswer::KnowsRoom);
        }
        Err(e @ FedError::Http { .. }) => {
            return Err(Error::forbidden(format!(
                "the invitee's server refused the invite: {e}"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let returned = resp
        .get("event")
        .or_else(|| resp.get("pdu"))
        .ok_or_else(|| Error::Remote(format!("{target} returned no invite event")))?;
    let mut obj = canonical::value_to_object(returned.clone())
        .map_err(|e| Error::Remote(format!("{target} returned a bad invite: {e}")))?;
    obj.remove("event_id");
    if lm::event_id(&obj) != pdu.event_id().as_str() {
        return Err(Error::Remote(format!("{target} changed the invite event")));
    }
    Ok(TargetAnswer::Signed(obj))
}

/// Appends an event to a room hubbed here: invites go to their target's server first.
pub async fn append(
    s: &Services,
    room: &OwnedRoomId,
    input: HubInput,
    fanout: FanoutChange,
) -> Result<Appended> {
    let mut fanout = fanout;
    let mut countersigned = None;
    if is_invite(&input) {
        let first = s
            .rooms
            .send(
                room,
                HubAppend {
                    input: input.clone(),
                    countersigned: None,
                    dry_run: true,
                    fanout: fanout.clone(),
                },
            )
            .await??;
        if first.already {
            return Ok(first);
        }
        if let Some(target) = &first.invite_target {
            match invite_target(s, target, &first).await? {
                TargetAnswer::Signed(obj) => countersigned = Some(obj),
                TargetAnswer::KnowsRoom => fanout.add = Some(target.clone()),
            }
        }
    }
    s.rooms
        .send(
            room,
            HubAppend {
                input,
                countersigned,
                dry_run: false,
                fanout,
            },
        )
        .await?
}

/// Checks and appends one participant LPDU; the LPDU event ID with the outcome.
pub async fn submit_lpdu(
    s: &Services,
    origin: &str,
    room: &str,
    raw: &Value,
    fanout: FanoutChange,
) -> (Option<String>, Result<Appended>) {
    let checked = match check_lpdu(s, origin, room, raw).await {
        Ok(c) => c,
        Err((id, e)) => return (id, Err(e)),
    };
    let id = Some(checked.id.clone());
    let room_id = match OwnedRoomId::try_from(room) {
        Ok(r) => r,
        Err(_) => return (id, Err(Error::invalid_param("invalid room ID"))),
    };
    // Completed before (a retry in a new transaction): the event already in the line.
    let lid = checked.id.clone();
    if let Ok(Some((r, event_id))) = s
        .core
        .db
        .read(move |c| lstore::event_for_lpdu(c, &lid))
        .await
        && r == room
    {
        let e = event_id.clone();
        if let Ok(Some(row)) = s.core.db.read(move |c| events::get_event(c, &e)).await
            && let Ok(pdu) =
                crate::rooms::actor::parse_row(&row.event_id, &row.json, RoomVersion::Linearized)
        {
            return (
                id,
                Ok(Appended {
                    pdu,
                    invite_target: None,
                    invite_state: Vec::new(),
                    already: true,
                }),
            );
        }
    }
    let result = append(s, &room_id, HubInput::Lpdu(checked.json), fanout).await;
    if let Err(e) = &result {
        tracing::info!(room, origin, lpdu = ?id, error = %e, "LPDU refused");
    }
    (id, result)
}

/// The LPDUs of one room from a `/send` transaction, in order.
pub async fn submit_from_send(
    s: &Services,
    origin: &str,
    room: &str,
    raws: Vec<Value>,
) -> Vec<(String, Option<String>)> {
    let mut out = Vec::with_capacity(raws.len());
    for raw in raws {
        let (id, result) = submit_lpdu(s, origin, room, &raw, FanoutChange::default()).await;
        let id = id.unwrap_or_else(|| "(unparseable)".to_owned());
        out.push((id, result.err().map(|e| e.to_string())));
    }
    out
}

/// The line before an appended event (oldest first) and the auth chain of that line and the
/// event: a hub's `send_join` answer. [E] replays `state` as the room's line through the auth
/// rules, so it gets the whole line, not just the state.
async fn line_and_chain(s: &Services, room: &str, event: &Pdu) -> Result<(Vec<Value>, Vec<Value>)> {
    let (r, e) = (room.to_owned(), event.event_id().to_string());
    let rows = s
        .core
        .db
        .read(move |c| {
            let Some(row) = events::get_event(c, &e)? else {
                return Ok(Vec::new());
            };
            let Some(stream) = row.stream_ordering else {
                return Ok(Vec::new());
            };
            lstore::line_before(c, &r, stream)
        })
        .await?;
    let by_id: HashMap<&str, &str> = rows
        .iter()
        .map(|r| (r.event_id.as_str(), r.json.as_str()))
        .collect();
    let mut chain: HashSet<String> = HashSet::new();
    let mut stack: Vec<String> = event.auth_events().iter().map(|a| a.to_string()).collect();
    for row in &rows {
        if row.state_key.is_some()
            && let Ok(v) = serde_json::from_str::<Value>(&row.json)
            && let Some(a) = v.get("auth_events").and_then(Value::as_array)
        {
            stack.extend(a.iter().filter_map(|x| x.as_str().map(str::to_owned)));
        }
    }
    while let Some(id) = stack.pop() {
        if !chain.insert(id.clone()) {
            continue;
        }
        if let Some(json) = by_id.get(id.as_str())
            && let Ok(v) = serde_json::from_str::<Value>(json)
            && let Some(a) = v.get("auth_events").and_then(Value::as_array)
        {
            stack.extend(a.iter().filter_map(|x| x.as_str().map(str::to_owned)));
        }
    }
    let mut line = Vec::with_capacity(rows.len());
    let mut auth_chain = Vec::new();
    for row in &rows {
        let v: Value = serde_json::from_str(&row.json).unwrap_or(Value::Null);
        if chain.contains(&row.event_id) {
            auth_chain.push(v.clone());
        }
        line.push(v);
    }
    Ok((line, auth_chain))
}

/// `send_join`/`send_leave`/`send_knock`: a membership LPDU of the requesting server's user.
async fn membership_lpdu(s: &Services, signed: &Signed, membership: &str) -> Result<(String, Pdu)> {
    let raw: Value = signed.json()?;
    let room = raw
        .get("room_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("the event names no room_id"))?
        .to_owned();
    let sender = raw.get("sender").and_then(Value::as_str);
    let ok = raw.get("type").and_then(Value::as_str) == Some("m.room.member")
        && raw.pointer("/content/membership").and_then(Value::as_str) == Some(membership)
        && sender.is_some()
        && raw.get("state_key").and_then(Value::as_str) == sender;
    if !ok {
        return Err(Error::bad_json(format!(
            "not a {membership} event of its sender"
        )));
    }
    require_hub(s, &room).await?;
    let (_, result) =
        submit_lpdu(s, &signed.origin, &room, &raw, answered_to(&signed.origin)).await;
    Ok((room, result?.pdu))
}

pub async fn send_join(s: Data, signed: Signed, _txn: web::Path<String>) -> Result<HttpResponse> {
    let (room, pdu) = membership_lpdu(&s, &signed, "join").await?;
    let (line, auth_chain) = line_and_chain(&s, &room, &pdu).await?;
    let r = room.clone();
    let joined = s
        .core
        .db
        .read(move |c| rooms::members_with(c, &r, "join"))
        .await?;
    let mut servers: Vec<String> = joined
        .iter()
        .filter_map(|u| u.split_once(':').map(|(_, s)| s.to_owned()))
        .collect();
    servers.sort();
    servers.dedup();
    tracing::info!(room = %room, joiner = %pdu.sender(), via = %signed.origin, "a participant joined");
    Ok(HttpResponse::Ok().json(json!({
        "origin": s.server_name(),
        "state": line,
        "auth_chain": auth_chain,
        "event": pdu.to_federation_value(),
        "members_omitted": false,
        "servers_in_room": servers,
    })))
}

pub async fn send_leave(s: Data, signed: Signed, _txn: web::Path<String>) -> Result<HttpResponse> {
    membership_lpdu(&s, &signed, "leave").await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn send_knock(s: Data, signed: Signed, _txn: web::Path<String>) -> Result<HttpResponse> {
    let (room, _) = membership_lpdu(&s, &signed, "knock").await?;
    let room_id = OwnedRoomId::try_from(room.as_str())
        .map_err(|_| Error::invalid_param("invalid room ID"))?;
    let snap = s
        .rooms
        .send(&room_id, crate::rooms::messages::GetSnapshot)
        .await??;
    let stripped = snap.state.stripped_for_invite(None);
    Ok(HttpResponse::Ok().json(json!({
        "stripped_state": stripped,
        "knock_room_state": stripped,
    })))
}
