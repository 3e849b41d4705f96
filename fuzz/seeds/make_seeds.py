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

# client_body: byte 0 is the index in fuzz_targets/client_body.rs's ENDPOINTS; one plausible
# body per endpoint (kept in the same order as that table).
CLIENT = [
    {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "fuzz"}, "password": "fuzz-password"},
    {"username": "someone", "password": "a-password", "auth": {"type": "m.login.dummy"}},
    {"preset": "private_chat", "name": "n", "topic": "t", "invite": ["@x:localhost"], "initial_state": [
        {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
     "power_level_content_override": {"users_default": 10}, "creation_content": {"m.federate": False}},
    {"msgtype": "m.text", "body": "hi", "m.relates_to": {"rel_type": "m.thread", "event_id": "$x"}},
    {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "+1"}},
    {"topic": "a topic"},
    {"name": "a name"},
    {"users": {"@fuzz:localhost": 100}, "events": {"m.room.name": 50}, "ban": 50, "notifications": {"room": 50}},
    {"membership": "join", "displayname": "d"},
    {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!r:localhost"}]},
    {"history_visibility": "joined"},
    {"reason": "spam"},
    {"user_id": "@other:localhost", "reason": "r"},
    {"user_id": "@other:localhost"},
    {"user_id": "@other:localhost", "reason": "r"},
    {"user_id": "@other:localhost"},
    {"reason": "r", "third_party_signed": {"sender": "@a:b", "mxid": "@c:d", "token": "t", "signatures": {}}},
    {"thread_id": "main"},
    {"m.fully_read": "$x", "m.read": "$x", "m.read.private": "$x"},
    {"typing": True, "timeout": 30000},
    {"reason": "r", "score": -100},
    {"room": {"timeline": {"limit": 10, "types": ["m.room.*"], "not_senders": ["@a:b"]},
              "state": {"lazy_load_members": True}, "rooms": ["!r:localhost"]}, "event_fields": ["content.body"],
     "presence": {"limit": 0}},
    {"displayname": "Fuzz"},
    {"avatar_url": "mxc://localhost/abc"},
    {"k": [1, 2, {"x": None}]},
    {"k": "v"},
    {"order": 0.5},
    {"actions": ["notify", {"set_tweak": "highlight"}], "conditions": [
        {"kind": "event_match", "key": "content.body", "pattern": "fuzz*"},
        {"kind": "room_member_count", "is": ">2"}, {"kind": "sender_notification_permission", "key": "room"}]},
    {"actions": ["notify"], "pattern": "fuzz"},
    {"actions": ["dont_notify"]},
    {"actions": [{"set_tweak": "sound", "value": "default"}]},
    {"enabled": False},
    {"kind": "http", "app_id": "a", "pushkey": "p", "app_display_name": "A", "device_display_name": "D",
     "lang": "en", "data": {"url": "https://push.example/_matrix/push/v1/notify", "format": "event_id_only"}, "append": False},
    {"device_keys": {"user_id": "@fuzz:localhost", "device_id": "D", "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                     "keys": {"ed25519:D": "k", "curve25519:D": "k"}, "signatures": {}},
     "one_time_keys": {"signed_curve25519:AAAA": {"key": "k", "signatures": {}}},
     "fallback_keys": {"signed_curve25519:AAAB": {"key": "k", "fallback": True, "signatures": {}}}},
    {"device_keys": {"@fuzz:localhost": []}, "timeout": 10},
    {"one_time_keys": {"@fuzz:localhost": {"D": "signed_curve25519"}}},
    {"master_key": {"user_id": "@fuzz:localhost", "usage": ["master"], "keys": {"ed25519:m": "m"}},
     "self_signing_key": {"user_id": "@fuzz:localhost", "usage": ["self_signing"], "keys": {"ed25519:s": "s"}}},
    {"@fuzz:localhost": {"D": {"user_id": "@fuzz:localhost", "device_id": "D", "signatures": {}}}},
    {"messages": {"@fuzz:localhost": {"*": {"x": 1}}}},
    {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "k", "signatures": {}}},
    {"rooms": {"!r:localhost": {"sessions": {"s": {"first_message_index": 0, "forwarded_count": 0,
                                                   "is_verified": False, "session_data": {"x": 1}}}}}},
    {"search_categories": {"room_events": {"search_term": "hello", "keys": ["content.body"], "order_by": "rank",
                                           "event_context": {"before_limit": 1, "after_limit": 1},
                                           "filter": {"limit": 5}}}},
    {"search_term": "fuzz", "limit": 5},
    {"limit": 5, "filter": {"generic_search_term": "x"}, "include_all_networks": True},
    {"room_id": "!r:localhost"},
    {"visibility": "public"},
    {"display_name": "phone"},
    {"devices": ["NOPE"], "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "fuzz"},
                                   "password": "fuzz-password"}},
    {"reason": "r"},
    {},
    {},
    {"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1, "required_state": [["*", "*"], ["m.room.member", "$LAZY"]],
                       "filters": {"is_dm": False, "not_room_types": ["m.space"]}}},
     "room_subscriptions": {"!r:localhost": {"timeline_limit": 2}},
     "extensions": {"to_device": {"enabled": True}, "e2ee": {"enabled": True}, "account_data": {"enabled": True},
                    "receipts": {"enabled": True}, "typing": {"enabled": True}}},
    {},
]
for n, body in enumerate(CLIENT):
    write("client_body", f"e{n:02}.bin", bytes([n]) + json.dumps(body).encode())
