#!/usr/bin/env bash
# Run a real client's smoke test against a freshly started weft (loopback only).
#
#   tools/clients/run.sh nio           # two matrix-nio clients (nio_smoke.py)
#   tools/clients/run.sh nio-e2e       # the same in an encrypted room
#   tools/clients/run.sh hydrogen      # Hydrogen in headless Chromium <-> matrix-nio (web_smoke.py)
#   tools/clients/run.sh hydrogen-e2e  # the same in an encrypted room
#   tools/clients/run.sh nio-new-device  # a device logging in after a device-list change decrypts
#   tools/clients/run.sh synapse-e2e   # weft <-> real Synapse (tools/synapse): nio --e2e and the
#                                      # new-device check, one user on each server, both ways
#   tools/clients/run.sh jssdk         # two matrix-js-sdk clients (Element Web's SDK) through
#                                      # media, relations, threads, tags, search, the user
#                                      # directory, key backup, push rules, unread counts,
#                                      # /notifications, a pusher and a fake gateway on
#                                      # loopback, and deactivation (jssdk/scenario.mjs)
#
# Each run starts its own weft (WEFT_BIN, default debug/weft under $CARGO_TARGET_DIR or
# target/; built with `cargo build` when missing) with a temporary data dir, open
# registration and no federation, on a free loopback port, and stops it afterwards.
# WEFT_DB=sqlite (default: a file in the data dir) or WEFT_DB=postgres (a fresh database on $WEFT_TEST_PG, default
# postgres://postgres@127.0.0.1:5432, dropped afterwards) picks weft's backend. The run fails
# if the client test fails or weft's log shows a panic. Encrypted runs (nio-e2e,
# hydrogen-e2e, synapse-e2e) then run check_stored.py on weft's database (and Synapse's):
# m.room.encryption set, messages stored as m.room.encrypted, no plaintext body anywhere.
#
# Needs: python3 (a venv with matrix-nio[e2e] is made under $WEFT_CLIENT_VENV, default
# $TMPDIR/weft-client-venv); for hydrogen also node + npm and Debian's chromium
# (node_modules go to $HYDROGEN_WORK, default $TMPDIR/weft-hydrogen/work); for jssdk node + npm
# (matrix-js-sdk pinned by jssdk/package-lock.json, installed with `npm ci` into $JSSDK_WORK,
# default $TMPDIR/weft-jssdk/work).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TMP=${TMPDIR:-/tmp}
VENV=${WEFT_CLIENT_VENV:-$TMP/weft-client-venv}
NIO_VERSION=${NIO_VERSION:-0.26.0}
export HYDROGEN_WORK=${HYDROGEN_WORK:-$TMP/weft-hydrogen/work}
export JSSDK_WORK=${JSSDK_WORK:-$TMP/weft-jssdk/work}

what=${1:-}
case "$what" in
  nio|nio-e2e|hydrogen|hydrogen-e2e|nio-new-device|synapse-e2e|jssdk) ;;
  *) echo "usage: $0 nio|nio-e2e|hydrogen|hydrogen-e2e|nio-new-device|synapse-e2e|jssdk" >&2; exit 2 ;;
esac

log() { echo "[clients/run.sh $(date +%H:%M:%S)] $*"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- Python client library
if ! "$VENV/bin/python" -c "import nio, vodozemac" 2>/dev/null; then
  log "creating $VENV with matrix-nio[e2e]==$NIO_VERSION"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "matrix-nio[e2e]==$NIO_VERSION"
fi

# ---- weft
# cargo puts it under $CARGO_TARGET_DIR when that is set.
WEFT_BIN=${WEFT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/weft}
if [ ! -x "$WEFT_BIN" ]; then
  log "building weft"
  (cd "$ROOT" && cargo build --bin weft)
fi
work=$(mktemp -d "$TMP/weft-clients-XXXXXX")
weft_pid=""
http_pid=""
synapse_name=""
pg_db=""
PG_BASE=${WEFT_TEST_PG:-postgres://postgres@127.0.0.1:5432}
cleanup() {
  local rc=$?
  [ -n "$http_pid" ] && kill "$http_pid" 2>/dev/null || true
  if [ -n "$synapse_name" ]; then
    SYNAPSE_DATA="$work/synapse" "$ROOT/tools/synapse/stop.sh" "$synapse_name" --kill >/dev/null 2>&1 || true
  fi
  if [ -n "$weft_pid" ]; then
    kill "$weft_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$weft_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$weft_pid" 2>/dev/null || true
  fi
  if [ -n "$pg_db" ]; then
    psql "$PG_BASE/test" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  if [ $rc -ne 0 ] && [ -f "$work/weft.log" ]; then
    echo "---- last lines of weft's log ----"; tail -n 40 "$work/weft.log"; echo "----"
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT INT TERM

port=$(free_port)
hs="http://127.0.0.1:$port"
case "${WEFT_DB:-sqlite}" in
  sqlite) db_url="sqlite://$work/data/weft.db" ;;
  postgres)
    pg_db="weft_clients_$$_$port"
    psql "$PG_BASE/test" -qc "CREATE DATABASE $pg_db" >/dev/null
    db_url="$PG_BASE/$pg_db" ;;
  *) echo "WEFT_DB must be sqlite or postgres" >&2; exit 2 ;;
