//! `fedpeer`: a small Matrix federation peer written from the spec, for tests and
//! benchmarks of a homeserver's federation ingest.
//!
//! * [`Peer`] listens on `127.0.0.1:PORT` over TLS (self-signed) as server `localhost:PORT`
//!   and serves its ed25519 key at `GET /_matrix/key/v2/server`, so a real server can verify
//!   what it signs ([`server`]).
//! * [`peer::FedClient`] signs requests with X-Matrix (`weft_protocol::xmatrix`) — or sends
//!   exactly the headers and bytes it is given, to test a server's refusals.
//! * [`Peer::join`] joins a room with `make_join`/`send_join` (v2) and keeps its state and
//!   auth chain ([`room::Room`]); events are then built, hashed and signed with
//!   `weft_protocol::builder` on the peer's own forward extremities.
//! * [`client::ClientApi`] plays a local user of the server under test (create the room,
//!   read what landed).
//! * [`craft`] damages signatures, events and X-Matrix headers on purpose.
//! * [`bench`] measures signed PDUs per second through `/send`; [`ingest`] the same from
//!   K origin servers at once, into one room or many.
//!
//! Everything is blocking and bounded: every connection has connect/read/write timeouts,
//! and only loopback addresses are ever dialled.

pub mod bench;
pub mod big_room;
pub mod client;
pub mod craft;
pub mod http;
pub mod ingest;
pub mod join_bench;
pub mod peer;
pub mod room;
pub mod server;
pub mod tls;

pub use peer::{FedClient, Peer, PeerOptions};
pub use room::Room;

/// An error with a message (this is a test tool: errors are reported, not handled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self(format!("I/O: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, Error>;
