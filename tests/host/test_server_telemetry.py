"""Telemetry payloads: the shape of docs/protocol.md is stored, anything else is ignored."""

from __future__ import annotations

import json

import pytest

from host.server.telemetry import parse_telemetry

GOOD = {"seq": 1, "uptime_ms": 0, "mem_free": 1024, "fw": "0.1.0"}


def test_protocol_payload_is_accepted() -> None:
    assert parse_telemetry(json.dumps(GOOD).encode()) == GOOD


def test_extra_fields_are_kept() -> None:
    assert parse_telemetry(json.dumps({**GOOD, "temp_c": 21.5}).encode()) == {
        **GOOD,
        "temp_c": 21.5,
    }


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({**GOOD, "seq": 0}).encode(),
        json.dumps({**GOOD, "seq": -1}).encode(),
        json.dumps({**GOOD, "seq": "1"}).encode(),
        json.dumps({**GOOD, "seq": True}).encode(),
        json.dumps({**GOOD, "uptime_ms": 1.5}).encode(),
        json.dumps({**GOOD, "mem_free": None}).encode(),
        json.dumps({k: v for k, v in GOOD.items() if k != "fw"}).encode(),
        json.dumps({**GOOD, "fw": 1}).encode(),
        json.dumps({**GOOD, "pad": "x" * 5000}).encode(),
    ],
    ids=[
        "empty",
        "not_json",
        "not_utf8",
        "array",
        "seq_zero",
        "seq_negative",
        "seq_string",
        "seq_bool",
        "uptime_float",
        "mem_null",
        "fw_missing",
        "fw_not_string",
        "too_large",
    ],
)
def test_malformed_payload_is_ignored(payload: bytes) -> None:
    assert parse_telemetry(payload) is None
