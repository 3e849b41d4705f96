#!/usr/bin/env python3
"""Catch-up benchmark: how long after a peer's return until it has everything it missed.

Run through tools/bench_catchup.sh (builds a release weft, installs Synapse); directly:

  tools/bench_catchup.py --weft target/release/weft [--outages 30,240,900] [--runs 3] [--long-runs 1]
                         [--backlog 10000] [--cap 1800] [--workdir DIR]

Scenario per outage T (all outages run concurrently, each with its own servers):
  W = weft, S = Synapse (the two senders, production retry settings: weft's defaults,
  Synapse's defaults), R = Synapse (the receiver). Room A holds W's user and R's user,
  room B holds S's user and R's user (separate rooms, so neither sender can deliver the
  other's events). R is stopped; during T both senders send 10 messages spread over the
  outage; R is restarted and we time, from the moment R answers again, until R holds all
  10 of room A (weft's catch-up) and all 10 of room B (Synapse's); and, from R's log, the
  last transaction with PDUs each sender pushed after R came up. The benchmark itself
  contacts neither sender; whatever R sends them after its restart (Synapse refreshes
  remote profiles) counts as it would in production. A run that does not finish within
  --cap seconds is reported as "> cap".

Backlog: W's user sends --backlog messages while the receiver is down; time from the
receiver's return until it holds every one (receiver Synapse, and receiver weft).

Prints every run and the medians, plus the machine; exit 0 on completion.
"""
import argparse
import concurrent.futures as cf
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYN_TOOLS = os.path.join(ROOT, "tools", "synapse")
MESSAGES = 10


