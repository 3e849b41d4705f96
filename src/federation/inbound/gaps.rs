//! Filling gaps in a room's DAG from the network, outside the room actor (which never waits
//! on a peer):
//!
//! * missing auth events: `GET /event_auth` from the origin, checked and stored as outliers;
//! * missing prev events: `POST /get_missing_events` (latest = the event, earliest = our
//!   forward extremities); the events found are submitted oldest first;
//! * a gap too large for that: the state at each missing prev event from `GET /state`
//!   (state and auth chain as full PDUs) and the prev event from `GET /event`; the prev
//!   event is stored as an outlier *with* that state, so the event can be authorized
//!   against the resolution of the states after its prev events.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::OwnedRoomId;
use serde_json::{Value, json};
use weft_protocol::{Pdu, RoomVersion};

use super::verify;
use crate::federation::Federation;
use crate::federation::FederationOf;
use crate::federation::client::enc;
use crate::rooms::messages::{GetSnapshot, InboundOutcome, InboundPdus};
use crate::rooms::outliers;
use crate::services::Services;
use crate::storage::events;
use crate::storage::state::StateDelta;

const MISSING_EVENTS_LIMIT: u64 = 50;

/// Parses and checks PDUs from a remote answer; drops (and logs) the bad ones. An event
/// listed twice (a `/state` answer's `auth_chain` repeating its `pdus`, as Synapse's do) is
/// kept once.
pub async fn checked_pdus(
    fed: &Arc<Federation>,
    raws: &[Value],
    version: RoomVersion,
    room_id: &str,
) -> Vec<Pdu> {
    let mut parsed = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for raw in raws {
        match verify::parse(raw, version) {
            Ok(p) if !seen.insert(p.owned_event_id()) => {}
            Ok(p) if p.room_id().as_str() == room_id => parsed.push((p, version)),
            Ok(p) => {
                tracing::warn!(event = %p.event_id(), "remote answer carried an event of another room")
            }
            Err(e) => tracing::warn!(error = %e, "remote answer carried a malformed event"),
        }
    }
    verify::check_many(fed, parsed)
        .await
        .into_iter()
        .filter_map(|r| {
            r.map_err(|e| tracing::warn!(error = %e, "remote event failed checks"))
                .ok()
        })
        .map(|c| c.pdu)
        .collect()
}

async fn fetch_auth_chain(
    s: &Services,
    fed: &Arc<Federation>,
    origin: &str,
    room_id: &str,
    version: RoomVersion,
    event_id: &str,
) {
    let path = format!(
        "/_matrix/federation/v1/event_auth/{}/{}",
        enc(room_id),
        enc(event_id)
    );
    match fed.client.request("GET", origin, &path, None).await {
        Ok(resp) => {
            let raws = resp
                .get("auth_chain")
                .and_then(|a| a.as_array())
                .cloned()
                .unwrap_or_default();
            let pdus = checked_pdus(fed, &raws, version, room_id).await;
            if let Err(e) = outliers::store(&s.core, &s.rooms, room_id, version, pdus).await {
                tracing::warn!(error = %e, "could not store fetched auth chain");
            }
        }
        Err(e) => tracing::info!(error = %e, "could not fetch auth chain"),
    }
}

/// Fetches the state at `prev` (and `prev` itself) and stores `prev` as an outlier with it.
async fn fetch_state_at(
    s: &Services,
    fed: &Arc<Federation>,
    origin: &str,
    room_id: &str,
    version: RoomVersion,
    prev: &str,
) -> bool {
    let path = format!(
        "/_matrix/federation/v1/state/{}?event_id={}",
        enc(room_id),
        enc(prev)
    );
    let resp = match fed.client.request("GET", origin, &path, None).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "could not fetch state at a missing event");
            return false;
        }
    };
    let mut raws = resp
        .get("auth_chain")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    let state_raws = resp
        .get("pdus")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    raws.extend(state_raws.iter().cloned());
    let pdus = checked_pdus(fed, &raws, version, room_id).await;
    let state_ids: HashMap<String, ()> = state_raws
        .iter()
        .filter_map(|r| verify::parse(r, version).ok())
        .map(|p| (p.event_id().to_string(), ()))
        .collect();
    // One entry per state key (an answer listing two events for one key is not a state).
    let mut by_key: std::collections::BTreeMap<(String, String), String> = Default::default();
    for p in &pdus {
        if state_ids.contains_key(p.event_id().as_str())
            && let Some(k) = p.state_key()
            && by_key
                .insert((p.kind_str(), k.to_owned()), p.event_id().to_string())
                .is_some()
        {
            tracing::warn!(room = room_id, event = %p.event_id(), "/state answer lists two events for one state key");
            return false;
        }
    }
    let state: StateDelta = by_key.into_iter().map(|(k, v)| (k, Some(v))).collect();
    if let Err(e) = outliers::store(&s.core, &s.rooms, room_id, version, pdus).await {
        tracing::warn!(error = %e, "could not store fetched state");
        return false;
    }
    // A state that holds a rejected event (rejected now, or before) is no state at all:
    // rejection is permanent, so it never becomes state by way of a `/state` answer.
    let ids: Vec<String> = state.iter().filter_map(|(_, v)| v.clone()).collect();
    let statuses = match s.core.db.read(move |c| events::statuses(c, &ids)).await {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!(error = %e, "could not read fetched state");
            return false;
        }
    };
    if let Some(bad) = statuses.iter().find(|(_, (_, r))| r.is_some()) {
        tracing::warn!(room = room_id, at = prev, event = %bad.0, "/state answer holds a rejected event; not used");
        return false;
    }
    // The prev event itself.
    let path = format!("/_matrix/federation/v1/event/{}", enc(prev));
    let Ok(resp) = fed.client.request("GET", origin, &path, None).await else {
        return false;
    };
    let raws = resp
        .get("pdus")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    let Some(prev_pdu) = checked_pdus(fed, &raws, version, room_id)
        .await
        .into_iter()
        .next()
    else {
        return false;
    };
    if prev_pdu.event_id().as_str() != prev {
        return false;
    }
    outliers::store_with_state(&s.core, &s.rooms, room_id, prev_pdu, state)
        .await
        .map_err(|e| tracing::warn!(error = %e, "could not store a prev event with its state"))
        .is_ok()
}

