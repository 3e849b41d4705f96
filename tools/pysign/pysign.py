#!/usr/bin/env python3
"""An independent Matrix signer for the tests: Synapse's own code, none of weft's.

    $SYNAPSE_VENV/bin/python tools/pysign/pysign.py      (one JSON request per line on stdin)

The hostile-peer tests (tests/it/independent_signing.rs) build the *unsigned* event with
the Rust peer (prev_events, auth_events, depth) and have this script hash, redact, sign and
name it, and sign the X-Matrix headers, so that a bug weft's protocol crate shares with the
Rust peer (canonical JSON, redaction, hashing, signing) cannot pass unnoticed.

It runs in Synapse's virtualenv (tools/synapse/install.sh), which holds signedjson,
canonicaljson and Synapse: content hashes, redaction and event signatures come from
`synapse.crypto.event_signing`, event IDs from `synapse.events.make_event_from_dict`, and
the X-Matrix signature from `signedjson.sign.sign_json` over the request object of the spec
(method, uri, origin, destination, content).

Requests (one JSON object per line; one JSON answer per line, `{"error": ...}` on failure):
  {"op": "keygen", "version": "a_xyz"}            -> {"key": "ed25519 a_xyz <seed>"}
  {"op": "sign_event", "room_version": "10", "origin": "localhost:1",
   "key": "ed25519 <version> <seed>", "event": {...}}   -> {"event": {...}, "event_id": "$..."}
  {"op": "xmatrix", "key": ..., "method": "PUT", "uri": "/_matrix/...", "origin": ...,
   "destination": ..., "content": {...} | null}   -> {"authorization": "X-Matrix ..."}
"""
import json
import sys

from signedjson.key import encode_signing_key_base64, generate_signing_key, read_signing_keys
from signedjson.sign import sign_json
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import add_hashes_and_signatures
from synapse.events import make_event_from_dict


def key_of(line):
    return read_signing_keys([line])[0]


def handle(req):
    op = req["op"]
    if op == "keygen":
        k = generate_signing_key(req["version"])
        return {"key": f"ed25519 {k.version} {encode_signing_key_base64(k)}"}
    if op == "sign_event":
        version = KNOWN_ROOM_VERSIONS[req["room_version"]]
        event = dict(req["event"])
        for field in ("hashes", "signatures", "event_id", "unsigned"):
            event.pop(field, None)
        add_hashes_and_signatures(version, event, req["origin"], key_of(req["key"]))
        event_id = make_event_from_dict(dict(event), version).event_id
        return {"event": event, "event_id": event_id}
    if op == "xmatrix":
        obj = {"method": req["method"], "uri": req["uri"], "origin": req["origin"],
               "destination": req["destination"]}
        if req.get("content") is not None:
            obj["content"] = req["content"]
        signed = sign_json(obj, req["origin"], key_of(req["key"]))
        ((key_id, sig),) = signed["signatures"][req["origin"]].items()
        return {"authorization": f'X-Matrix origin="{req["origin"]}",'
                                 f'destination="{req["destination"]}",key="{key_id}",sig="{sig}"'}
    raise ValueError(f"unknown op {op!r}")


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = handle(json.loads(line))
        except Exception as e:  # noqa: BLE001 - every failure is an answer, not a crash
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
