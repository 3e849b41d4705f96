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
    pub fn new(core: &Arc<Core>) -> Result<Arc<Self>, crate::core::StartError> {
        let cfg = &core.config.federation;
        let net = crate::net::context_from_config(&core.config)
            .map_err(crate::config::ConfigError::Invalid)?;
        let client = client::FederationClient::new(client::ClientSettings {
            origin: core.server_name().to_owned(),
            key: core.key.clone(),
            verify_tls: cfg.verify_tls,
            plain_http: cfg.plain_http,
            timeout: std::time::Duration::from_millis(cfg.request_timeout_ms),
            net,
            well_known_port: cfg.well_known_port,
            discovery_cache_size: cfg.server_cache_size,
        });
        let keys = keys::KeyRing::new(
            core.db.clone(),
            client.clone(),
            core.server_name(),
            &core.key,
            &core.old_keys,
            keys::KeyRingLimits {
                notaries: cfg.trusted_key_servers.clone(),
                cache_size: cfg.server_cache_size,
                max_concurrent_fetches: cfg.max_concurrent_key_fetches.max(1),
            },
        );
        let sender = outbound::Sender::new(Arc::clone(core), client.clone())?;
        Ok(Arc::new(Self {
            client,
            keys,
            sender,
        }))
    }
}

/// A Linearized Matrix participant's sends to its hub go over the signed client.
impl crate::delivery::HubLink for Federation {
    fn send_lpdu(
        &self,
        hub: String,
        lpdu: ruma::CanonicalJsonObject,
        lpdu_id: String,
    ) -> crate::delivery::HubSend {
        let client = self.client.clone();
        Box::pin(
            async move { linearized::participant::send_lpdu(&client, &hub, &lpdu, &lpdu_id).await },
        )
    }
}
