"""Identity files: a file with no device rows is refused, a CSV header row is skipped only as
the first line, and the `QDID {...}` lines enrol.py prints (console noise around them) import as
they are, as do JSON Lines. A refused file stores nothing."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hil import unixport
from host.server.bodies import ImportRequest
from host.server.identities import FORMATS, ImportFormatError, parse_any, parse_import
from host.server.store import ImportRejected, Store

NO_ROWS = "the file has no device rows"


def identity() -> tuple[str, str]:
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return hashlib.sha256(pub).hexdigest(), pub.hex()


def qdid_line(device_id: str, pub_hex: str) -> str:
    """The line firmware/enrol.py prints: MicroPython's json.dumps separators, key first."""
    return "QDID " + json.dumps({"public_key": pub_hex, "device_id": device_id})


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Store]:
    r = Store(tmp_path / "r.sqlite")
    r.batches.create("b")
    yield r
    r.close()


def stored(registry: Store) -> set[str]:
    return {d.device_id for d in registry.devices.list()}


# -- a file with no device rows ---------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n  \n\t\n",
        "# factory station 3\n# nothing yet\n",
        "device_id,public_key\n",
        "# exported by the line tester\n\nDevice_ID , Public_Key\n\n",
    ],
    ids=["empty", "blank-lines", "comments", "header", "comment-and-header"],
)
def test_a_csv_file_with_no_device_rows_is_refused(registry: Store, text: str) -> None:
    with pytest.raises(ImportFormatError, match=f"^{NO_ROWS}; expected device_id,public_key"):
        registry.batches.import_devices("b", text)
    assert stored(registry) == set()


def test_a_csv_file_with_one_device_row_imports_it(registry: Store) -> None:
    device_id, pub = identity()
    assert registry.batches.import_devices("b", f"# one board\n{device_id},{pub}\n") == 1
    assert stored(registry) == {device_id}


def test_csv_lines_with_no_device_rows_are_refused() -> None:
    """The lines form (a list, as the CLI's stdin or a test gives it) follows the same rule."""
    with pytest.raises(ImportFormatError, match=NO_ROWS):
        parse_import([])
    with pytest.raises(ImportFormatError, match=NO_ROWS):
        parse_import(["", "device_id,public_key"])
    rows, errors = parse_import(["device_id,public_key", ",".join(identity())])
    assert (len(rows), errors) == (1, [])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", f"{NO_ROWS}; expected an array of"),
        ("[\n  \n]\n", f"{NO_ROWS}; expected an array of"),
        (
            json.dumps({"format": "qlink-batch-v1", "batch": {"name": "b"}, "devices": []}),
            "the batch export has no devices",
        ),
    ],
    ids=["array", "array-of-blanks", "export"],
)
def test_a_json_file_with_no_device_rows_is_refused(
    registry: Store, text: str, message: str
) -> None:
    with pytest.raises(ImportFormatError, match=message):
        registry.batches.import_devices("b", text)
    assert stored(registry) == set()


def test_a_json_export_with_one_device_imports_it(registry: Store) -> None:
    device_id, pub = identity()
    export = {"format": "qlink-batch-v1", "devices": [{"device_id": device_id, "public_key": pub}]}
    assert registry.batches.import_devices("b", json.dumps(export)) == 1
    assert stored(registry) == {device_id}


def test_rows_of_a_one_line_json_array_are_named_by_their_place_too(registry: Store) -> None:
    good, other = identity(), identity()
    rows = [
        {"device_id": good[0], "public_key": good[1]},
        {"device_id": "zz", "public_key": other[1]},
        {"device_id": good[0], "public_key": good[1]},
        ["not", "an", "object"],
    ]
    with pytest.raises(ImportRejected) as info:
        registry.batches.import_devices("b", json.dumps(rows))
    assert [(e.line, e.reason) for e in info.value.errors] == [
        (1, "device 2: device ID must be 64 hex characters"),
        (1, "device 3: duplicate of device 1 (line 1)"),
        (1, 'device 4: row must be an object {"device_id", "public_key"}'),
    ]
    # One row a line: the line alone names it, as in every other format.
    with pytest.raises(ImportRejected) as info:
        registry.batches.import_devices("b", "[\n" + ",\n".join(map(json.dumps, rows)) + "\n]")
    assert [(e.line, e.reason) for e in info.value.errors] == [
        (3, "device ID must be 64 hex characters"),
        (4, "duplicate of line 2"),
        (5, 'row must be an object {"device_id", "public_key"}'),
    ]
    assert stored(registry) == set()


