//! The background half of a partial-state join (`rooms::partial_state` has the design):
//! after `send_join?omit_members=true` answered, fetch the state before our join from the
//! host (or, when it fails, the other servers it named), check it like a join's answer, and
//! hand it to the room's actor, which completes the room and gives back the events it
//! deferred meanwhile; those are admitted again, now against the full state.
//!
//! One resync per room: `GET /state_ids` at our join, then the events we do not hold —
//! `GET /state` when there are many (its event IDs must be exactly the `/state_ids` ones),
//! `GET /event` each otherwise — parsed and checked on the verify pool (signatures, hashes),
//! auth-checked and stored in one batch (`rooms::outliers::store_checked`). The host's full
//! state must agree with every entry of the partial state it gave us before
//! (`rooms::partial_state::agrees`): a host whose answers disagree is not believed and the
//! next server is asked. Failures back off (1 s doubling to 60 s) for
//! `federation.partial_state_resync_attempts` attempts; then the room stays partial-state
//! (logged, `weft_partial_state_total{event="gave_up"}`) until the next start, when every
//! marked room resumes ([`resume_all`]).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use super::*;
use crate::rooms::partial_state::{self as ps, ClearPartial, CompletePartial};

/// Most event IDs a `/state_ids` answer may name.
const MAX_STATE_IDS: usize = 500_000;
/// Missing events up to this many are fetched one by one (`/event`), more with `/state`.
const EVENT_BY_EVENT: usize = 32;
/// `/event` requests in flight at once.
const EVENT_FETCHES: usize = 8;

/// The server's `Services`, set at start-up by [`resume_all`], for the resyncs joins start.
static SERVICES: OnceLock<Weak<Services>> = OnceLock::new();

/// At start-up: remembers the services and resumes the resync of every room still marked
/// partial-state.
pub async fn resume_all(s: Arc<Services>) {
    let _ = SERVICES.set(Arc::downgrade(&s));
    let rooms = match s.core.db.read(crate::storage::partial_state::all).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "partial state: could not list the rooms to resume");
            return;
        }
    };
    for r in rooms {
        let Ok(room) = OwnedRoomId::try_from(r.room_id.as_str()) else {
            continue;
        };
        tracing::info!(room = %room, servers = r.servers.len(), "partial state: resuming the resync");
        actix_rt::spawn(run(Arc::clone(&s), room, r.join_event_id, r.servers));
    }
}

/// Starts the resync of a room just joined with partial state.
pub(super) fn start(room: &OwnedRoomId, join_event_id: String, servers: Vec<String>) {
    match SERVICES.get().and_then(Weak::upgrade) {
        Some(s) => {
            actix_rt::spawn(run(s, room.clone(), join_event_id, servers));
        }
        None => {
            tracing::error!(room = %room, "partial state: no services to resync with; resumed at the next start")
        }
    }
}

