//! Delivery to HTTP push gateways (`POST {url}`, the spec's `/_matrix/push/v1/notify`).
//!
//! The queue is the `push_outbox` table, filled by the push worker in the same write as the
//! notification, so a restart loses nothing: at start the loop finds every row still there.
//! The loop takes the rows that are due (oldest first, a bounded batch), sends them
//! concurrently through the outbound address policy (`net/`: the gateway's address must
//! pass the policy unless `outbound.allowed_addresses` names it; redirects are not followed)
//! and, per row:
//! * 2xx: delivered, the row goes; pushkeys the gateway lists as `rejected` lose their
//!   pusher (and its queue), as the spec asks;
//! * 3xx, and 4xx other than 408/429: the gateway will never take it: the row goes (logged);
//! * anything else (5xx, 408, 429, no connection, refused address, timeout): retried after
//!   `push.retry_min_ms`, doubling up to `push.retry_max_ms`, until `push.give_up_secs`
//!   after it was queued.
//!
//! Between batches it sleeps until the next row is due, or until the worker says it queued
//! something.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::Notify;
use weft_protocol::push as rules;

use crate::core::Core;
use crate::net::{NetContext, OutboundClient};
use crate::storage::push::{self, OutboxRow};
use crate::storage::{self};

/// Rows sent per round.
const BATCH: i64 = 32;
/// Longest sleep with nothing due (a safety net; the worker wakes the loop).
const IDLE: Duration = Duration::from_secs(30);
/// Largest gateway answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// What became of one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Delivered { rejected: Vec<String> },
    Retry(String),
    Drop(String),
}

/// The fate of an answer with this status (and body, when it is a success).
pub fn fate_of(status: u16, body: &[u8]) -> Fate {
    match status {
        200..=299 => Fate::Delivered {
            rejected: serde_json::from_slice::<Value>(body)
                .map(|v| rules::rejected_pushkeys(&v))
                .unwrap_or_default(),
        },
        300..=399 => Fate::Drop(format!(
            "gateway redirected ({status}); redirects are not followed"
        )),
        408 | 429 => Fate::Retry(format!("gateway answered {status}")),
        400..=499 => Fate::Drop(format!("gateway refused the push ({status})")),
        _ => Fate::Retry(format!("gateway answered {status}")),
    }
}

/// A TLS configuration that verifies gateways against the public roots.
fn tls() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let builder = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        Err(_) => rustls::ClientConfig::builder(),
    };
    let mut cfg = builder.with_root_certificates(roots).with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

async fn send(http: &OutboundClient, row: &OutboxRow) -> Fate {
    let req = http
        .client()
        .post(row.url.as_str())
        .insert_header(("Content-Type", "application/json"));
    match req.send_body(row.body.clone()).await {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let body = resp.body().limit(MAX_ANSWER).await.unwrap_or_default();
            fate_of(status, &body)
        }
        Err(e) => Fate::Retry(e.to_string()),
    }
}

/// Applies a round's outcomes in one write.
fn settle(
    conn: &mut storage::AnyConnection,
    done: &[(OutboxRow, Fate)],
    now: i64,
    cfg: &crate::config::PushConfig,
) -> storage::StorageResult<()> {
    for (row, fate) in done {
        match fate {
            Fate::Delivered { rejected } => {
                push::delivered(conn, &row.user_id, &row.app_id, &row.pushkey, &row.event_id)?;
                for key in rejected {
                    if push::delete_pusher(conn, &row.user_id, &row.app_id, key)? {
                        tracing::info!(user = %row.user_id, app_id = %row.app_id, "push gateway rejected a pushkey; pusher removed");
                    }
                }
            }
            Fate::Drop(_) => {
                push::delivered(conn, &row.user_id, &row.app_id, &row.pushkey, &row.event_id)?
            }
            Fate::Retry(_) => {
                let attempts = row.attempts.saturating_add(1);
                let wait = rules::backoff_ms(attempts as u32, cfg.retry_min_ms, cfg.retry_max_ms);
                let next = now.saturating_add(wait as i64);
                if next
                    > row
                        .created_ts
                        .saturating_add(cfg.give_up_secs as i64 * 1000)
                {
                    push::delivered(conn, &row.user_id, &row.app_id, &row.pushkey, &row.event_id)?;
                } else {
                    push::reschedule(conn, row, attempts, next)?;
                }
            }
        }
    }
    Ok(())
}

/// Runs delivery until the process ends.
pub async fn run(core: Arc<Core>, net: Arc<NetContext>, wake: Arc<Notify>) {
    let cfg = core.config.push.clone();
    let http = OutboundClient {
        ctx: net,
        tls: Arc::new(tls()),
        timeout: Duration::from_millis(cfg.gateway_timeout_ms.max(100)),
    };
    let mut last_prune = None::<std::time::Instant>;
    loop {
        // Notification rows past their retention age go, once an hour.
        if last_prune.is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(std::time::Instant::now());
            let before = storage::now_ms()
                .saturating_sub((cfg.notification_retention_secs as i64).saturating_mul(1000));
            if let Err(e) = core
                .db
                .write("push", move |c| push::prune_notifications(c, before))
                .await
            {
                tracing::warn!(error = %e, "could not prune old notifications");
            }
        }
        let now = storage::now_ms();
        let rows = match core.db.read(move |c| push::due(c, now, BATCH)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "push delivery: cannot read the queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !rows.is_empty() {
            let fates = join_all(rows.iter().map(|r| send(&http, r))).await;
            let done: Vec<(OutboxRow, Fate)> = rows.into_iter().zip(fates).collect();
            for (row, fate) in &done {
                match fate {
                    Fate::Delivered { .. } => crate::observe::metrics::push_delivery("ok"),
                    Fate::Retry(why) => {
                        crate::observe::metrics::push_delivery("retry");
                        tracing::info!(user = %row.user_id, app_id = %row.app_id, attempts = row.attempts + 1, reason = %why, "push not delivered; will retry");
                    }
                    Fate::Drop(why) => {
                        crate::observe::metrics::push_delivery("dropped");
                        tracing::warn!(user = %row.user_id, app_id = %row.app_id, reason = %why, "push dropped");
                    }
                }
            }
            let now = storage::now_ms();
            let c2 = cfg.clone();
            if let Err(e) = core
                .db
                .write("push", move |c| settle(c, &done, now, &c2))
                .await
            {
                tracing::warn!(error = %e, "push delivery: cannot record outcomes");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            continue;
        }
        let next = core.db.read(push::next_due).await.ok().flatten();
        let sleep = match next {
            Some(t) => {
                Duration::from_millis(t.saturating_sub(storage::now_ms()).max(0) as u64).min(IDLE)
            }
            None => IDLE,
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates() {
        assert_eq!(
            fate_of(200, br#"{"rejected": ["k"]}"#),
            Fate::Delivered {
                rejected: vec!["k".into()]
            }
        );
        assert_eq!(
            fate_of(200, b"not json"),
            Fate::Delivered { rejected: vec![] }
        );
        assert!(matches!(fate_of(404, b""), Fate::Drop(_)));
        assert!(matches!(fate_of(400, b""), Fate::Drop(_)));
        assert!(matches!(fate_of(429, b""), Fate::Retry(_)));
        assert!(matches!(fate_of(408, b""), Fate::Retry(_)));
        assert!(matches!(fate_of(500, b""), Fate::Retry(_)));
        assert!(matches!(fate_of(302, b""), Fate::Drop(_)));
        assert!(matches!(fate_of(503, b""), Fate::Retry(_)));
    }
}
