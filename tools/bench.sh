#!/usr/bin/env bash
# Benchmark a release weft with weft-loadgen (tools/loadgen): send throughput of one client
# into one room (sequential and N in flight) and send -> /sync wake-up latency.
#
#   tools/bench.sh [RUNS] [sqlite|postgres|both]      (defaults: 5 both)
#
# Builds the release binaries (cargo build --release -p weft -p weft-loadgen) unless
# WEFT_BIN / LOADGEN are given, then for each backend runs RUNS times: a fresh weft (temp data
# dir; for PostgreSQL a fresh weft_bench_* database on $WEFT_TEST_PG, default
# postgres://postgres@127.0.0.1:5432, dropped afterwards) on a free loopback port, one
# loadgen run, stop. Prints every run and the median of each figure, plus the machine.
# Extra loadgen flags: LOADGEN_ARGS="--messages 2000 --in-flight 16 --samples 200".
# Extra server configuration: WEFT_TOML is appended to each run's config (top-level tables,
# e.g. WEFT_TOML=$'[metrics]\nenabled = false').
# After each run it reads the server's /metrics and prints the wake-up's stages inside the
# server (weft_sync_wake_stage_seconds: queue, commit (commit_writes + commit_sync), notify,
# wake, respond (read_wait + read + reply), total; p50 and
# p99 interpolated in the histogram's buckets) and how woken long-polls were answered
# (weft_sync_woken_answers_total), when the binary records them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/bench_lib.sh
. "$ROOT/tools/bench_lib.sh"
RUNS=${1:-5}
WHICH=${2:-both}
TMP=${TMPDIR:-/tmp}
PG=${WEFT_TEST_PG:-postgres://postgres@127.0.0.1:5432}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
WEFT_TOML=${WEFT_TOML:-}

if [ -z "${WEFT_BIN:-}" ] || [ -z "${LOADGEN:-}" ]; then
  (cd "$ROOT" && cargo build --release -p weft -p weft-loadgen)
fi
WEFT_BIN=${WEFT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/weft}
LOADGEN=${LOADGEN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/weft-loadgen}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

work=$(mktemp -d "$TMP/weft-bench-XXXXXX")
weft_pid=""
db=""
probe_pid=""
stop_weft() {
  if [ -n "$probe_pid" ]; then
    kill "$probe_pid" 2>/dev/null || true
    probe_pid=""
  fi
  if [ -n "$weft_pid" ]; then
    kill "$weft_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$weft_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$weft_pid" 2>/dev/null || true
    wait "$weft_pid" 2>/dev/null || true
    weft_pid=""
  fi
  if [ -n "$db" ]; then
    psql -q "$PG/test" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    db=""
  fi
}
trap 'stop_weft; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT INT TERM

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "weft: $WEFT_BIN ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "loadgen flags: ${LOADGEN_ARGS:-(defaults)}"
echo "extra config: ${WEFT_TOML:-(none)}"

backends=()
case "$WHICH" in
  both) backends=(sqlite postgres) ;;
  sqlite|postgres) backends=("$WHICH") ;;
  *) echo "usage: $0 [RUNS] [sqlite|postgres|both]" >&2; exit 2 ;;
esac

for backend in "${backends[@]}"; do
  : >"$work/$backend.jsonl"
  for run in $(seq "$RUNS"); do
    dir="$work/$backend-$run"
    mkdir -p "$dir"
    port=$(free_port)
    if [ "$backend" = postgres ]; then
      db="weft_bench_$$_$run"
      psql -q "$PG/test" -c "CREATE DATABASE $db" >/dev/null
      url="$PG/$db"
    else
      url="sqlite://$dir/weft.db"
    fi
    weft_toml "$dir/weft.toml" --db "$url" --client "127.0.0.1:$port" \
      --log "warn,weft::server=info" --extra "$WEFT_TOML"
    "$WEFT_BIN" serve --config "$dir/weft.toml" >"$dir/weft.log" 2>&1 &
    weft_pid=$!
    for i in $(seq 150); do
      kill -0 "$weft_pid" 2>/dev/null || { cat "$dir/weft.log"; exit 1; }
      # Ours is listening (its log says so) and answers.
      grep -q "listening" "$dir/weft.log" \
        && curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && break
      [ "$i" -eq 150 ] && { echo "weft did not start" >&2; exit 1; }
      sleep 0.2
    done
    # The disk's own durable-write latency right now (the floor under every durable send):
    # 200 x (4 KiB pwrite + fdatasync) on a file beside the database.
    python3 - "$dir/fsync-probe" <<'PY'
import os, statistics, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
os.write(fd, b"\0" * (1 << 20)); os.fsync(fd)
t = []
for i in range(200):
    os.pwrite(fd, b"x" * 4096, (i % 256) * 4096)
    t0 = time.perf_counter(); os.fdatasync(fd); t.append((time.perf_counter() - t0) * 1000)
os.close(fd); os.unlink(sys.argv[1])
print(f"  disk: fdatasync p50 {statistics.median(t):.2f} ms (min {min(t):.2f})")
PY
    # The disk's fdatasync while the load runs, too: other processes' writes on the same
    # device make a flush cost several times the quiet figure above, and a commit pays the
    # flush of the moment (one pwrite + fdatasync every 100 ms, beside the database: rare
    # enough not to add much to the disk it measures).
    python3 - "$dir/fsync-during" "$dir/fsync-during.txt" <<'PY' &
