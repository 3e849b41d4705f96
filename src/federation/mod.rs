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

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

use crate::core::Core;
use crate::services::{RemoteAnswer, Services};

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

/// The federation side of [`crate::services::Remote`]: the calls the client API and the
/// services make to other servers, registered in `Services` at start-up whether federation
/// is enabled or not (each call answers as it does when federation is off). It also holds
/// the transport itself once started ([`Self::start`]); federation code finds it from a
/// `Services` through [`FederationOf`].
#[derive(Default)]
pub struct FederationRemote {
    fed: std::sync::OnceLock<Arc<Federation>>,
}

impl FederationRemote {
    /// Hands over the started transport (once; later calls are ignored).
    pub fn start(&self, fed: Arc<Federation>) {
        let _ = self.fed.set(fed);
    }

    fn fed(&self) -> Option<&Arc<Federation>> {
        self.fed.get()
    }
}

/// The transport's own handles, recovered from a [`Services`]: `Services` holds only the
/// [`crate::services::Remote`] trait object, which is a [`FederationRemote`] in the server.
pub trait FederationOf {
    /// Federation, when enabled (and started).
    fn federation(&self) -> Option<&Arc<Federation>>;
    /// The remote key ring, when federation is enabled.
    fn keys(&self) -> Option<&keys::KeyRing> {
        self.federation().map(|f| &f.keys)
    }
}

impl FederationOf for Services {
    fn federation(&self) -> Option<&Arc<Federation>> {
        let remote: &dyn std::any::Any = self.remote.get()?.as_ref();
        remote.downcast_ref::<FederationRemote>()?.fed()
    }
}

impl crate::services::Remote for FederationRemote {
    fn join<'a>(
        &'a self,
        s: &'a Services,
        user: &'a OwnedUserId,
        room: &'a OwnedRoomId,
        servers: &'a [String],
        content: serde_json::Value,
    ) -> RemoteAnswer<'a, crate::error::Result<OwnedEventId>> {
        Box::pin(membership::join_remote(s, user, room, servers, content))
    }

    fn invite<'a>(
        &'a self,
        s: &'a Services,
        room: &'a OwnedRoomId,
        sender: &'a OwnedUserId,
        target: &'a OwnedUserId,
        reason: Option<String>,
    ) -> RemoteAnswer<'a, crate::error::Result<OwnedEventId>> {
        Box::pin(membership::invite_remote(s, room, sender, target, reason))
    }

    fn knock<'a>(
        &'a self,
        s: &'a Services,
        room: &'a OwnedRoomId,
        user: &'a OwnedUserId,
        servers: &'a [String],
        reason: Option<String>,
    ) -> RemoteAnswer<'a, crate::error::Result<OwnedEventId>> {
        Box::pin(membership::knock_remote(s, room, user, servers, reason))
    }

    fn leave<'a>(
        &'a self,
        s: &'a Services,
        room: &'a OwnedRoomId,
        user: &'a OwnedUserId,
        servers: &'a [String],
    ) -> RemoteAnswer<'a, crate::error::Result<()>> {
        Box::pin(membership::leave_remote(s, room, user, servers))
    }

    fn forget_invite<'a>(
        &'a self,
        s: &'a Services,
        room: &'a OwnedRoomId,
        user: &'a OwnedUserId,
    ) -> RemoteAnswer<'a, crate::error::Result<()>> {
        Box::pin(membership::forget_remote_invite(s, room, user))
    }

    fn backfill<'a>(
        &'a self,
        s: &'a Services,
        room_id: &'a str,
        limit: usize,
    ) -> RemoteAnswer<'a, usize> {
        Box::pin(backfill::backfill(s, room_id, limit))
    }

    fn query_alias<'a>(
        &'a self,
        s: &'a Services,
        alias: &'a ruma::RoomAliasId,
    ) -> RemoteAnswer<'a, crate::error::Result<(OwnedRoomId, Vec<String>)>> {
        Box::pin(query_alias(s, alias))
    }

    fn keys(&self, _s: &Services) -> Option<Box<dyn crate::e2ee::federation::RemoteKeys>> {
        self.fed()
            .map(|f| Box::new(inbound::e2ee::FederatedKeys(Arc::clone(f))) as Box<_>)
    }

    fn download_media<'a>(
        &'a self,
        server: &'a str,
        media_id: &'a str,
        limit: usize,
    ) -> RemoteAnswer<'a, crate::error::Result<(u16, Option<String>, actix_web::web::Bytes)>> {
        Box::pin(async move {
            let fed = self
                .fed()
                .ok_or_else(|| crate::error::Error::not_found("federation is disabled"))?;
            let path = format!(
                "/_matrix/federation/v1/media/download/{}",
                crate::net::enc(media_id)
            );
            Ok(fed.client.get_bytes(server, &path, limit).await?)
        })
    }

    fn send_edu<'a>(
        &'a self,
        server: &'a str,
        edu: serde_json::Value,
    ) -> RemoteAnswer<'a, crate::error::Result<()>> {
        Box::pin(async move {
            if let Some(fed) = self.fed() {
                fed.sender.send_edu(server, edu).await?;
            }
            Ok(())
        })
    }

    fn delivery_status(
        &self,
    ) -> RemoteAnswer<'_, crate::error::Result<Option<crate::delivery::DeliveryStatus>>> {
        Box::pin(async move {
            let Some(fed) = self.fed() else {
                return Ok(None);
            };
            Ok(Some(crate::delivery::DeliveryStatus {
                destinations: fed.sender.destinations().await?,
                probes_sent: fed.sender.probes_sent(),
                active_actors: fed.sender.running_actors(),
            }))
        })
    }

    fn reset_destination<'a>(
        &'a self,
        server: &'a str,
    ) -> RemoteAnswer<'a, crate::error::Result<Option<bool>>> {
        Box::pin(async move {
            match self.fed() {
                Some(fed) => Ok(Some(fed.sender.reset(server).await?)),
                None => Ok(None),
            }
        })
    }

    fn backlog(&self) -> RemoteAnswer<'_, Vec<(String, i64)>> {
        Box::pin(async move {
            match self.fed() {
                Some(fed) => fed.sender.backlog().await,
                None => Vec::new(),
            }
        })
    }
}

/// `GET /_matrix/federation/v1/query/directory` on the alias's server.
async fn query_alias(
    s: &Services,
    alias: &ruma::RoomAliasId,
) -> crate::error::Result<(OwnedRoomId, Vec<String>)> {
    use crate::error::Error;
    let fed = s
        .federation()
        .ok_or_else(|| Error::not_found("room alias not found"))?;
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        crate::net::enc(alias.as_str())
    );
    let resp = fed
        .client
        .request("GET", alias.server_name().as_str(), &path, None)
        .await?;
    let room_id = resp
        .get("room_id")
        .and_then(|r| r.as_str())
        .and_then(|r| OwnedRoomId::try_from(r).ok())
        .ok_or_else(|| Error::Remote("bad directory answer".into()))?;
    let servers = resp
        .get("servers")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok((room_id, servers))
}
