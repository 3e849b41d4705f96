//! Nothing here: this crate holds integration tests (tests/) that drive a real weft
//! process with matrix-rust-sdk, the SDK Element X is built on.