def test_a_row_registered_elsewhere_is_named_by_its_place_in_a_one_line_array(
    registry: Store,
) -> None:
    first, second = identity(), identity()
    registry.batches.create("other")
    registry.batches.import_devices("other", f"{second[0]},{second[1]}\n")
    rows = [{"device_id": d, "public_key": k} for d, k in (first, second)]
    with pytest.raises(ImportRejected) as info:
        registry.batches.import_devices("b", json.dumps(rows))
    assert [(e.line, e.reason) for e in info.value.errors] == [
        (1, "device 2: device is already registered in another batch")
    ]
    assert stored(registry) == {second[0]}


@pytest.mark.parametrize("nested_first", [False, True])
def test_an_export_imports_its_own_devices_not_an_array_nested_in_another_field(
    registry: Store, nested_first: bool
) -> None:
    (mine, mine_pub), (other, other_pub) = identity(), identity()
    own = [{"device_id": mine, "public_key": mine_pub}]
    nested = {"devices": [{"device_id": other, "public_key": other_pub}]}
    doc = {"format": "qlink-batch-v1", "devices": own, "extra": nested}
    if nested_first:
        doc = {"format": "qlink-batch-v1", "extra": nested, "devices": own}
    assert registry.batches.import_devices("b", json.dumps(doc, indent=1)) == 1
    assert stored(registry) == {mine}


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("jsonl", "\n\n", f"{NO_ROWS}; expected one"),
        ("qdid", "MicroPython v1.24\r\r\n>>> import enrol\r\r\n>>> ", "the file has no QDID lines"),
    ],
)
def test_a_line_format_file_with_no_device_rows_is_refused(
    registry: Store, fmt: str, text: str, message: str
) -> None:
    with pytest.raises(ImportFormatError, match=message):
        registry.batches.import_devices("b", text, fmt=fmt)
    assert stored(registry) == set()


# -- the CSV header row -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        "device_id,public_key",
        "DEVICE_ID,PUBLIC_KEY",
        "  device_id , public_key  ",
        "device_id,public_key_hex",
        "Device ID, Public Key",
        '"device_id","public_key"',
    ],
)
def test_a_header_row_as_the_first_line_is_skipped(registry: Store, header: str) -> None:
    a, b = identity(), identity()
    text = f"# factory line 2\n\n{header}\n{','.join(a)}\n{','.join(b)}\n"
    rows, errors = parse_any(text)
    assert errors == []
    assert [(r.line, r.device_id) for r in rows] == [(4, a[0]), (5, b[0])]
    assert registry.batches.import_devices("b", text) == 2
    assert stored(registry) == {a[0], b[0]}


def test_a_header_row_after_the_first_line_is_a_bad_row(registry: Store) -> None:
    a, b = identity(), identity()
    text = f"{','.join(a)}\ndevice_id,public_key\n{','.join(b)}\n"
    with pytest.raises(ImportRejected) as e:
        registry.batches.import_devices("b", text)
    assert [(r.line, r.reason) for r in e.value.errors] == [
        (2, "a header row may only be the first line; delete this one")
    ]
    assert stored(registry) == set()


def test_a_first_line_of_other_column_names_is_a_bad_row(registry: Store) -> None:
    text = f"serial,pubkey\n{','.join(identity())}\n"
    with pytest.raises(ImportRejected) as e:
        registry.batches.import_devices("b", text)
    assert [(r.line, r.reason) for r in e.value.errors] == [
        (1, "a header row must name the columns device_id,public_key")
    ]
    assert stored(registry) == set()


def test_a_first_line_of_hex_values_is_a_device_row_not_a_header() -> None:
    """Short hex fields look like names to nobody: they are a bad device row."""
    rows, errors = parse_any("abcd,ef01\n")
    assert rows == []
    assert [(e.line, e.reason) for e in errors] == [(1, "device ID must be 64 hex characters")]


