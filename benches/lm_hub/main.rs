//! `cargo bench --bench lm_hub`: the Linearized Matrix hub's fan-out rate to N simulated
//! participants and its catch-up time after a participant outage. Reuses the integration
//! tests' LM harness (a weft process, fake participants written from the spec) and, below
//! it, the shared harness's database helper (the hub runs on SQLite here).

// The harness modules are shared with the tests; not every helper is used here.
#![allow(dead_code)]

#[path = "bench.rs"]
mod bench;
#[path = "../../tests/it/client.rs"]
mod client;
#[path = "../../tests/it/harness.rs"]
mod harness;

/// The same module layout as the tests (`crate::linearized::{harness, peer}`).
#[path = "../../tests/it/linearized"]
mod linearized {
    pub mod harness;
    pub mod peer;
}

fn main() {
    bench::bench_hub_fanout();
    bench::bench_catch_up();
}
