//! DNS for outbound connections: SRV records (server discovery) and addresses.
//!
//! hickory-resolver does the DNS (it caches by the records' TTLs, bounded by its cache size).
//! With `outbound.dns_servers` empty it reads the system configuration for SRV and leaves
//! addresses to the system resolver (`getaddrinfo`, so `/etc/hosts` and `localhost` keep
//! working); with servers named (tests run their own on loopback) both go to them. Each
//! thread keeps its own resolver: actix arbiters are separate single-threaded runtimes and
//! the resolver's connections belong to the runtime that opened them.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

/// Which DNS servers to ask (empty: the system's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    pub servers: Vec<SocketAddr>,
}

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

thread_local! {
    static RESOLVER: RefCell<Option<(Arc<DnsSettings>, TokioResolver)>> = const { RefCell::new(None) };
}

fn resolver(settings: &Arc<DnsSettings>) -> Option<TokioResolver> {
    RESOLVER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Some((s, r)) = slot.as_ref()
            && (Arc::ptr_eq(s, settings) || **s == **settings)
        {
            return Some(r.clone());
        }
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        opts.cache_size = 1024;
        let builder = if settings.servers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "no system DNS configuration; SRV lookups disabled");
                    return None;
                }
            }
        } else {
            let mut config = ResolverConfig::new();
            for addr in &settings.servers {
                config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
            }
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let r = builder.with_options(opts).build();
        *slot = Some((Arc::clone(settings), r.clone()));
        Some(r)
    })
}

/// SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`), sorted by priority, then by
/// descending weight. Empty when there are none or DNS fails.
pub async fn srv(settings: &Arc<DnsSettings>, name: &str) -> Vec<SrvTarget> {
    let Some(r) = resolver(settings) else {
        return Vec::new();
    };
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let lookup = match r.srv_lookup(fqdn.as_str()).await {
        Ok(l) => l,
        Err(e) => {
            if !e.is_no_records_found() {
                tracing::debug!(name, error = %e, "SRV lookup failed");
            }
            return Vec::new();
        }
    };
    let mut out: Vec<SrvTarget> = lookup
        .iter()
        .map(|s| SrvTarget {
            priority: s.priority(),
            weight: s.weight(),
            port: s.port(),
            target: s.target().to_utf8().trim_end_matches('.').to_owned(),
        })
        // "." means the service is decidedly not available at this domain.
        .filter(|s| !s.target.is_empty())
        .collect();
    out.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    out.truncate(16);
    out
}

/// The addresses of `host` (an IP literal is its own answer).
pub async fn lookup(
    settings: &Arc<DnsSettings>,
    host: &str,
    port: u16,
) -> std::io::Result<Vec<SocketAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if settings.servers.is_empty() {
        return Ok(tokio::net::lookup_host((bare, port)).await?.collect());
    }
    let Some(r) = resolver(settings) else {
        return Ok(Vec::new());
    };
    let fqdn = format!("{}.", bare.trim_end_matches('.'));
    match r.lookup_ip(fqdn.as_str()).await {
        Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}
