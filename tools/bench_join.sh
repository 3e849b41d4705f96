#!/usr/bin/env bash
# Big-room join benchmark: tools/fedpeer bench-join hosts rooms of MEMBERS joined members
# (real signed events, built before any timing, one room per server and run) and a local
# user of each server joins them through the client API: until the join answers, the
# first send is accepted, the full state is listed (joined_members), the message reached
# the host. weft vs Synapse side by side in one run (runs interleaved).
#
# Usage: tools/bench_join.sh            (builds release weft + fedpeer first)
#        NO_BUILD=1 tools/bench_join.sh (uses $CARGO_TARGET_DIR/release as is)
#
# Knobs (env): MEMBERS (default 10000), RUNS (default 3), TARGETS (weft,synapse or weft;
# default both), BENCH_DIR (default /tmp/benchjoin-<pid>), PARTIAL (1, the default: weft
# joins with partial state, `federation.partial_state_joins`; 0: full joins).
#
# Ports (loopback): weft client 21120 / federation 21121, Synapse client 21220 /
# federation 21221, fedpeer 21320. Both servers use SQLite; both are stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SYN_TOOLS=${SYN_TOOLS:-$ROOT/tools/synapse}
OUT=${BENCH_DIR:-/tmp/benchjoin-$$}
MEMBERS=${MEMBERS:-10000}
RUNS=${RUNS:-3}
TARGETS=${TARGETS:-weft,synapse}
WEFT_CLIENT=21120 WEFT_FED=21121 SYN_CLIENT=21220 SYN_FED=21221 PEER=21320
SYN_NAME=benchjoin

log() { echo "[bench_join] $*" >&2; }
PARTIAL=${PARTIAL:-1}
if [ "$PARTIAL" = 1 ]; then
  WEFT_FEDERATION_EXTRA="partial_state_joins = true"
else
  WEFT_FEDERATION_EXTRA="partial_state_joins = false"
fi
export WEFT_FEDERATION_EXTRA
PEER_PORTS=("$PEER")
# shellcheck source=tools/bench_lib.sh
. "$ROOT/tools/bench_lib.sh"
bench_setup
log "fedpeer bench-join: members=$MEMBERS runs=$RUNS targets=$TARGETS"
"$PEER_BIN" bench-join --port "$PEER" "${TARGET_ARGS[@]}" \
  --members "$MEMBERS" --runs "$RUNS" \
  --json "$OUT/samples.json" 2> >(tee "$OUT/progress.log" >&2) | tee "$OUT/summary.md"
bench_finish
