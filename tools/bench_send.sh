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
mkdir -p "$OUT"
for p in $WEFT_CLIENT $WEFT_FED $SYN_CLIENT $SYN_FED $PEER; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
    echo "port $p is in use" >&2; exit 1
  fi
done

if [ -z "${NO_BUILD:-}" ]; then
  log "cargo build --release -p weft -p fedpeer"
  (cd "$ROOT" && cargo build --release -p weft -p fedpeer)
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WEFT_BIN="$TARGET/release/weft"
PEER_BIN="$TARGET/release/fedpeer"
for b in "$WEFT_BIN" "$PEER_BIN"; do
  [ -x "$b" ] || { echo "$b is missing (run without NO_BUILD=1)" >&2; exit 1; }
done
log "installing Synapse if needed ($SYN_TOOLS/install.sh)"
"$SYN_TOOLS/install.sh" >&2

WEFT_PID=""
cleanup() {
  if [ -n "$WEFT_PID" ] && kill -0 "$WEFT_PID" 2>/dev/null; then
    kill "$WEFT_PID"
    for _ in $(seq 50); do kill -0 "$WEFT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$WEFT_PID" 2>/dev/null || true
  fi
  SYNAPSE_DATA="$OUT/synapse" "$SYN_TOOLS/stop.sh" "$SYN_NAME" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# ---------------------------------------------------------------- weft (release)
mkdir -p "$OUT/weft"
cat >"$OUT/weft/weft.toml" <<EOF
server_name = "localhost:$WEFT_FED"
data_dir = "$OUT/weft"
[listeners]
client = "127.0.0.1:$WEFT_CLIENT"
federation = "127.0.0.1:$WEFT_FED"
[registration]
open = true
[federation]
verify_tls = false
[outbound]
allowed_addresses = ["127.0.0.0/8"]
[rate_limits]
enabled = false
EOF
"$WEFT_BIN" serve --config "$OUT/weft/weft.toml" >"$OUT/weft/weft.log" 2>&1 &
WEFT_PID=$!
for i in $(seq 300); do
  curl -sf --max-time 2 "http://127.0.0.1:$WEFT_CLIENT/_matrix/client/versions" >/dev/null && break
  kill -0 "$WEFT_PID" 2>/dev/null || { tail -20 "$OUT/weft/weft.log" >&2; exit 1; }
  [ "$i" -lt 300 ] || { echo "weft did not start" >&2; exit 1; }
  sleep 0.2
done
WEFT_TOKEN=$(curl -sf --max-time 30 -X POST "http://127.0.0.1:$WEFT_CLIENT/_matrix/client/v3/register" \
  -H 'Content-Type: application/json' \
  -d '{"username":"bench","password":"bench-password","auth":{"type":"m.login.dummy"}}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
log "weft up (pid $WEFT_PID)"

# ---------------------------------------------------------------- Synapse
TARGET_ARGS=(--target "weft,localhost:$WEFT_FED,http://127.0.0.1:$WEFT_CLIENT,$WEFT_TOKEN")
if [[ ",$TARGETS," == *",synapse,"* ]]; then
  export SYNAPSE_DATA="$OUT/synapse"
  "$SYN_TOOLS/start.sh" "$SYN_NAME" "$SYN_FED" "$SYN_CLIENT" >/dev/null
  SYN_TOKEN=$("$SYN_TOOLS/register.sh" "$SYN_NAME" bench bench-password |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  SYN_VERSION=$(curl -sf --max-time 5 "http://127.0.0.1:$SYN_CLIENT/_synapse/admin/v1/server_version" \
    -H "Authorization: Bearer $SYN_TOKEN" 2>/dev/null || echo '{}')
  log "synapse up ($SYN_VERSION)"
  TARGET_ARGS+=(--target "synapse,localhost:$SYN_FED,http://127.0.0.1:$SYN_CLIENT,$SYN_TOKEN")
fi

# ---------------------------------------------------------------- run
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "weft commit: $(cd "$ROOT" && git rev-parse --short HEAD)"
  echo "nproc: $(nproc)"
  lscpu | head -n 15
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"
# weft's CPU time (user + system, clock ticks) around the measured part: CPU per PDU does
# not depend on how much of the machine other work took.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
WEFT_CPU0=$(cpu_ticks "$WEFT_PID")
log "fedpeer bench-send: txns=$TXNS runs=$RUNS inflight=$INFLIGHT modes=$MODES targets=$TARGETS poll_max_ms=$POLL_MAX_MS"
"$PEER_BIN" bench-send --port "$PEER" "${TARGET_ARGS[@]}" \
  --txns "$TXNS" --runs "$RUNS" --inflight "$INFLIGHT" --modes "$MODES" \
  --poll-max-ms "$POLL_MAX_MS" \
  --json "$OUT/samples.json" 2> >(tee "$OUT/progress.log" >&2) | tee "$OUT/summary.md"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
echo "weft CPU during the run: $(( ($(cpu_ticks "$WEFT_PID") - WEFT_CPU0) * 1000 / $(getconf CLK_TCK) )) ms (user + system; includes joins and warm-ups)" >>"$OUT/machine.txt"
# weft's own account of the run: which admission path each PDU took, slow-path times.
curl -sf --max-time 10 "http://127.0.0.1:$WEFT_CLIENT/metrics" >"$OUT/weft/metrics.txt" || true
grep -E '^weft_room_(admission_path_total|slow_path_duration_seconds_(sum|count)|batch_size_events_(sum|count))' "$OUT/weft/metrics.txt" >&2 || true
if grep -q panicked "$OUT/weft/weft.log"; then
  echo "weft panicked during the benchmark (see $OUT/weft/weft.log)" >&2
  exit 1
fi
cat "$OUT/machine.txt"
log "results in $OUT"
