# Shared set-up and wrap-up of the federation benchmarks (tools/bench_send.sh,
# tools/bench_ingest.sh), sourced by them. The caller sets ROOT, SYN_TOOLS, OUT, TARGETS,
# the ports (WEFT_CLIENT, WEFT_FED, SYN_CLIENT, SYN_FED, and PEER_PORTS, the array of the
# fedpeer ports), SYN_NAME and log(); then:
#
#   bench_setup    # ports free, binaries (built unless NO_BUILD=1), Synapse installed,
#                  # weft started and a user registered, Synapse too if TARGETS names it:
#                  # sets WEFT_BIN, PEER_BIN, WEFT_PID, TARGET_ARGS; writes machine.txt
#   ... run fedpeer with "${TARGET_ARGS[@]}" ...
#   bench_finish   # load after, weft's CPU time over the run, its /metrics, panics
#
# Both servers are stopped on exit. WEFT_EXTRA (whole TOML tables, e.g.
# WEFT_EXTRA=$'[push]\npass_interval_ms = 0') is added to weft's config.
#
# Every benchmark script (tools/bench*.sh, tools/login_flood.sh) writes its weft config with
# weft_toml (below), which needs nothing else from here.

# weft_toml FILE [--name N] [--dir D] [--key K] [--db URL] [--client ADDR] [--fed ADDR]
#           [--fed-extra TOML] [--log FILTER] [--extra TOML]
# Writes a benchmark's weft config to FILE: open registration, rate limits off; server_name
# N (default bench.local), data_dir D (default FILE's folder), signing_key_path K and
# [database] url URL when given; the client API on ADDR. Without --fed, federation is off
# (no listener); with it, federation listens on ADDR without TLS checks (--fed-extra is
# added to its [federation] table) and may reach loopback. --log sets [logging] filter;
# --extra (whole tables, e.g. a script's WEFT_TOML knob) goes last.
weft_toml() {
  local file=$1 name=bench.local dir key="" db="" client="" fed="" fed_extra="" filter="" extra=""
  dir=$(dirname "$file")
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) name=$2 ;;
      --dir) dir=$2 ;;
      --key) key=$2 ;;
      --db) db=$2 ;;
      --client) client=$2 ;;
      --fed) fed=$2 ;;
      --fed-extra) fed_extra=$2 ;;
      --log) filter=$2 ;;
      --extra) extra=$2 ;;
      *) echo "weft_toml: unknown option $1" >&2; return 2 ;;
    esac
    shift 2
  done
  {
    echo "server_name = \"$name\""
    echo "data_dir = \"$dir\""
    [ -z "$key" ] || echo "signing_key_path = \"$key\""
    [ -z "$db" ] || printf '[database]\nurl = "%s"\n' "$db"
    printf '[listeners]\nclient = "%s"\nfederation = "%s"\n' "$client" "$fed"
    printf '[registration]\nopen = true\n'
    if [ -z "$fed" ]; then
      printf '[federation]\nenabled = false\n'
    else
      printf '[federation]\nverify_tls = false\n%s\n' "$fed_extra"
      printf '[outbound]\nallowed_addresses = ["127.0.0.0/8"]\n'
    fi
    printf '[rate_limits]\nenabled = false\n'
    [ -z "$filter" ] || printf '[logging]\nfilter = "%s"\n' "$filter"
    [ -z "$extra" ] || printf '%s\n' "$extra"
  } >"$file"
}

bench_setup() {
  mkdir -p "$OUT"
  for p in $WEFT_CLIENT $WEFT_FED $SYN_CLIENT $SYN_FED "${PEER_PORTS[@]}"; do
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
  weft_toml "$OUT/weft/weft.toml" --name "localhost:$WEFT_FED" --client "127.0.0.1:$WEFT_CLIENT" \
    --fed "127.0.0.1:$WEFT_FED" --fed-extra "${WEFT_FEDERATION_EXTRA:-}" --extra "${WEFT_EXTRA:-}"
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
}

bench_finish() {
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
  echo "weft CPU during the run: $(( ($(cpu_ticks "$WEFT_PID") - WEFT_CPU0) * 1000 / $(getconf CLK_TCK) )) ms (user + system; includes joins and warm-ups)" >>"$OUT/machine.txt"
  # weft's own account of the run: which admission path each PDU took, slow-path times.
  curl -sf --max-time 10 "http://127.0.0.1:$WEFT_CLIENT/metrics" >"$OUT/weft/metrics.txt" || true
  grep -E '^weft_room_(admission_path_total|slow_path_duration_seconds_(sum|count)|batch_size_events_(sum|count))' "$OUT/weft/metrics.txt" >&2 || true
  # Commits (fsyncs with synchronous = full) over the whole process, and where /send answers
  # were stored (older binaries lack some of these series; then nothing is printed for them).
  grep -E '^weft_(db_commits_total|db_commit_batch_size_jobs_(sum|count)|federation_txn_records_total)' "$OUT/weft/metrics.txt" >&2 || true
  grep -E '^weft_db_commits_total ' "$OUT/weft/metrics.txt" | awk '{print "weft commits during the process: " $2}' >>"$OUT/machine.txt" || true
  if grep -q panicked "$OUT/weft/weft.log"; then
    echo "weft panicked during the benchmark (see $OUT/weft/weft.log)" >&2
    exit 1
  fi
  cat "$OUT/machine.txt"
  log "results in $OUT"
}
