//! weft: a Matrix homeserver for interoperable messaging.
//!
//! See `docs/ARCHITECTURE.md` for the map of the code.

pub mod account_data;
pub mod accounts;
pub mod admin;
pub mod admin_api;
pub mod alloc;
pub mod cli;
pub mod client_api;
pub mod cluster;
pub mod config;
pub mod core;
pub mod deactivation;
pub mod delivery;
pub mod devices;
pub mod e2ee;
pub mod error;
pub mod federation;
pub mod http;
pub mod key_backup;
pub mod media;
pub mod net;
pub mod notifier;
pub mod observe;
pub mod passwords;
pub mod push;
pub mod random;
pub mod ratelimit;
pub mod rooms;
pub mod search;
pub mod server;
pub mod services;
pub mod storage;
pub mod sync;