import os, signal, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
os.write(fd, b"\0" * (1 << 20)); os.fsync(fd)
out = open(sys.argv[2], "w", buffering=1)
signal.signal(signal.SIGTERM, lambda *_: (os.unlink(sys.argv[1]), sys.exit(0)))
i = 0
while True:
    os.pwrite(fd, b"x" * 4096, (i % 256) * 4096)
    t0 = time.perf_counter(); os.fdatasync(fd)
    out.write(f"{(time.perf_counter() - t0) * 1000:.4f}\n")
    i += 1
    time.sleep(0.1)
PY
    probe_pid=$!
    # shellcheck disable=SC2086
    "$LOADGEN" --hs "http://127.0.0.1:$port" --json $LOADGEN_ARGS >>"$work/$backend.jsonl"
    kill "$probe_pid" 2>/dev/null || true
    wait "$probe_pid" 2>/dev/null || true
    probe_pid=""
    python3 - "$dir/fsync-during.txt" <<'PY'
import statistics, sys
t = [float(l) for l in open(sys.argv[1]) if l.strip()]
if t:
    t.sort()
    print(f"  disk during the run: fdatasync p50 {statistics.median(t):.2f} ms, "
          f"p90 {t[int(len(t) * 0.9)]:.2f} ms ({len(t)} samples)")
PY
    python3 - "$backend" "$run" "$work/$backend.jsonl" <<'PY'
import json, sys
r = json.loads(open(sys.argv[3]).read().splitlines()[-1])
print(f"  {sys.argv[1]} run {sys.argv[2]}: sequential {r['sequential_msgs_per_s']:.0f} msg/s, "
      f"{r['in_flight']} in flight {r['concurrent_msgs_per_s']:.0f} msg/s, "
      f"wake-up p50 {r['wakeup_p50_ms']:.2f} ms p99 {r['wakeup_p99_ms']:.2f} ms")
PY
    curl -fsS "http://127.0.0.1:$port/metrics" >"$dir/metrics.txt" 2>/dev/null || : >"$dir/metrics.txt"
    python3 - "$dir/metrics.txt" "$work/$backend.stages.jsonl" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
buckets, answers = {}, {}
for line in text.splitlines():
    m = re.match(r'weft_sync_wake_stage_seconds_bucket\{(.*)\} (\S+)$', line)
    if m:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        buckets.setdefault(labels["stage"], []).append((le, float(m.group(2))))
    m = re.match(r'weft_sync_woken_answers_total\{path="(\w+)"\} (\S+)$', line)
    if m:
        answers[m.group(1)] = int(float(m.group(2)))
def quantile(bs, q):
    bs = sorted(bs)
    total = bs[-1][1]
    if total == 0:
        return None
    want, lo, below = q * total, 0.0, 0.0
    for le, n in bs:
        if n >= want:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((want - below) / max(n - below, 1e-9))
        lo, below = le, n
    return lo
order = ["queue", "commit", "commit_writes", "commit_sync", "notify", "wake", "respond",
         "read_wait", "read", "reply", "total"]
out = {}
for st in order:
    if st in buckets:
        out[st] = {"p50_ms": quantile(buckets[st], 0.5) * 1000, "p99_ms": quantile(buckets[st], 0.99) * 1000,
                   "n": int(sorted(buckets[st])[-1][1])}
if out:
    print("  in-server stages (p50 / p99 ms): " + ", ".join(
        f"{st} {v['p50_ms']:.3f} / {v['p99_ms']:.3f}" for st, v in out.items()))
if answers:
    print("  woken /sync answers: " + ", ".join(f"{k} {v}" for k, v in sorted(answers.items())))
with open(sys.argv[2], "a") as f:
    f.write(json.dumps({"stages": out, "answers": answers}) + "\n")
PY
    grep -q panicked "$dir/weft.log" && { echo "weft panicked:"; grep -A3 panicked "$dir/weft.log"; exit 1; }
    stop_weft
  done
  python3 - "$backend" "$work/$backend.jsonl" <<'PY'
import json, statistics, sys
name, path = sys.argv[1], sys.argv[2]
runs = [json.loads(l) for l in open(path) if l.strip()]
keys = ["sequential_msgs_per_s", "sequential_send_p50_ms", "sequential_send_p99_ms",
        "concurrent_msgs_per_s", "concurrent_send_p50_ms", "concurrent_send_p99_ms",
        "wakeup_p50_ms", "wakeup_p99_ms"]
print(f"{name}: median of {len(runs)} runs ({runs[0]['messages']} messages per phase, "
      f"{runs[0]['in_flight']} in flight, {runs[0]['samples']} wake-up samples)")
for k in keys:
    vals = [r[k] for r in runs]
    print(f"  {k:26s} {statistics.median(vals):10.2f}   (min {min(vals):.2f}, max {max(vals):.2f})")
PY
  python3 - "$work/$backend.stages.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runs = [r for r in runs if r["stages"]]
if runs:
    print(f"  in-server wake-up stages, median over {len(runs)} runs of each run's p50 / p99 (ms):")
    for st in ["queue", "commit", "commit_writes", "commit_sync", "notify", "wake", "respond",
               "read_wait", "read", "reply", "total"]:
        p50 = [r["stages"][st]["p50_ms"] for r in runs if st in r["stages"]]
        p99 = [r["stages"][st]["p99_ms"] for r in runs if st in r["stages"]]
        if p50:
            print(f"    {st:8s} {statistics.median(p50):8.3f} / {statistics.median(p99):8.3f}")
PY
done