def test_a_byte_order_mark_before_the_header_is_ignored() -> None:
    device_id, pub = identity()
    rows, errors = parse_any(f"\ufeffdevice_id,public_key\r\n{device_id},{pub}\r\n")
    assert (errors, [r.device_id for r in rows]) == ([], [device_id])


# -- QDID lines (what enrol.py prints) ---------------------------------------------------------
def test_qdid_lines_import_with_the_console_noise_around_them(registry: Store) -> None:
    a, b = identity(), identity()
    text = (
        "MicroPython v1.24.1 on 2025-01-01; linux [GCC 14.2.1] version\r\r\n"
        'Type "help()" for more information.\r\r\n'
        ">>> import enrol\r\r\n"
        f"{qdid_line(*a)}\r\n"
        ">>> import enrol\r\r\n"
        f"{qdid_line(*b)}\r\n"
        ">>> "
    )
    rows, errors = parse_any(text)
    assert errors == []
    assert [(r.line, r.device_id) for r in rows] == [(4, a[0]), (6, b[0])]
    assert registry.batches.import_devices("b", text) == 2
    assert stored(registry) == {a[0], b[0]}


def test_qdid_is_chosen_only_when_a_line_holds_a_qdid_record() -> None:
    device_id, pub = identity()
    rows, errors = parse_any(f"{qdid_line(device_id, pub)}\n")
    assert (errors, [r.device_id for r in rows]) == ([], [device_id])
    # Without a QDID record the same noise is CSV: every line a bad row, none ignored.
    rows, errors = parse_any(">>> import enrol\nMicroPython v1.24.1\n")
    assert rows == []
    assert [e.line for e in errors] == [1, 2]


def test_console_lines_are_bad_rows_outside_the_qdid_format() -> None:
    device_id, pub = identity()
    text = f">>> import enrol\n{qdid_line(device_id, pub)}\n"
    rows, errors = parse_any(text, "csv")
    assert rows == []
    assert [e.line for e in errors] == [1, 2]
    rows, errors = parse_any(text, "qdid")
    assert (errors, [r.line for r in rows]) == ([], [2])


def test_a_qdid_record_that_is_not_json_is_a_bad_row(registry: Store) -> None:
    device_id, pub = identity()
    text = f'{qdid_line(device_id, pub)}\nQDID {{"device_id": "{device_id[:10]}\n'
    with pytest.raises(ImportRejected) as e:
        registry.batches.import_devices("b", text)
    [error] = e.value.errors
    assert error.line == 2
    assert error.reason.startswith("the QDID record is not valid JSON")
    assert stored(registry) == set()


def test_a_qdid_record_with_a_bad_key_is_a_bad_row(registry: Store) -> None:
    device_id, pub = identity()
    other_id, _ = identity()
    text = f"{qdid_line(device_id, pub)}\n{qdid_line(other_id, pub)}\n"
    with pytest.raises(ImportRejected) as e:
        registry.batches.import_devices("b", text)
    assert [(r.line, r.reason) for r in e.value.errors] == [
        (2, "device ID must equal SHA-256 of the public key")
    ]
    assert stored(registry) == set()


def test_an_enrolment_error_in_the_console_is_a_bad_row(registry: Store) -> None:
    """A board that printed `E enrol:` has no identity in the file: importing the others
    silently would leave it out unnoticed."""
    device_id, pub = identity()
    text = f"{qdid_line(device_id, pub)}\n>>> import enrol\nE enrol: SRAM too biased\n"
    with pytest.raises(ImportRejected) as e:
        registry.batches.import_devices("b", text)
    [error] = e.value.errors
    assert error.line == 3
    assert "the board could not enrol (E enrol: SRAM too biased)" in error.reason
    assert stored(registry) == set()


@pytest.mark.parametrize("second", [True, False], ids=["and-one-that-does", "alone"])
def test_a_qdid_record_must_start_its_line(registry: Store, second: bool) -> None:
    """A logger's time stamp before each record: named, not read as JSON or CSV."""
    device_id, pub = identity()
    text = f"[12:00:01] {qdid_line(device_id, pub)}\n"
    if second:
        text += f"{qdid_line(*identity())}\n"
    with pytest.raises(ImportRejected) as e:
        registry.batches.import_devices("b", text)
    assert [(r.line, r.reason) for r in e.value.errors] == [
        (1, "a QDID record must start its line; delete what precedes it")
    ]
    assert stored(registry) == set()


