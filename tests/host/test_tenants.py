"""Tenants as records: created once by the local operator or the platform operator's token, listed
with their counts, and the one place a batch or an operator token can be made; a refused change
leaves every table as it was. Store tests run on SQLite and, where it starts, PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiutil import CLIENT, operator_api
from apiutil import OperatorApi as Api
from cliutil import run_qlink

from hil.simdevice import SimDevice
from host.server.settings import Settings
from host.server.store import Conflict, Invalid, NotFound, Store

UNKNOWN_ACME = "tenant 'acme' does not exist; create it first: qlink tenant create acme"
BAD_NAMES = ["", "..", "a*", "x/y", "#", "+", "caf\u00e9", "-rf", "a b", "x" * 65]


def _tables(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every row a tenant, batch or token change could touch."""
    return {
        t: store.db.all(f"SELECT * FROM {t} ORDER BY 1")
        for t in ("tenants", "batches", "operators", "audit")
    }


@pytest.fixture
def store(database: str | Path) -> Iterator[Store]:
    s = Store(database)
    yield s
    s.close()


# -- store ------------------------------------------------------------------------------------
def test_a_new_store_has_the_default_tenant_and_its_first_batch_needs_no_step(
    store: Store,
) -> None:
    assert [t.name for t in store.tenants.list()] == ["default"]
    assert store.tenants.exists("default") and not store.tenants.exists("acme")
    store.batches.create("f1")
    store.tokens.create("alice", "default", "admin")
    [default] = store.tenants.list()
    assert (default.name, default.batches, default.devices) == ("default", 1, 0)


def test_a_tenant_is_listed_with_its_batch_and_device_counts(store: Store) -> None:
    made = store.tenants.create("acme")
    assert (made.name, made.batches, made.devices) == ("acme", 0, 0)
    store.batches.create("f1", "acme")
    store.batches.create("f2", "acme")
    devices = [SimDevice("https://localhost", b"").csv_line() for _ in range(3)]
    store.batches.import_devices("f1", devices, tenant="acme")
    listed = {t.name: (t.batches, t.devices) for t in store.tenants.list()}
    assert listed == {"acme": (2, 3), "default": (0, 0)}
    got = store.tenants.get("acme")
    assert (got.batches, got.devices, got.created_at) == (2, 3, made.created_at)
    [event] = store.audit.list(action="tenant.create")
    assert (event.tenant, event.target, event.actor) == ("acme", "tenant:acme", "cli")


def test_a_tenant_that_exists_is_refused_and_nothing_changes(store: Store) -> None:
    store.tenants.create("acme")
    before = _tables(store)
    with pytest.raises(Conflict, match="tenant 'acme' already exists; use it"):
        store.tenants.create("acme")
    with pytest.raises(Conflict, match="already exists"):
        store.tenants.create("default")
    assert _tables(store) == before


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_tenant_name_is_refused_and_nothing_is_stored(store: Store, name: str) -> None:
    before = _tables(store)
    with pytest.raises(Invalid, match=r"^tenant must be"):
        store.tenants.create(name)
    assert _tables(store) == before


def test_a_tenant_name_of_64_characters_is_the_longest_taken(store: Store) -> None:
    assert store.tenants.create("x" * 64).name == "x" * 64
    with pytest.raises(Invalid, match="tenant must be"):
        store.tenants.create("x" * 65)


def test_a_batch_or_token_in_an_unknown_tenant_is_refused_and_nothing_is_stored(
    store: Store,
) -> None:
    store.batches.create("f1")
    before = _tables(store)
    with pytest.raises(NotFound) as batch:
        store.batches.create("f2", "acme")
    with pytest.raises(NotFound) as token:
        store.tokens.create("alice", "acme", "admin")
    assert str(batch.value) == str(token.value) == UNKNOWN_ACME
    assert _tables(store) == before
    store.tenants.create("acme")  # the step the message names is all it takes
    assert store.batches.create("f2", "acme").tenant == "acme"
    assert store.tokens.create("alice", "acme", "admin")[1].tenant == "acme"


def test_a_tenant_scoped_read_sees_only_its_own_tenant(store: Store) -> None:
    store.tenants.create("acme")
    store.tenants.create("globex")
    assert [t.name for t in store.tenants.list("acme")] == ["acme"]
    assert store.tenants.get("acme", "acme").name == "acme"
    with pytest.raises(NotFound, match="tenant 'globex' does not exist"):
        store.tenants.get("globex", "acme")
    assert store.tenants.get("globex").name == "globex"  # the local operator sees it
    with pytest.raises(NotFound, match="qlink tenant create nope"):
        store.tenants.get("nope")


