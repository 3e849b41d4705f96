#!/usr/bin/env bash
# Catch-up benchmark, weft vs Synapse in one run: time from a peer's return until it holds
# what it missed, after outages of 30 s, 240 s and 900 s (both senders with production
# retry settings), and the time to deliver a 10,000-event backlog. See tools/bench_catchup.py.
#
#   tools/bench_catchup.sh [--outages 30,240,900] [--runs 3] [--long-runs 1] [--backlog 10000] [--cap 1800]
#
# Self-contained from a fresh clone: builds the release weft (unless WEFT_BIN is given) and
# installs Synapse 1.163.2 into a venv (tools/synapse/install.sh, idempotent). Loopback
# only; every server on free ports under a temporary directory, stopped at the end. The
# outages run concurrently (wall time ≈ runs × (longest outage + Synapse's catch-up)).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${WEFT_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release -p weft)
  WEFT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/weft"
fi
"$ROOT/tools/synapse/install.sh" >&2
exec python3 "$ROOT/tools/bench_catchup.py" --weft "$WEFT_BIN" "$@"