def _console(board: Path, die_seed: str) -> bytes:
    """Type `import enrol` at the REPL of a MicroPython Unix port running the firmware on its
    own die, as an operator does on a board's serial console; everything the console showed."""
    fs = board / "fs"
    fs.mkdir(parents=True)
    die = board / "die.json"
    die.write_text(json.dumps({"seed": die_seed}))
    env = dict(os.environ, QLINK_DIE=str(die), MICROPYPATH=unixport.mp_path())
    env.pop("QLINK_WARM_BOOT", None)
    controller, terminal = pty.openpty()
    # Firmware as source, not .mpy: compiling it needs more than the identity's 64 KiB heap.
    proc = subprocess.Popen(
        [unixport.micropython(), "-X", f"heapsize={unixport.HEAP_RP2040}"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=fs,
        env=env,
    )
    os.close(terminal)
    out = b""

    def read_until(prompts: int) -> None:
        nonlocal out
        deadline = time.monotonic() + 30
        while out.count(b">>> ") < prompts:
            assert time.monotonic() < deadline, out
            if select.select([controller], [], [], 0.2)[0]:
                out += os.read(controller, 4096)

    try:
        read_until(1)
        os.write(controller, b"import enrol\r")
        read_until(2)
        os.write(controller, b"\x04")  # Ctrl-D: leave the REPL
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(controller)
    return out


def test_the_console_of_boards_running_enrol_imports_as_captured(
    registry: Store, tmp_path: Path
) -> None:
    consoles = [
        _console(tmp_path / "board-1", "00112233445566778899aabbccddeeff"),
        _console(tmp_path / "board-2", "ffeeddccbbaa99887766554433221100"),
    ]
    text = b"".join(consoles).decode()
    assert text.count("MicroPython ") == 2 and text.count("\nQDID {") == 2, text
    expected = {
        json.loads(line.strip()[5:])["device_id"]
        for line in text.split("\n")
        if line.startswith("QDID ")
    }
    rows, errors = parse_any(text)
    assert errors == []
    lines = text.split("\n")
    assert all(lines[r.line - 1].startswith("QDID ") for r in rows)
    assert registry.batches.import_devices("b", text) == 2
    assert stored(registry) == expected


# -- JSON Lines ------------------------------------------------------------------------------
def test_json_lines_import_one_object_a_line(registry: Store) -> None:
    a, b = identity(), identity()
    text = "\n".join(json.dumps({"device_id": d, "public_key": p, "label": "x"}) for d, p in (a, b))
    rows, errors = parse_any(text)
    assert (errors, [(r.line, r.device_id) for r in rows]) == ([], [(1, a[0]), (2, b[0])])
    assert registry.batches.import_devices("b", text + "\n") == 2
    assert stored(registry) == {a[0], b[0]}


def test_one_json_object_is_not_json_lines() -> None:
    """A single object is a JSON document (a batch export, or not a shape the import takes)."""
    with pytest.raises(ImportFormatError, match="JSON must be an array"):
        parse_any(json.dumps(dict(zip(("device_id", "public_key"), identity(), strict=True))))


def test_a_json_line_that_is_not_an_object_is_a_bad_row(registry: Store) -> None:
    device_id, pub = identity()
    first = json.dumps({"device_id": device_id, "public_key": pub})
    with pytest.raises(ImportRejected) as e:
        registry.batches.import_devices("b", f'{first}\n\n["{device_id}"]\n{{"device_id": \n')
    assert [(r.line, r.reason.split(" (")[0]) for r in e.value.errors] == [
        (3, 'row must be an object {"device_id", "public_key"}'),
        (4, "the line is not valid JSON"),
    ]
    assert stored(registry) == set()


# -- the format names ------------------------------------------------------------------------
def test_an_unknown_format_is_refused_naming_the_formats(registry: Store) -> None:
    with pytest.raises(
        ImportFormatError, match=r"^unknown import format 'xml'; use one of csv, json, jsonl, qdid$"
    ):
        registry.batches.import_devices("b", ",".join(identity()), fmt="xml")
    assert stored(registry) == set()


def test_the_operator_api_accepts_every_import_format() -> None:
    literal = typing.get_type_hints(ImportRequest)["format"]
    assert set(typing.get_args(literal)) == set(FORMATS)
