//! Return detection: liveness probes to unreachable destinations, within a global budget.
//!
//! One task for the whole server ticks `federation.probe_per_second` times a second; each
//! tick sends at most one probe (`GET /_matrix/federation/v1/version`, unsigned, bounded by
//! `probe_timeout_ms`), so the budget holds however many destinations are down. A
//! destination is due `probe_interval_ms` (±20% jitter, so probes of destinations that
//! failed together spread out) after its last probe or failure. When more are due than the
//! budget allows, the tick picks by [`priority`]: a large queue and recent contact first,
//! and the longer a destination has waited past its due time the more it counts, so none
//! starves. A successful probe is a sign of life (see the parent module): the backoff ends
//! and the queue is sent at once. A failed one re-checks the catch-up bounds.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Health, Shared, WakeReason, jittered};
use crate::storage::now_ms;

/// How much a due destination deserves the next probe: grows with its queue (log scale),
/// with how recently it was in contact (within hours, not days), and with how long it has
/// been waiting past its due time (one point per probe interval overdue).
pub fn priority(
    backlog: i64,
    since_contact_ms: Option<i64>,
    overdue_ms: i64,
    interval_ms: i64,
) -> f64 {
    let queue = (1.0 + backlog.max(0) as f64).log2();
    let recency = match since_contact_ms {
        Some(ms) => 8.0 / (1.0 + ms.max(0) as f64 / 3_600_000.0),
        None => 0.0,
    };
    let waiting = overdue_ms.max(0) as f64 / interval_ms.max(1) as f64;
    queue + recency + waiting
}

/// The destination the next probe goes to, if any is due.
pub(super) fn pick<'a>(
    health: impl Iterator<Item = (&'a String, &'a Health)>,
    now: i64,
    interval_ms: i64,
) -> Option<String> {
    health
        .filter(|(_, h)| h.down && !h.probing && !h.sending && h.next_probe_ms <= now)
        .map(|(d, h)| {
            let score = priority(
                h.backlog,
                h.last_contact_ms.map(|t| now - t),
                now - h.next_probe_ms,
                interval_ms,
            );
            (d, score)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(d, _)| d.clone())
}

/// Runs the probe loop until the sender is dropped (nothing when probes are off).
pub(super) async fn run(shared: Weak<Shared>) {
    let (rate, interval_ms, timeout) = match shared.upgrade() {
        Some(s) => {
            let f = &s.core.config.federation;
            (
                f.probe_per_second,
                f.probe_interval_ms as i64,
                Duration::from_millis(f.probe_timeout_ms),
            )
        }
        None => return,
    };
    if rate <= 0.0 {
        return;
    }
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(s) = shared.upgrade() else { return };
        let now = now_ms();
        let dest = {
            let mut health = s.health.lock();
            let Some(dest) = pick(health.iter(), now, interval_ms) else {
                continue;
            };
            if let Some(h) = health.get_mut(&dest) {
                h.probing = true;
                h.next_probe_ms = now + jittered(interval_ms);
            }
            dest
        };
        s.probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        actix::spawn(probe_one(s, dest, timeout));
    }
}

async fn probe_one(s: Arc<Shared>, dest: String, timeout: Duration) {
    let result = s.client.probe(&dest, timeout).await;
    if let Some(h) = s.health.lock().get_mut(&dest) {
        h.probing = false;
    }
    match result {
        Ok(()) => {
            tracing::info!(destination = %dest, "probe answered: destination is back");
            s.alive(&dest, WakeReason::Probe);
        }
        Err(e) => {
            tracing::debug!(destination = %dest, error = %e, "probe failed");
            super::enforce_bounds(&s, &dest).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn down(backlog: i64, contact_ago: Option<i64>, due_at: i64, now: i64) -> Health {
        Health {
            down: true,
            backlog,
            last_contact_ms: contact_ago.map(|a| now - a),
            next_probe_ms: due_at,
            ..Default::default()
        }
    }

    #[test]
    fn priority_orders() {
        let hour = 3_600_000;
        // Bigger queues first.
        assert!(priority(1000, None, 0, 2000) > priority(10, None, 0, 2000));
        // Recently seen first.
        assert!(priority(10, Some(60_000), 0, 2000) > priority(10, Some(48 * hour), 0, 2000));
        assert!(priority(10, Some(48 * hour), 0, 2000) > priority(10, None, 0, 2000));
        // Waiting long enough beats anything.
        assert!(priority(1, None, 60_000, 2000) > priority(1_000_000, Some(0), 0, 2000));
    }

    #[test]
    fn picks_only_due_down_idle_destinations() {
        let now = 1_000_000;
        let mut h: HashMap<String, Health> = HashMap::new();
        h.insert(
            "up".into(),
            Health {
                backlog: 99,
                ..Default::default()
            },
        );
        h.insert("later".into(), down(99, Some(0), now + 1, now));
        let mut probing = down(99, Some(0), now, now);
        probing.probing = true;
        h.insert("probing".into(), probing);
        let mut sending = down(99, Some(0), now, now);
        sending.sending = true;
        h.insert("sending".into(), sending);
        assert_eq!(pick(h.iter(), now, 2000), None);
        h.insert("small".into(), down(1, None, now, now));
        h.insert("big".into(), down(500, None, now, now));
        assert_eq!(pick(h.iter(), now, 2000).as_deref(), Some("big"));
        h.insert("recent".into(), down(500, Some(1000), now, now));
        assert_eq!(pick(h.iter(), now, 2000).as_deref(), Some("recent"));
    }
}
