#!/usr/bin/env bash
# Sliding sync (MSC4186) for a user in many rooms: weft and Synapse in one run.
#
#   tools/bench_sliding.sh [ROOMS] [SAMPLES]          (defaults: 1000 20)
#
# Starts a fresh weft (WEFT_BIN, default target/release/weft; SQLite in a temp dir) and a
# fresh Synapse (tools/synapse, SQLite, rate limits off) on free loopback ports, registers
# a bench user and a sender on each, then runs tools/bench_sliding.py against both: the
# first sliding-sync answer for the room list (ranges [0,19] and the whole list) and the
# send -> long-poll wake-up. Prints the machine, every median and the Synapse/weft ratios.
# Everything is stopped and removed afterwards (KEEP=1 keeps the temp dirs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/bench_lib.sh
. "$ROOT/tools/bench_lib.sh"
ROOMS=${1:-1000}
SAMPLES=${2:-20}
TMP=${TMPDIR:-/tmp}
WEFT_BIN=${WEFT_BIN:-$ROOT/target/release/weft}
[ -x "$WEFT_BIN" ] || { echo "no weft binary at $WEFT_BIN (cargo build --release -p weft)" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

work=$(mktemp -d "$TMP/weft-bench-sliding-XXXXXX")
export SYNAPSE_DATA="$work/synapse"
syn_name="bench$$"
weft_pid=""
cleanup() {
  [ -n "$weft_pid" ] && { kill "$weft_pid" 2>/dev/null || true; wait "$weft_pid" 2>/dev/null || true; }
  "$ROOT/tools/synapse/stop.sh" "$syn_name" >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "weft: $WEFT_BIN ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "synapse: $("${SYNAPSE_VENV:-/tmp/synvenv}/bin/python" -c 'import synapse; print(synapse.__version__)' 2>/dev/null || echo '?')"

# weft
port=$(free_port)
mkdir -p "$work/weft"
weft_toml "$work/weft/weft.toml" --db "sqlite://$work/weft/weft.db" --client "127.0.0.1:$port" \
  --log warn
"$WEFT_BIN" serve --config "$work/weft/weft.toml" >"$work/weft/weft.log" 2>&1 &
weft_pid=$!
for i in $(seq 150); do
  curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && break
  kill -0 "$weft_pid" 2>/dev/null || { cat "$work/weft/weft.log"; exit 1; }
  [ "$i" -eq 150 ] && { echo "weft did not start" >&2; exit 1; }
  sleep 0.2
done
weft_token() {
  curl -fsS -X POST "http://127.0.0.1:$port/_matrix/client/v3/register" \
    -H 'Content-Type: application/json' \
    -d "{\"username\":\"$1\",\"password\":\"pw-$1\",\"auth\":{\"type\":\"m.login.dummy\"}}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
w_bench=$(weft_token bench)
w_sender=$(weft_token sender)

# Synapse
fed=$(free_port); cli=$(free_port)
"$ROOT/tools/synapse/start.sh" "$syn_name" "$fed" "$cli" >/dev/null
syn_token() {
  "$ROOT/tools/synapse/register.sh" "$syn_name" "$1" "pw-$1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
s_bench=$(syn_token bench)
s_sender=$(syn_token sender)

python3 "$ROOT/tools/bench_sliding.py" --rooms "$ROOMS" --samples "$SAMPLES" \
  "weft=http://127.0.0.1:$port=$w_bench=$w_sender" \
  "synapse=http://127.0.0.1:$cli=$s_bench=$s_sender"
