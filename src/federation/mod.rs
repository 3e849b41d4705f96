//! Server-Server API.

pub mod keys;