# -- CLI ----------------------------------------------------------------------------------------
@pytest.fixture
def qlink(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    monkeypatch.setenv("QLINK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    return lambda *args: run_qlink(monkeypatch, capsys, *args)


def test_tenant_create_and_list_by_cli(qlink) -> None:
    import json

    code, out, err = qlink("tenant", "create", "acme", "--json")
    assert code == 0, err
    made = json.loads(out)
    assert (made["name"], made["batches"], made["devices"]) == ("acme", 0, 0)
    code, out, _ = qlink("tenant", "create", "globex")
    assert code == 0 and "tenant globex created" in out and "--tenant globex" in out
    assert qlink("batch", "create", "f1", "--tenant", "acme")[0] == 0
    code, out, _ = qlink("tenant", "list", "--json")
    assert code == 0
    assert [(t["name"], t["batches"]) for t in json.loads(out)] == [
        ("acme", 1),
        ("default", 0),
        ("globex", 0),
    ]
    assert json.loads(out)[0]["created_at"] == made["created_at"]
    code, out, _ = qlink("tenant", "list")
    assert code == 0 and all(n in out for n in ("acme", "default", "globex", "batches"))


def test_tenant_create_twice_is_one_sentence_and_changes_nothing(qlink) -> None:
    qlink("tenant", "create", "acme")
    listed, audit = qlink("tenant", "list", "--json")[1], qlink("audit", "--json")[1]
    code, out, err = qlink("tenant", "create", "acme", "--json")
    assert code == 1 and out == ""
    assert "error: tenant 'acme' already exists; use it (--tenant acme)" in err
    assert "Traceback" not in err
    assert (qlink("tenant", "list", "--json")[1], qlink("audit", "--json")[1]) == (listed, audit)


@pytest.mark.parametrize("name", ["..", "a*", "#", "caf\u00e9"], ids=repr)
def test_a_bad_tenant_name_by_cli_creates_nothing(qlink, tmp_path: Path, name: str) -> None:
    code, out, err = qlink("tenant", "create", "--", name)
    assert code == 1 and out == ""
    assert "tenant must be 1 to 64 characters: letters, digits" in err
    assert not (tmp_path / "data").exists()  # not even the data directory


def test_a_batch_or_token_in_an_unknown_tenant_by_cli_says_how_to_create_it(qlink) -> None:
    qlink("batch", "create", "f0")
    state = [qlink(*c, "--json")[1] for c in (("batch", "list"), ("token", "list"), ("audit",))]
    for command in (("batch", "create", "f1"), ("token", "create", "alice")):
        code, out, err = qlink(*command, "--tenant", "acme")
        assert code == 1 and out == "" and f"error: {UNKNOWN_ACME}" in err
    assert [qlink(*c, "--json")[1] for c in (("batch", "list"), ("token", "list"), ("audit",))] == (
        state
    )


def test_an_unknown_tenant_on_a_new_data_directory_creates_nothing(qlink, tmp_path: Path) -> None:
    for command in (("batch", "create", "f1"), ("token", "create", "alice")):
        code, _, err = qlink(*command, "--tenant", "acme")
        assert code == 1 and UNKNOWN_ACME in err
    assert not (tmp_path / "data").exists()


def test_tenant_list_refuses_a_directory_without_qlink_data(qlink, tmp_path: Path) -> None:
    code, _, err = qlink("tenant", "list")
    assert code == 1 and "there is no qlink data in" in err
    assert not (tmp_path / "data").exists()


# -- operator API -------------------------------------------------------------------------------
TENANTS = "/v1/admin/tenants"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path, broker_port=18883)
    roles = (("default", "admin"), ("default", "operator"), ("acme", "admin"), ("acme", "viewer"))
    with operator_api(settings, roles) as a:
        yield a


def test_the_platform_admin_creates_and_lists_tenants_by_api(api: Api) -> None:
    r = api.request("POST", TENANTS, "default-admin", {"name": "globex"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["name"], body["batches"], body["devices"]) == ("globex", 0, 0)
    r = api.request("GET", TENANTS, "default-admin")
    assert r.status_code == 200
    assert [t["name"] for t in r.json()] == ["acme", "default", "globex"]
    [event] = api.app.audit(action="tenant.create", target="tenant:globex")
    assert (event.actor, event.source, event.tenant) == ("operator:admin1", CLIENT[0], "globex")
    # The new tenant's first token is the local operator's or its admin's to make, as for any.
    assert api.app.create_token("boss", "globex", "admin")[1].tenant == "globex"


def test_a_tenant_that_exists_is_409_by_api_and_nothing_changes(api: Api) -> None:
    before = _tables(api.app.store)
    for name in ("acme", "default"):
        r = api.request("POST", TENANTS, "default-admin", {"name": name})
        assert (r.status_code, r.json()["error"]) == (409, "conflict")
        assert f"tenant '{name}' already exists" in r.json()["detail"]
    assert _tables(api.app.store) == before


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_tenant_name_is_400_by_api_and_nothing_is_stored(api: Api, name: str) -> None:
    before = _tables(api.app.store)
    r = api.request("POST", TENANTS, "default-admin", {"name": name})
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")
    assert r.json()["detail"].startswith("name: tenant must be 1 to 64 characters")
    assert _tables(api.app.store) == before


@pytest.mark.parametrize("token", ["acme-admin", "acme-viewer", "default-operator"])
def test_only_an_admin_of_the_default_tenant_may_create_a_tenant(api: Api, token: str) -> None:
    before = _tables(api.app.store)
    r = api.request("POST", TENANTS, token, {"name": "initech"})
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    tenant, role = token.split("-")
    assert r.json()["detail"] == (
        "creating a tenant needs an admin token of tenant default (the platform operator's); "
        f"this token is {role} in tenant {tenant}"
    )
    assert _tables(api.app.store) == before


@pytest.mark.parametrize(
    ("token", "seen"),
    [("acme-admin", ["acme"]), ("acme-viewer", ["acme"]), ("default-operator", ["default"])],
)
def test_a_tenant_scoped_token_lists_only_its_own_tenant(
    api: Api, token: str, seen: list[str]
) -> None:
    api.app.create_tenant("globex")
    api.app.create_batch("f1", "acme")
    r = api.request("GET", TENANTS, token)
    assert r.status_code == 200
    assert [t["name"] for t in r.json()] == seen
    assert r.json()[0]["batches"] == (1 if seen == ["acme"] else 0)
