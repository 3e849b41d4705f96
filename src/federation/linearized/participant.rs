//! The participant's federation side: our users' LPDUs go to the hub, the hub's PDUs come
//! in (both signature layers checked, then appended in line order), and a gap in the line is
//! filled from the hub with `backfill`.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::{CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};
use weft_protocol::builder::EventDraft;
use weft_protocol::{Pdu, RoomVersion, canonical, lm};

use super::UNSTABLE;
use crate::error::{Error, Result};
use crate::federation::Federation;
use crate::federation::FederationOf;
use crate::federation::client::{FedError, enc};
use crate::federation::inbound::verify;
use crate::rooms::linearized::{ParticipantReceive, Received, hub_of};
use crate::services::Services;
use crate::storage::{events, now_ms};

/// Most `backfill` round trips spent on one gap.
const MAX_BACKFILL_ROUNDS: usize = 200;
const BACKFILL_LIMIT: usize = 50;

/// The hub's answer about one LPDU, from a `/send` answer (draft: `failed_pdus`; weft also
/// lists every PDU under `pdus`).
fn refusal_in(resp: &Value, lpdu_id: &str) -> Option<String> {
    ["failed_pdus", "pdus"].iter().find_map(|k| {
        resp.get(k)?.get(lpdu_id)?.get("error").map(|e| {
            e.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string())
        })
    })
}

