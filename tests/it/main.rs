//! Integration tests: the built `weft` binary driven over HTTP and federation.
//!
//! Minimal entry point for this branch; the shared harness (`harness.rs`, `client.rs`, the
//! other modules) lives in the integration-test branch and is reconciled at merge.
//! `hostile_peer` is self-contained: it starts its own weft with federation enabled.

mod hostile_peer;
