"""The one JSON reader for input from the network: device bodies, operator bodies, identity
imports, telemetry relayed by the broker.

Bounds beyond the byte limits the callers set: nesting depth (MAX_DEPTH; Python's json module
recurses and would raise RecursionError, a 500, a few thousand levels down), duplicate keys
(parsers disagree on which one wins: a check and a use could read different values), the
non-JSON constants NaN and Infinity, and text that is not UTF-8. Numbers keep Python's own bound
(int() refuses more than 4300 digits, a ValueError here). Every refusal is `JsonRejected`, a
ValueError whose message says what to fix.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32  # qlink's documents nest 3 levels; the import's export format 4

# A JSON string, escapes included: what the depth scan skips (brackets inside strings).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class JsonRejected(ValueError):
    """Input that is not JSON qlink reads; the message is a sentence for the sender."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonRejected(f"the key {key[:40]!r} appears twice in one object")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise JsonRejected(f"{name} is not a JSON number")


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text` (strings skipped), without recursion."""
    level = deepest = 0
    for bracket in _BRACKETS.findall(_STRING.sub("", text)):
        if bracket in "[{":
            level += 1
            deepest = max(deepest, level)
        else:
            level -= 1
    return deepest


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    # At most max_depth brackets open in all: no need to scan (every small body).
    if text.count("[") + text.count("{") > max_depth and depth(text) > max_depth:
        raise JsonRejected(f"JSON nested deeper than {max_depth} levels")


def as_text(data: bytes | bytearray | str) -> str:
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonRejected(f"the body is not UTF-8 (byte {e.start})") from None


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """`data` parsed within the bounds above. A syntax error stays a json.JSONDecodeError (it
    has the line and column a sender needs); it is a ValueError like JsonRejected."""
    text = as_text(data)
    check_depth(text, max_depth)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:  # unreachable past check_depth; kept as the last guard
        raise JsonRejected(f"JSON nested deeper than {max_depth} levels") from None
    except (json.JSONDecodeError, JsonRejected):
        raise
    except ValueError:  # the one other ValueError json raises: int() past its digit limit
        raise JsonRejected("a number has more than 4300 digits") from None


def decoder() -> json.JSONDecoder:
    """A decoder with the same rules for `raw_decode` (call check_depth on the text first)."""
    return json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
