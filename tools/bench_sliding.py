#!/usr/bin/env python3
"""Simplified sliding sync (MSC4186) for a user in many rooms, on one or more servers.

For each server given as NAME=URL=TOKEN_OF_BENCH_USER=TOKEN_OF_SENDER (the two users
must exist; the sender must be able to join the bench user's public rooms):

  1. the bench user creates --rooms rooms (8 in flight); the sender joins the last one;
  2. "first answer": --samples new connections each ask for the room list the way
     Element X's room list does (list `all_rooms`, ranges [[0, 19]], timeline_limit 1,
     its required_state, account_data/receipts/typing extensions), timed from request to
     answer; and the same with ranges [[0, rooms-1]] (the whole list);
  3. "wake-up": --samples times, a long-poll waits on its `pos` while the sender posts a
     message into one room; timed from just before the send to the long-poll's answer.

Prints every figure's median (and min/max) in milliseconds. Standard library only.
Loopback only: refuses a URL that is not 127.0.0.1/localhost.
"""

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"

# matrix-rust-sdk 0.18's room list `required_state` (Element X).
REQUIRED_STATE = [
    ["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"],
    ["m.room.member", "$ME"], ["m.room.topic", ""], ["m.room.avatar", ""],
    ["m.room.canonical_alias", ""], ["m.room.power_levels", ""],
    ["org.matrix.msc3401.call.member", "*"], ["m.room.join_rules", ""],
    ["m.room.tombstone", ""], ["m.room.create", ""], ["m.room.history_visibility", ""],
    ["io.element.functional_members", ""], ["m.space.parent", "*"], ["m.space.child", "*"],
    ["m.beacon_info", "*"],
]


def call(base, token, method, path, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {path}: {e.code} {e.read()[:300]!r}")


def room_list_body(conn_id, end):
    return {
        "conn_id": conn_id,
        "lists": {"all_rooms": {
            "ranges": [[0, end]], "timeline_limit": 1, "required_state": REQUIRED_STATE,
        }},
        "extensions": {
            "account_data": {"enabled": True},
            "receipts": {"enabled": True, "rooms": ["*"]},
            "typing": {"enabled": True},
        },
    }


def summary(values):
    return (f"median {statistics.median(values):8.1f} ms   "
            f"min {min(values):8.1f}   max {max(values):8.1f}   (n={len(values)})")


def bench(name, base, token, sender, rooms, samples):
    host = urllib.parse.urlparse(base).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"{name}: refusing non-loopback URL {base}")
    me = call(base, token, "GET", "/_matrix/client/v3/account/whoami")["user_id"]
    print(f"== {name} ({base}, {me})", flush=True)
    t0 = time.monotonic()

    def create(i):
        return call(base, token, "POST", "/_matrix/client/v3/createRoom",
                    {"preset": "public_chat", "name": f"bench room {i}",
                     "creation_content": {"org.example.bench": i}})["room_id"]

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, range(rooms)))
    print(f"   created {rooms} rooms in {time.monotonic() - t0:.1f} s", flush=True)
    target = ids[0]
    call(base, sender, "POST", f"/_matrix/client/v3/join/{urllib.parse.quote(target)}", {})

    results = {}
    for label, end in (("first answer, ranges [0,19]", 19),
                       (f"first answer, ranges [0,{rooms - 1}]", rooms - 1)):
        times = []
        for i in range(samples):
            t = time.monotonic()
            r = call(base, token, "POST", f"{SS}?timeout=0",
                     room_list_body(f"bench-{end}-{i}-{time.time_ns()}", end))
            times.append((time.monotonic() - t) * 1000)
            count = r.get("lists", {}).get("all_rooms", {}).get("count")
            if count is not None and count < rooms:
                raise SystemExit(f"{name}: list count {count} < {rooms}")
        results[label] = times
        print(f"   {label:34} {summary(times)}", flush=True)

    conn = f"bench-wake-{time.time_ns()}"
    pos = call(base, token, "POST", f"{SS}?timeout=0", room_list_body(conn, 19))["pos"]
    times = []
    early = 0  # long-polls that answered before the send (woken by an earlier change)

    def long_poll(p):
        r = call(base, token, "POST", f"{SS}?timeout=30000&pos={urllib.parse.quote(p)}",
                 room_list_body(conn, 19), timeout=60)
        return r, time.monotonic()

    def has_event(r, event_id):
        tl = r.get("rooms", {}).get(target, {}).get("timeline", [])
        return any(e.get("event_id") == event_id for e in tl)

    attempts = 0
    while len(times) < samples:
        attempts += 1
        if attempts > samples * 10:
            # Every long-poll answers at once: the server never waits, nothing to time.
            print(f"   wake-up: NOT MEASURED, {early} of {attempts - 1} long-polls answered "
                  "at once, before any send", flush=True)
            break
        out = {}

        def poll(p=pos):
            out["r"], out["t"] = long_poll(p)

        th = threading.Thread(target=poll)
        th.start()
        th.join(0.3)  # let the long-poll settle on the server
        if not th.is_alive():
            # It answered before anything was sent (e.g. an unread count moved after the
            # previous message): not a sample; wait on the new position.
            early += 1
            pos = out["r"]["pos"]
            continue
        t = time.monotonic()
        sent = call(base, sender, "PUT",
                    f"/_matrix/client/v3/rooms/{urllib.parse.quote(target)}/send/"
                    f"m.room.message/w{len(times)}-{time.time_ns()}",
                    {"msgtype": "m.text", "body": f"wake {len(times)}"})
        th.join(60)
        if "r" not in out:
            raise SystemExit(f"{name}: long-poll did not return")
        r, answered = out["r"], out["t"]
        # Timed to the first answer that carries the message (an answer woken by something
        # else in between is followed by another long-poll on its position).
        for _ in range(10):
            if has_event(r, sent["event_id"]):
                break
            r, answered = long_poll(r["pos"])
        else:
            raise SystemExit(f"{name}: the message never reached the long-poll")
        times.append((answered - t) * 1000)
        pos = r["pos"]
    if early:
        print(f"   ({early} long-polls answered before a send; not samples)", flush=True)
    results["wake-up (send -> long-poll answer)"] = times
    if times:
        print(f"   {'wake-up (send -> long-poll answer)':34} {summary(times)}", flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("servers", nargs="+", help="NAME=URL=BENCH_TOKEN=SENDER_TOKEN")
    ap.add_argument("--rooms", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=20)
    a = ap.parse_args()
    all_results = {}
    for spec in a.servers:
        name, base, token, sender = spec.split("=", 3)
        all_results[name] = bench(name, base, token, sender, a.rooms, a.samples)
    if len(all_results) == 2:
        (n1, r1), (n2, r2) = all_results.items()
        print(f"== ratios ({n2} / {n1}, medians)")
        for label in r1:
            if r1[label] and r2.get(label):
                ratio = statistics.median(r2[label]) / statistics.median(r1[label])
                print(f"   {label:34} {ratio:6.1f}x")


if __name__ == "__main__":
    sys.exit(main())
