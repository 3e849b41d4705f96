#!/usr/bin/env bash
# Memory of N active rooms: weft and Synapse side by side (tools/bench_memory.py does the
# phases: created, active, idle, restarted + active; see its docstring).
#
#   tools/bench_memory.sh [ROOMS] [RUNS] [weft|synapse|both]      (defaults: 1000 3 both)
#
# WEFT_BIN: the weft binary (default target/release/weft; build it with
# `cargo build --release -p weft`). Each run starts a fresh weft (SQLite in a temp dir,
# `actors.room_idle_secs = IDLE_STOP`, default 8) and a fresh Synapse (tools/synapse,
# SQLite, rate limits off) on free loopback ports, one after the other (never both at
# once, so they do not share the two cores), and waits IDLE (default 20) s for the idle
# phase. Prints the machine, every run, and the median of each figure over the runs.
# WEFT_TOML is appended to weft's configuration (e.g. WEFT_TOML=$'[actors]\nroom_threads = 1').
# KEEP=1 keeps the temp dir. MEM_WHERE=DIR writes a breakdown of each phase by mapping there
# (tools/mem_where.py: executable, libraries, arenas, stacks; threads by name).
#
# Internal subcommands (called by bench_memory.py): start-weft DIR, stop-weft DIR,
# start-synapse NAME, stop-synapse NAME; a start prints `PID BASE_URL TOKEN`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/bench_lib.sh
. "$ROOT/tools/bench_lib.sh"
WEFT_BIN=${WEFT_BIN:-$ROOT/target/release/weft}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
  start-weft)
    dir=$2
    if [ ! -f "$dir/weft.toml" ]; then
      mkdir -p "$dir"
      free_port >"$dir/port"
      weft_toml "$dir/weft.toml" --db "sqlite://$dir/weft.db" --client "127.0.0.1:$(cat "$dir/port")" \
        --log warn --extra "[actors]
room_idle_secs = ${IDLE_STOP:-8}
${WEFT_TOML:-}"
    fi
    port=$(cat "$dir/port")
    setsid "$WEFT_BIN" serve --config "$dir/weft.toml" >>"$dir/weft.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/pid"
    for i in $(seq 150); do
      curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || { cat "$dir/weft.log" >&2; exit 1; }
      [ "$i" -eq 150 ] && { echo "weft did not start" >&2; exit 1; }
      sleep 0.2
    done
    if [ ! -f "$dir/token" ]; then
      curl -fsS -X POST "http://127.0.0.1:$port/_matrix/client/v3/register" \
        -H 'Content-Type: application/json' \
        -d '{"username":"bench","password":"pw-bench","auth":{"type":"m.login.dummy"}}' |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' >"$dir/token"
    fi
    echo "$pid http://127.0.0.1:$port $(cat "$dir/token")"
    exit 0 ;;
  stop-weft)
    pid=$(cat "$2/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    if grep -q panicked "$2/weft.log"; then grep -A3 panicked "$2/weft.log" >&2; exit 1; fi
    exit 0 ;;
  start-synapse)
    name=$2
    dir="$SYNAPSE_DATA/$name"
    if [ ! -f "$dir/ports" ]; then
      mkdir -p "$dir"
      echo "$(free_port) $(free_port)" >"$dir/ports"
    fi
    read -r fed cli <"$dir/ports"
    pid=$("$ROOT/tools/synapse/start.sh" "$name" "$fed" "$cli" 2>/dev/null | tail -1)
    if [ ! -f "$dir/token" ]; then
      "$ROOT/tools/synapse/register.sh" "$name" bench pw-bench |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' >"$dir/token"
    fi
    echo "$pid http://127.0.0.1:$cli $(cat "$dir/token")"
    exit 0 ;;
  stop-synapse)
    "$ROOT/tools/synapse/stop.sh" "$2" >/dev/null 2>&1
    exit 0 ;;
esac

ROOMS=${1:-1000}
RUNS=${2:-3}
WHICH=${3:-both}
IDLE=${IDLE:-20}
[ "$WHICH" = synapse ] || [ -x "$WEFT_BIN" ] || { echo "no weft binary at $WEFT_BIN (cargo build --release -p weft)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-bench-memory-XXXXXX")
export SYNAPSE_DATA="$work/synapse" WEFT_BIN IDLE_STOP="${IDLE_STOP:-8}" WEFT_TOML="${WEFT_TOML:-}"
cleanup() {
  for d in "$work"/weft-*; do [ -f "$d/pid" ] && "$0" stop-weft "$d" || true; done
  "$ROOT/tools/synapse/stop.sh" --all >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT INT TERM
case "$WHICH" in both|weft|synapse) ;; *) echo "usage: $0 [ROOMS] [RUNS] [weft|synapse|both]" >&2; exit 2 ;; esac
if [ "$WHICH" != weft ]; then "$ROOT/tools/synapse/install.sh" >&2; fi

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "weft: $WEFT_BIN ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')); extra config: ${WEFT_TOML:-(none)}"
echo "synapse: $("${SYNAPSE_VENV:-/tmp/synvenv}/bin/python" -c 'import synapse; print(synapse.__version__)' 2>/dev/null || echo '?')"
echo "rooms: $ROOMS, runs: $RUNS, weft idle stop after ${IDLE_STOP} s, idle phase ${IDLE} s"

: >"$work/runs.jsonl"
for run in $(seq "$RUNS"); do
  args=()
  if [ "$WHICH" != synapse ]; then
    args+=(--server "weft=$0 start-weft $work/weft-$run=$0 stop-weft $work/weft-$run")
  fi
  if [ "$WHICH" != weft ]; then
    args+=(--server "synapse=$0 start-synapse mem$run=$0 stop-synapse mem$run")
  fi
  echo "run $run (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  python3 "$ROOT/tools/bench_memory.py" --rooms "$ROOMS" --idle "$IDLE" "${args[@]}" >>"$work/runs.jsonl"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$work/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
servers = sorted({r["server"] for r in runs}, key=lambda s: s != "weft")
phases = ["base", "created", "active", "idle", "restart_base", "restarted"]
med = {}
print(f"medians of {len(runs) // max(1, len(servers))} runs, MiB (min-max); VmHWM = peak so far in that process")
for s in servers:
    rs = [r for r in runs if r["server"] == s]
    print(f"{s}: create {statistics.median(r['create_s'] for r in rs):.1f} s, "
          f"first messages {statistics.median(r['message_s'] for r in rs):.1f} s, "
          f"after restart {statistics.median(r['restart_message_s'] for r in rs):.1f} s")
    for p in phases:
        for k in ("rss_mib", "hwm_mib"):
            vals = [r[p][k] for r in rs]
            med[(s, p, k)] = statistics.median(vals)
            extra = ""
            if k == "rss_mib" and "actors" in rs[0][p]:
                extra = f"   room actors {[r[p]['actors'] for r in rs]}"
            if k == "rss_mib":
                extra += f"   threads {[r[p]['threads'] for r in rs]}"
                if "anon_mib" in rs[0][p]:
                    extra += (f"   anon {statistics.median(r[p]['anon_mib'] for r in rs):.1f}"
                              f" file {statistics.median(r[p]['file_mib'] for r in rs):.1f}")
            print(f"  {p:13s} {k:8s} {med[(s, p, k)]:8.1f}  ({min(vals):.1f}-{max(vals):.1f}){extra}")
if len(servers) == 2:
    print("weft / Synapse (medians):")
    for p in phases:
        for k in ("rss_mib", "hwm_mib"):
            print(f"  {p:13s} {k:8s} {med[('weft', p, k)] / med[('synapse', p, k)]:.2f}")
PY