/// Of `prev` and `auth` (what the room actor reported missing), those still unknown: a
/// prev event counts once it is held with its state, an auth event once it is held at all
/// (the room actor's own tests). `None` when the database could not be read.
async fn unresolved(
    s: &Services,
    prev: &[String],
    auth: &[String],
) -> Option<(Vec<String>, Vec<String>)> {
    let (prev, auth) = (prev.to_vec(), auth.to_vec());
    s.core
        .db
        .read(move |c| {
            let mut still_prev = Vec::new();
            for id in prev {
                match events::get_event(c, &id)? {
                    Some(r) if r.state_before.is_some() || r.state_after.is_some() => {}
                    _ => still_prev.push(id),
                }
            }
            let mut still_auth = Vec::new();
            for id in auth {
                if events::get_event(c, &id)?.is_none() {
                    still_auth.push(id);
                }
            }
            Ok((still_prev, still_auth))
        })
        .await
        .map_err(|e| tracing::warn!(error = %e, "could not read the events a gap is missing"))
        .ok()
}

/// Tries to fill what the room actor reported missing for `pdu`; returns whether a retry
/// may succeed: something was fetched, or what was missing is held now.
///
/// What was missing may have arrived since the actor said so, without this call fetching
/// anything: when a transaction carries two events after a gap (a catching-up sender's
/// queue holds the latest events of the room), the actor finds both missing, and the fill
/// for the first brings the second's prev event (the first itself). The fill for the
/// second then finds nothing new on the network, yet its retry succeeds. So what is held is
/// read first (no request when nothing is missing any more) and again after the fetches.
pub async fn fill(
    s: &Services,
    origin: &str,
    room_id: &OwnedRoomId,
    version: RoomVersion,
    pdu: &Pdu,
    missing_prev: &[String],
    missing_auth: &[String],
) -> bool {
    let Some(fed) = s.federation().cloned() else {
        return false;
    };
    // Filled meanwhile (an earlier event of the same transaction, another origin's fill)?
    let (missing_prev, missing_auth) = match unresolved(s, missing_prev, missing_auth).await {
        Some((p, a)) if p.is_empty() && a.is_empty() => {
            tracing::debug!(room = %room_id, event = %pdu.event_id(), "the gap was filled meanwhile");
            return true;
        }
        Some(pa) => pa,
        None => (missing_prev.to_vec(), missing_auth.to_vec()),
    };
    let (missing_prev, missing_auth) = (missing_prev.as_slice(), missing_auth.as_slice());
    if !missing_auth.is_empty() {
        fetch_auth_chain(
            s,
            &fed,
            origin,
            room_id.as_str(),
            version,
            pdu.event_id().as_str(),
        )
        .await;
    }
    if missing_prev.is_empty() {
        return !missing_auth.is_empty();
    }
    // get_missing_events between our extremities and this event.
    let earliest: Vec<String> = match s.rooms.send(room_id, GetSnapshot).await {
        Ok(Ok(snap)) => snap.extremities.iter().map(|e| e.to_string()).collect(),
        _ => Vec::new(),
    };
    let body = json!({
        "earliest_events": earliest,
        "latest_events": [pdu.event_id().to_string()],
        "limit": MISSING_EVENTS_LIMIT,
        "min_depth": 0,
    });
    let path = format!(
        "/_matrix/federation/v1/get_missing_events/{}",
        enc(room_id.as_str())
    );
    let mut filled_any = false;
    if let Ok(resp) = fed.client.request("POST", origin, &path, Some(&body)).await {
        let raws = resp
            .get("events")
            .and_then(|a| a.as_array())
            .cloned()
            .unwrap_or_default();
        let mut found = checked_pdus(&fed, &raws, version, room_id.as_str()).await;
        found.sort_by_key(|p| p.depth());
        found.retain(|p| p.event_id() != pdu.event_id());
        if !found.is_empty() {
            filled_any = true;
            let n = found.len();
            let msg = InboundPdus {
                pdus: found
                    .into_iter()
                    .map(|p| (std::sync::Arc::new(p), None))
                    .collect(),
                local: false,
                version: None,
                checked_events: Vec::new(),
                txn_record: None,
            };
            match s.rooms.admit(room_id, msg).await {
                Ok(outcomes) => {
                    let missing = outcomes
                        .iter()
                        .filter(|o| matches!(o, InboundOutcome::Missing { .. }))
                        .count();
                    tracing::debug!(room = %room_id, fetched = n, still_missing = missing, "filled a gap with get_missing_events");
                }
                Err(e) => tracing::warn!(error = %e, "could not submit missing events"),
            }
        }
    }
    // Whatever is still missing: fetch the state at it. Nothing still missing (the events
    // found brought every prev event) means the retry may succeed whatever was fetched.
    let still: Vec<String> = match unresolved(s, missing_prev, &[]).await {
        Some((p, _)) if p.is_empty() => return true,
        Some((p, _)) => p,
        None => return filled_any,
    };
    for prev in still.iter().take(5) {
        if fetch_state_at(s, &fed, origin, room_id.as_str(), version, prev).await {
            filled_any = true;
        }
    }
    filled_any
}
