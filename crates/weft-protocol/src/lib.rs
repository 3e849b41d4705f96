//! Matrix protocol rules for weft, as pure functions over data.
//!
//! Nothing in this crate does I/O: no database, no actor, no HTTP. Everything takes events,
//! state maps and keys in and returns a verdict or a new value, so each rule can be tested
//! on its own with tables of cases (and the spec's worked examples).
//!
//! Where a well-kept library already implements a rule, this crate wraps it rather than
//! re-implementing it: ruma provides identifiers, canonical JSON, redaction, content and
//! reference hashes, ed25519 signing, the authorization rules and state resolution v2 (with
//! the v12 changes), for every room version from 1 to 12. What ruma cannot express is written here: the PDU type itself, event
//! building, the v1/v2 event format, state resolution v1, X-Matrix request signing, history
//! visibility and the Linearized Matrix room version.

pub mod auth;
pub mod builder;
pub mod canonical;
pub mod client_event;
pub mod key_backup;
pub mod keys;
pub mod lm;
pub mod media;
pub mod pdu;
pub mod push;
pub mod redaction;
pub mod relations;
pub mod room_version;
pub mod search;
pub mod signatures;
pub mod sliding;
pub mod state_res;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod versions_tests;
pub mod visibility;
pub mod xmatrix;

pub use pdu::{Pdu, Received};
pub use room_version::RoomVersion;

/// Re-exported so downstream crates use exactly the same ruma as the rules do.
pub use ruma;

/// The largest PDU, in bytes of canonical JSON, that the spec allows.
pub const MAX_PDU_BYTES: usize = 65_536;
