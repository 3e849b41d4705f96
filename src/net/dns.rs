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

/// SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`) in the order RFC 2782 says
/// to try them ([`rfc2782_order`]). Empty when there are none or DNS fails.
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
    out.truncate(64);
    let mut out = rfc2782_order(out, &mut random_upto);
    out.truncate(16);
    out
}

/// A uniform random number in `0..=n` from the OS RNG (0 if it fails: the order then
/// degrades to "first listed", never to a wrong target).
fn random_upto(n: u32) -> u32 {
    use rand::TryRng;
    let mut b = [0u8; 8];
    if rand::rngs::SysRng.try_fill_bytes(&mut b).is_err() {
        return 0;
    }
    (u64::from_le_bytes(b) % (u64::from(n) + 1)) as u32
}

/// Orders SRV records as RFC 2782 says a client must try them: lowest priority first;
/// within a priority, a weighted random order (a record's chance of coming next is its
/// weight over the sum of the weights left; weight-0 records first in the running sum, so
/// they are picked only rarely when others have weight). `pick(n)` returns a number in
/// `0..=n`.
pub fn rfc2782_order(
    mut records: Vec<SrvTarget>,
    pick: &mut dyn FnMut(u32) -> u32,
) -> Vec<SrvTarget> {
    records.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.weight.cmp(&b.weight)));
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let end = rest
            .iter()
            .position(|r| r.priority != first.priority)
            .unwrap_or(rest.len());
        let (group, tail) = rest.split_at(end);
        // Zero weights sort first (RFC 2782: "all those with weight 0 are placed at the
        // beginning of the list").
        let mut left: Vec<&SrvTarget> = group.iter().collect();
        while !left.is_empty() {
            let total: u32 = left.iter().map(|r| u32::from(r.weight)).sum();
            let n = pick(total).min(total);
            let mut running = 0u32;
            let mut chosen = left.len() - 1;
            for (i, r) in left.iter().enumerate() {
                running += u32::from(r.weight);
                if running >= n {
                    chosen = i;
                    break;
                }
            }
            out.push(left.remove(chosen).clone());
        }
        rest = tail;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, target: &str) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            port: 8448,
            target: target.to_owned(),
        }
    }

    fn order(records: Vec<SrvTarget>, picks: &[u32]) -> Vec<String> {
        let mut it = picks.iter().copied();
        rfc2782_order(records, &mut |n| it.next().unwrap_or(0).min(n))
            .into_iter()
            .map(|r| r.target)
            .collect()
    }

    #[test]
    fn priorities_first_then_weighted_choice() {
        // (records, the numbers the RNG returns, expected order)
        let table: Vec<(Vec<SrvTarget>, Vec<u32>, Vec<&str>)> = vec![
            // Lower priority always first, whatever the weights.
            (
                vec![rec(20, 100, "b"), rec(10, 0, "a")],
                vec![0, 0],
                vec!["a", "b"],
            ),
            // Same priority: weights 10 (x) and 90 (y). A draw of 0..=10 picks x, above y.
            (
                vec![rec(10, 90, "y"), rec(10, 10, "x")],
                vec![5, 0],
                vec!["x", "y"],
            ),
            (
                vec![rec(10, 90, "y"), rec(10, 10, "x")],
                vec![11, 0],
                vec!["y", "x"],
            ),
            (
                vec![rec(10, 90, "y"), rec(10, 10, "x")],
                vec![100, 0],
                vec!["y", "x"],
            ),
            // A weight-0 record is chosen only by a draw of exactly 0.
            (
                vec![rec(10, 50, "w"), rec(10, 0, "z")],
                vec![0, 0],
                vec!["z", "w"],
            ),
            (
                vec![rec(10, 50, "w"), rec(10, 0, "z")],
                vec![1, 0],
                vec!["w", "z"],
            ),
            // All weights zero: every draw is 0, the order is the listed one.
            (
                vec![rec(5, 0, "p"), rec(5, 0, "q")],
                vec![0, 0],
                vec!["p", "q"],
            ),
        ];
        for (records, picks, want) in table {
            assert_eq!(
                order(records.clone(), &picks),
                want,
                "{records:?} {picks:?}"
            );
        }
    }

    #[test]
    fn weights_share_the_first_choice() {
        // Over every possible draw, a record comes first in proportion to its weight.
        let records = vec![rec(10, 1, "light"), rec(10, 3, "heavy")];
        let mut first = std::collections::BTreeMap::new();
        for draw in 0..=4u32 {
            let got = order(records.clone(), &[draw, 0]);
            *first.entry(got[0].clone()).or_insert(0) += 1;
        }
        // Draws 0 and 1 pick "light" (running sum 1 >= n), 2..=4 pick "heavy".
        assert_eq!(first.get("light"), Some(&2));
        assert_eq!(first.get("heavy"), Some(&3));
    }

    #[test]
    fn real_randomness_keeps_every_record() {
        let records: Vec<SrvTarget> = (0..10)
            .map(|i| rec(i % 3, i * 7, &format!("t{i}")))
            .collect();
        let got = rfc2782_order(records.clone(), &mut random_upto);
        assert_eq!(got.len(), records.len());
        assert!(got.windows(2).all(|w| w[0].priority <= w[1].priority));
    }
}
