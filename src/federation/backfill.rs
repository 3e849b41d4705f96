//! Backfill: fetching a room's older history from other servers when a client pages back
//! past what we hold (a room joined over federation starts at our join).
//!
//! The oldest timeline event we hold whose `prev_events` we do not hold is the backfill
//! point. We ask the room's other servers for `/backfill` from there; the answer's events
//! pass the order-free checks (signatures and hashes, [`super::inbound::verify`]) and then
//! the admission of history ([`crate::rooms::admission::backfill`]: only ancestors of the
//! point, each checked against the state before it); the room actor stores them *before*
//! everything else in the stream (negative positions, older events lower), so `/messages`
//! pages through them in order. Current state is not touched. A partial-state room
//! (`rooms::partial_state`) is backfilled only once its full state is in (the request
//! waits, bounded): the state at the point would lack the members who sent its history.

use std::sync::Arc;

use weft_protocol::RoomVersion;

use super::client::enc;
use super::inbound::gaps;
use crate::federation::FederationOf;
use crate::rooms::admission::backfill as history;
use crate::rooms::messages::AppendHistory;
use crate::services::Services;
use crate::storage::rooms;

/// Fetches up to `limit` older events of a room from other servers. Returns how many were
/// stored in the timeline.
pub async fn backfill(s: &Services, room_id: &str, limit: usize) -> usize {
    let Some(fed) = s.federation().cloned() else {
        return 0;
    };
    let Ok(room) = ruma::OwnedRoomId::try_from(room_id) else {
        return 0;
    };
    // A partial-state room's state before our join lacks most members: history checked
    // against it would be rejected for good (a member's message "from a non-member").
    // Backfill waits for the full state (bounded), and does nothing without it. The mark is
    // cleared only after the rebuilt state groups are stored, so the point read below is
    // the full one.
    let bound =
        std::time::Duration::from_millis(s.core.config.federation.partial_state_members_wait_ms);
    match crate::rooms::partial_state::wait_full_state(&s.core, room_id, bound).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(room = room_id, "no backfill yet: the room is partial-state");
            return 0;
        }
        Err(e) => {
            tracing::warn!(room = room_id, error = %e, "backfill: could not read the partial-state mark");
            return 0;
        }
    }
    let r = room_id.to_owned();
    let found = s
        .core
        .db
        .read(move |c| {
            let Some(v) =
                rooms::get_room(c, &r)?.and_then(|row| RoomVersion::parse(&row.room_version))
            else {
                return Ok(None);
            };
            let Some(point) = history::point(c, &r)? else {
                return Ok(None);
            };
            let mut servers: Vec<String> = rooms::members_with(c, &r, "join")?
                .iter()
                .filter_map(|u| u.split_once(':').map(|(_, s)| s.to_owned()))
                .collect();
            servers.sort();
            servers.dedup();
            Ok(Some((v, point, servers)))
        })
        .await;
    let Ok(Some((version, point, servers))) = found else {
        return 0;
    };
    let point = Arc::new(point);
    let query: String = point
        .wanted
        .iter()
        .map(|p| format!("v={}", enc(p)))
        .collect::<Vec<_>>()
        .join("&");
    let path = format!(
        "/_matrix/federation/v1/backfill/{}?{query}&limit={}",
        enc(room_id),
        limit.clamp(1, 100)
    );
    for server in servers.iter().filter(|x| !s.core.is_local(x)) {
        let resp = match fed.client.request("GET", server, &path, None).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(server, error = %e, "backfill request failed");
                continue;
            }
        };
        let raws = resp
            .get("pdus")
            .and_then(|p| p.as_array())
            .cloned()
            .unwrap_or_default();
        let pdus = gaps::checked_pdus(&fed, &raws, version, room_id).await;
        if pdus.is_empty() {
            continue;
        }
        let core = Arc::clone(&s.core);
        let (r, p) = (room_id.to_owned(), Arc::clone(&point));
        let planned = s
            .core
            .db
            .read(move |c| {
                history::plan(
                    c,
                    &r,
                    version,
                    &p,
                    pdus,
                    &|| core.next_state_group(),
                    &|| core.next_backfill_position(),
                )
            })
            .await;
        let plan = match planned {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(room = room_id, error = %e, "could not check backfilled events");
                continue;
            }
        };
        if !plan.dropped.is_empty() {
            tracing::warn!(room = room_id, server, dropped = ?plan.dropped, "backfill answer carried events that are not history of the point; dropped");
        }
        let (accepted, rejected) = (plan.accepted, plan.rejected);
        if plan.events.is_empty() {
            continue;
        }
        let msg = AppendHistory {
            groups: plan.groups,
            events: plan.events,
        };
        match s.rooms.send(&room, msg).await {
            Ok(Ok(())) => {
                tracing::info!(
                    room = room_id,
                    server,
                    accepted,
                    rejected,
                    "backfilled history"
                );
                return accepted;
            }
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(room = room_id, error = %e, "could not store backfilled events")
            }
        }
    }
    0
}
