#!/usr/bin/env python3
"""Memory of many active rooms: weft and Synapse side by side (driven by tools/bench_memory.sh).

For each server, one run is:

  1. a fresh server: `base` = VmRSS right after start (and one registered user);
  2. the user creates --rooms rooms (8 requests in flight): `created` (VmRSS, VmHWM);
  3. one message into every room (8 in flight; weft loads an actor for each room it has
     not kept): `active`;
  4. --idle seconds with nothing to do (weft is configured to stop idle room actors
     sooner than that; Synapse has no such thing and just waits): `idle`, plus weft's
     `weft_room_actors` gauge from /metrics, which must read 0 by then;
  5. the server is stopped (SIGTERM) and started again on the same data, then one message
     into every room again: `restarted`.

Memory is read from /proc/<pid>/status: VmRSS (resident now), VmHWM (the peak so far
in that process), and VmRSS's anonymous and file-backed parts (RssAnon, RssFile). With
MEM_WHERE=DIR, tools/mem_where.py's breakdown of every phase is written there too. Prints one JSON line per server per run on stdout; the shell wrapper
takes medians.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid


def call(base, token, method, path, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            # Synapse answers 429/5xx now and then under load: retry a few times.
            if e.code in (429, 502, 503) and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise RuntimeError(f"{method} {path}: {e.code} {e.read()[:300]!r}") from None


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def mem(pid, label=""):
    out = {"rss_mib": round(proc_kib(pid, "VmRSS") / 1024, 1),
           "hwm_mib": round(proc_kib(pid, "VmHWM") / 1024, 1),
           # Anonymous (heap, arenas, stacks) and file-backed (binary, libraries) parts.
           "anon_mib": round(proc_kib(pid, "RssAnon") / 1024, 1),
           "file_mib": round(proc_kib(pid, "RssFile") / 1024, 1),
           "threads": proc_kib(pid, "Threads")}
    # MEM_WHERE=DIR: also write tools/mem_where.py's breakdown of each phase there.
    where = os.environ.get("MEM_WHERE")
    if where and label:
        os.makedirs(where, exist_ok=True)
        with open(os.path.join(where, f"{pid}-{label}.txt"), "w") as f:
            subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "mem_where.py"),
                            str(pid), "12"], stdout=f, stderr=subprocess.STDOUT, check=False)
    return out


def start(cmd):
    """Runs the wrapper's start command; it prints `PID BASE_URL TOKEN`."""
    out = subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout
    pid, base, token = out.split()[-3:]
    return int(pid), base, token


def weft_actors(base):
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("weft_room_actors"):
                    return int(float(line.split()[-1]))
    except (urllib.error.URLError, OSError):
        return None
    return 0


def message_all(base, token, rooms, label):
    def send(room):
        txn = uuid.uuid4().hex
        call(base, token, "PUT",
             f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
             {"msgtype": "m.text", "body": f"{label} message"})
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(send, rooms))
    return round(time.monotonic() - t0, 2)


def run(name, start_cmd, stop_cmd, rooms, idle, settle):
    pid, base, token = start(start_cmd)
    time.sleep(settle)
    result = {"server": name, "rooms": rooms, "base": mem(pid, name + "-base")}

    def create(i):
        return call(base, token, "POST", "/_matrix/client/v3/createRoom",
                    {"preset": "private_chat", "name": f"room {i}",
                     "topic": f"memory bench room {i}",
                     # v12 room IDs are the create event's hash: two identical creations
                     # in the same millisecond would name the same room.
                     "creation_content": {"org.example.bench": i}})["room_id"]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, range(rooms)))
    result["create_s"] = round(time.monotonic() - t0, 1)
    time.sleep(settle)
    result["created"] = mem(pid, name + "-created")

    result["message_s"] = message_all(base, token, ids, "first")
    time.sleep(settle)
    result["active"] = mem(pid, name + "-active")
    if name == "weft":
        result["active"]["actors"] = weft_actors(base)

    time.sleep(idle)
    result["idle"] = mem(pid, name + "-idle")
    if name == "weft":
        result["idle"]["actors"] = weft_actors(base)

    subprocess.run(stop_cmd, shell=True, check=True, capture_output=True)
    pid, base, token = start(start_cmd)
    time.sleep(settle)
    result["restart_base"] = mem(pid, name + "-restart_base")
    result["restart_message_s"] = message_all(base, token, ids, "second")
    time.sleep(settle)
    result["restarted"] = mem(pid, name + "-restarted")
    if name == "weft":
        result["restarted"]["actors"] = weft_actors(base)
    subprocess.run(stop_cmd, shell=True, check=True, capture_output=True)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rooms", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=20)
    ap.add_argument("--settle", type=float, default=2)
    ap.add_argument("--server", action="append", required=True,
                    help="NAME=START_CMD=STOP_CMD (START_CMD prints PID BASE TOKEN)")
    a = ap.parse_args()
    for spec in a.server:
        name, start_cmd, stop_cmd = spec.split("=", 2)
        r = run(name, start_cmd, stop_cmd, a.rooms, a.idle, a.settle)
        print(json.dumps(r), flush=True)
        print(f"   {name}: created {r['created']['rss_mib']} MiB, active {r['active']['rss_mib']} MiB"
              f" (peak {r['active']['hwm_mib']}), idle {r['idle']['rss_mib']} MiB,"
              f" restarted+active {r['restarted']['rss_mib']} MiB", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
