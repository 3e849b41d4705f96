//! weft: a Matrix homeserver for interoperable messaging.
//!
//! See `docs/ARCHITECTURE.md` for the map of the code.

pub mod accounts;
pub mod client_api;
pub mod config;
pub mod core;
pub mod devices;
pub mod e2ee;
pub mod error;
pub mod federation;
pub mod http;
pub mod net;
pub mod notifier;
pub mod passwords;
pub mod ratelimit;
pub mod rooms;
pub mod server;
pub mod services;
pub mod storage;
pub mod sync;
