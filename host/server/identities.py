"""Device identity files checked row by row: every bad row is named with its line number and
reason (and, in a JSON array with several rows on a line, its place in the array), so an
operator fixes a whole file in one pass. A file with no device rows at all is an
error, not "0 imported": it is almost always the wrong file.

csv:   one `device_id,public_key_hex` per line; blank lines and `#` comments are skipped, and
       so is a header row (`device_id,public_key`) as the first of the other lines.
json:  an array of `{"device_id": ..., "public_key": ...}` objects, or a batch export
       (`{"format": "qlink-batch-v1", ..., "devices": [...]}`); other fields of a row are ignored.
jsonl: one such object per line (JSON Lines); blank lines are skipped.
qdid:  a board's console as captured: each `QDID {...}` line that firmware/enrol.py prints is a
       row; every other line (banners, `>>>` prompts, the echo of `import enrol`) is ignored,
       except an enrolment error, which is named so that no failed board goes unnoticed.

Line numbers are those an editor shows. In jsonl and qdid only `\\n` ends a line: a serial
console writes `\\r\\r\\n`, which is one line, not two.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from host.server import ServerError, jsonin
from host.server.deviceid import BadDeviceId, device_id_of, parse_device_id

FORMATS = ("csv", "json", "jsonl", "qdid")
_HEX = frozenset("0123456789abcdef")
Progress = Callable[[int, int], None]  # (rows done, rows in all)

# Column names a header row may give (compared lower-case, runs of spaces or `-` as `_`).
_ID_NAMES = frozenset({"device_id", "deviceid", "id"})
_KEY_NAMES = frozenset({"public_key", "public_key_hex", "publickey", "pubkey", "key"})
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_QDID = "QDID "  # firmware/enrol.py: print("QDID " + json.dumps({...}))
_ENROL_ERROR = "E enrol:"  # firmware/enrol.py, when the identity cannot be enrolled


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
    element: int = 0  # its place in a JSON array (1 first), 0 in a format of one row a line

    def refused(self, why: str) -> RowError:
        return _row_error(self.line, self.element, why)


def _row_error(line: int, element: int, why: str) -> RowError:
    """A row's error; a JSON array's row is named by its place too (one line may hold many)."""
    return RowError(line, f"device {element}: {why}" if element else why)


def _named(line: int, element: int) -> str:
    return f"device {element} (line {line})" if element else f"line {line}"


class ImportFormatError(ServerError):
    """The file as a whole is not one of the formats, or holds no device rows."""


def public_key_error(pub: bytes) -> str | None:
    """Why `pub` is not an uncompressed P-256 point on the curve (SEC 1 2.3.4), or None."""
    if len(pub) != 65 or pub[0] != 0x04:
        return "public key must be 65 bytes starting with 04 (uncompressed point)"
    # Imported here: a command that only reads the store does not load cryptography.
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
    except ValueError:
        return "public key is not a point on the P-256 curve"
    return None


_NOT_OBJECT = object()  # a JSON row that is not an object


def _check(
    line: int,
    device_id: object,
    key_hex: object,
    seen: dict[str, str],
    element: int = 0,
) -> ImportRow | RowError:
    def bad(why: str) -> RowError:
        return _row_error(line, element, why)

    if device_id is _NOT_OBJECT:
        return bad('row must be an object {"device_id", "public_key"}')
    try:
        device_id = parse_device_id(device_id)
    except BadDeviceId as e:
        return bad(str(e))
    if not isinstance(key_hex, str) or len(key_hex) != 130:
        return bad("public key must be 130 hex characters")
    key_hex = key_hex.strip().lower()
    if not set(key_hex) <= _HEX:
        return bad("public key must be 130 hex characters")
    pub = bytes.fromhex(key_hex)
    why = public_key_error(pub)
    if why:
        return bad(why)
    if device_id_of(pub) != device_id:
        return bad("device ID must equal SHA-256 of the public key")
    if device_id in seen:
        return bad(f"duplicate of {seen[device_id]}")
    seen[device_id] = _named(line, element)
    return ImportRow(line, device_id, pub, element)


def _collect(
    items: Iterable[tuple[int, object, object] | tuple[int, object, object, int] | RowError],
    total: int,
    progress: Progress | None,
    empty: str,
) -> tuple[list[ImportRow], list[RowError]]:
    """Check every item (a row's fields, or an error the reader already found); `empty` is the
    sentence of the ImportFormatError raised when there was no item at all."""
    rows: list[ImportRow] = []
    errors: list[RowError] = []
    seen: dict[str, str] = {}  # device ID -> where it was first
    done = 0
    for done, item in enumerate(items, start=1):
        if isinstance(item, RowError):
            errors.append(item)
        else:
            result = _check(*item[:3], seen, *item[3:])
            (rows if isinstance(result, ImportRow) else errors).append(result)  # type: ignore[arg-type]
        if progress is not None and done % 1000 == 0:
            progress(done, total)
    if not done:
        raise ImportFormatError(empty)
    if progress is not None:
        progress(total, total)
    errors.sort(key=lambda e: e.line)
    return rows, errors


# -- csv -------------------------------------------------------------------------------------
def _header_names(fields: list[str]) -> list[str] | None:
    """The fields as column names when each one is a name (not a hex value), else None."""
    names = [re.sub(r"[\s-]+", "_", f.strip('"').strip().lower()) for f in fields]
    if all(_NAME.fullmatch(n) and not set(n) <= _HEX for n in names):
        return names
    return None


def _is_header(names: list[str] | None) -> bool:
    return names is not None and names[0] in _ID_NAMES and names[1] in _KEY_NAMES


def parse_import(
    lines: Iterable[str], progress: Progress | None = None
) -> tuple[list[ImportRow], list[RowError]]:
    """Check every CSV row `device_id,public_key_hex`; a header row may come first."""
    lines = list(lines)

    def items() -> Iterable[tuple[int, object, object] | RowError]:
        first = True
        for n, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = [f.strip() for f in line.split(",")]
            was_first, first = first, False
            if len(fields) != 2:
                yield RowError(n, f"expected 2 fields device_id,public_key, got {len(fields)}")
                continue
            # A device ID is 64 characters; no column name is.
            names = _header_names(fields) if len(fields[0]) != 64 else None
            if was_first and _is_header(names):
                continue
            if _is_header(names):
                yield RowError(n, "a header row may only be the first line; delete this one")
            elif was_first and names is not None:
                yield RowError(n, "a header row must name the columns device_id,public_key")
            else:
                yield n, fields[0], fields[1]

    return _collect(
        items(),
        len(lines),
        progress,
        "the file has no device rows; expected device_id,public_key lines",
    )


# -- json ------------------------------------------------------------------------------------
_DEVICES_KEY = re.compile(r'"devices"\s*:\s*\[')


def _json_elements(text: str, start: int) -> Iterable[tuple[int, Any]]:
    """The elements of the JSON array opening at `start`, each with the line it starts on."""
    decoder = jsonin.decoder()
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
        except jsonin.JsonRejected as e:
            raise ImportFormatError(f"line {line}: {e}") from None
        yield line, value


def _fields(line: int, value: object) -> tuple[int, object, object]:
    if not isinstance(value, dict):
        return line, _NOT_OBJECT, None
    return line, value.get("device_id"), value.get("public_key")


def _element(element: int, line: int, value: object) -> tuple[int, object, object, int]:
    """A JSON array's row: its fields and its place in the array (0: not named by it)."""
    return (*_fields(line, value), element)


def _top_level_devices(text: str, devices: list[Any]) -> int:
    """Where the document's own `devices` array starts in `text` (its rows are read from there
    to know their lines). The export writes it last, so the last `"devices": [` is tried first;
    one nested in another field is passed over, since its rows are not the document's."""
    for match in reversed(list(_DEVICES_KEY.finditer(text))):
        start = match.end() - 1
        try:
            if [value for _line, value in _json_elements(text, start)] == devices:
                return start
        except ImportFormatError:
            continue
    raise ImportFormatError('cannot find the "devices" array')


def parse_json(
    text: str, progress: Progress | None = None
) -> tuple[list[ImportRow], list[RowError]]:
    """Check every row of a JSON array or of a batch export's `devices`."""
    try:
        doc = jsonin.loads(text)
    except json.JSONDecodeError as e:
        raise ImportFormatError(f"line {e.lineno}: not valid JSON ({e.msg})") from None
    except jsonin.JsonRejected as e:
        raise ImportFormatError(str(e)) from None
    if isinstance(doc, list):
        start = text.index("[")
        total = len(doc)
        empty = (
            'the file has no device rows; expected an array of {"device_id", "public_key"} objects'
        )
    elif isinstance(doc, dict) and isinstance(doc.get("devices"), list):
        start = _top_level_devices(text, doc["devices"])
        total = len(doc["devices"])
        empty = "the batch export has no devices; export a batch that has some"
    else:
        raise ImportFormatError(
            'JSON must be an array of {"device_id", "public_key"} objects or a batch export'
        )
    elements = list(_json_elements(text, start))
    # Rows are named by their line; only when a line holds several are they numbered too.
    shared = len({line for line, _value in elements}) < len(elements)
    items = (
        _element(n if shared else 0, line, value)
        for n, (line, value) in enumerate(elements, start=1)
    )
    return _collect(items, total, progress, empty)


# -- jsonl and qdid: one JSON object per line ------------------------------------------------
def _json_line(n: int, raw: str, what: str) -> tuple[int, object, object] | RowError:
    try:
        value = jsonin.loads(raw)
    except json.JSONDecodeError as e:
        return RowError(n, f"{what} is not valid JSON ({e.msg})")
    except jsonin.JsonRejected as e:
        return RowError(n, f"{what} is refused: {e}")
    return _fields(n, value)


def parse_jsonl(
    text: str, progress: Progress | None = None
) -> tuple[list[ImportRow], list[RowError]]:
    """Check every line of JSON Lines, each a `{"device_id", "public_key"}` object."""
    lines = text.split("\n")
    items = (_json_line(n, raw, "the line") for n, raw in enumerate(lines, start=1) if raw.strip())
    return _collect(
        items,
        len(lines),
        progress,
        'the file has no device rows; expected one {"device_id", "public_key"} object a line',
    )


def parse_qdid(
    text: str, progress: Progress | None = None
) -> tuple[list[ImportRow], list[RowError]]:
    """Check every `QDID {...}` line of a console capture; other console lines are ignored."""
    lines = text.split("\n")

    def items() -> Iterable[tuple[int, object, object] | RowError]:
        for n, raw in enumerate(lines, start=1):
            line = raw.strip()
            if line.startswith(_QDID):
                yield _json_line(n, line[len(_QDID) :], "the QDID record")
            elif line.startswith(_ENROL_ERROR):
                yield RowError(
                    n,
                    f"the board could not enrol ({line}); enrol it again, or delete this line "
                    "to import the others",
                )
            elif "QDID {" in line:
                yield RowError(n, "a QDID record must start its line; delete what precedes it")

    return _collect(
        items(),
        len(lines),
        progress,
        "the file has no QDID lines; expected the QDID {...} lines enrol.py prints",
    )


# -- any -------------------------------------------------------------------------------------
def detect_format(text: str) -> str:
    """The format of `text`: qdid when a line holds a `QDID {` record (a console line may start
    with `[` or `{` too); else JSON when it starts with `[` or `{` (JSON Lines when a second
    value follows the first object); else CSV."""
    if "QDID {" in text:
        return "qdid"
    head = text.lstrip()[:1]
    if head == "[":
        return "json"
    if head == "{":
        try:
            jsonin.loads(text)
        except json.JSONDecodeError as e:
            # The first value parsed and more follow: one object a line, not one document.
            return "jsonl" if e.msg == "Extra data" else "json"
        except jsonin.JsonRejected:
            return "json"  # parse_json says why
    return "json" if head == "{" else "csv"


def parse_any(
    text: str, fmt: str | None = None, progress: Progress | None = None
) -> tuple[list[ImportRow], list[RowError]]:
    """Any of the formats (csv, json, jsonl, qdid); without `fmt`, the one `text` has."""
    text = text.removeprefix("\ufeff")  # the byte-order mark some spreadsheets write
    if fmt is None:
        fmt = detect_format(text)
    if fmt == "json":
        return parse_json(text, progress)
    if fmt == "jsonl":
        return parse_jsonl(text, progress)
    if fmt == "qdid":
        return parse_qdid(text, progress)
    if fmt == "csv":
        return parse_import(text.splitlines(), progress)
    raise ImportFormatError(f"unknown import format {fmt!r}; use one of {', '.join(FORMATS)}")
