#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (run from this directory: python3 make_seeds.py).

Seeds are small, well-formed inputs of each shape a target reads, so libFuzzer starts from
inputs that reach deep into the checks instead of spending its first million runs finding
JSON syntax."""
import json, os

H = {"sha256": "nZwgsyUTdo6mM2r6y9I8r9n/KaMNonzGnfSkYm0yag8"}
SIG = {"a.test": {"ed25519:1": "+bj44W5STrpgeg6MiXxzw2M4zrXRRymkREjVk3q2T2kI2ZgKvPOKbKA/67BSU6Pml6Jwy4z23WoTpAH3l6YyAQ"}}

def ev(kind, content, v1, state_key=None, prev=(), auth=(), depth=1, eid=None, room="!r:a.test", **extra):
    cite = (lambda i: [i, H]) if v1 else (lambda i: i)
    e = {"type": kind, "room_id": room, "sender": "@alice:a.test", "content": content,
         "origin_server_ts": 1000 + depth, "depth": depth, "prev_events": [cite(p) for p in prev],
         "auth_events": [cite(a) for a in auth], "hashes": H, "signatures": SIG}
    if state_key is not None:
        e["state_key"] = state_key
    if v1:
        e["event_id"] = eid or f"$e{depth}:a.test"
    e.update(extra)
    return e

def room(v1, version):
    i = (lambda n: f"$e{n}:a.test") if v1 else (lambda n: "$" + ("A" * 42) + str(n))
    create = ev("m.room.create", {"creator": "@alice:a.test", "room_version": version}, v1, "", depth=1, eid=i(1))
    join = ev("m.room.member", {"membership": "join"}, v1, "@alice:a.test", [i(1)], [i(1)], 2, i(2))
    pl = ev("m.room.power_levels", {"users": {"@alice:a.test": 100}, "ban": 50, "events": {"m.room.name": 50}},
            v1, "", [i(2)], [i(1), i(2)], 3, i(3))
    jr = ev("m.room.join_rules", {"join_rule": "public"}, v1, "", [i(3)], [i(1), i(2), i(3)], 4, i(4))
    bob = ev("m.room.member", {"membership": "join", "displayname": "B"}, v1, "@bob:b.test", [i(4)],
             [i(1), i(3), i(4)], 5, i(5), sender="@bob:b.test")
    msg = ev("m.room.message", {"body": "hi", "msgtype": "m.text"}, v1, None, [i(5)], [i(1), i(2), i(3)], 6, i(6))
    red = ev("m.room.redaction", {"redacts": i(6), "reason": "r"}, v1, None, [i(6)], [i(1), i(2), i(3)], 7, i(7),
             redacts=i(6))
    topic = ev("m.room.topic", {"topic": "t"}, v1, "", [i(5)], [i(1), i(2), i(3)], 6, i(8))
    return [create, join, pl, jr, bob, msg, red, topic]

def write(target, name, data):
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

# The pdu and send_body targets read the room version from byte 0: the index in RoomVersion::ALL
# (0 = v1, ..., 11 = v12, 12 = Linearized Matrix).
for v1, version, picks in [(True, "1", [0, 1]), (False, "10", [2, 5, 7, 9]), (False, "12", [10, 11, 12])]:
    evs = room(v1, version)
    for pick in picks:
        p = bytes([pick])
        for n, e in enumerate(evs):
            write("pdu", f"v{version}_{pick}_{n}.bin", p + json.dumps(e).encode())
            write("send_body", f"v{version}_{pick}_{n}.bin", p + json.dumps({"origin": "a.test", "origin_server_ts": 1, "pdus": [e], "edus": []}).encode())
        write("pdu", f"v{version}_{pick}_room.bin", p + json.dumps(evs).encode())
        write("send_body", f"v{version}_{pick}_all.bin", p + json.dumps({"origin": "a.test", "pdus": evs, "edus": [
            {"edu_type": "m.typing", "content": {"room_id": "!r:a.test", "user_id": "@alice:a.test", "typing": True}}]}).encode())
    for pick in range(4):
        write("state_res", f"v{version}_{pick}.bin", bytes([pick, 0b10011100]) + json.dumps(evs).encode())
for n, obj in enumerate([{"a": 1, "b": [True, None, "x"], "c": {"d": -9007199254740991}},
                         {"\u00e9": "\ud83d\ude00", "k": "\\u0000"}, {}, {"n": 1.5}, {"big": 9007199254740992}]):
    write("canonical_json", f"c{n}.json", json.dumps(obj))
for n, h in enumerate([
        'X-Matrix origin="a.test",destination="weft.test",key="ed25519:1",sig="ABCD"',
        'X-Matrix origin=a.test,key="ed25519:1",sig="x\\"y"',
        'x-matrix origin="[::1]:8448", key="ed25519:k", sig="s", extra="e"',
        'X-Matrix origin="a.test",key="ed25519:1"']):
    write("xmatrix", f"h{n}.txt", h)
