#!/usr/bin/env bash
# Instructions per push evaluation (one event, one member), counted by callgrind so the
# number does not depend on the machine's load: runs the push_eval bench binary once per
# (way, case) at two loop lengths and prints (Ir(long) - Ir(short)) / (long - short).
#
#   tools/push_eval_callgrind.sh        # builds with `cargo bench --no-run` first
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bin=$(cargo bench -p weft-protocol --bench push_eval --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "push_eval" in m["executable"]:
        print(m["executable"])' | tail -1)
[ -x "$bin" ] || { echo "no push_eval binary" >&2; exit 1; }
SHORT=200 LONG=1200
ir() {
  local out
  out=$(mktemp)
  PUSH_EVAL_ONLY="$1:$2" PUSH_EVAL_N="$3" valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" >/dev/null 2>&1
  awk '/^summary:/ {print $2}' "$out"
  rm -f "$out"
}
names=("plain message (.m.rule.message)" "keyword (content rule)" "mention (m.mentions)" "reaction (nothing notifies)")
printf '%-34s %14s %14s %14s\n' "event" "get_actions" "walk" "flatten"
for c in 0 1 2 3; do
  row=()
  for way in get_actions walk flatten; do
    a=$(ir "$way" "$c" "$SHORT"); b=$(ir "$way" "$c" "$LONG")
    row+=("$(( (b - a) / (LONG - SHORT) ))")
  done
  printf '%-34s %14s %14s %14s\n' "${names[$c]}" "${row[0]}" "${row[1]}" "${row[2]}"
done
echo "(instructions per evaluation; walk = the worker's per-member cost, flatten = once per event)"
