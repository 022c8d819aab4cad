"""The published attack suite: each test is one attack tried from outside, as an attacker would,
with what must happen and what did.

A case names itself and its expectation before it attacks, and says what it observed after:

    def test_replayed_challenge(attack, fleet) -> None:
        attack.expect("replayed challenge", "a second proof on a used challenge is refused")
        ...
        attack.observe(f"HTTP {r.status} {r.error}")
        assert r.status == 403

`make attacks` runs the suite with `--attacks-report PATH`: the cases go to PATH as JSON
(`{"cases": [{"name", "expected", "observed", "ok"}, ...]}`) and as a table to docs/security.md
between its `<!-- attacks -->` marks. Under xdist the records travel with the test reports
(user_properties), so the controller writes one file for all workers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attacksuite import RECORD, Attack

from hil.fleet import Fleet
from hil.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
SECURITY_DOC = ROOT / "docs" / "security.md"
TABLE_START, TABLE_END = "<!-- attacks -->", "<!-- /attacks -->"


@pytest.fixture
def attack(request: pytest.FixtureRequest) -> Iterator[Attack]:
    case = Attack(request.node)
    yield case
    if not case.name:
        pytest.fail("an attack case must call attack.expect(name, expected) first")
    request.node.user_properties.append((RECORD, case.record()))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--attacks-report",
        metavar="PATH",
        default=None,
        help="write the attack cases to PATH (JSON) and their table to docs/security.md",
    )


_collected: dict[str, dict[str, Any]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == RECORD:
            # The teardown report carries the record; the call's outcome says whether it held.
            _collected.setdefault(report.nodeid, {}).update(value)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        entry = _collected.setdefault(report.nodeid, {})
        entry["ok"] = report.passed
        if not report.passed and report.longrepr is not None:
            entry.setdefault("failure", str(report.longreprtext).splitlines()[-1:])


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--attacks-report")
    if path is None or hasattr(session.config, "workerinput"):
        return
    cases = [
        {
            "name": e.get("name") or nodeid,
            "expected": e.get("expected", ""),
            "observed": e.get("observed") or " ".join(e.get("failure", [])),
            "ok": bool(e.get("ok")),
            "test": nodeid,
        }
        for nodeid, e in sorted(_collected.items())
    ]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cases": cases}, indent=2) + "\n")
    write_table(cases)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(cases: list[dict[str, Any]]) -> str:
    rows = ["| attack | must happen | observed | held |", "| --- | --- | --- | --- |"]
    for c in cases:
        held = "yes" if c["ok"] else "**NO**"
        rows.append(
            f"| {_cell(c['name'])} | {_cell(c['expected'])} | {_cell(c['observed'])} | {held} |"
        )
    return "\n".join(rows)


def write_table(cases: list[dict[str, Any]]) -> None:
    text = SECURITY_DOC.read_text()
    head, sep, rest = text.partition(TABLE_START)
    _, sep2, tail = rest.partition(TABLE_END)
    if not (sep and sep2):
        raise pytest.UsageError(f"{SECURITY_DOC} lacks its {TABLE_START} ... {TABLE_END} marks")
    SECURITY_DOC.write_text(f"{head}{TABLE_START}\n{table(cases)}\n{TABLE_END}{tail}")


# -- the target: a real `qlink server` with its managed Mosquitto ----------------------------


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("qlink-attacks")).start()
    yield proc
    assert proc.stop() in (0, -15), proc.log_tail()


@pytest.fixture(scope="session")
def fleet(server: ServerProcess) -> Fleet:
    return Fleet(server, batch="attacked", tenant="acme", size=64)
