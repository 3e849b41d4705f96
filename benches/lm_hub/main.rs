//! `cargo bench --bench lm_hub`: the Linearized Matrix hub's fan-out rate to N simulated
//! participants and its catch-up time after a participant outage. Reuses the integration
//! tests' LM harness (a weft process, fake participants written from the spec).

// The harness modules are shared with the tests; not every helper is used here.
#![allow(dead_code)]

#[path = "bench.rs"]
mod bench;
#[path = "../../tests/it/linearized/harness.rs"]
mod harness;
#[path = "../../tests/it/linearized/peer.rs"]
mod peer;

fn main() {
    bench::bench_hub_fanout();
    bench::bench_catch_up();
}
