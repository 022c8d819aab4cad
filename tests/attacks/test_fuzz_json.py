"""Hypothesis against both APIs of a running server: JSON documents nested, truncated, made
non-UTF-8, given huge numbers or duplicate keys. No answer may be a 5xx, every refusal has the
documented shape, and the server log has no traceback."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from attacksuite import Attack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.fleet import Fleet
from hil.serverproc import ServerProcess

DEVICE_PATHS = ["/v1/onboard/hello", "/v1/onboard/proof", "/v1/onboard/successor"]
OPERATOR_PATHS = [
    "/v1/admin/batches",
    "/v1/admin/tokens",
    "/v1/admin/batches/{batch}/import",
    "/v1/admin/tenants",
    "/v1/admin/claims",
    "/v1/admin/devices/{device}/commands",
]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_documents = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """One JSON body, honest or shaped like a request, then bent one way."""
    shaped = {
        "device_id": draw(st.text(alphabet="0123456789abcdef", max_size=64)),
        "public_key": "04" + "00" * 64,
        "format": draw(st.sampled_from(["csv", "json", "jsonl", "qdid"])),
        "data": draw(st.text(max_size=40)),
        "name": draw(st.text(max_size=12)),
    }
    doc = draw(st.one_of(_documents, st.just(shaped)))
    text = json.dumps(doc)
    how = draw(st.sampled_from(["as is", "nested", "truncated", "bad utf-8", "huge", "dup"]))
    if how == "nested":
        depth = draw(st.integers(min_value=30, max_value=6000))
        text = "[" * depth + text + "]" * depth
    elif how == "truncated":
        text = text[: draw(st.integers(min_value=0, max_value=max(0, len(text) - 1)))]
    elif how == "bad utf-8":
        raw = text.encode()
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + raw[at:]
    elif how == "huge":
        digits = draw(st.integers(min_value=300, max_value=6000))
        number = draw(st.sampled_from(["1" * digits, f"1e{digits}", f"-0.{'0' * digits}1"]))
        text = f'{{"device_id": {number}, "n": {number}}}'
    elif how == "dup":
        text = '{"device_id": "a", "device_id": "b", "public_key": "04"}'
    return text.encode()


@pytest.fixture(scope="module")
def clients(server: ServerProcess, fleet: Fleet) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    token = server.cli("token", "create", "fuzzer", "--role", "admin", "--tenant", "acme")
    trust = ssl.create_default_context(cafile=str(server.root_pem_path))
    with (
        httpx.Client(base_url=server.api_url, verify=trust, timeout=30) as device,
        httpx.Client(
            base_url=server.api_url,
            verify=trust,
            timeout=30,
            headers={"authorization": f"Bearer {token.stdout.strip()}"},
        ) as operator,
    ):
        yield device, operator


def _check(r: httpx.Response, body: bytes, failures: list[str]) -> None:
    if r.status_code >= 500:
        failures.append(f"{r.request.url.path} {r.status_code} for {body[:60]!r}")
        return
    if r.status_code >= 400:
        answer: Any = r.json()
        if set(answer) - {"rows"} != {"error", "detail"}:
            failures.append(f"{r.request.url.path}: error shape {answer}")


def test_hostile_json_never_reaches_a_5xx_or_a_traceback(
    attack: Attack, server: ServerProcess, fleet: Fleet, clients: Any
) -> None:
    attack.expect(
        "fuzzed JSON on both APIs (hypothesis)",
        "nested, truncated, non-UTF-8, huge-number and duplicate-key bodies all get 2xx/4xx in "
        "the documented shape; no traceback in the server log",
    )
    device, operator = clients
    mark = server.log_path.stat().st_size
    failures: list[str] = []
    sent = [0]

    paths = DEVICE_PATHS + OPERATOR_PATHS

    @settings(
        max_examples=120,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=hostile(), target=st.integers(min_value=0, max_value=len(paths) - 1))
    def probe(body: bytes, target: int) -> None:
        path = paths[target].format(batch=fleet.batch, device="ab" * 32)
        client = device if target < len(DEVICE_PATHS) else operator
        if path.endswith("/import"):  # the import's text travels inside its `data` field
            try:
                text = body.decode()
            except UnicodeDecodeError:
                text = body.decode("latin-1")
            body = json.dumps({"format": "json", "data": text}).encode()
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        sent[0] += 1
        _check(r, body, failures)

    probe()
    log = server.log_path.read_bytes()[mark:].decode(errors="replace")
    tracebacks = log.count("Traceback")
    attack.observe(f"{sent[0]} requests, {len(failures)} bad answers, {tracebacks} tracebacks")
    assert failures == []
    assert tracebacks == 0
