//! Integration tests: the built `weft` binary driven over HTTP.
//!
//! One test binary with modules (one link instead of one per file).

mod linearized;