esac
log "weft's database: $db_url"
if [ "$what" = synapse-e2e ]; then
  fed_port=$(free_port)
  cat >"$work/weft.toml" <<EOF
server_name = "localhost:$fed_port"
data_dir = "$work/data"
[database]
url = "$db_url"
[listeners]
client = "127.0.0.1:$port"
federation = "127.0.0.1:$fed_port"
[registration]
open = true
[federation]
verify_tls = false
retry_min_ms = 200
retry_max_ms = 2000
[outbound]
allowed_addresses = ["127.0.0.0/8"]
[rate_limits]
enabled = false
EOF
else
cat >"$work/weft.toml" <<EOF
server_name = "localhost"
data_dir = "$work/data"
[database]
url = "$db_url"
[listeners]
client = "127.0.0.1:$port"
federation = ""
[registration]
open = true
[federation]
enabled = false
[rate_limits]
enabled = false
EOF
fi
# matrix-js-sdk's scenario also downloads through the legacy unauthenticated media endpoints,
# and runs a fake push gateway on 127.0.0.1, which the address policy must let weft reach.
if [ "$what" = jssdk ]; then
  printf '[media]\nlegacy_unauthenticated = true\n[outbound]\nallowed_addresses = ["127.0.0.1/32"]\n' >>"$work/weft.toml"
fi
"$WEFT_BIN" serve --config "$work/weft.toml" >"$work/weft.log" 2>&1 &
weft_pid=$!
for i in $(seq 150); do
  kill -0 "$weft_pid" 2>/dev/null || { log "weft exited at start"; exit 1; }
  # Ours is listening (its log says so) and answers.
  if grep -q "listening" "$work/weft.log" && curl -fsS "$hs/_matrix/client/versions" >/dev/null 2>&1; then break; fi
  [ "$i" -eq 150 ] && { log "weft did not answer within 30 s"; exit 1; }
  sleep 0.2
done
log "weft $(basename "$WEFT_BIN") listening on $hs (pid $weft_pid)"

