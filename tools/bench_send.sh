#!/usr/bin/env bash
# Federation ingest benchmark: signed PDUs/s through /send into one room, weft vs Synapse,
# side by side in one run (runs interleaved), with tools/fedpeer as the sending server.
#
# Usage: tools/bench_send.sh            (builds release weft + fedpeer first)
#        NO_BUILD=1 tools/bench_send.sh (uses target/release as is)
#
# Knobs (env): TXNS (transactions per run, default 10), RUNS (default 5),
# INFLIGHT (comma list, default 1,4), MODES (default open,closed), TARGETS (weft,synapse
# or weft; default both), POLL_MAX_MS (longest
# pause between readability checks, default 50), BENCH_DIR (default
# /tmp/fedbench-<pid>; weft data, Synapse data, logs, samples.json, summary.md).
#
# Ports (loopback, 21000-21999): weft client 21100 / federation 21101, Synapse client
# 21200 / federation 21201, fedpeer 21300. Both servers use SQLite; both are stopped on
# exit. Synapse comes from the repository's harness (tools/synapse; its install.sh puts it
# into a venv under $TMPDIR on first use), so a fresh clone needs nothing else.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SYN_TOOLS=${SYN_TOOLS:-$ROOT/tools/synapse}
OUT=${BENCH_DIR:-/tmp/fedbench-$$}
TXNS=${TXNS:-10}
RUNS=${RUNS:-5}
INFLIGHT=${INFLIGHT:-1,4}
MODES=${MODES:-open,closed}
TARGETS=${TARGETS:-weft,synapse}
POLL_MAX_MS=${POLL_MAX_MS:-50}
WEFT_CLIENT=21100 WEFT_FED=21101 SYN_CLIENT=21200 SYN_FED=21201 PEER=21300
SYN_NAME=fedbench

log() { echo "[bench_send] $*" >&2; }
PEER_PORTS=("$PEER")
# shellcheck source=tools/bench_lib.sh
. "$ROOT/tools/bench_lib.sh"
bench_setup
log "fedpeer bench-send: txns=$TXNS runs=$RUNS inflight=$INFLIGHT modes=$MODES targets=$TARGETS poll_max_ms=$POLL_MAX_MS"
"$PEER_BIN" bench-send --port "$PEER" "${TARGET_ARGS[@]}" \
  --txns "$TXNS" --runs "$RUNS" --inflight "$INFLIGHT" --modes "$MODES" \
  --poll-max-ms "$POLL_MAX_MS" \
  --json "$OUT/samples.json" 2> >(tee "$OUT/progress.log" >&2) | tee "$OUT/summary.md"
bench_finish