def log(*a):
    print(f"[bench_catchup {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def q(s):
    return urllib.parse.quote(s, safe="")


def call(port, method, path, token=None, body=None, timeout=60):
    url = f"http://127.0.0.1:{port}/_matrix/client/v3{path}"
    req = urllib.request.Request(url, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"HTTP {e.code} on {method} {url}: {e.read()[:300]!r}")


def answers(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_matrix/client/versions",
                                    timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


class User:
    def __init__(self, port, user_id, token):
        self.port, self.user_id, self.token = port, user_id, token

    def send(self, room, body):
        call(self.port, "PUT", f"/rooms/{q(room)}/send/m.room.message/{uuid.uuid4().hex}",
             self.token, {"msgtype": "m.text", "body": body})

    def bodies(self, room, limit=1000, pages=1):
        out, frm = [], None
        for _ in range(pages):
            path = f"/rooms/{q(room)}/messages?dir=b&limit={limit}"
            if frm:
                path += f"&from={q(frm)}"
            try:
                r = call(self.port, "GET", path, self.token)
            except Exception:
                return out
            out += [e["content"].get("body") for e in r.get("chunk", [])
                    if e.get("type") == "m.room.message"]
            frm = r.get("end")
            if not frm or not r.get("chunk"):
                break
        return out

    def invited(self, room):
        try:
            s = call(self.port, "GET", "/sync?timeout=0", self.token)
        except Exception:
            return False
        return room in s.get("rooms", {}).get("invite", {})


def wait(pred, timeout, what, step=0.2):
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timeout after {timeout}s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - t0


class Weft:
    def __init__(self, binary, workdir, name):
        self.binary, self.dir = binary, os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.client, self.fed = free_port(), free_port()
        self.server_name = f"localhost:{self.fed}"
        self.proc = None
        with open(os.path.join(self.dir, "weft.toml"), "w") as f:
            # Production retry and probe settings: weft's defaults. Loopback needs loopback
            # addresses and self-signed certificates allowed, and the benchmark's senders
            # need no rate limit.
            f.write(f'server_name = "{self.server_name}"\ndata_dir = "{self.dir}"\n'
                    f'[listeners]\nclient = "127.0.0.1:{self.client}"\n'
                    f'federation = "127.0.0.1:{self.fed}"\n'
                    f'[registration]\nopen = true\n'
                    f'[federation]\nverify_tls = false\n'
                    f'[outbound]\nallowed_addresses = ["127.0.0.0/8"]\n'
                    f'[rate_limits]\nenabled = false\n'
                    f'[logging]\nfilter = "warn"\n')

    def start(self):
        logf = open(os.path.join(self.dir, "weft.log"), "a")
        self.proc = subprocess.Popen([self.binary, "serve", "--config",
                                      os.path.join(self.dir, "weft.toml")],
                                     stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        wait(lambda: answers(self.client), 60, "weft to answer", step=0.02)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def register(self, localpart):
        r = call(self.client, "POST", "/register",
                 body={"username": localpart, "password": "pw-bench",
                       "auth": {"type": "m.login.dummy"}})
        return User(self.client, r["user_id"], r["access_token"])


class Synapse:
    def __init__(self, workdir, name):
        self.name, self.data = name, os.path.join(workdir, "synapse")
        self.fed, self.client = free_port(), free_port()
        self.server_name = f"localhost:{self.fed}"
        self.env = dict(os.environ, SYNAPSE_DATA=self.data)
        self.running = False

    def _run(self, script, *args, timeout=180):
        r = subprocess.run([os.path.join(SYN_TOOLS, script), *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{script} {args}: {r.stderr[-800:]}")
        return r.stdout

    def start(self):
        d = os.path.join(self.data, self.name)
        os.makedirs(d, exist_ok=True)
        # Synapse's own defaults for outbound retries (the harness's test overrides retry
        # every second, which no deployment does); a client timeout as in production.
        with open(os.path.join(d, "extra.yaml"), "w") as f:
            f.write("federation: {}\n")
        self._run("start.sh", self.name, str(self.fed), str(self.client))
        self.running = True

    def stop(self):
        if self.running:
            self._run("stop.sh", self.name)
        self.running = False

    def register(self, localpart):
        v = json.loads(self._run("register.sh", self.name, localpart, "pw-bench"))
        return User(self.client, v["user_id"], v["access_token"])


def arrivals(r_log, r_fed_port, senders):
    """From the receiver's log: seconds from its federation listener coming up (the last
    start) to the last transaction each sender pushed after it (the sender's own part of
    the catch-up, without the receiver's client)."""
    import datetime

    def ts(line):
        return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    up, last = None, {}
    with open(r_log, errors="replace") as f:
        for line in f:
            if f"now listening on TCP port {r_fed_port} (TLS)" in line:
                up, last = ts(line), {}
            elif up is not None and "Received txn" in line:
                for name in senders:
                    if line.rstrip().endswith(f"from {name}. (PDUs: 0, EDUs: 0)"):
                        continue
                    if f"from {name}." in line and "PDUs: 0," not in line:
                        last[name] = ts(line) - up
    return {n: last.get(n) for n in senders}


def shared_room(host, guest, via):
    room = call(host.port, "POST", "/createRoom", host.token,
                {"preset": "private_chat", "invite": [guest.user_id]})["room_id"]
    wait(lambda: guest.invited(room), 120, "invite", step=0.3)
    call(guest.port, "POST", f"/join/{q(room)}?server_name={q(via)}", guest.token, {})
    host.send(room, "warm-up")
    wait(lambda: "warm-up" in guest.bodies(room, 50), 120, "warm-up message")
    return room


def outage_run(weft_bin, workdir, outage, cap):
    """One outage of `outage` seconds; returns (weft_s, synapse_s) (None = over the cap)."""
    w = Weft(weft_bin, workdir, f"w{outage}")
    s = Synapse(workdir, f"s{outage}_{os.getpid()}")
    r = Synapse(workdir, f"r{outage}_{os.getpid()}")
    try:
        w.start(); s.start(); r.start()
        wu, su, ru = w.register("wuser"), s.register("suser"), r.register("ruser")
        room_a = shared_room(wu, ru, w.server_name)
        room_b = shared_room(su, ru, s.server_name)
        r.stop()
        t_down = time.monotonic()
        sent = [f"missed {i} {uuid.uuid4().hex[:6]}" for i in range(MESSAGES)]
        for i, body in enumerate(sent):
            wu.send(room_a, "w " + body)
            su.send(room_b, "s " + body)
            time.sleep(max(0.0, t_down + (i + 1) * outage / MESSAGES - time.monotonic()))
        r.start()
        t_back = time.monotonic()
        got = {}

        def watch(room, prefix, key):
            want = {prefix + b for b in sent}
            while time.monotonic() - t_back < cap:
                if want <= set(ru.bodies(room, 100)):
                    got[key] = time.monotonic() - t_back
                    return
                time.sleep(0.1)

        threads = [threading.Thread(target=watch, args=(room_a, "w ", "weft")),
                   threading.Thread(target=watch, args=(room_b, "s ", "synapse"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log_path = os.path.join(r.data, r.name, "homeserver.log")
        arr = arrivals(log_path, r.fed, [w.server_name, s.server_name])
        log(f"outage {outage} s: last transaction with PDUs after the receiver came up: "
            f"weft {arr[w.server_name]}, synapse {arr[s.server_name]}")
        return got.get("weft"), got.get("synapse")
    finally:
        for x in (w, s, r):
            try:
                x.stop()
            except Exception as e:
                log("stop failed:", e)


def backlog_run(weft_bin, workdir, n, receiver_kind, cap):
    w = Weft(weft_bin, workdir, f"bw_{receiver_kind}")
    r = (Synapse(workdir, f"br_{os.getpid()}") if receiver_kind == "synapse"
         else Weft(weft_bin, workdir, "br_weft"))
    try:
        w.start(); r.start()
        wu, ru = w.register("wuser"), r.register("ruser")
        room = shared_room(wu, ru, w.server_name)
        r.stop()
        bodies = [f"backlog {i}" for i in range(n)]
        with cf.ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda b: wu.send(room, b), bodies))
        r.start()
        t_back = time.monotonic()
        want = set(bodies)
        pages = n // 1000 + 2
        while time.monotonic() - t_back < cap:
            if want <= set(ru.bodies(room, 1000, pages)):
                return time.monotonic() - t_back
            time.sleep(0.5)
        return None
    finally:
        for x in (w, r):
            try:
                x.stop()
            except Exception as e:
                log("stop failed:", e)


def fmt(v, cap):
    return f"> {cap} s" if v is None else f"{v:.2f} s"


def median(vals, cap):
    done = [v for v in vals if v is not None]
    if len(done) * 2 <= len(vals):
        return None  # more than half over the cap: the median is over the cap too
    return statistics.median([v if v is not None else float("inf") for v in vals])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weft", default=os.path.join(ROOT, "target", "release", "weft"))
    ap.add_argument("--outages", default="30,240,900")
    ap.add_argument("--runs", type=int, default=3, help="runs per outage under 600 s")
    ap.add_argument("--long-runs", type=int, default=1, help="runs per outage of 600 s or more")
    ap.add_argument("--backlog", type=int, default=10000)
    ap.add_argument("--cap", type=int, default=1800)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="weft-catchup-")
    outages = [int(x) for x in args.outages.split(",") if x]
    log(f"workdir {workdir}; outages {outages} x {args.runs} runs ({args.long_runs} from 600 s; "
        f"concurrent); "
        f"backlog {args.backlog}")
    results = {}

    def series(t):
        out = []
        for i in range(args.runs if t < 600 else args.long_runs):
            res = outage_run(args.weft, os.path.join(workdir, f"o{t}_{i}"), t, args.cap)
            log(f"outage {t} s run {i + 1}: weft {fmt(res[0], args.cap)}, "
                f"synapse {fmt(res[1], args.cap)}")
            out.append(res)
        return t, out

    with cf.ThreadPoolExecutor(len(outages) + 1) as ex:
        futs = [ex.submit(series, t) for t in outages]
        backlog = {}
        if args.backlog > 0:
            for kind in ("synapse", "weft"):
                v = backlog_run(args.weft, os.path.join(workdir, f"b_{kind}"), args.backlog,
                                kind, args.cap)
                log(f"backlog {args.backlog} -> {kind}: {fmt(v, args.cap)}")
                backlog[kind] = v
        for f in futs:
            t, out = f.result()
            results[t] = out

    print("\n## Catch-up after an outage (time from the receiver's return until it holds "
          f"all {MESSAGES} missed messages)\n")
    print(f"| outage | runs | weft (median) | Synapse (median) | weft runs | Synapse runs |")
    print("|---|---|---|---|---|---|")
    for t in outages:
        out = results[t]
        wm, sm = median([o[0] for o in out], args.cap), median([o[1] for o in out], args.cap)
        print(f"| {t} s | {len(out)} | {fmt(wm, args.cap)} | {fmt(sm, args.cap)} | "
              f"{', '.join(fmt(o[0], args.cap) for o in out)} | "
              f"{', '.join(fmt(o[1], args.cap) for o in out)} |")
    if backlog:
        print(f"\n## A backlog of {args.backlog} events (weft sends; time from the receiver's "
              "return until it holds every one)\n")
        print("| receiver | time | events/s |")
        print("|---|---|---|")
        for kind, v in backlog.items():
            rate = "" if v is None else f"{args.backlog / v:.0f}"
            print(f"| {kind} | {fmt(v, args.cap)} | {rate} |")
    print(f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