# ---- the client test
nonce=$(python3 -c 'import uuid; print(uuid.uuid4().hex[:8])')
rc=0
case "$what" in
  nio|nio-e2e)
    flags=()
    [ "$what" = nio-e2e ] && flags+=(--e2e)
    [ "$what" = nio-e2e ] && flags+=(--record "$work/run-1.json")
    "$VENV/bin/python" "$HERE/nio_smoke.py" --hs "$hs" \
      --user-a "a$nonce" --pass-a "pw-a-$nonce" --user-b "b$nonce" --pass-b "pw-b-$nonce" \
      --timeout 30 "${flags[@]}" || rc=$?
    ;;
  nio-new-device)
    "$VENV/bin/python" "$HERE/nio_new_device.py" --hs "$hs" \
      --user-a "a$nonce" --pass-a "pw-a-$nonce" --user-b "b$nonce" --pass-b "pw-b-$nonce" \
      --timeout 30 || rc=$?
    ;;
  synapse-e2e)
    "$ROOT/tools/synapse/install.sh"
    synapse_name="syn$nonce"
    s_fed=$(free_port); s_client=$(free_port)
    export SYNAPSE_DATA="$work/synapse"
    "$ROOT/tools/synapse/start.sh" "$synapse_name" "$s_fed" "$s_client" >/dev/null
    shs="http://127.0.0.1:$s_client"
    for u in sa sb; do "$ROOT/tools/synapse/register.sh" "$synapse_name" "$u$nonce" "pw-$u" >/dev/null; done
    log "Synapse localhost:$s_fed up (client $shs)"
    # One user on each server, both ways: encrypted messages, then a new device.
    "$VENV/bin/python" "$HERE/nio_smoke.py" --hs "$hs" --hs-b "$shs" --e2e --timeout 45 \
      --record "$work/run-1.json" \
      --user-a "wa$nonce" --pass-a "pw-wa" --user-b "sa$nonce" --pass-b "pw-sa" || rc=$?
    [ $rc -eq 0 ] && { "$VENV/bin/python" "$HERE/nio_smoke.py" --hs "$shs" --hs-b "$hs" --e2e --timeout 45 \
      --record "$work/run-2.json" \
      --user-a "sb$nonce" --pass-a "pw-sb" --user-b "wb$nonce" --pass-b "pw-wb" || rc=$?; }
    [ $rc -eq 0 ] && { "$VENV/bin/python" "$HERE/nio_new_device.py" --hs "$hs" --hs-b "$shs" --timeout 45 \
      --user-a "wc$nonce" --pass-a "pw-wc" --user-b "sa$nonce" --pass-b "pw-sa" || rc=$?; }
    [ $rc -eq 0 ] && { "$VENV/bin/python" "$HERE/nio_new_device.py" --hs "$shs" --hs-b "$hs" --timeout 45 \
      --user-a "sb$nonce" --pass-a "pw-sb" --user-b "wd$nonce" --pass-b "pw-wd" || rc=$?; }
    ;;
  jssdk)
    command -v node >/dev/null || { log "node is missing"; exit 2; }
    mkdir -p "$JSSDK_WORK"
    if ! cmp -s "$HERE/jssdk/package-lock.json" "$JSSDK_WORK/package-lock.json" \
        || [ ! -d "$JSSDK_WORK/node_modules/matrix-js-sdk" ]; then
      cp "$HERE/jssdk/package.json" "$HERE/jssdk/package-lock.json" "$JSSDK_WORK/"
      (cd "$JSSDK_WORK" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
    node "$HERE/jssdk/scenario.mjs" --hs "$hs" \
      --user-a "a$nonce" --pass-a "pw-a-$nonce" --user-b "b$nonce" --pass-b "pw-b-$nonce" \
      --timeout 30 || rc=$?
    ;;
  hydrogen|hydrogen-e2e)
    command -v node >/dev/null || { log "node is missing"; exit 2; }
    [ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { log "chromium is missing (apt-get install -y chromium)"; exit 2; }
    dist="$work/hydrogen-dist"
    bash "$HERE/hydrogen/build.sh" "$dist" "$hs"
    app_port=$(free_port)
    python3 -m http.server "$app_port" --bind 127.0.0.1 --directory "$dist" >"$work/http.log" 2>&1 &
    http_pid=$!
    for i in $(seq 50); do
      curl -fsS "http://127.0.0.1:$app_port/index.html" >/dev/null 2>&1 && break
      [ "$i" -eq 50 ] && { log "static server did not start"; exit 1; }
      sleep 0.2
    done
    flags=()
    [ "$what" = hydrogen-e2e ] && flags+=(--e2e --record "$work/run-1.json")
    "$VENV/bin/python" "$HERE/hydrogen/web_smoke.py" --hs "$hs" \
      --app "http://127.0.0.1:$app_port/" --timeout 45 "${flags[@]}" || rc=$?
    ;;
esac

# ---- what the servers stored of the encrypted runs
if [ $rc -eq 0 ]; then
  syn_db=()
  [ "$what" = synapse-e2e ] && syn_db=(--synapse-db "$work/synapse/$synapse_name/homeserver.db")
  for rec in "$work"/run-*.json; do
    [ -f "$rec" ] || continue
    python3 "$HERE/check_stored.py" --record "$rec" --weft-db "$db_url" "${syn_db[@]}" || rc=$?
  done
  case "$what" in
    *e2e) [ -f "$work/run-1.json" ] || { log "the encrypted run recorded nothing to check"; rc=1; } ;;
  esac
fi

if grep -q "panicked" "$work/weft.log"; then
  log "weft panicked:"; grep -n -A3 "panicked" "$work/weft.log" | head -20
  rc=1
fi
if [ $rc -eq 0 ]; then log "$what: PASS"; else log "$what: FAIL (exit $rc)"; fi
exit $rc
