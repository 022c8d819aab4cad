"""Device identity files (CSV or JSON) checked row by row: every bad row is named with its line
number and reason, so an operator fixes a whole file in one pass.

CSV: one `device_id,public_key_hex` per line; blank lines and `#` comments are skipped.
JSON: an array of `{"device_id": ..., "public_key": ...}` objects, or a batch export
(`{"format": "qlink-batch-v1", ..., "devices": [...]}`); other fields of a row are ignored.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from host.server import ServerError

EXPORT_FORMAT = "qlink-batch-v1"
_HEX = frozenset("0123456789abcdef")
_CURVE = ec.SECP256R1()
Progress = Callable[[int, int], None]  # (rows done, rows in all)


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class ImportRow:
    line: int
    device_id: str
    public_key: bytes


class ImportFormatError(ServerError):
    """The file as a whole is not CSV rows or one of the JSON shapes."""


def public_key_error(pub: bytes) -> str | None:
    """Why `pub` is not an uncompressed P-256 point on the curve (SEC 1 2.3.4), or None."""
    if len(pub) != 65 or pub[0] != 0x04:
        return "public key must be 65 bytes starting with 04 (uncompressed point)"
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, pub)
    except ValueError:
        return "public key is not a point on the P-256 curve"
    return None


def _check(
    line: int, device_id: object, key_hex: object, seen: dict[str, int]
) -> ImportRow | RowError:
    if device_id == "not an object":
        return RowError(line, 'row must be an object {"device_id", "public_key"}')
    if not isinstance(device_id, str) or len(device_id) != 64:
        return RowError(line, "device ID must be 64 hex characters")
    device_id = device_id.strip().lower()
    if not set(device_id) <= _HEX:
        return RowError(line, "device ID must be 64 hex characters")
    if not isinstance(key_hex, str) or len(key_hex) != 130:
        return RowError(line, "public key must be 130 hex characters")
    key_hex = key_hex.strip().lower()
    if not set(key_hex) <= _HEX:
        return RowError(line, "public key must be 130 hex characters")
    pub = bytes.fromhex(key_hex)
    why = public_key_error(pub)
    if why:
        return RowError(line, why)
    if hashlib.sha256(pub).hexdigest() != device_id:
        return RowError(line, "device ID must equal SHA-256 of the public key")
    if device_id in seen:
        return RowError(line, f"duplicate of line {seen[device_id]}")
    seen[device_id] = line
    return ImportRow(line, device_id, pub)


def _collect(
    items: Iterable[tuple[int, object, object]], total: int, progress: Progress | None
) -> tuple[list[ImportRow], list[RowError]]:
    rows: list[ImportRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for done, (line, device_id, key_hex) in enumerate(items, start=1):
        result = _check(line, device_id, key_hex, seen)
        (rows if isinstance(result, ImportRow) else errors).append(result)  # type: ignore[arg-type]
        if progress is not None and done % 1000 == 0:
            progress(done, total)
    if progress is not None:
        progress(total, total)
    return rows, errors


def parse_import(
    lines: Iterable[str], progress: Progress | None = None
) -> tuple[list[ImportRow], list[RowError]]:
    """Check every CSV row `device_id,public_key_hex`."""
    lines = list(lines)
    bad: list[RowError] = []

    def items() -> Iterable[tuple[int, object, object]]:
        for n, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = [f.strip() for f in line.split(",")]
            if len(fields) != 2:
                bad.append(
                    RowError(n, f"expected 2 fields device_id,public_key, got {len(fields)}")
                )
                continue
            yield n, fields[0], fields[1]

    rows, errors = _collect(items(), len(lines), progress)
    errors = sorted(errors + bad, key=lambda e: e.line)
    return rows, errors


_DEVICES_KEY = re.compile(r'"devices"\s*:\s*\[')


def _json_elements(text: str, start: int) -> Iterable[tuple[int, Any]]:
    """The elements of the JSON array opening at `start`, each with the line it starts on."""
    decoder = json.JSONDecoder()
    i, line, counted = start + 1, 1 + text.count("\n", 0, start), start
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            raise ImportFormatError("the JSON array is not closed")
        if text[i] == "]":
            return
        line += text.count("\n", counted, i)
        counted = i
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise ImportFormatError(f"line {e.lineno}: not valid JSON ({e.msg})") from None
        yield line, value


def parse_json(
    text: str, progress: Progress | None = None
) -> tuple[list[ImportRow], list[RowError]]:
    """Check every row of a JSON array or of a batch export's `devices`."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ImportFormatError(f"line {e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(doc, list):
        start = text.index("[")
        total = len(doc)
    elif isinstance(doc, dict) and isinstance(doc.get("devices"), list):
        found = list(_DEVICES_KEY.finditer(text))  # the export writes "devices" last
        if not found:
            raise ImportFormatError('cannot find the "devices" array')
        start = found[-1].end() - 1
        total = len(doc["devices"])
    else:
        raise ImportFormatError(
            'JSON must be an array of {"device_id", "public_key"} objects or a batch export'
        )

    def items() -> Iterable[tuple[int, object, object]]:
        for line, value in _json_elements(text, start):
            if not isinstance(value, dict):
                yield line, "not an object", None
                continue
            yield line, value.get("device_id"), value.get("public_key")

    rows, errors = _collect(items(), total, progress)
    return rows, errors


def parse_any(
    text: str, fmt: str | None = None, progress: Progress | None = None
) -> tuple[list[ImportRow], list[RowError]]:
    """CSV or JSON; without `fmt`, a file starting with `[` or `{` is JSON."""
    if fmt is None:
        fmt = "json" if text.lstrip()[:1] in ("[", "{") else "csv"
    if fmt == "json":
        return parse_json(text, progress)
    if fmt == "csv":
        return parse_import(text.splitlines(), progress)
    raise ImportFormatError(f"unknown import format {fmt!r}; use csv or json")
