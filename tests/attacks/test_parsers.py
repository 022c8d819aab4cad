"""Hostile JSON against every parser that reads network input: bodies nested thousands of levels
deep (well under the size limit), duplicate keys, non-UTF-8, huge numbers, on the device API,
the operator API (its bodies and the import's `data`) and the telemetry the broker relays. None
may reach a 5xx or a traceback in the server log."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from attacksuite import Attack

from hil.fleet import Fleet
from hil.serverproc import ServerProcess
from hil.simdevice import publish, stop_client

DEEP = 5000  # levels: 10 KB, under the device API's 16 KiB limit


def _deep_array(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.fixture(scope="module")
def admin(server: ServerProcess, fleet: Fleet) -> Iterator[httpx.Client]:
    token = server.cli("token", "create", "prober", "--role", "admin", "--tenant", "acme")
    with httpx.Client(
        base_url=server.api_url,
        verify=_trust(server),
        headers={"authorization": f"Bearer {token.stdout.strip()}"},
        timeout=30,
    ) as client:
        yield client


def _trust(server: ServerProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.root_pem_path))


def _device_post(server: ServerProcess, path: str, body: bytes) -> httpx.Response:
    with httpx.Client(base_url=server.api_url, verify=_trust(server)) as c:
        return c.post(path, content=body, headers={"content-type": "application/json"})


def _log_clean(server: ServerProcess, since: int) -> str | None:
    text = server.log_path.read_bytes()[since:].decode(errors="replace")
    for bad in ("Traceback", "RecursionError", "internal_error"):
        if bad in text:
            return bad
    return None


def _shape(r: httpx.Response) -> tuple[int, str]:
    body: Any = r.json()
    assert set(body) == {"error", "detail"}, body
    return r.status_code, str(body["error"])


@pytest.mark.parametrize(
    "path", ["/v1/onboard/hello", "/v1/onboard/proof", "/v1/onboard/successor"]
)
def test_deeply_nested_device_body(attack: Attack, server: ServerProcess, path: str) -> None:
    attack.expect(
        f"JSON nested {DEEP} deep to {path}",
        "400 bad_request in the documented error shape; no traceback in the server log",
    )
    mark = server.log_path.stat().st_size
    r = _device_post(server, path, _deep_array(DEEP).encode())
    trace = _log_clean(server, mark)
    attack.observe(f"HTTP {r.status_code} {r.text[:80]}; log: {trace or 'clean'}")
    assert _shape(r) == (400, "bad_request")
    assert trace is None


def test_deeply_nested_operator_body(attack: Attack, server: ServerProcess, admin: Any) -> None:
    attack.expect(
        f"JSON nested {DEEP} deep as an operator body",
        "400 bad_request; no traceback in the server log",
    )
    mark = server.log_path.stat().st_size
    r = admin.post(
        "/v1/admin/batches",
        content=_deep_array(DEEP).encode(),
        headers={"content-type": "application/json"},
    )
    trace = _log_clean(server, mark)
    attack.observe(f"HTTP {r.status_code} {r.text[:80]}; log: {trace or 'clean'}")
    assert _shape(r) == (400, "bad_request")
    assert "deeper than" in r.json()["detail"]
    assert trace is None


@pytest.mark.parametrize("fmt", ["json", "jsonl", "qdid"])
def test_deeply_nested_import_data(
    attack: Attack, server: ServerProcess, admin: Any, fleet: Fleet, fmt: str
) -> None:
    # A JSON document is the body's own syntax (400); a JSON Lines or QDID line is one bad row
    # of the import, reported by its line like any other (422).
    status, code = (400, "bad_request") if fmt == "json" else (422, "import_rejected")
    attack.expect(
        f"import data ({fmt}) nested {DEEP} deep",
        f"{status} {code} naming the nesting, nothing imported; no traceback in the server log",
    )
    deep = _deep_array(DEEP)
    data = {"json": deep, "jsonl": deep + "\n", "qdid": "QDID " + deep + "\n"}[fmt]
    before = fleet.dump()
    mark = server.log_path.stat().st_size
    r = admin.post(f"/v1/admin/batches/{fleet.batch}/import", json={"format": fmt, "data": data})
    trace = _log_clean(server, mark)
    attack.observe(f"HTTP {r.status_code} {r.text[:80]}; log: {trace or 'clean'}")
    body = r.json()
    assert (r.status_code, body["error"]) == (status, code), r.text
    assert "nested deeper than 32 levels" in body["detail"]
    if fmt != "json":  # the bad rows, as for any other refused import
        assert "line 1:" in body["detail"] and [row["line"] for row in body["rows"]] == [1]
    assert trace is None
    assert fleet.dump() == before


def test_deeply_nested_telemetry(attack: Attack, server: ServerProcess, fleet: Fleet) -> None:
    attack.expect(
        "telemetry payload nested 2000 deep",
        "dropped as malformed with one warning; no traceback in the server log",
    )
    device = fleet.take()
    answer = device.onboard()
    client = device.mqtt_connect(answer)
    mark = server.log_path.stat().st_size
    try:
        # 2,000 levels: 4 KB, under the telemetry payload limit.
        publish(client, answer.body["topics"]["telemetry"], _deep_array(2000).encode())
        publish(client, answer.body["topics"]["telemetry"], json.dumps({"seq": 1}).encode())
        time.sleep(0.5)
    finally:
        stop_client(client)
    trace = _log_clean(server, mark)
    attack.observe(f"log: {trace or 'clean'}")
    assert trace is None
