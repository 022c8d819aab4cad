"""The one rule for operator-chosen names (host/server/store/names.py): what it admits, the
sentence that refuses the rest, the store refusing a new bad name with nothing written, and
records from before the rule staying readable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.server.files import PathOutside, path_in
from host.server.store import Invalid, Store
from host.server.store.names import NAME_MAX, check_name, is_name, name_problem

GOOD = ["a", "Z", "7", "acme", "factory-2026-11", "line_1.b", "A.b-c_d", "x" * NAME_MAX, "0-0"]
BAD = [
    "",
    ".",
    "..",
    ".hidden",
    "trailing.",
    "-rf",
    "_x",
    "x_",
    "a/b",
    "..\\x",
    "../etc",
    "a b",
    "a*",
    "*",
    "+",
    "#",
    "a?",
    "${iot:ClientId}",
    "a:b",
    "a,b",
    "caf\u00e9",
    "\u0430cme",  # Cyrillic а: looks like "acme"
    "a\x00b",
    "a\nb",
    "acme\n",
    "x" * (NAME_MAX + 1),
]


@pytest.mark.parametrize("name", GOOD)
def test_rule_admits_plain_names(name: str) -> None:
    assert is_name(name) and name_problem("tenant", name) is None
    check_name("tenant", name)


@pytest.mark.parametrize("name", BAD, ids=repr)
def test_rule_refuses_paths_wildcards_and_lookalikes(name: str) -> None:
    assert not is_name(name)
    with pytest.raises(Invalid) as e:
        check_name("tenant", name)
    message = str(e.value)
    assert message.startswith("tenant must be 1 to 64 characters: letters, digits")
    assert "is not" in message and len(message) < 260


def test_refusal_names_the_value_escaped_and_cut() -> None:
    assert "'a\\nb' is not" in (name_problem("batch name", "a\nb") or "")
    long = name_problem("batch name", "é" * 10_000) or ""
    assert long.endswith("...' is not") or long.endswith("'... is not")
    assert len(long) < 300
    assert (name_problem("tenant", 5) or "").endswith("a int is not")


def test_a_caller_may_only_lower_the_bound() -> None:
    check_name("batch name", "x" * NAME_MAX, 128)  # a longer bound does not widen the rule
    with pytest.raises(Invalid):
        check_name("batch name", "x" * (NAME_MAX + 1), 128)
    with pytest.raises(Invalid, match="at most 8 characters"):
        check_name("batch name", "x" * 9, 8)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "registry.sqlite")
    yield s
    s.close()


@pytest.mark.parametrize(
    ("name", "tenant"), [("..", "acme"), ("ok", ".."), ("ok", "*"), ("a/b", "acme")]
)
def test_store_refuses_a_new_bad_name_and_writes_nothing(
    store: Store, name: str, tenant: str
) -> None:
    with pytest.raises(Invalid, match="letters, digits"):
        store.batches.create(name, tenant, "azure")
    with pytest.raises(Invalid, match="letters, digits"):
        store.tokens.create(name, tenant, "viewer")
    assert store.db.all("SELECT * FROM batches") == []
    assert store.db.all("SELECT * FROM operators") == []
    assert store.db.all("SELECT * FROM audit") == []


def test_records_from_before_the_rule_stay_readable(store: Store) -> None:
    """A batch and an operator whose names the rule now refuses (made before it) are read,
    listed, exported and changed as before; only a new name is checked."""
    with store.db.transaction() as tx:
        tx.execute(
            "INSERT INTO batches (name, tenant, active, policy, created_at)"
            " VALUES ('line 1*', 'old corp', TRUE, 'mosquitto', :now)",
            {"now": time.time()},
        )
    assert store.batches.get("line 1*", "old corp").tenant == "old corp"
    assert [b.name for b in store.batches.list("old corp")] == ["line 1*"]
    assert store.batches.export("line 1*").batch["name"] == "line 1*"
    assert store.batches.set_active("line 1*", False).active is False
    store.tenants.create("acme")
    token, _ = store.tokens.create("fresh", "acme", "viewer")
    with store.db.transaction() as tx:
        tx.execute("UPDATE operators SET name = 'old op', tenant = 'old corp'")
    op = store.tokens.authenticate(token)
    assert op is not None and (op.name, op.tenant) == ("old op", "old corp")
    assert store.tokens.revoke("old op", "old corp") == 1


@pytest.mark.parametrize("parts", [("..",), (".",), ("",), ("a/b",), ("a", ".."), ("x\x00",)])
def test_path_in_refuses_anything_but_plain_components(tmp_path: Path, parts: tuple[str]) -> None:
    with pytest.raises(PathOutside):
        path_in(tmp_path, *parts)


def test_path_in_follows_links_and_refuses_one_leading_out(tmp_path: Path) -> None:
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "inner").mkdir()
    (base / "in-link").symlink_to(base / "inner")
    (base / "out-link").symlink_to(outside)
    assert path_in(base, "in-link", "f.json") == (base / "inner" / "f.json").resolve()
    with pytest.raises(PathOutside, match="leads outside"):
        path_in(base, "out-link", "f.json")
    assert path_in(base, "old corp", "f.json").parent.name == "old corp"
