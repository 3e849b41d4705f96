//! Integration tests: the built `weft` binary driven over HTTP, on SQLite and PostgreSQL.
//!
//! One test binary with modules (one link instead of one per file). Each scenario is a
//! function taking a [`harness::Backend`]; `both_backends!` turns it into `<name>::sqlite`
//! and `<name>::postgres` tests, so `cargo test` runs everything on both databases and
//! `cargo test -- sqlite` (or `postgres`) runs one side.
//!
//! PostgreSQL must be reachable (see [`harness`]); a test that cannot create its database
//! fails rather than skipping.

mod client;
mod harness;
mod proxy;
mod synapse;

mod accounts;
mod bad_input;
mod big_join;
mod catchup;
mod cluster;
mod durability;
mod e2e;
mod e2ee;
mod features;
mod federation;
mod hostile_peer;
mod independent_signing;
mod key_backup;
mod layering;
mod linearized;
mod media;
mod ops;
mod partial_join;
mod passwords;
mod perimeter;
mod power_cut;
mod push;
mod relations;
mod room_versions;
mod search;
mod semantics;
mod signatures;
mod sliding;
