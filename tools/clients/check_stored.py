#!/usr/bin/env python3
"""What the servers stored of an encrypted client run (run by run.sh after an --e2e run).

    check_stored.py --record RUN.json --weft-db sqlite:///path/weft.db|postgres://... \
                    [--synapse-db /path/homeserver.db]

RUN.json is what nio_smoke.py / web_smoke.py wrote with --record: the room ID and every
message body the clients sent. For each database given (weft's; Synapse's when one of the
users was on Synapse) it checks that:
  * the room has an m.room.encryption state event (algorithm m.megolm.v1.aes-sha2);
  * every message event in the room is stored as m.room.encrypted (none as m.room.message),
    and there are at least as many of them as bodies sent;
  * no sent body appears anywhere in the database: the raw bytes of an SQLite file and its
    WAL, or a data-only pg_dump of a PostgreSQL database (every table, not just events).
Exit 0 = all held, 1 = a check failed, 2 = setup error. Standard library only (plus the
`pg_dump` and `psql` binaries for PostgreSQL).
"""
import argparse
import json
import os
import sqlite3
import subprocess
import sys


class Fail(Exception):
    pass


def log(m):
    print(f"[check-stored] {m}", flush=True)


def sqlite_rows(path, sql, params):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def psql_rows(url, sql):
    out = subprocess.run(["psql", url, "-At", "-F", "\t", "-c", sql], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def raw_sqlite(path):
    data = b""
    for p in (path, path + "-wal", path + "-journal"):
        if os.path.exists(p):
            with open(p, "rb") as f:
                data += f.read()
    return data


def check(name, rows, state_content, raw, bodies):
    """rows: (type, state_key) of every event in the room."""
    if not rows:
        raise Fail(f"{name}: no events stored for the room")
    if state_content is None:
        raise Fail(f"{name}: the room has no m.room.encryption state event")
    alg = json.loads(state_content).get("algorithm")
    if alg != "m.megolm.v1.aes-sha2":
        raise Fail(f"{name}: m.room.encryption algorithm is {alg!r}")
    plain = [t for t, _ in rows if t == "m.room.message"]
    enc = [t for t, _ in rows if t == "m.room.encrypted"]
    if plain:
        raise Fail(f"{name}: {len(plain)} m.room.message event(s) stored in the encrypted room")
    if len(enc) < len(bodies):
        raise Fail(f"{name}: {len(enc)} m.room.encrypted event(s) stored, "
                   f"{len(bodies)} message(s) sent")
    for b in bodies:
        if b.encode() in raw:
            raise Fail(f"{name}: the plaintext {b!r} is in the database")
    log(f"{name}: m.room.encryption set, {len(enc)} m.room.encrypted event(s), "
        f"none of {len(bodies)} plaintext bodies anywhere in {len(raw)} bytes")


def check_weft(url, room, bodies):
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        q = "SELECT event_type, state_key FROM events WHERE room_id = ?"
        rows = sqlite_rows(path, q, (room,))
        st = sqlite_rows(path, "SELECT json FROM events WHERE room_id = ? AND event_type = "
                               "'m.room.encryption' AND state_key = ''", (room,))
        raw = raw_sqlite(path)
    else:
        lit = room.replace("'", "''")
        rows = psql_rows(url, f"SELECT event_type, coalesce(state_key, '') FROM events "
                              f"WHERE room_id = '{lit}'")
        st = psql_rows(url, f"SELECT json FROM events WHERE room_id = '{lit}' AND "
                            f"event_type = 'm.room.encryption' AND state_key = ''")
        raw = subprocess.run(["pg_dump", "--data-only", url], check=True,
                             capture_output=True, timeout=120).stdout
    content = json.dumps(json.loads(st[0][0]).get("content", {})) if st else None
    check("weft", rows, content, raw, bodies)


def check_synapse(path, room, bodies):
    rows = sqlite_rows(path, "SELECT type, state_key FROM events WHERE room_id = ?", (room,))
    st = sqlite_rows(path, "SELECT j.json FROM events e JOIN event_json j USING (event_id) "
                           "WHERE e.room_id = ? AND e.type = 'm.room.encryption' "
                           "AND e.state_key = ''", (room,))
    content = json.dumps(json.loads(st[0][0]).get("content", {})) if st else None
    check("synapse", rows, content, raw_sqlite(path), bodies)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", required=True)
    ap.add_argument("--weft-db", required=True)
    ap.add_argument("--synapse-db")
    a = ap.parse_args()
    try:
        with open(a.record) as f:
            rec = json.load(f)
        room, bodies = rec["room"], rec["bodies"]
        if not bodies:
            raise Fail("the run recorded no bodies")
    except (OSError, KeyError, ValueError) as e:
        print(f"check_stored: SETUP ERROR: {e}", file=sys.stderr)
        return 2
    try:
        check_weft(a.weft_db, room, bodies)
        if a.synapse_db:
            check_synapse(a.synapse_db, room, bodies)
    except Fail as e:
        print(f"check_stored: FAIL: {e}", file=sys.stderr)
        return 1
    except (sqlite3.Error, subprocess.SubprocessError, OSError) as e:
        print(f"check_stored: FAIL: cannot read a database: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
