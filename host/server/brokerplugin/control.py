"""The qlink plugin's control messages, as the server writes and reads them (the broker's side
and the rules behind it are in qlink_acl.c's opening comment).

A request is `<verb> <correlation>\\n` followed by one device ID per line; the plugin answers
the requesting client alone on RESPONSE with `<correlation> ok <changed> <denied>\\n` or
`<correlation> error <reason>\\n`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

CONTROL = "$CONTROL/qlink/v1"
RESPONSE = CONTROL + "/response"
# The broker's own report of a device connection closed: {"client": "<device ID>"} (only the
# broker publishes it, only the admin receives it: qlink_acl.c).
PRESENCE = CONTROL + "/presence"
MAX_IDS = 4096  # device IDs in one request: MAX_IDS in qlink_acl.c
VERBS = ("deny", "allow", "open")
_CORRELATION = re.compile(r"[A-Za-z0-9_-]{1,32}")
_DEVICE_ID = re.compile(r"[0-9a-f]{64}")
_PRESENCE = re.compile(rb'\{"client":"([0-9a-f]{64})"\}')
_ANSWER = re.compile(
    rb"(?P<corr>[A-Za-z0-9_-]{1,32}|-) (?:ok (?P<changed>\d{1,10}) (?P<denied>\d{1,10})"
    rb"|error (?P<error>[a-z-]{1,32}))\n"
)


@dataclass(frozen=True)
class Answer:
    correlation: str
    error: str | None  # the plugin's reason word when it refused the request
    changed: int = 0  # entries added (deny), removed (allow), 1 when "open" opened
    denied: int = 0  # devices in the set after the request


def request(verb: str, correlation: str, device_ids: Sequence[str] = ()) -> bytes:
    """One request's payload. The rules the plugin enforces are checked here too, so the server
    never sends a request the plugin would refuse as malformed."""
    if verb not in VERBS:
        raise ValueError(f"verb must be one of {', '.join(VERBS)}")
    if not _CORRELATION.fullmatch(correlation):
        raise ValueError("correlation must be 1 to 32 of A-Z a-z 0-9 _ -")
    if len(device_ids) > MAX_IDS or (verb == "open" and device_ids):
        raise ValueError(f"at most {MAX_IDS} device IDs, none with open")
    bad = [d for d in device_ids if not _DEVICE_ID.fullmatch(d)]
    if bad:
        raise ValueError(f"not a device ID (64 lowercase hex): {bad[0][:70]!r}")
    return "".join([f"{verb} {correlation}\n", *(f"{d}\n" for d in device_ids)]).encode()


def parse_answer(payload: bytes) -> Answer | None:
    """The plugin's answer, or None if `payload` is not one."""
    m = _ANSWER.fullmatch(payload)
    if m is None:
        return None
    corr = m["corr"].decode()
    if m["error"] is not None:
        return Answer(corr, m["error"].decode())
    return Answer(corr, None, int(m["changed"]), int(m["denied"]))


def parse_presence(payload: bytes) -> str | None:
    """The device ID of a presence report, or None if `payload` is not one."""
    m = _PRESENCE.fullmatch(payload)
    return None if m is None else m[1].decode()


def chunks(device_ids: Sequence[str], size: int = MAX_IDS) -> Iterator[Sequence[str]]:
    """`device_ids` in requests of at most `size`."""
    for start in range(0, len(device_ids), size):
        yield device_ids[start : start + size]
