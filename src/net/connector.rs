//! The outbound HTTP client: an awc client whose TCP connector resolves the name itself,
//! checks every address against the [`AddressPolicy`] and connects only to the addresses that
//! pass. IP literals take the same path (actix's own resolver would skip them).
//!
//! A *dial override* lets discovery say "connect to this SRV target for that name and
//! port" while the URL keeps the name the TLS certificate must carry.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::tcp::TcpConnectorService;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;

use super::dns::{self, DnsSettings};
use super::policy::AddressPolicy;

/// What every connection of one outbound client shares.
pub struct NetContext {
    pub policy: AddressPolicy,
    pub dns: Arc<DnsSettings>,
    /// `(name, port)` → the host to connect to instead (SRV targets), bounded.
    dial: moka::sync::Cache<(String, u16), String>,
    refused: AtomicU64,
    connects: AtomicU64,
    id: u64,
}

impl NetContext {
    pub fn new(policy: AddressPolicy, dns: DnsSettings) -> Arc<Self> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Arc::new(Self {
            policy,
            dns: Arc::new(dns),
            dial: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
            refused: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            id: IDS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Connect to `dial_host` whenever a URL names `name:port`.
    pub fn set_dial(&self, name: &str, port: u16, dial_host: &str) {
        self.dial
            .insert((name.to_owned(), port), dial_host.to_owned());
    }

    /// Addresses refused by the policy so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections attempted so far (after the policy).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    pub fn dial_entries(&self) -> u64 {
        self.dial.run_pending_tasks();
        self.dial.entry_count()
    }

    /// Resolves `host` and keeps the addresses the policy allows.
    pub async fn allowed_addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let addrs = dns::lookup(&self.dns, host, port)
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let mut allowed = Vec::with_capacity(addrs.len());
        let mut last_refusal = None;
        for a in addrs {
            match self.policy.check(a.ip()) {
                Ok(()) => allowed.push(a),
                Err(r) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    last_refusal = Some(r);
                }
            }
        }
        if allowed.is_empty() {
            return Err(match last_refusal {
                Some(r) => {
                    tracing::info!(host, port, refused = %r, "outbound connection refused by the address policy");
                    format!("{host}: {r}")
                }
                None => format!("{host} has no addresses"),
            });
        }
        Ok(allowed)
    }
}

/// The TCP connector service awc calls for every new connection.
#[derive(Clone)]
pub struct GuardedConnector {
    ctx: Arc<NetContext>,
}

impl Service<ConnectInfo<Uri>> for GuardedConnector {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let ctx = Arc::clone(&self.ctx);
        Box::pin(async move {
            let host = req
                .hostname()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = req.port();
            let dial_host = ctx.dial.get(&(host.clone(), port)).unwrap_or(host);
            let allowed = ctx
                .allowed_addrs(&dial_host, port)
                .await
                .map_err(|e| ConnectError::Resolver(e.into()))?;
            ctx.connects.fetch_add(1, Ordering::Relaxed);
            TcpConnectorService::default()
                .call(req.set_addrs(allowed))
                .await
        })
    }
}

/// Settings of one outbound HTTP client.
#[derive(Clone)]
pub struct OutboundClient {
    pub ctx: Arc<NetContext>,
    pub tls: Arc<rustls::ClientConfig>,
    /// Whole-request timeout.
    pub timeout: Duration,
}

thread_local! {
    static CLIENTS: RefCell<HashMap<(u64, u64), awc::Client>> = RefCell::new(HashMap::new());
}

impl OutboundClient {
    /// This thread's awc client for these settings (awc clients are not `Send`; each thread
    /// keeps its own, with its own connection pool).
    pub fn client(&self) -> awc::Client {
        let key = (self.ctx.id, self.timeout.as_millis() as u64);
        CLIENTS.with(|cell| {
            if let Some(c) = cell.borrow().get(&key) {
                return c.clone();
            }
            let connector = awc::Connector::new()
                .connector(GuardedConnector {
                    ctx: Arc::clone(&self.ctx),
                })
                .rustls_0_23(Arc::clone(&self.tls))
                .timeout(Duration::from_secs(10))
                .handshake_timeout(Duration::from_secs(10));
            let client = awc::Client::builder()
                .connector(connector)
                .timeout(self.timeout)
                .disable_redirects()
                .finish();
            cell.borrow_mut().insert(key, client.clone());
            client
        })
    }
}
