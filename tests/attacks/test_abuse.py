"""Abuse of the unauthenticated hello: anyone who knows a device's public key can ask for
challenges. A hello stores nothing (a challenge is recorded only once a proof uses it), a flood
is answered 429 with Retry-After, and the device itself still onboards at once."""

from __future__ import annotations

import ssl
import time
from collections import Counter

import httpx
from attacksuite import Attack

from hil.fleet import Fleet
from hil.serverproc import ServerProcess

FLOOD = 10_000
ATTACKER = "127.0.0.2"  # another loopback address: another source for the server


def test_hello_flood_for_one_device(attack: Attack, server: ServerProcess, fleet: Fleet) -> None:
    attack.expect(
        f"{FLOOD:,} hellos for one device from one source",
        "no challenge stored, the flood answered 429 with Retry-After, and the "
        "device itself still onboards at once",
    )
    victim = fleet.take()
    body = {"device_id": victim.device_id, "public_key": victim.public_key.hex()}

    def stored() -> tuple[object, ...]:
        """What a hello could have written: the victim's row, and the audit log's length."""
        row = server.query(f"SELECT * FROM devices WHERE device_id = '{victim.device_id}'")
        return (*row, server.query("SELECT COUNT(*) FROM audit")[0][0])

    before = stored()
    transport = httpx.HTTPTransport(
        local_address=ATTACKER, verify=ssl.create_default_context(cafile=str(server.root_pem_path))
    )
    statuses: Counter[int] = Counter()
    retry_after: set[str] = set()
    started = time.monotonic()
    with httpx.Client(base_url=server.api_url, transport=transport, timeout=30) as c:
        for _ in range(FLOOD):
            r = c.post("/v1/onboard/hello", json=body)
            statuses[r.status_code] += 1
            if r.status_code == 429:
                retry_after.add(r.headers.get("retry-after", "missing"))
                assert r.json()["error"] == "rate_limited"
    took = time.monotonic() - started
    unchanged = stored() == before
    t0 = time.monotonic()
    answer = victim.onboard()
    onboard_s = time.monotonic() - t0
    attack.observe(
        f"{dict(statuses)} in {took:.1f} s, Retry-After {sorted(retry_after)[:3]}; "
        f"{'nothing' if unchanged else 'something'} stored; "
        f"the device onboarded: HTTP {answer.status} in {onboard_s * 1000:.0f} ms"
    )
    assert unchanged
    assert statuses[429] > 0 and statuses[200] < 100
    assert "missing" not in retry_after and all(int(v) >= 1 for v in retry_after)
    assert answer.status == 200, answer.body
