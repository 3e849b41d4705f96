#!/usr/bin/env bash
# Cluster benchmark: client sends spread over many rooms, against one plain weft node, one
# node in cluster mode, and three cluster nodes, all in one run and on one PostgreSQL, with
# tools/loadgen's many-rooms mode (`weft-loadgen --rooms`) as the client.
#
#   tools/bench_cluster.sh                 (builds release weft + weft-loadgen first)
#   NO_BUILD=1 tools/bench_cluster.sh      (uses $CARGO_TARGET_DIR/release as is)
#
# Knobs (env): ROOMS (default 300), MESSAGES (sends per measured phase, default 3000),
# IN_FLIGHT (senders, default 24), RUNS (measured phases per setup, default 3), IDLE_SECS
# (idle phase before the runs, default 10), SETUPS (default single,cluster1,cluster3),
# LEASE_TTL_MS (default 5000), BENCH_DIR (default /tmp/clusterbench-<pid>); WEFT_BIN and
# LOADGEN name other binaries (a smoke run with debug builds).
#
# Every setup gets a fresh database (weft_bcl_<pid>_<setup> on $WEFT_TEST_PG, default
# postgres://postgres@127.0.0.1:5432, dropped afterwards) and fresh data dirs; cluster
# setups use the NATS server at $NATS_URL (default nats://127.0.0.1:4222) under a prefix of
# their own. In each setup the loadgen registers one user, creates ROOMS rooms (spread over
# the nodes), sends one warm-up message per room, measures IDLE_SECS of idle time, then RUNS
# phases of MESSAGES sends with IN_FLIGHT senders (sender t talks to node t mod nodes). Per
# phase: messages/s, send p50/p99, CPU per message (each weft process's user + system time,
# from /proc), and from each node's /metrics the cluster's own work (NATS forwards, sequence
# calls, publications per message; lease renewal rounds and leases renewed per second).
# Prints the medians per setup; everything else is in $BENCH_DIR (samples.jsonl, logs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/bench_lib.sh
. "$ROOT/tools/bench_lib.sh"
ROOMS=${ROOMS:-300}
MESSAGES=${MESSAGES:-3000}
IN_FLIGHT=${IN_FLIGHT:-24}
RUNS=${RUNS:-3}
IDLE_SECS=${IDLE_SECS:-10}
SETUPS=${SETUPS:-single,cluster1,cluster3}
LEASE_TTL_MS=${LEASE_TTL_MS:-5000}
PG=${WEFT_TEST_PG:-postgres://postgres@127.0.0.1:5432}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
OUT=${BENCH_DIR:-/tmp/clusterbench-$$}
log() { echo "[bench_cluster] $*" >&2; }

if [ -z "${NO_BUILD:-}" ] && [ -z "${WEFT_BIN:-}" ]; then
  log "cargo build --release -p weft -p weft-loadgen"
  (cd "$ROOT" && cargo build --release -p weft -p weft-loadgen)
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WEFT_BIN=${WEFT_BIN:-$TARGET/release/weft}
LOADGEN=${LOADGEN:-$TARGET/release/weft-loadgen}
for b in "$WEFT_BIN" "$LOADGEN"; do
  [ -x "$b" ] || { echo "$b is missing (run without NO_BUILD=1)" >&2; exit 1; }
done
mkdir -p "$OUT"
: >"$OUT/samples.jsonl"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PIDS=()
DB=""
stop_all() {
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
  if [ -n "$DB" ]; then
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
    DB=""
  fi
}
trap stop_all EXIT INT TERM

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "weft commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rooms=$ROOMS messages=$MESSAGES in_flight=$IN_FLIGHT runs=$RUNS idle_secs=$IDLE_SECS lease_ttl_ms=$LEASE_TTL_MS"
} | tee "$OUT/machine.txt"

IFS=, read -r -a setups <<<"$SETUPS"
for setup in "${setups[@]}"; do
  case "$setup" in
    single) nodes=1 cluster=false ;;
    cluster1) nodes=1 cluster=true ;;
    cluster3) nodes=3 cluster=true ;;
    *) echo "unknown setup $setup (single, cluster1, cluster3)" >&2; exit 2 ;;
  esac
  DB="weft_bcl_$$_$setup"
  psql -q "$PG/postgres" -c "CREATE DATABASE $DB" >/dev/null
  dir="$OUT/$setup"
  mkdir -p "$dir"
  prefix="bench_$$_$setup"
  urls=() pids=()
  for i in $(seq "$nodes"); do
    port=$(free_port)
    ndir="$dir/n$i"
    mkdir -p "$ndir"
    cluster_toml=""
    if [ "$cluster" = true ]; then
      cluster_toml="[cluster]
