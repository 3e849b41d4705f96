//! The Server-Server API: transport (TLS listener, signed outbound client, server
//! discovery), keys, inbound endpoints, outbound delivery.
//!
//! * `client` — signed outbound requests; `tls` — listener certificate and client config.
//! * `keys` — our key, the remote key ring, the notary endpoints.
//! * `auth` — X-Matrix verification of inbound requests.
//! * `inbound` — one module per endpoint family; `/send` verifies PDUs on the blocking pool
//!   and hands each room's PDUs to its room actor.
//! * `outbound` — per-destination actors delivering a persisted queue.
//! * `membership` — joining, inviting and leaving across servers (both directions).

pub mod auth;
pub mod backfill;
pub mod client;
pub mod inbound;
pub mod keys;
pub mod linearized;
pub mod membership;
pub mod outbound;
pub mod tls;

use std::sync::Arc;

use crate::core::Core;

/// Everything federation needs at run time; `None` in `Services` when disabled.
pub struct Federation {
    pub client: client::FederationClient,
    pub keys: keys::KeyRing,
    pub sender: outbound::Sender,
}

impl Federation {
    pub fn new(core: &Arc<Core>) -> Result<Arc<Self>, crate::storage::StorageError> {
        let cfg = &core.config.federation;
        let client = client::FederationClient::new(client::ClientSettings {
            origin: core.server_name().to_owned(),
            key: core.key.clone(),
            verify_tls: cfg.verify_tls,
            allow_private: cfg.allow_private_addresses,
            plain_http: cfg.plain_http,
            timeout: std::time::Duration::from_millis(cfg.request_timeout_ms),
        });
        let keys = keys::KeyRing::new(
            core.db.clone(),
            client.clone(),
            core.server_name(),
            &core.key,
            &core.old_keys,
            cfg.trusted_key_servers.clone(),
        );
        let sender = outbound::Sender::new(Arc::clone(core), client.clone())?;
        Ok(Arc::new(Self {
            client,
            keys,
            sender,
        }))
    }
}
