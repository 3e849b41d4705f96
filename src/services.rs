//! `Services`: what HTTP handlers are given (as `web::Data<Services>`): the core handles, the
//! room registry, the access-token cache and the typing tracker. Handlers stay thin: they
//! parse, authenticate and call into these.

use std::sync::Arc;

use crate::client_api::tokens::TokenCache;
use crate::core::Core;
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
    /// Push: the gateways' network context and the delivery wake-up.
    pub push: crate::push::PushState,
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
            push: crate::push::PushState::new(&core.config),
            core,
        })
    }

    pub fn server_name(&self) -> &str {
        self.core.server_name()
    }

    /// Federation, when enabled.
    pub fn federation(&self) -> Option<&Arc<crate::federation::Federation>> {
        self.core.federation.get()
    }

    /// The remote key ring, when federation is enabled.
    pub fn keys(&self) -> Option<&crate::federation::keys::KeyRing> {
        self.federation().map(|f| &f.keys)
    }
}
