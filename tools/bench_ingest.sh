#!/usr/bin/env bash
# Multi-origin federation ingest benchmark: K origin servers (tools/fedpeer bench-ingest,
# each its own server name and ed25519 key, one transaction in flight each) send signed
# PDUs through /send into one room and into many rooms, weft vs Synapse side by side in one
# run (runs interleaved). Counted: PDUs the local user can read afterwards.
#
# Usage: tools/bench_ingest.sh            (builds release weft + fedpeer first)
#        NO_BUILD=1 tools/bench_ingest.sh (uses $CARGO_TARGET_DIR/release as is)
#
# Knobs (env): ORIGINS (default 4), ROOMS (comma list, default 1,100), TXNS (transactions
# per origin and run, default 10), RUNS (default 5), TARGETS (weft,synapse or weft;
# default both), POLL_MAX_MS (default 50), BENCH_DIR (default /tmp/fedingest-<pid>).
#
# Ports (loopback): weft client 21110 / federation 21111, Synapse client 21210 /
# federation 21211, origins 21310..21310+ORIGINS-1. Both servers use SQLite; both are
# stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SYN_TOOLS=${SYN_TOOLS:-$ROOT/tools/synapse}
OUT=${BENCH_DIR:-/tmp/fedingest-$$}
TXNS=${TXNS:-10}
RUNS=${RUNS:-5}
ORIGINS=${ORIGINS:-4}
ROOMS=${ROOMS:-1,100}
TARGETS=${TARGETS:-weft,synapse}
POLL_MAX_MS=${POLL_MAX_MS:-50}
WEFT_CLIENT=21110 WEFT_FED=21111 SYN_CLIENT=21210 SYN_FED=21211 PEER=21310
SYN_NAME=fedingest

log() { echo "[bench_ingest] $*" >&2; }
mapfile -t PEER_PORTS < <(seq "$PEER" $((PEER + ORIGINS - 1)))
# shellcheck source=tools/bench_lib.sh
. "$ROOT/tools/bench_lib.sh"
bench_setup
log "fedpeer bench-ingest: origins=$ORIGINS rooms=$ROOMS txns=$TXNS runs=$RUNS targets=$TARGETS"
"$PEER_BIN" bench-ingest --port "$PEER" "${TARGET_ARGS[@]}" \
  --origins "$ORIGINS" --rooms "$ROOMS" --txns "$TXNS" --runs "$RUNS" \
  --poll-max-ms "$POLL_MAX_MS" \
  --json "$OUT/samples.json" 2> >(tee "$OUT/progress.log" >&2) | tee "$OUT/summary.md"
bench_finish
