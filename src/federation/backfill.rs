//! Backfill: fetching a room's older history from other servers when a client pages back
//! past what we hold (a room joined over federation starts at our join).
//!
//! The oldest timeline event we hold whose `prev_events` we do not hold (or hold only as
//! outliers) is the backfill point. We ask the room's other servers for `/backfill` from
//! there, check each event (signatures and hashes, then the auth rules against its own auth
//! events), and store them *before* everything else in the stream: backfilled events get
//! negative stream positions, older events lower ones, so `/messages` pages through them in
//! order.

use weft_protocol::{RoomVersion, auth};

use super::client::enc;
use super::inbound::gaps;
use crate::rooms::view::pdu_of;
use crate::services::Services;
use crate::storage::events::{self, NewEvent};
use crate::storage::rooms;

/// The IDs to backfill from, if the room's history has a hole at its start.
fn backfill_points(
    conn: &mut crate::storage::AnyConnection,
    room_id: &str,
) -> crate::storage::StorageResult<Vec<String>> {
    let oldest = events::timeline_range(conn, room_id, i64::MIN, i64::MAX, 1, false)?;
    let Some(first) = oldest.first() else {
        return Ok(Vec::new());
    };
    let prevs: Vec<String> = serde_json::from_str::<serde_json::Value>(&first.json)
        .ok()
        .and_then(|v| v.get("prev_events").cloned())
        .and_then(|p| serde_json::from_value(p).ok())
        .unwrap_or_default();
    let mut missing = Vec::new();
    for p in prevs {
        match events::get_event(conn, &p)? {
            Some(r) if r.stream_ordering.is_some() => {}
            _ => missing.push(p),
        }
    }
    Ok(missing)
}

/// Fetches up to `limit` older events of a room from other servers. Returns how many were
/// stored.
pub async fn backfill(s: &Services, room_id: &str, limit: usize) -> usize {
    let Some(fed) = s.federation().cloned() else {
        return 0;
    };
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
            let points = backfill_points(c, &r)?;
            let mut servers: Vec<String> = rooms::members_with(c, &r, "join")?
                .iter()
                .filter_map(|u| u.split_once(':').map(|(_, s)| s.to_owned()))
                .collect();
            servers.sort();
            servers.dedup();
            Ok(Some((v, points, servers)))
        })
        .await;
    let Ok(Some((version, points, servers))) = found else {
        return 0;
    };
    if points.is_empty() {
        return 0;
    }
    let query: String = points
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
        let mut pdus = gaps::checked_pdus(&fed, &raws, version, room_id).await;
        if pdus.is_empty() {
            continue;
        }
        // Newest first, so each gets a lower stream position than the one after it.
        pdus.sort_by_key(|p| std::cmp::Reverse(p.depth()));
        let positions: Vec<i64> = pdus
            .iter()
            .map(|_| s.core.next_backfill_position())
            .collect();
        let room = room_id.to_owned();
        let stored = s
            .core
            .db
            .write(room_id, move |c| {
                let mut n = 0;
                for (pdu, pos) in pdus.iter().zip(positions) {
                    if let Some(existing) = events::get_event(c, pdu.event_id().as_str())?
                        && existing.stream_ordering.is_some()
                    {
                        continue;
                    }
                    // Auth against the event's own auth events (which we must hold).
                    let mut local = std::collections::HashMap::new();
                    for a in pdu.auth_events() {
                        if let Some(row) = events::get_event(c, a.as_str())?
                            && let Ok(mut p) = pdu_of(&row, version)
                        {
                            p.set_rejected(row.rejected.is_some());
                            local.insert(a.to_string(), std::sync::Arc::new(p));
                        }
                    }
                    if version.room_id_from_create_event() {
                        let create = format!("${}", &pdu.room_id().as_str()[1..]);
                        if let Some(row) = events::get_event(c, &create)?
                            && let Ok(p) = pdu_of(&row, version)
                        {
                            local.insert(create, std::sync::Arc::new(p));
                        }
                    }
                    let verdict = auth::check_against_auth_events(version, pdu, |id| {
                        local.get(id.as_str()).cloned()
                    });
                    let row = NewEvent {
                        event_id: pdu.event_id().to_string(),
                        room_id: room.clone(),
                        stream_ordering: verdict.is_ok().then_some(pos),
                        depth: pdu.depth().min(i64::MAX as u64) as i64,
                        event_type: pdu.kind_str(),
                        state_key: pdu.state_key().map(str::to_owned),
                        sender: pdu.sender().to_string(),
                        origin_server_ts: pdu.origin_server_ts().min(i64::MAX as u64) as i64,
                        json: pdu.to_canonical_string(),
                        state_before: None,
                        state_after: None,
                        outlier: verdict.is_err(),
                        rejected: verdict.err().map(|e| e.0),
                        soft_failed: false,
                        redacted_by: None,
                    };
                    if events::insert_event(c, &row)? {
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await;
        match stored {
            Ok(n) => {
                tracing::info!(room = room_id, server, events = n, "backfilled history");
                return n;
            }
            Err(e) => tracing::warn!(error = %e, "could not store backfilled events"),
        }
    }
    0
}