async fn run(s: Arc<Services>, room: OwnedRoomId, join_event_id: String, servers: Vec<String>) {
    let servers: Vec<String> = servers
        .into_iter()
        .filter(|srv| !s.core.is_local(srv))
        .collect();
    if servers.is_empty() {
        tracing::error!(room = %room, "partial state: no server to fetch the state from; the room stays partial");
        crate::observe::metrics::partial_state("gave_up");
        return;
    }
    let attempts = s
        .core
        .config
        .federation
        .partial_state_resync_attempts
        .max(1) as usize;
    let mut delay = Duration::from_secs(1);
    for attempt in 0..attempts {
        let server = &servers[attempt % servers.len()];
        match resync_once(&s, &room, &join_event_id, server).await {
            Ok(()) => {
                crate::observe::metrics::partial_state("completed");
                return;
            }
            Err(e) => {
                crate::observe::metrics::partial_state("resync_failed");
                tracing::warn!(room = %room, server, attempt, error = %e, "partial state: resync failed");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
    crate::observe::metrics::partial_state("gave_up");
    tracing::error!(room = %room, attempts, "partial state: resync gave up; the room stays partial-state until the next start");
}

/// The ID list of a `/state_ids` answer's field (the bad entries dropped).
fn id_list(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter(|id| OwnedEventId::try_from(*id).is_ok())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// One attempt against one server.
async fn resync_once(
    s: &Arc<Services>,
    room: &OwnedRoomId,
    join_event_id: &str,
    server: &str,
) -> Result<()> {
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::internal("federation is not running"))?;
    // Our join, its stream position, the partial state before it.
    let (r, j) = (room.to_string(), join_event_id.to_owned());
    let held = s
        .core
        .db
        .read(move |c| {
            let Some(room_row) = rooms::get_room(c, &r)? else {
                return Ok(None);
            };
            let Some(join) = events::get_event(c, &j)? else {
                return Ok(None);
            };
            let before = match join.state_before {
                Some(g) => state::load_group(c, g)?,
                None => Default::default(),
            };
            Ok(Some((room_row.room_version, join.stream_ordering, before)))
        })
        .await?;
    let Some((version_id, Some(stream), partial_before)) = held else {
        // The join never landed (we stopped in between, or it failed): nothing to complete.
        tracing::warn!(room = %room, "partial state: our join is not in the room; mark dropped");
        s.rooms.send(room, ClearPartial).await??;
        return Ok(());
    };
    let version = RoomVersion::parse(&version_id)
        .ok_or_else(|| Error::internal(format!("room version {version_id} unsupported")))?;

    let query = format!("event_id={}", enc(join_event_id));
    let ids = fed
        .client
        .request(
            "GET",
            server,
            &format!(
                "/_matrix/federation/v1/state_ids/{}?{query}",
                enc(room.as_str())
            ),
            None,
        )
        .await?;
    let state_ids = id_list(&ids, "pdu_ids");
    let chain_ids = id_list(&ids, "auth_chain_ids");
    if state_ids.is_empty() || state_ids.len() + chain_ids.len() > MAX_STATE_IDS {
        return Err(Error::Remote(format!(
            "{server} answered /state_ids with {} state events",
            state_ids.len()
        )));
    }
    let wanted_state: HashSet<String> = state_ids.iter().cloned().collect();
    let all: Vec<String> = state_ids.iter().chain(chain_ids.iter()).cloned().collect();
    let q = all.clone();
    let known: HashSet<String> = s
        .core
        .db
        .read(move |c| {
            Ok(events::get_events(c, &q)?
                .into_iter()
                .map(|r| r.event_id)
                .collect())
        })
        .await?;
    let missing: Vec<String> = all
        .iter()
        .filter(|id| !known.contains(*id))
        .cloned()
        .collect();

    // The missing events: one request for many, one each for a few.
    let (state_raw, chain_raw): (Vec<Value>, Vec<Value>) = if missing.len() > EVENT_BY_EVENT {
        let mut full = fed
            .client
            .request(
                "GET",
                server,
                &format!(
                    "/_matrix/federation/v1/state/{}?{query}",
                    enc(room.as_str())
                ),
                None,
            )
            .await?;
        let mut take = |k: &str| match full.get_mut(k).map(Value::take) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        (take("pdus"), take("auth_chain"))
    } else {
        use futures_util::StreamExt;
        let fetched: Vec<Option<Value>> = futures_util::stream::iter(missing.iter().cloned())
            .map(|id| {
                let fed = Arc::clone(&fed);
                let server = server.to_owned();
                async move {
                    let path = format!("/_matrix/federation/v1/event/{}", enc(&id));
                    match fed.client.request("GET", &server, &path, None).await {
                        Ok(v) => v
                            .get("pdus")
                            .and_then(Value::as_array)
                            .and_then(|a| a.first().cloned()),
                        Err(e) => {
                            tracing::info!(event = %id, error = %e, "partial state: event fetch failed");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(EVENT_FETCHES)
            .collect()
            .await;
        (fetched.into_iter().flatten().collect(), Vec::new())
    };
    let mut answer = json!({"state": state_raw, "auth_chain": chain_raw});
    let (pdus, listed) =
        super::join::checked_answer(&fed, &mut answer, version, room.as_str()).await;
    // Only what `/state_ids` named and we lacked is taken; a `/state` answer must name
    // exactly the `/state_ids` state.
    let got: HashSet<String> = pdus.iter().map(|p| p.event_id().to_string()).collect();
    if missing.len() > EVENT_BY_EVENT {
        let listed: HashSet<String> = listed.iter().map(|i| i.to_string()).collect();
        let unlisted = listed.difference(&wanted_state).count();
        let absent = wanted_state
            .iter()
            .filter(|id| !known.contains(*id) && !listed.contains(*id))
            .count();
        if unlisted > 0 || absent > 0 {
            return Err(Error::Remote(format!(
                "{server}'s /state and /state_ids disagree ({unlisted} events not in /state_ids, {absent} state events missing or failing checks)"
            )));
        }
    }
    let still_missing: Vec<&String> = wanted_state
        .iter()
        .filter(|id| !known.contains(*id) && !got.contains(*id))
        .collect();
    if !still_missing.is_empty() {
        return Err(Error::Remote(format!(
            "{server} did not give {} of the state events (or they failed their checks)",
            still_missing.len()
        )));
    }
    let wanted: HashSet<&String> = missing.iter().collect();
    let new: Vec<Pdu> = pdus
        .into_iter()
        .filter(|p| wanted.contains(&p.event_id().to_string()))
        .collect();
    let (rejected, checked) =
        outliers::store_checked(&s.core, &s.rooms, room.as_str(), version, new).await?;
    let rejected: HashSet<String> = rejected.into_iter().collect();

    // The full state before our join: every state event named, less the rejected ones.
    let q = state_ids.clone();
    let stored: Vec<EventRow> = s.core.db.read(move |c| events::get_events(c, &q)).await?;
    let mut full: crate::storage::state::StateIds = Default::default();
    let mut events_for_actor: Vec<Arc<Pdu>> = Vec::with_capacity(stored.len());
    let by_id: HashMap<String, Arc<Pdu>> = checked
        .into_iter()
        .map(|p| (p.event_id().to_string(), p))
        .collect();
    for row in stored {
        if row.rejected.is_some()
            || rejected.contains(&row.event_id)
            || row.room_id != room.as_str()
        {
            continue;
        }
        let Some(key) = row.state_key.clone() else {
            continue;
        };
        let pdu = match by_id.get(&row.event_id) {
            Some(p) => Arc::clone(p),
            None => match crate::rooms::actor::parse_row(&row.event_id, &row.json, version) {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    tracing::warn!(event = %row.event_id, error = %e, "partial state: unreadable stored event");
                    continue;
                }
            },
        };
        full.insert((row.event_type.clone(), key), row.event_id.clone());
        events_for_actor.push(pdu);
    }
    if !rejected.is_empty() {
        tracing::warn!(room = %room, count = rejected.len(), "partial state: some of the room's state failed its auth checks; left out");
    }
    ps::agrees(&partial_before, &full).map_err(|e| {
        Error::Remote(format!(
            "{server}'s state disagrees with its join answer: {e}"
        ))
    })?;

    let count = full.len();
    let deferred = s
        .rooms
        .send(
            room,
            CompletePartial {
                state: full,
                events: events_for_actor,
                stream,
                version,
            },
        )
        .await??;
    tracing::info!(room = %room, via = server, state = count, fetched = missing.len(), deferred = deferred.len(), "partial state: room completed");
    readmit(s, room, version, server, deferred).await;
    Ok(())
}

/// The events deferred during partial state, admitted again (now against the full state).
async fn readmit(
    s: &Arc<Services>,
    room: &OwnedRoomId,
    version: RoomVersion,
    origin: &str,
    deferred: Vec<(String, String)>,
) {
    for (id, json) in deferred {
        let pdu = match crate::rooms::actor::parse_row(&id, &json, version) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::warn!(event = %id, error = %e, "partial state: unreadable deferred event");
                continue;
            }
        };
        let msg = |p: &Arc<Pdu>| InboundPdus {
            pdus: vec![(Arc::clone(p), None)],
            local: false,
            version: None,
            checked_events: Vec::new(),
            txn_record: None,
        };
        let mut outcome = s.rooms.admit(room, msg(&pdu)).await.map(|mut o| o.pop());
        if let Ok(Some(InboundOutcome::Missing { prev, auth })) = &outcome {
            let sender = pdu.sender().server_name().to_string();
            let from = if s.core.is_local(&sender) {
                origin.to_owned()
            } else {
                sender
            };
            if crate::federation::inbound::gaps::fill(s, &from, room, version, &pdu, prev, auth)
                .await
            {
                outcome = s.rooms.admit(room, msg(&pdu)).await.map(|mut o| o.pop());
            }
        }
        tracing::info!(room = %room, event = %id, outcome = ?outcome, "partial state: deferred event decided");
    }
}
