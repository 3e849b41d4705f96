//! `GET /_weft/admin/v1/linearized` (admins only): the operator's view of Linearized Matrix.
//! (Also `GET /_weft/admin/v1/sync_waiters`: the number of parked `/sync` requests.)
//!
//! * `hubbed_rooms`: rooms this server orders, each with its participant servers (joined
//!   users per server) and each participant's outbound backlog;
//! * `participating_rooms`: rooms hubbed elsewhere, with their hub;
//! * `destinations`: every destination with queued work: backlog (PDUs and EDUs still owed,
//!   all rooms together), consecutive failures, and when the next attempt is due.

use std::collections::{BTreeMap, HashMap};

use actix_web::{HttpResponse, web};
use ruma::OwnedRoomId;
use serde_json::json;
use weft_protocol::RoomVersion;

use super::tokens::AdminUser;
use crate::error::Result;
use crate::rooms::linearized::hub_of;
use crate::services::Services;
use crate::storage::{federation as fstore, linearized as lstore, rooms};

pub async fn linearized(s: web::Data<Services>, _admin: AdminUser) -> Result<HttpResponse> {
    let backlog: HashMap<String, i64> = s.remote()?.backlog().await.into_iter().collect();
    let ours = s.server_name().to_owned();
    let backlog_for_rows = backlog.clone();
    let (hubbed, participating, destinations) = s
        .core
        .db
        .read(move |c| {
            let mut hubbed = Vec::new();
            let mut participating = Vec::new();
            for room in lstore::rooms_of_version(c, RoomVersion::Linearized.as_str())? {
                let hub = OwnedRoomId::try_from(room.room_id.as_str())
                    .ok()
                    .and_then(|r| hub_of(&r))
                    .unwrap_or_default();
                let joined = rooms::members_with(c, &room.room_id, "join")?;
                if hub != ours {
                    participating.push(json!({
                        "room_id": room.room_id,
                        "hub": hub,
                        "joined_users": joined.len(),
                    }));
                    continue;
                }
                let mut per_server: BTreeMap<String, usize> = BTreeMap::new();
                for u in &joined {
                    if let Some((_, server)) = u.split_once(':') {
                        *per_server.entry(server.to_owned()).or_default() += 1;
                    }
                }
                let participants: Vec<_> = per_server
                    .iter()
                    .filter(|(server, _)| **server != ours)
                    .map(|(server, n)| {
                        json!({
                            "server": server,
                            "joined_users": n,
                            "backlog": backlog_for_rows.get(server).copied().unwrap_or(0),
                        })
                    })
                    .collect();
                hubbed.push(json!({
                    "room_id": room.room_id,
                    "joined_users": joined.len(),
                    "local_users": per_server.get(&ours).copied().unwrap_or(0),
                    "participants": participants,
                }));
            }
            let mut destinations = Vec::new();
            for (server, n) in &backlog_for_rows {
                let (failures, retry_at) = fstore::destination_state(c, server)?.unwrap_or((0, 0));
                destinations.push(json!({
                    "server": server,
                    "backlog": n,
                    "failures": failures,
                    "retry_at": retry_at,
                }));
            }
            Ok((hubbed, participating, destinations))
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "server_name": s.server_name(),
        "hubbed_rooms": hubbed,
        "participating_rooms": participating,
        "destinations": destinations,
    })))
}

/// `GET /_weft/admin/v1/sync_waiters` (admins only): how many `/sync` requests are parked
/// waiting for a wake-up right now (`{"parked": n}`).
pub async fn sync_waiters(s: web::Data<Services>, _admin: AdminUser) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(json!({"parked": s.core.notifier.parked()})))
}