/// Sends one of our users' LPDUs to the hub (§9.1). Ok when the hub took it; the final event
/// comes back as the hub's echo.
pub async fn send_lpdu(
    client: &crate::federation::client::FederationClient,
    hub: &str,
    lpdu: &CanonicalJsonObject,
    lpdu_id: &str,
) -> Result<()> {
    let txn = format!("lm{}{}", now_ms(), crate::random::random_string(8));
    let path = format!("{UNSTABLE}/send/{}", enc(&txn));
    let body = json!({
        "origin": client.origin(),
        "origin_server_ts": now_ms(),
        "pdus": [canonical::to_value(lpdu)],
    });
    match client.request("PUT", hub, &path, Some(&body)).await {
        Ok(resp) => match refusal_in(&resp, lpdu_id) {
            Some(why) => Err(Error::Forbidden(format!(
                "the hub refused the event: {why}"
            ))),
            None => Ok(()),
        },
        // The reference hub answers 500 M_UNKNOWN when an event fails its checks.
        Err(FedError::Http { status, body, .. })
            if status >= 500 && body.get("errcode").is_some() =>
        {
            let why = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            Err(Error::Forbidden(format!(
                "the hub refused the event: {why}"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

async fn known_in_line(s: &Services, id: &str) -> bool {
    let i = id.to_owned();
    matches!(
        s.core.db.read(move |c| events::get_event(c, &i)).await,
        Ok(Some(row)) if !row.outlier && row.stream_ordering.is_some()
    )
}

/// Parses and checks (both signature layers, hashes) the PDUs of a remote answer. A PDU
/// whose hash does not match is kept redacted (§7 step 3, as the draft says).
async fn checked(
    fed: &Arc<Federation>,
    room: &str,
    raws: &[Value],
) -> Vec<(String, Result<Pdu, String>)> {
    let mut parsed = Vec::new();
    let mut out = Vec::new();
    for raw in raws {
        match verify::parse(raw, RoomVersion::Linearized) {
            Ok(p) if p.room_id().as_str() == room => parsed.push((p, RoomVersion::Linearized)),
            Ok(p) => out.push((
                p.event_id().to_string(),
                Err("an event of another room".into()),
            )),
            Err(e) => out.push((
                raw.get("event_id")
                    .and_then(Value::as_str)
                    .unwrap_or("(unparseable)")
                    .to_owned(),
                Err(format!("malformed event: {e}")),
            )),
        }
    }
    let ids: Vec<String> = parsed
        .iter()
        .map(|(p, _)| p.event_id().to_string())
        .collect();
    for (id, r) in ids.into_iter().zip(verify::check_many(fed, parsed).await) {
        out.push((id, r.map(|c| c.pdu)));
    }
    out
}

/// Fetches the hub's line from the event after one we hold up to `upto` (inclusive), oldest
/// first, following `prev_events` back with `backfill` ([E] answers newest first, at most 10
/// at a time; the draft oldest first: the chain is rebuilt from the IDs either way).
pub async fn fetch_line(
    s: &Services,
    fed: &Arc<Federation>,
    hub: &str,
    room: &str,
    upto: &EventId,
) -> Result<Vec<Pdu>> {
    let mut chain: Vec<Pdu> = Vec::new();
    let mut next: OwnedEventId = upto.to_owned();
    for _ in 0..MAX_BACKFILL_ROUNDS {
        let path = format!(
            "{UNSTABLE}/backfill/{}?v={}&limit={BACKFILL_LIMIT}",
            enc(room),
            enc(next.as_str())
        );
        let resp = fed.client.request("GET", hub, &path, None).await?;
        let raws = resp
            .get("pdus")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut by_id: HashMap<String, Pdu> = HashMap::new();
        for (id, r) in checked(fed, room, &raws).await {
            match r {
                Ok(p) => {
                    by_id.insert(id, p);
                }
                Err(e) => {
                    tracing::warn!(room, event = %id, error = %e, "the hub's backfill carried a bad event")
                }
            }
        }
        let before = chain.len();
        let mut cur = next.clone();
        while let Some(p) = by_id.remove(cur.as_str()) {
            let prev = p.prev_events().first().cloned();
            chain.push(p);
            match prev {
                None => return Ok(chain.into_iter().rev().collect()),
                Some(prev) if known_in_line(s, prev.as_str()).await => {
                    return Ok(chain.into_iter().rev().collect());
                }
                Some(prev) => cur = prev,
            }
        }
        if chain.len() == before {
            return Err(Error::Remote(format!(
                "{hub} did not serve {cur} of room {room}"
            )));
        }
        next = cur;
    }
    Err(Error::Remote(format!(
        "the gap in room {room} is longer than {} events",
        MAX_BACKFILL_ROUNDS * BACKFILL_LIMIT
    )))
}

/// Submits PDUs in line order; a gap before one of them is filled from the hub once.
async fn submit(
    s: &Services,
    hub: &str,
    room: &OwnedRoomId,
    pdus: Vec<Pdu>,
    joining: bool,
    state_before_first: Option<Vec<Pdu>>,
) -> Vec<(String, Received)> {
    let ids: Vec<String> = pdus.iter().map(|p| p.event_id().to_string()).collect();
    let msg = ParticipantReceive {
        pdus: pdus.clone(),
        joining,
        state_before_first,
    };
    let outcomes = match s.rooms.send(room, msg).await {
        Ok(o) => o,
        Err(e) => {
            return ids
                .into_iter()
                .map(|i| (i, Received::Refused(e.to_string())))
                .collect();
        }
    };
    let mut out: Vec<(String, Received)> = ids.into_iter().zip(outcomes).collect();
    let Some(first_gap) = out.iter().position(|(_, r)| matches!(r, Received::Gap(_))) else {
        return out;
    };
    let Received::Gap(missing) = out[first_gap].1.clone() else {
        return out;
    };
    let Some(fed) = s.federation().cloned() else {
        return out;
    };
    match fetch_line(s, &fed, hub, room.as_str(), &missing).await {
        Ok(line) => {
            tracing::info!(room = %room, fetched = line.len(), "filled a gap in the line from the hub");
            let n = line.len();
            let mut retry = line;
            retry.extend(pdus.into_iter().skip(first_gap));
            let again = match s
                .rooms
                .send(
                    room,
                    ParticipantReceive {
                        pdus: retry,
                        joining: false,
                        state_before_first: None,
                    },
                )
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(room = %room, error = %e, "could not submit the filled gap");
                    return out;
                }
            };
            for (slot, r) in out[first_gap..].iter_mut().zip(again.into_iter().skip(n)) {
                slot.1 = r;
            }
        }
        Err(e) => tracing::warn!(room = %room, hub, error = %e, "could not fill a gap in the line"),
    }
    out
}

/// PDUs of a room hubbed elsewhere, from a `/send` transaction (of the hub, usually).
pub async fn receive(
    s: &Services,
    hub: &str,
    room: &str,
    raws: Vec<Value>,
) -> Vec<(String, Option<String>)> {
    let Some(fed) = s.federation().cloned() else {
        return Vec::new();
    };
    let Ok(room_id) = OwnedRoomId::try_from(room) else {
        return Vec::new();
    };
    // LPDUs go to the hub; we are not it (§10: skip).
    let pdus: Vec<Value> = raws.into_iter().filter(|r| !super::is_lpdu(r)).collect();
    let mut out = Vec::new();
    let mut good = Vec::new();
    for (id, r) in checked(&fed, room, &pdus).await {
        match r {
            Ok(p) if known_in_line(s, &id).await => drop(p),
            Ok(p) => good.push(p),
            Err(e) => {
                tracing::info!(room, event = %id, error = %e, "PDU from the hub refused");
                out.push((id, Some(e)));
            }
        }
    }
    for (id, r) in submit(s, hub, &room_id, good, false, None).await {
        match r {
            Received::Appended | Received::Known => out.push((id, None)),
            Received::Gap(prev) => out.push((id, Some(format!("missing previous event {prev}")))),
            Received::Refused(why) => out.push((id, Some(why))),
        }
    }
    out
}

fn ver_query() -> String {
    RoomVersion::ALL
        .iter()
        .map(|v| format!("ver={}", enc(v.as_str())))
        .collect::<Vec<_>>()
        .join("&")
}

/// Finishes joining a room hubbed by `hub`, from its `make_join` answer (§9.4): our join LPDU
/// goes to `send_join`; the answer's `state` is replayed as our copy of the line (the whole
/// line, from [E] and weft hubs) or taken as the state before our join (a state-only answer).
pub async fn join_with_template(
    s: &Services,
    hub: &str,
    room: &OwnedRoomId,
    user: &OwnedUserId,
    make_join: &Value,
    content_extra: Value,
) -> Result<OwnedEventId> {
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::forbidden("federation is disabled"))?;
    // [E] and Matrix wrap the template; the draft answers with the bare event.
    let template = make_join.get("event").unwrap_or(make_join);
    let same = |k: &str| template.get(k).and_then(Value::as_str) == Some(user.as_str());
    if template.get("type").and_then(Value::as_str) != Some("m.room.member")
        || !same("sender")
        || !same("state_key")
        || template
            .pointer("/content/membership")
            .and_then(Value::as_str)
            != Some("join")
    {
        return Err(Error::Remote(format!("{hub} sent a bad join template")));
    }
    let mut content = json!({"membership": "join"});
    if let (Some(extra), Some(c)) = (content_extra.as_object(), content.as_object_mut()) {
        for (k, v) in extra {
            if k != "membership" {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    let mut draft = EventDraft::state("m.room.member", user.as_str(), user.clone(), content);
    draft.origin_server_ts = now_ms() as u64;
    let lpdu = lm::build::lpdu(&draft, room, hub, s.server_name(), &s.core.key)
        .map_err(|e| Error::internal(e.to_string()))?;
    let lpdu_id = lm::event_id(&lpdu);
    super::begin_join(room.as_str());
    let result = send_join(s, &fed, hub, room, &lpdu, &lpdu_id).await;
    super::end_join(room.as_str());
    let join_id = result?;
    super::take_staged(s, hub, room.as_str()).await;
    Ok(join_id)
}

async fn send_join(
    s: &Services,
    fed: &Arc<Federation>,
    hub: &str,
    room: &OwnedRoomId,
    lpdu: &CanonicalJsonObject,
    lpdu_id: &str,
) -> Result<OwnedEventId> {
    let path = format!("{UNSTABLE}/send_join/{}", enc(lpdu_id));
    let resp = fed
        .client
        .request("POST", hub, &path, Some(&canonical::to_value(lpdu)))
        .await?;
    let event = resp
        .get("event")
        .ok_or_else(|| Error::Remote(format!("{hub} did not return our join event")))?;
    let state = resp
        .get("state")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut all = state.clone();
    all.push(event.clone());
    let mut pdus = Vec::with_capacity(all.len());
    for (id, r) in checked(fed, room.as_str(), &all).await {
        pdus.push(r.map_err(|e| Error::Remote(format!("{hub} sent a bad event {id}: {e}")))?);
    }
    let Some(join) = pdus.pop() else {
        return Err(Error::Remote(format!("{hub} returned no join event")));
    };
    if lm::lpdu_event_id(&join.json()).as_deref() != Some(lpdu_id) {
        return Err(Error::Remote(format!(
            "{hub} returned another event than our join"
        )));
    }
    // Keep the answer's order (checks may reorder): by event ID.
    let order: Vec<String> = state
        .iter()
        .filter_map(|r| {
            let mut o = canonical::value_to_object(r.clone()).ok()?;
            o.remove("event_id");
            Some(lm::event_id(&o))
        })
        .collect();
    let mut by_id: HashMap<String, Pdu> = pdus
        .into_iter()
        .map(|p| (p.event_id().to_string(), p))
        .collect();
    let line: Vec<Pdu> = order.iter().filter_map(|id| by_id.remove(id)).collect();
    let is_line = line
        .first()
        .is_some_and(|c| c.kind_str() == "m.room.create" && c.prev_events().is_empty())
        && line
            .windows(2)
            .all(|w| w[1].prev_events().first() == Some(&w[0].owned_event_id()))
        && line.last().map(|l| l.owned_event_id()).as_ref() == join.prev_events().first();
    let join_id = join.owned_event_id();
    let outcomes = if is_line {
        let mut all = line;
        all.push(join);
        submit(s, hub, room, all, true, None).await
    } else {
        crate::rooms::outliers::store(
            &s.core,
            &s.rooms,
            room.as_str(),
            RoomVersion::Linearized,
            line.clone(),
        )
        .await?;
        submit(s, hub, room, vec![join], true, Some(line)).await
    };
    match outcomes.last() {
        Some((_, Received::Appended | Received::Known)) => {
            tracing::info!(room = %room, hub, "joined a Linearized Matrix room");
            Ok(join_id)
        }
        Some((_, other)) => Err(Error::Remote(format!(
            "our join could not be applied: {other:?}"
        ))),
        None => Err(Error::internal("no outcome for our join")),
    }
}

/// Hook of `join_remote`: `make_join` on `server` answered for an LM room.
pub async fn join_via(
    s: &Services,
    server: &str,
    room: &OwnedRoomId,
    user: &OwnedUserId,
    make_join: &Value,
    content_extra: Value,
) -> Result<OwnedEventId> {
    if hub_of(room).as_deref() != Some(server) {
        return Err(Error::Remote(format!(
            "{server} is not the hub of {room}; joins go through the hub"
        )));
    }
    join_with_template(s, server, room, user, make_join, content_extra).await
}

/// The `ver=` parameters for `make_join` (every version weft speaks, LM included).
pub fn make_join_versions() -> String {
    ver_query()
}

/// Declines an invite to an LM room we hold no copy of: `make_leave` + `send_leave` on the
/// hub ([E] implements neither: the caller then declines locally, §9.5).
pub async fn decline_invite(s: &Services, room: &OwnedRoomId, user: &OwnedUserId) -> Result<()> {
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::forbidden("federation is disabled"))?;
    let hub = hub_of(room).ok_or_else(|| Error::invalid_param("invalid room ID"))?;
    let path = format!(
        "/_matrix/federation/v1/make_leave/{}/{}",
        enc(room.as_str()),
        enc(user.as_str())
    );
    let resp = fed.client.request("GET", &hub, &path, None).await?;
    let template = resp.get("event").unwrap_or(&resp);
    if template.get("state_key").and_then(Value::as_str) != Some(user.as_str())
        || template
            .pointer("/content/membership")
            .and_then(Value::as_str)
            != Some("leave")
    {
        return Err(Error::Remote(format!("{hub} sent a bad leave template")));
    }
    let mut draft = EventDraft::state(
        "m.room.member",
        user.as_str(),
        user.clone(),
        json!({"membership": "leave"}),
    );
    draft.origin_server_ts = now_ms() as u64;
    let lpdu = lm::build::lpdu(&draft, room, &hub, s.server_name(), &s.core.key)
        .map_err(|e| Error::internal(e.to_string()))?;
    let path = format!("{UNSTABLE}/send_leave/{}", enc(&lm::event_id(&lpdu)));
    fed.client
        .request("POST", &hub, &path, Some(&canonical::to_value(&lpdu)))
        .await?;
    crate::federation::membership::forget_remote_invite(s, room, user).await
}

/// At start-up, tells the hub of every LM room we take part in that we are back: a signed
/// request ends the hub's backoff for us, so what it owes us arrives now rather than at its
/// next retry (up to `federation.retry_max_ms` later).
pub async fn announce_return(s: Arc<Services>) {
    let Some(fed) = s.federation().cloned() else {
        return;
    };
    let ours = s.server_name().to_owned();
    let rooms = s
        .core
        .db
        .read(move |c| {
            let mut out = Vec::new();
            for room in
                crate::storage::linearized::rooms_of_version(c, RoomVersion::Linearized.as_str())?
            {
                let Ok(id) = OwnedRoomId::try_from(room.room_id.as_str()) else {
                    continue;
                };
                let Some(hub) = hub_of(&id).filter(|h| *h != ours) else {
                    continue;
                };
                let suffix = format!(":{ours}");
                let ours_joined = crate::storage::rooms::members_with(c, &room.room_id, "join")?
                    .iter()
                    .any(|u| u.ends_with(&suffix));
                let tip = crate::storage::state::extremities(c, &room.room_id)?.pop();
                if let (true, Some(tip)) = (ours_joined, tip) {
                    out.push((room.room_id, hub, tip));
                }
            }
            Ok(out)
        })
        .await
        .unwrap_or_default();
    let mut told = std::collections::HashSet::new();
    for (room, hub, tip) in rooms {
        if !told.insert(hub.clone()) {
            continue;
        }
        let path = format!("{UNSTABLE}/backfill/{}?v={}&limit=1", enc(&room), enc(&tip));
        match fed.client.request("GET", &hub, &path, None).await {
            Ok(_) => tracing::info!(hub, "told the hub we are back"),
            Err(e) => tracing::info!(hub, error = %e, "could not reach the hub at start-up"),
        }
    }
}

/// Hook of `invite_remote` for LM rooms: a hub appends the invite itself (sending it to the
/// target's server first); a participant sends the invite LPDU to the hub through `/send`,
/// which is what [E] hubs accept, and the hub does the `/invite` round trip. `None` for
/// rooms that are not LM.
pub async fn invite(
    s: &Services,
    room: &OwnedRoomId,
    sender: &OwnedUserId,
    target: &OwnedUserId,
    reason: Option<String>,
) -> Result<Option<OwnedEventId>> {
    let r = room.to_string();
    let version = s
        .core
        .db
        .read(move |c| crate::storage::rooms::room_version(c, &r))
        .await?;
    if version.as_deref() != Some(RoomVersion::Linearized.as_str()) {
        return Ok(None);
    }
    let mut content = json!({"membership": "invite"});
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        content["reason"] = json!(r);
    }
    let mut draft = EventDraft::state("m.room.member", target.as_str(), sender.clone(), content);
    draft.origin_server_ts = now_ms() as u64;
    if hub_of(room).is_some_and(|h| s.core.is_local(&h)) {
        let appended = super::hub::append(
            s,
            room,
            crate::rooms::linearized::HubInput::Local(draft),
            Default::default(),
        )
        .await?;
        return Ok(Some(appended.pdu.owned_event_id()));
    }
    let id = s.rooms.send_draft(room, draft).await?;
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_from_either_answer_shape() {
        let draft = json!({"failed_pdus": {"$a": {"error": "no"}}});
        let weft = json!({"pdus": {"$a": {"error": "no"}, "$b": {}}});
        assert_eq!(refusal_in(&draft, "$a").as_deref(), Some("no"));
        assert_eq!(refusal_in(&weft, "$a").as_deref(), Some("no"));
        assert_eq!(refusal_in(&weft, "$b"), None);
        assert_eq!(refusal_in(&json!({}), "$a"), None);
    }
}
