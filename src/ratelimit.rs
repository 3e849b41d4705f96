//! Rate limits: token buckets (governor's GCRA) keyed by who is asking.
//!
//! | limit | key | where |
//! |---|---|---|
//! | `login_per_ip`, `login_per_account` | client IP; the user ID tried | `POST /login`, before the password hash |
//! | `register_per_ip` | client IP | `POST /register`, before the account is made |
//! | `send_per_user` | user ID | message, state and redaction sends |
//! | `create_room_per_user` | user ID | `POST /createRoom` |
//! | `federation_per_origin` | origin server | every authenticated federation request |
//!
//! and one `/send` transaction in flight per origin: a second waits up to
//! `federation_send_wait_ms` for the first, then gets 429. A refusal is 429
//! `M_LIMIT_EXCEEDED` with `retry_after_ms` — the time until the bucket admits one more.
//!
//! The client IP is the TCP peer (a proxy in front makes every client one IP: raise the IP
//! limits there). Keys are forgotten when their bucket is full again ([`RateLimits::sweep`],
//! run periodically), so the maps hold only recently active keys. `rate_limits.enabled =
//! false` turns every limit off (tests, benchmarks).

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{Rate, RateLimitsConfig};
use crate::error::Error;

/// Every limit of the server.
pub struct RateLimits {
    enabled: bool,
    clock: DefaultClock,
    login_ip: DefaultKeyedRateLimiter<IpAddr>,
    login_account: DefaultKeyedRateLimiter<String>,
    register_ip: DefaultKeyedRateLimiter<IpAddr>,
    send_user: DefaultKeyedRateLimiter<String>,
    create_room_user: DefaultKeyedRateLimiter<String>,
    federation_origin: DefaultKeyedRateLimiter<String>,
    send_wait: Duration,
    /// One inbound `/send` in flight per origin.
    send_slots: moka::sync::Cache<String, Arc<tokio::sync::Semaphore>>,
}

