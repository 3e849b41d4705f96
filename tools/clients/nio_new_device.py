#!/usr/bin/env python3
"""A device that logs in after a device-list change receives the new keys and decrypts.

    nio_new_device.py --hs URL_A [--hs-b URL_B] --user-a A --pass-a PA --user-b B --pass-b PB

Steps (each bounded by --timeout; exit 0 = pass, 1 = a check failed, 2 = setup error):
  1. A (device A1) and B (device B1) register or log in; A creates an encrypted room, invites
     B, B joins; each trusts the other's devices; A1 sends m1 and B1 decrypts it.
  2. B logs in a second device B2: a device-list change that A's server must announce
     (locally, or over federation when B is on another server, --hs-b).
  3. A1 sees B in /sync device_lists.changed, queries B's keys again, learns B2, trusts it,
     and sends m2; B2 (which logged in after the change and has no earlier room key)
     decrypts m2, and B1 decrypts it too.
Uses the helpers of nio_smoke.py (same directory).
"""
import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nio_smoke import (Fail, SetupError, log, register_or_login, sync_once,  # noqa: E402
                       sync_until, trust_all_devices)

from nio import (AsyncClient, AsyncClientConfig, JoinError, LoginResponse,  # noqa: E402
                 MegolmEvent, RoomCreateResponse, RoomInviteResponse, RoomMessageText,
                 RoomSendResponse)


async def learn_devices(me: AsyncClient, other: str, room: str, want: int, deadline: float):
    """Queries keys until `me` knows `want` devices of `other`; then trusts them."""
    while len(list(me.device_store.active_user_devices(other))) < want:
        if time.monotonic() > deadline:
            have = len(list(me.device_store.active_user_devices(other)))
            raise Fail(f"{me.user_id}: knows {have} device(s) of {other}, want {want}")
        await me.joined_members(room)
        if me.should_query_keys:
            await me.keys_query()
        else:
            await sync_once(me, 300)
    trust_all_devices(me, other)


async def send(c: AsyncClient, room: str, body: str):
    r = await c.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body},
                          ignore_unverified_devices=True)
    if not isinstance(r, RoomSendResponse):
        raise Fail(f"{c.user_id}: room_send failed: {r}")


async def wait_decrypted(c: AsyncClient, room: str, body: str, deadline: float, poll: int):
    seen_megolm = []

    def has(s):
        info = s.rooms.join.get(room)
        if not info:
            return False
        for e in info.timeline.events:
            if isinstance(e, RoomMessageText) and e.body == body:
                return True
            if isinstance(e, MegolmEvent):
                seen_megolm.append(e.event_id)
        return False
    try:
        await sync_until(c, f"decrypted {body!r}", has, deadline, poll)
    except Fail:
        raise Fail(f"{c.user_id} ({c.device_id}) could not decrypt {body!r}; "
                   f"undecryptable events: {len(seen_megolm)}")


async def run(a) -> None:
    tmp = tempfile.mkdtemp(prefix="nio-new-device-")
    cfg = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False,
                            max_timeouts=3, request_timeout=a.timeout)
    hs_b = a.hs_b or a.hs
    A = AsyncClient(a.hs, a.user_a, store_path=os.path.join(tmp, "a1"), config=cfg)
    B1 = AsyncClient(hs_b, a.user_b, store_path=os.path.join(tmp, "b1"), config=cfg)
    B2 = AsyncClient(hs_b, a.user_b, store_path=os.path.join(tmp, "b2"), config=cfg)
    for c in (A, B1, B2):
        os.makedirs(c.store_path)
    nonce = uuid.uuid4().hex[:8]
    poll = a.poll_ms
    try:
        for c, u, p in ((A, a.user_a, a.pass_a), (B1, a.user_b, a.pass_b)):
            await asyncio.wait_for(register_or_login(c, u, p, True), a.timeout)
        for c in (A, B1):
            await asyncio.wait_for(sync_once(c, 0), a.timeout)
        r = await A.room_create(name=f"new-device {nonce}", initial_state=[
            {"type": "m.room.encryption", "state_key": "",
             "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        if not isinstance(r, RoomCreateResponse):
            raise Fail(f"room_create failed: {r}")
        room = r.room_id
        r = await A.room_invite(room, B1.user_id)
        if not isinstance(r, RoomInviteResponse):
            raise Fail(f"room_invite failed: {r}")
        await sync_until(B1, "invite", lambda s: s.rooms.invite.get(room),
                         time.monotonic() + a.timeout, poll)
        r = await B1.join(room)
        if isinstance(r, JoinError):
            raise Fail(f"join failed: {r}")
        await learn_devices(A, B1.user_id, room, 1, time.monotonic() + a.timeout)
        await learn_devices(B1, A.user_id, room, 1, time.monotonic() + a.timeout)
        m1 = f"m1 {nonce}"
        await send(A, room, m1)
        await wait_decrypted(B1, room, m1, time.monotonic() + a.timeout, poll)
        log("B1 decrypted m1")

        # ---- B logs in a second device: a device-list change.
        r = await B2.login(a.pass_b, device_name="nio-new-device-2")
        if not isinstance(r, LoginResponse):
            raise SetupError(f"second login failed: {r}")
        await asyncio.wait_for(sync_once(B2, 0), a.timeout)
        log(f"B logged in a second device {B2.device_id}")

        # ---- A notices through /sync device_lists.changed and learns B2.
        deadline = time.monotonic() + a.timeout
        await sync_until(A, "B's device-list change",
                         lambda s: B1.user_id in (s.device_list.changed or []), deadline, poll)
        log("A saw B in device_lists.changed")
        await learn_devices(A, B1.user_id, room, 2, deadline)
        await learn_devices(B2, A.user_id, room, 1, time.monotonic() + a.timeout)
        m2 = f"m2 {nonce}"
        await send(A, room, m2)
        await wait_decrypted(B2, room, m2, time.monotonic() + a.timeout, poll)
        log("B2 (logged in after the change) decrypted m2")
        await wait_decrypted(B1, room, m2, time.monotonic() + a.timeout, poll)
        log("B1 decrypted m2 too")
    finally:
        for c in (A, B1, B2):
            try:
                await asyncio.wait_for(c.close(), 10)
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hs", required=True)
    ap.add_argument("--hs-b", default=None)
    ap.add_argument("--user-a", required=True)
    ap.add_argument("--pass-a", required=True)
    ap.add_argument("--user-b", required=True)
    ap.add_argument("--pass-b", required=True)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--poll-ms", type=int, default=2000)
    a = ap.parse_args()
    try:
        asyncio.run(asyncio.wait_for(run(a), a.timeout * 12 + 30))
    except SetupError as e:
        print(f"nio_new_device: SETUP ERROR: {e}", file=sys.stderr)
        return 2
    except Fail as e:
        print(f"nio_new_device: FAIL: {e}", file=sys.stderr)
        return 1
    except (asyncio.TimeoutError, TimeoutError):
        print("nio_new_device: FAIL: timed out", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001
        print(f"nio_new_device: FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    log("PASS (new device decrypted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
