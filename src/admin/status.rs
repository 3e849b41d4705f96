//! The live numbers behind `/metrics` gauges and the status page: gathered on demand from
//! the room registry, the writers, the read pool and the outbound queue (nothing samples in
//! the background).

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Result;
use crate::observe::metrics::{self, DestinationGauges};
use crate::observe::rooms::RoomStatsSnapshot;
use crate::services::Services;
use crate::storage::{self, admin as astore, federation as fstore};

#[derive(Debug, Serialize)]
pub struct RoomLine {
    #[serde(flatten)]
    pub stats: RoomStatsSnapshot,
    pub alive: bool,
    pub mailbox_capacity: usize,
}

#[derive(Debug, Serialize)]
pub struct DestinationLine {
    #[serde(flatten)]
    pub gauges: DestinationGauges,
    pub last_success_ts: Option<i64>,
    pub last_error: Option<String>,
    /// When the next attempt is due (ms since the epoch), while backing off.
    pub next_retry_ts: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub server_name: String,
    pub now_ms: i64,
    pub room_actors: usize,
    pub rooms: Vec<RoomLine>,
    pub destinations: Vec<DestinationLine>,
    pub writer: Value,
    pub rate_limits: Value,
    pub config: Value,
}

pub async fn gather(s: &Services) -> Result<Status> {
    let now = storage::now_ms();
    let live = s.rooms.live_rooms();
    let cap = s.core.config.actors.room_mailbox;
    let rooms: Vec<RoomLine> = crate::observe::rooms::global()
        .snapshot()
        .into_iter()
        .map(|stats| RoomLine {
            alive: live.contains(&stats.room_id),
            stats,
            mailbox_capacity: cap,
        })
        .collect();
    let (depths, states) = s
        .core
        .db
        .read(|c| Ok((fstore::queue_depths(c)?, astore::destinations(c)?)))
        .await?;
    let mut by_server: std::collections::BTreeMap<String, DestinationLine> = Default::default();
    for (server, failures, retry_at, last_success, last_error) in states {
        let backing_off = failures > 0 && retry_at > now;
        by_server.insert(
            server.clone(),
            DestinationLine {
                gauges: DestinationGauges {
                    in_flight_age_secs: metrics::in_flight_age(&server)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                    catching_up: metrics::is_catching_up(&server),
                    destination: server,
                    backlog: 0,
                    failures: i64::from(failures),
                    backoff_secs: if backing_off {
                        (retry_at - now) as f64 / 1000.0
                    } else {
                        0.0
                    },
                },
                last_success_ts: last_success,
                last_error,
                next_retry_ts: backing_off.then_some(retry_at),
            },
        );
    }
    for (server, n) in depths {
        let line = by_server
            .entry(server.clone())
            .or_insert_with(|| DestinationLine {
                gauges: DestinationGauges {
                    in_flight_age_secs: metrics::in_flight_age(&server)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                    catching_up: metrics::is_catching_up(&server),
                    destination: server,
                    backlog: 0,
                    failures: 0,
                    backoff_secs: 0.0,
                },
                last_success_ts: None,
                last_error: None,
                next_retry_ts: None,
            });
        line.gauges.backlog = n;
    }
    let depths = s.core.db.writer_queue_depths();
    let (in_use, idle) = s.core.db.pool_state();
    let cfg = &s.core.config;
    Ok(Status {
        server_name: s.server_name().to_owned(),
        now_ms: now,
        room_actors: s.rooms.live_actors(),
        rooms,
        destinations: by_server.into_values().collect(),
        writer: json!({
            "backend": format!("{:?}", s.core.db.backend()),
            "queue_depths": depths,
            "max_batch": cfg.database.max_batch,
            "read_pool": {"in_use": in_use, "idle": idle, "size": cfg.database.pool_size},
        }),
        rate_limits: json!({ "refusals": metrics::rate_limit_refusals() }),
        config: json!({
            "server_name": cfg.server_name,
            "database": format!("{:?}", s.core.db.backend()),
            "client_listener": cfg.listeners.client,
            "federation_listener": cfg.listeners.federation,
            "federation_enabled": cfg.federation.enabled,
            "registration_open": cfg.registration.open,
            "room_mailbox": cfg.actors.room_mailbox,
            "destination_mailbox": cfg.actors.destination_mailbox,
            "room_idle_secs": cfg.actors.room_idle_secs,
            "retry_min_ms": cfg.federation.retry_min_ms,
            "retry_max_ms": cfg.federation.retry_max_ms,
            "max_body_bytes": cfg.limits.max_body_bytes,
            "metrics_path": if cfg.metrics.enabled { Some(cfg.metrics.path.clone()) } else { None },
        }),
    })
}

/// Refreshes the gauges from a gathered status (before `/metrics` renders).
pub fn refresh_gauges(s: &Services, st: &Status) {
    let rooms: Vec<RoomStatsSnapshot> = st
        .rooms
        .iter()
        .filter(|r| r.alive || r.stats.waiting > 0)
        .map(|r| r.stats.clone())
        .collect();
    let dests: Vec<DestinationGauges> = st.destinations.iter().map(|d| d.gauges.clone()).collect();
    let depths = s.core.db.writer_queue_depths();
    let (in_use, idle) = s.core.db.pool_state();
    metrics::refresh(&metrics::Current {
        room_actors: st.room_actors,
        room_mailbox_capacity: s.core.config.actors.room_mailbox,
        rooms: &rooms,
        writer_depths: &depths,
        pool_in_use: in_use,
        pool_idle: idle,
        destinations: &dests,
    });
}