fn quota(r: Rate) -> Quota {
    let period = Duration::from_secs_f64(1.0 / r.per_second.max(1e-6));
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// A held `/send` slot (released on drop).
pub struct SendSlot(#[allow(dead_code)] Option<tokio::sync::OwnedSemaphorePermit>);

impl RateLimits {
    pub fn new(c: &RateLimitsConfig) -> Self {
        Self {
            enabled: c.enabled,
            clock: DefaultClock::default(),
            login_ip: RateLimiter::keyed(quota(c.login_per_ip)),
            login_account: RateLimiter::keyed(quota(c.login_per_account)),
            register_ip: RateLimiter::keyed(quota(c.register_per_ip)),
            send_user: RateLimiter::keyed(quota(c.send_per_user)),
            create_room_user: RateLimiter::keyed(quota(c.create_room_per_user)),
            federation_origin: RateLimiter::keyed(quota(c.federation_per_origin)),
            send_wait: Duration::from_millis(c.federation_send_wait_ms),
            send_slots: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        what: &str,
    ) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let ms = (wait.as_millis() as u64).max(1);
            tracing::info!(what, retry_after_ms = ms, "rate limited");
            Error::LimitExceeded(format!("too many {what}; retry later"), ms)
        })
    }

    pub fn login(&self, ip: Option<IpAddr>, user_id: &str) -> Result<(), Error> {
        if let Some(ip) = ip {
            self.check(&self.login_ip, &ip, "login attempts from this address")?;
        }
        self.check(
            &self.login_account,
            &user_id.to_owned(),
            "login attempts for this account",
        )
    }

    pub fn register(&self, ip: Option<IpAddr>) -> Result<(), Error> {
        match ip {
            Some(ip) => self.check(&self.register_ip, &ip, "registrations from this address"),
            None => Ok(()),
        }
    }

    pub fn send(&self, user_id: &str) -> Result<(), Error> {
        self.check(&self.send_user, &user_id.to_owned(), "events sent")
    }

    pub fn create_room(&self, user_id: &str) -> Result<(), Error> {
        self.check(&self.create_room_user, &user_id.to_owned(), "rooms created")
    }

    pub fn federation(&self, origin: &str) -> Result<(), Error> {
        self.check(
            &self.federation_origin,
            &origin.to_owned(),
            "federation requests from this server",
        )
    }

    /// Waits (bounded) for the origin's one `/send` slot.
    pub async fn federation_send_slot(&self, origin: &str) -> Result<SendSlot, Error> {
        if !self.enabled {
            return Ok(SendSlot(None));
        }
        let sem = self.send_slots.get_with(origin.to_owned(), || {
            Arc::new(tokio::sync::Semaphore::new(1))
        });
        match tokio::time::timeout(self.send_wait, sem.acquire_owned()).await {
            Ok(Ok(p)) => Ok(SendSlot(Some(p))),
            _ => {
                tracing::info!(origin, "second concurrent /send refused");
                Err(Error::LimitExceeded(
                    "a transaction from this server is still being processed".into(),
                    self.send_wait.as_millis().max(1) as u64,
                ))
            }
        }
    }

    /// Forgets keys whose buckets are full again (run periodically).
    pub fn sweep(&self) {
        self.login_ip.retain_recent();
        self.login_account.retain_recent();
        self.register_ip.retain_recent();
        self.send_user.retain_recent();
        self.create_room_user.retain_recent();
        self.federation_origin.retain_recent();
        for l in [&self.login_account, &self.send_user, &self.create_room_user] {
            l.shrink_to_fit();
        }
        self.send_slots.run_pending_tasks();
    }

    /// Keys currently tracked (for the bounds tests).
    pub fn tracked(&self) -> usize {
        self.login_ip.len()
            + self.login_account.len()
            + self.register_ip.len()
            + self.send_user.len()
            + self.create_room_user.len()
            + self.federation_origin.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(enabled: bool) -> RateLimitsConfig {
        let tight = Rate {
            per_second: 20.0,
            burst: 2,
        };
        RateLimitsConfig {
            enabled,
            login_per_ip: tight,
            login_per_account: tight,
            register_per_ip: tight,
            send_per_user: tight,
            create_room_per_user: tight,
            federation_per_origin: tight,
            federation_send_wait_ms: 20,
        }
    }

    fn retry_ms(e: Error) -> u64 {
        match e {
            Error::LimitExceeded(_, ms) => ms,
            other => panic!("expected LimitExceeded, got {other:?}"),
        }
    }

    #[test]
    fn bursts_then_refuses_with_a_retry_time_then_recovers() {
        let l = RateLimits::new(&config(true));
        assert!(l.send("@a:x").is_ok());
        assert!(l.send("@a:x").is_ok());
        let ms = retry_ms(l.send("@a:x").unwrap_err());
        assert!((1..=50).contains(&ms), "{ms}");
        // Other keys are not affected.
        assert!(l.send("@b:x").is_ok());
        std::thread::sleep(Duration::from_millis(ms + 5));
        assert!(l.send("@a:x").is_ok(), "recovers after retry_after_ms");
    }

    #[test]
    fn login_is_limited_per_ip_and_per_account() {
        let l = RateLimits::new(&config(true));
        let ip1: IpAddr = "192.0.2.1".parse().unwrap();
        let ip2: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.login(Some(ip1), "@a:x").is_ok());
        assert!(l.login(Some(ip1), "@b:x").is_ok());
        // The IP is exhausted, whatever the account.
        assert!(l.login(Some(ip1), "@c:x").is_err());
        // The account is limited across addresses.
        assert!(l.login(Some(ip2), "@a:x").is_ok());
        assert!(l.login(Some(ip2), "@a:x").is_err());
    }

    #[test]
    fn disabled_limits_never_refuse() {
        let l = RateLimits::new(&config(false));
        for _ in 0..100 {
            assert!(l.send("@a:x").is_ok());
            assert!(l.federation("o").is_ok());
            assert!(l.register(Some("192.0.2.1".parse().unwrap())).is_ok());
        }
    }

    #[test]
    fn sweep_forgets_idle_keys() {
        let l = RateLimits::new(&config(true));
        for i in 0..500 {
            let _ = l.federation(&format!("s{i}.example"));
        }
        assert_eq!(l.tracked(), 500);
        std::thread::sleep(Duration::from_millis(150));
        l.sweep();
        assert_eq!(l.tracked(), 0);
    }

    #[actix_rt::test]
    async fn one_send_in_flight_per_origin() {
        let l = RateLimits::new(&config(true));
        let first = l.federation_send_slot("a.example").await.unwrap();
        let e = l.federation_send_slot("a.example").await.err().unwrap();
        assert!(retry_ms(e) >= 1);
        assert!(l.federation_send_slot("b.example").await.is_ok());
        drop(first);
        assert!(l.federation_send_slot("a.example").await.is_ok());
    }
}