enabled = true
node_id = \"n$i\"
nats_url = \"$NATS_URL\"
prefix = \"$prefix\"
lease_ttl_ms = $LEASE_TTL_MS
advertise = \"http://127.0.0.1:$port\""
    fi
    weft_toml "$ndir/weft.toml" --key "$dir/signing.key" --db "$PG/$DB" --client "127.0.0.1:$port" \
      --log "warn,weft::server=info,weft::cluster=info" --extra "$cluster_toml"
    "$WEFT_BIN" serve --config "$ndir/weft.toml" >"$ndir/weft.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    # One after the other: the first creates the signing key and runs the migrations.
    for t in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || { tail -30 "$ndir/weft.log" >&2; exit 1; }
      grep -q "client API listening" "$ndir/weft.log" \
        && curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && break
      [ "$t" -lt 300 ] || { echo "n$i did not start" >&2; exit 1; }
      sleep 0.2
    done
    urls+=("http://127.0.0.1:$port") pids+=("$pid")
  done
  if [ "$nodes" -gt 1 ]; then
    # Every node has heard the others.
    for i in $(seq "$nodes"); do
      for t in $(seq 150); do
        [ "$(grep -c 'cluster: peer joined' "$dir/n$i/weft.log" || true)" -ge $((nodes - 1)) ] && break
        [ "$t" -lt 150 ] || { echo "n$i never heard its peers" >&2; exit 1; }
        sleep 0.2
      done
    done
  fi
  hs=$(IFS=,; echo "${urls[*]}")
  pid_list=$(IFS=,; echo "${pids[*]}")
  log "$setup: $nodes node(s) up ($hs); loadgen --rooms $ROOMS --messages $MESSAGES --in-flight $IN_FLIGHT --runs $RUNS"
  "$LOADGEN" --hs "$hs" --pids "$pid_list" --rooms "$ROOMS" --messages "$MESSAGES" \
    --in-flight "$IN_FLIGHT" --runs "$RUNS" --idle-secs "$IDLE_SECS" >"$dir/result.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r["setup"]=sys.argv[2]; print(json.dumps(r))' \
    "$dir/result.json" "$setup" >>"$OUT/samples.jsonl"
  for i in $(seq "$nodes"); do
    if grep -q panicked "$dir/n$i/weft.log"; then
      echo "$setup n$i panicked (see $dir/n$i/weft.log)" >&2; exit 1
    fi
  done
  stop_all
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

python3 - "$OUT/samples.jsonl" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda xs: statistics.median(xs) if xs else float("nan")
print("| setup | nodes | msg/s | send p50 ms | send p99 ms | CPU ms/msg (all nodes) | CPU ms/msg per node | forwards/msg | sequence calls/msg | NATS pubs/msg | idle CPU ms/s per node | idle renewal rounds/s | idle leases renewed/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    runs = r["runs"]
    m = lambda k: med([x[k] for x in runs])
    per_node = [med([x["cpu_ms_per_node"][i] / r["messages"] for x in runs]) for i in range(r["nodes"])]
    idle = r.get("idle") or {}
    idle_cpu = ", ".join(f"{c:.1f}" for c in idle.get("cpu_ms_per_second_per_node", []))
    print(f"| {r['setup']} | {r['nodes']} | {m('msgs_per_s'):.0f} | {m('send_p50_ms'):.2f} | {m('send_p99_ms'):.2f} | "
          f"{m('cpu_ms_per_message'):.3f} | {', '.join(f'{c:.3f}' for c in per_node)} | "
          f"{m('forwards_per_message'):.2f} | {m('sequence_calls_per_message'):.2f} | {m('nats_publications_per_message'):.2f} | "
          f"{idle_cpu} | {idle.get('renewal_rounds_per_second', float('nan')):.2f} | {idle.get('leases_renewed_per_second', float('nan')):.1f} |")
print()
for r in rows:
    print(f"{r['setup']}: rooms created in {r['rooms_created_s']:.1f} s; runs (msg/s): "
          + ", ".join(f"{x['msgs_per_s']:.0f}" for x in r["runs"])
          + "; CPU ms/msg: " + ", ".join(f"{x['cpu_ms_per_message']:.3f}" for x in r["runs"]))
PY
log "results in $OUT"
