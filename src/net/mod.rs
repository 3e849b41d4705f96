//! Outbound networking shared by every part of weft that connects to an address a remote
//! party chose: federation requests, key fetches, `.well-known`, SRV targets (and push
//! gateways and remote media when they come).
//!
//! * `policy` — the address policy: special-purpose ranges refused unless allow-listed,
//!   applied to the address actually connected to.
//! * `dns` — SRV and address lookups (hickory-resolver).
//! * `connector` — the awc client whose connector resolves, applies the policy and connects;
//!   build one [`connector::OutboundClient`] per purpose and call `.client()`.

pub mod connector;
pub mod dns;
pub mod policy;

pub use connector::{NetContext, OutboundClient};
pub use policy::AddressPolicy;

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn enc(segment: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, SET).to_string()
}

/// Builds the shared network context from the configuration.
pub fn context_from_config(
    config: &crate::config::Config,
) -> Result<std::sync::Arc<NetContext>, String> {
    let policy = AddressPolicy::new(
        &config.outbound.allowed_addresses,
        config.federation.allow_private_addresses,
    )?;
    let mut servers = Vec::new();
    for s in &config.outbound.dns_servers {
        servers.push(
            s.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("outbound.dns_servers: {s:?} is not ip:port"))?,
        );
    }
    Ok(NetContext::new(policy, dns::DnsSettings { servers }))
}
