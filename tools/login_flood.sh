#!/usr/bin/env bash
# A login and registration flood against a freshly started weft (SQLite, generated keys),
# measured by weft-login-flood (tools/loadgen/src/bin/weft-login-flood.rs): every answer's status,
# the server's idle / peak / after-flood resident memory, and how fast a bystander's
# /versions and message sends are answered during the flood.
#
#   tools/login_flood.sh [RUNS]          (default 3)
#
# Builds the release binaries (cargo build --release -p weft -p weft-loadgen) unless
# WEFT_BIN / FLOOD are given. FLOOD_ARGS passes flags (default "--logins 500
# --registrations 500"); WEFT_TOML is appended to the server's config (e.g. a [passwords]
# section). Loopback only; every run starts and stops its own server.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/bench_lib.sh
. "$ROOT/tools/bench_lib.sh"
RUNS=${1:-3}
TMP=${TMPDIR:-/tmp}
FLOOD_ARGS=${FLOOD_ARGS:---logins 500 --registrations 500}

if [ -z "${WEFT_BIN:-}" ] || [ -z "${FLOOD:-}" ]; then
  (cd "$ROOT" && cargo build --release -p weft -p weft-loadgen)
fi
WEFT_BIN=${WEFT_BIN:-$ROOT/target/release/weft}
FLOOD=${FLOOD:-$ROOT/target/release/weft-login-flood}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

work=$(mktemp -d "$TMP/weft-flood-XXXXXX")
weft_pid=""
stop_weft() {
  if [ -n "$weft_pid" ]; then
    kill "$weft_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$weft_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$weft_pid" 2>/dev/null || true
    wait "$weft_pid" 2>/dev/null || true
    weft_pid=""
  fi
}
trap 'stop_weft; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT INT TERM

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "weft: $WEFT_BIN ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "flood: $FLOOD_ARGS"
status=0
for run in $(seq "$RUNS"); do
  dir="$work/run-$run"
  mkdir -p "$dir"
  port=$(free_port)
  weft_toml "$dir/weft.toml" --name flood.local --client "127.0.0.1:$port" \
    --log "warn,weft::server=info" --extra "${WEFT_TOML:-}"
  "$WEFT_BIN" serve --config "$dir/weft.toml" >"$dir/weft.log" 2>&1 &
  weft_pid=$!
  for i in $(seq 150); do
    kill -0 "$weft_pid" 2>/dev/null || { cat "$dir/weft.log"; exit 1; }
    curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && break
    [ "$i" -eq 150 ] && { echo "weft did not start" >&2; exit 1; }
    sleep 0.2
  done
  echo "-- run $run"
  # shellcheck disable=SC2086
  "$FLOOD" --hs "http://127.0.0.1:$port" --pid "$weft_pid" $FLOOD_ARGS || status=1
  grep -q panicked "$dir/weft.log" && { echo "weft panicked:"; grep -A3 panicked "$dir/weft.log"; status=1; }
  stop_weft
done
exit $status
