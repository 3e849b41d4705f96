//! `Services`: what HTTP handlers are given (as `web::Data<Services>`): the core handles, the
//! room registry, the access-token cache and the typing tracker. Handlers stay thin: they
//! parse, authenticate and call into these.
//!
//! [`Remote`] is what the client API and the services ask of other servers (joining,
//! inviting, knocking, leaving rooms held elsewhere, backfill, remote E2EE keys, alias
//! lookups, remote media, EDUs, and the sender's state for the operator). It is defined
//! here and implemented by the federation transport, which registers it at start-up
//! (`Services::remote`): the two HTTP faces never call each other, and nothing here names
//! the transport's types. The transport keeps its own state (client, key ring, sender)
//! inside its `Remote` and finds it again from a `Services` by downcasting (a `Remote` is
//! `Any`), so its handle never passes through this module's types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::web::Bytes;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value;

use crate::accounts::TokenCache;
use crate::core::Core;
use crate::delivery::DeliveryStatus;
use crate::error::{Error, Result};
use crate::rooms::RoomRegistry;
use crate::rooms::typing::Typing;

pub struct Services {
    pub core: Arc<Core>,
    pub rooms: Arc<RoomRegistry>,
    pub tokens: TokenCache,
    pub typing: Typing,
    pub last_seen: crate::devices::LastSeen,
    pub limits: Arc<crate::ratelimit::RateLimits>,
    /// Sliding-sync connections and what each was sent.
    pub sliding: crate::sync::sliding::connections::Connections,
    /// Calls to other servers (registered at start-up by the transport).
    pub remote: std::sync::OnceLock<Arc<dyn Remote>>,
    /// Push: the gateways' network context and the delivery wake-up.
    pub push: crate::push::PushState,
    /// The search indexer's position (searches wait on it: read-your-writes).
    pub search: Arc<crate::search::indexer::SearchIndex>,
}

/// A boxed answer of a [`Remote`] call (not `Send`: it runs on the caller's arbiter).
pub type RemoteAnswer<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// What this server asks of other servers on behalf of its users: implemented by the
/// federation transport. Calls that act for a user take the caller's [`Services`]; each
/// answers as it does when federation is off when no transport was started.
pub trait Remote: std::any::Any + Send + Sync {
    /// Joins `user` to a room held by `servers` (`content` adds to the join's content).
    fn join<'a>(
        &'a self,
        s: &'a Services,
        user: &'a OwnedUserId,
        room: &'a OwnedRoomId,
        servers: &'a [String],
        content: Value,
    ) -> RemoteAnswer<'a, Result<OwnedEventId>>;
    /// Invites a remote user to a room we are in (their server signs first).
    fn invite<'a>(
        &'a self,
        s: &'a Services,
        room: &'a OwnedRoomId,
        sender: &'a OwnedUserId,
        target: &'a OwnedUserId,
        reason: Option<String>,
    ) -> RemoteAnswer<'a, Result<OwnedEventId>>;
    /// Knocks on a room held by `servers`.
    fn knock<'a>(
        &'a self,
        s: &'a Services,
        room: &'a OwnedRoomId,
        user: &'a OwnedUserId,
        servers: &'a [String],
        reason: Option<String>,
    ) -> RemoteAnswer<'a, Result<OwnedEventId>>;
    /// Leaves (declines an invite to) a room we hold no copy of, through `servers`.
    fn leave<'a>(
        &'a self,
        s: &'a Services,
        room: &'a OwnedRoomId,
        user: &'a OwnedUserId,
        servers: &'a [String],
    ) -> RemoteAnswer<'a, Result<()>>;
    /// Records locally that `user` declined a remote invite nobody could be told about.
    fn forget_invite<'a>(
        &'a self,
        s: &'a Services,
        room: &'a OwnedRoomId,
        user: &'a OwnedUserId,
    ) -> RemoteAnswer<'a, Result<()>>;
    /// Asks the room's other servers for up to `limit` events of older history; how many
    /// were stored.
    fn backfill<'a>(
        &'a self,
        s: &'a Services,
        room_id: &'a str,
        limit: usize,
    ) -> RemoteAnswer<'a, usize>;
    /// Asks the server of a remote `alias` which room it names, and the servers to join it
    /// through (404 `M_NOT_FOUND` when federation is off).
    fn query_alias<'a>(
        &'a self,
        s: &'a Services,
        alias: &'a ruma::RoomAliasId,
    ) -> RemoteAnswer<'a, Result<(OwnedRoomId, Vec<String>)>>;
    /// The remote half of `/keys/query` and `/keys/claim` (`None`: federation is off).
    fn keys(&self, s: &Services) -> Option<Box<dyn crate::e2ee::federation::RemoteKeys>>;
    /// Downloads `media_id` from `server`: the status, `Content-Type` and body, read up to
    /// `limit` bytes (404 `M_NOT_FOUND` when federation is off).
    fn download_media<'a>(
        &'a self,
        server: &'a str,
        media_id: &'a str,
        limit: usize,
    ) -> RemoteAnswer<'a, Result<(u16, Option<String>, Bytes)>>;
    /// Queues an EDU for `server`, durably (nothing to do when federation is off).
    fn send_edu<'a>(&'a self, server: &'a str, edu: Value) -> RemoteAnswer<'a, Result<()>>;
    /// The outbound sender's destinations and counters (`None`: federation is off).
    fn delivery_status(&self) -> RemoteAnswer<'_, Result<Option<DeliveryStatus>>>;
    /// Ends `server`'s backoff and outage: whether anything was queued or known for it
    /// (`None`: federation is off).
    fn reset_destination<'a>(&'a self, server: &'a str) -> RemoteAnswer<'a, Result<Option<bool>>>;
    /// Rows still owed, per destination (empty when federation is off).
    fn backlog(&self) -> RemoteAnswer<'_, Vec<(String, i64)>>;
}

impl Services {
    pub fn new(core: Arc<Core>) -> Arc<Self> {
        Arc::new(Self {
            rooms: Arc::new(RoomRegistry::new(Arc::clone(&core))),
            tokens: TokenCache::default(),
            typing: Typing::default(),
            last_seen: crate::devices::LastSeen::default(),
            limits: Arc::new(crate::ratelimit::RateLimits::new(&core.config.rate_limits)),
            sliding: Default::default(),
            remote: std::sync::OnceLock::new(),
            push: crate::push::PushState::new(&core.config),
            search: Arc::default(),
            core,
        })
    }

    pub fn server_name(&self) -> &str {
        self.core.server_name()
    }

    /// Calls to other servers; an error when no transport was registered (a `Services`
    /// built outside the server).
    pub fn remote(&self) -> Result<&dyn Remote> {
        self.remote
            .get()
            .map(|r| r.as_ref())
            .ok_or_else(|| Error::internal("no federation transport registered"))
    }
}
