"""The operator API in-process: roles per tenant, tokens hashed at rest, and every cross-tenant
attempt answered 404 with nothing of the other tenant in the answer."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from apiutil import in_process
from cryptography import x509

from hil.simdevice import SimDevice
from host.server.application import Application
from host.server.policy import MemoryPolicy
from host.server.settings import Settings


class Ops:
    def __init__(self, portal: Any, client: httpx.AsyncClient, settings: Settings) -> None:
        self.portal, self.client, self.settings = portal, client, settings
        self.registry = Application.for_operator(settings)
        self.root = (settings.ca_dir / "root.der").read_bytes()

    def call(self, method: str, path: str, token: str | None, body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kw: dict[str, Any] = {"headers": headers}
        if body is not None:
            kw["json"] = body
        return self.portal.call(lambda: self.client.request(method, path, **kw))

    def device(self) -> SimDevice:
        return SimDevice("https://localhost", self.root)


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("ops"), broker_port=18883)
    with in_process(settings, MemoryPolicy()) as (portal, client):
        o = Ops(portal, client, settings)
        for tenant in ("acme", "globex"):
            o.registry.create_tenant(tenant)
        yield o
        o.registry.close()


@pytest.fixture(scope="module")
def tokens(ops: Ops) -> dict[str, str]:
    out = {}
    for tenant in ("acme", "globex"):
        for role in ("viewer", "operator", "admin"):
            out[f"{tenant}-{role}"], _ = ops.registry.create_token(f"{role}1", tenant, role)
    return out


@pytest.fixture(scope="module")
def acme_batch(ops: Ops, tokens: dict[str, str]) -> tuple[str, SimDevice]:
    r = ops.call("POST", "/v1/admin/batches", tokens["acme-operator"], {"name": "secret-line"})
    assert r.status_code == 201, r.text
    d = ops.device()
    r = ops.call(
        "POST",
        "/v1/admin/batches/secret-line/import",
        tokens["acme-operator"],
        {"format": "csv", "data": d.csv_line() + "\n"},
    )
    assert r.json() == {"imported": 1}
    return "secret-line", d


def test_tokens_are_stored_only_as_sha256(ops: Ops, tokens: dict[str, str]) -> None:
    with sqlite3.connect(ops.settings.db_path) as db:
        stored = {row[0] for row in db.execute("SELECT token_hash FROM operators")}
        dump = "\n".join(db.iterdump())
    for t in tokens.values():
        assert t.startswith("qlk_") and len(t) >= 40
        assert hashlib.sha256(t.encode()).hexdigest() in stored
        assert t not in dump


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "send an operator token"),
        ("Bearer qlk_nope", "unknown or revoked"),
        ("Bearer " + "x" * 300, "unknown or revoked"),
        ("Basic abc", "send an operator token"),
    ],
    ids=["none", "unknown", "huge", "basic"],
)
def test_without_a_good_token_is_401(ops: Ops, header: str | None, detail: str) -> None:
    headers = {"Authorization": header} if header else {}
    r = ops.portal.call(lambda: ops.client.get("/v1/admin/batches", headers=headers))
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    assert detail in r.json()["detail"]


def test_whoami(ops: Ops, tokens: dict[str, str]) -> None:
    r = ops.call("GET", "/v1/admin/whoami", tokens["globex-viewer"])
    assert r.json() == {"name": "viewer1", "tenant": "globex", "role": "viewer"}


def test_revoked_token_is_refused(ops: Ops) -> None:
    token, _ = ops.registry.create_token("leaver", "acme", "admin")
    assert ops.call("GET", "/v1/admin/whoami", token).status_code == 200
    assert ops.registry.revoke_tokens("leaver", "acme") == 1
    assert ops.call("GET", "/v1/admin/whoami", token).status_code == 401


@pytest.mark.parametrize(
    ("role", "method", "path", "body"),
    [
        ("viewer", "POST", "/v1/admin/batches", {"name": "v"}),
        ("viewer", "POST", "/v1/admin/tokens", {"name": "x", "role": "viewer"}),
        ("operator", "POST", "/v1/admin/tokens", {"name": "x", "role": "viewer"}),
        ("viewer", "POST", "/v1/admin/batches/secret-line/state", {"active": False}),
    ],
    ids=["viewer_create_batch", "viewer_token", "operator_token", "viewer_disable"],
)
def test_roles_are_enforced(
    ops: Ops, tokens: dict[str, str], acme_batch: Any, role: str, method: str, path: str, body: Any
) -> None:
    before = ops.registry.audit(limit=10000)
    r = ops.call(method, path, tokens[f"acme-{role}"], body)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert ops.registry.audit(limit=10000) == before


def test_admin_creates_tokens_only_in_its_tenant(ops: Ops, tokens: dict[str, str]) -> None:
    r = ops.call(
        "POST", "/v1/admin/tokens", tokens["globex-admin"], {"name": "n", "role": "viewer"}
    )
    assert r.status_code == 201
    body = r.json()
    assert (body["tenant"], body["role"]) == ("globex", "viewer")
    assert ops.call("GET", "/v1/admin/whoami", body["token"]).json()["tenant"] == "globex"
    r = ops.call(
        "POST",
        "/v1/admin/tokens",
        tokens["globex-admin"],
        {"name": "n", "role": "viewer", "tenant": "acme"},
    )
    assert r.status_code == 400  # no field to pick another tenant


BAD_NAMES = ["..", "a*", "x/y", "#", "+", "caf\u00e9", "-rf", "a b", "", "x" * 65]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_new_name_is_400_naming_the_rule_and_creates_nothing(
    ops: Ops, tokens: dict[str, str], name: str
) -> None:
    before = (ops.registry.batches(), ops.registry.operators(), ops.registry.audit(limit=10000))
    r = ops.call("POST", "/v1/admin/batches", tokens["acme-operator"], {"name": name})
    assert r.status_code == 400
    assert r.json() == {
        "error": "bad_request",
        "detail": "name: batch name must be 1 to 64 characters: letters, digits, '.', '_' and "
        f"'-' (ASCII), starting and ending with a letter or digit; {name[:57]!r}"
        f"{'...' if len(name) > 60 else ''} is not",
    }
    r = ops.call("POST", "/v1/admin/tokens", tokens["acme-admin"], {"name": name, "role": "viewer"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert r.json()["detail"].startswith("name: operator name must be 1 to 64 characters")
    after = (ops.registry.batches(), ops.registry.operators(), ops.registry.audit(limit=10000))
    assert after == before


def test_the_name_rule_is_in_the_openapi_schema(ops: Ops) -> None:
    from host.server.store.names import NAME_PATTERN

    schemas = ops.portal.call(lambda: ops.client.get("/openapi.json")).json()["components"]
    for model in ("BatchCreate", "TokenCreate", "TenantCreate"):
        name = schemas["schemas"][model]["properties"]["name"]
        assert (name["pattern"], name["maxLength"]) == (NAME_PATTERN, 64)


# -- tenant isolation: every attempt on acme's things from globex is a 404 that names nothing --
def _cross(ops: Ops, acme_batch: tuple[str, SimDevice]) -> list[tuple[str, str, Any]]:
    name, d = acme_batch
    return [
        ("GET", f"/v1/admin/batches/{name}", None),
        ("GET", f"/v1/admin/batches/{name}/export", None),
        ("POST", f"/v1/admin/batches/{name}/state", {"active": False}),
        ("POST", f"/v1/admin/batches/{name}/import", {"format": "csv", "data": ""}),
        ("GET", f"/v1/admin/devices/{d.device_id}", None),
        ("POST", f"/v1/admin/devices/{d.device_id}/revoke", None),
        ("POST", f"/v1/admin/devices/{d.device_id}/disable", None),
        ("POST", f"/v1/admin/devices/{d.device_id}/enable", None),
    ]


@pytest.mark.parametrize(
    "i",
    range(8),
    ids=[
        "get_batch",
        "export",
        "disable_batch",
        "import",
        "get_device",
        "revoke",
        "disable",
        "enable",
    ],
)
def test_cross_tenant_is_404_and_leaks_nothing(
    ops: Ops, tokens: dict[str, str], acme_batch: tuple[str, SimDevice], i: int
) -> None:
    method, path, body = _cross(ops, acme_batch)[i]
    before = (ops.registry.export_batch("secret-line", "acme"), ops.registry.audit(limit=10000))
    r = ops.call(method, path, tokens["globex-admin"], body)
    assert r.status_code == 404, r.text
    assert set(r.json()) == {"error", "detail"} and r.json()["error"] == "not_found"
    assert "acme" not in r.text
    assert (
        ops.registry.export_batch("secret-line", "acme").devices,
        ops.registry.audit(limit=10000),
    ) == (before[0].devices, before[1])


def test_lists_show_only_own_tenant(
    ops: Ops, tokens: dict[str, str], acme_batch: tuple[str, SimDevice]
) -> None:
    _, d = acme_batch
    for path in ("/v1/admin/batches", "/v1/admin/devices", "/v1/admin/audit"):
        r = ops.call("GET", path, tokens["globex-viewer"])
        assert r.status_code == 200
        assert "secret-line" not in r.text and d.device_id not in r.text and "acme" not in r.text
    r = ops.call("GET", "/v1/admin/devices?batch=secret-line", tokens["globex-viewer"])
    assert r.json() == []
    r = ops.call("GET", "/v1/admin/devices", tokens["acme-viewer"])
    assert d.device_id in {x["device_id"] for x in r.json()}


def test_same_batch_name_in_two_tenants(ops: Ops, tokens: dict[str, str], acme_batch: Any) -> None:
    r = ops.call("POST", "/v1/admin/batches", tokens["globex-operator"], {"name": "secret-line"})
    assert r.status_code == 201 and r.json()["tenant"] == "globex"
    r = ops.call("POST", "/v1/admin/batches", tokens["acme-operator"], {"name": "secret-line"})
    assert r.status_code == 409 and r.json()["error"] == "conflict"


# -- import over the API ----------------------------------------------------------------------
def test_json_import_names_each_bad_row_and_imports_nothing(
    ops: Ops, tokens: dict[str, str]
) -> None:
    t = tokens["acme-operator"]
    assert ops.call("POST", "/v1/admin/batches", t, {"name": "j1"}).status_code == 201
    good, other = ops.device(), ops.device()
    rows = [
        {"device_id": good.device_id, "public_key": good.public_key.hex()},
        {"device_id": good.device_id, "public_key": good.public_key.hex()},
        {"device_id": other.device_id, "public_key": good.public_key.hex()},
        {"device_id": "zz" * 32, "public_key": good.public_key.hex()},
        [1, 2],
    ]
    data = "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n"
    r = ops.call("POST", "/v1/admin/batches/j1/import", t, {"format": "json", "data": data})
    assert r.status_code == 422 and r.json()["error"] == "import_rejected"
    assert [(x["line"], x["reason"]) for x in r.json()["rows"]] == [
        (3, "duplicate of line 2"),
        (4, "device ID must equal SHA-256 of the public key"),
        (5, "device ID must be 64 hex characters"),
        (6, 'row must be an object {"device_id", "public_key"}'),
    ]
    assert ops.registry.batch("j1", "acme").devices == 0


def test_import_retry_is_idempotent_and_export_round_trips(
    ops: Ops, tokens: dict[str, str]
) -> None:
    t = tokens["acme-operator"]
    ops.call("POST", "/v1/admin/batches", t, {"name": "j2"})
    devs = [ops.device() for _ in range(3)]
    body = {"format": "csv", "data": "\n".join(d.csv_line() for d in devs)}
    assert ops.call("POST", "/v1/admin/batches/j2/import", t, body).json() == {"imported": 3}
    assert ops.call("POST", "/v1/admin/batches/j2/import", t, body).json() == {"imported": 0}
    export = ops.call("GET", "/v1/admin/batches/j2/export", t).json()
    assert export["format"] == "qlink-batch-v1" and export["batch"]["name"] == "j2"
    assert sorted(x["device_id"] for x in export["devices"]) == sorted(d.device_id for d in devs)
    # The export is an import file: into a new batch of another tenant it is refused row by row.
    g = tokens["globex-operator"]
    ops.call("POST", "/v1/admin/batches", g, {"name": "restore"})
    r = ops.call(
        "POST",
        "/v1/admin/batches/restore/import",
        g,
        {"format": "json", "data": json.dumps(export, indent=1)},
    )
    assert r.status_code == 422
    assert {x["reason"] for x in r.json()["rows"]} == {
        "device is already registered in another batch"
    }


# -- device changes, CRL and audit ------------------------------------------------------------
def test_revoke_puts_certificate_on_crl_and_is_idempotent(ops: Ops, tokens: dict[str, str]) -> None:
    t = tokens["acme-operator"]
    ops.call("POST", "/v1/admin/batches", t, {"name": "r1"})
    d = ops.device()
    ops.call("POST", "/v1/admin/batches/r1/import", t, {"format": "csv", "data": d.csv_line()})
    hello = ops.call(
        "POST",
        "/v1/onboard/hello",
        None,
        {"device_id": d.device_id, "public_key": d.public_key.hex()},
    )
    from hil.simdevice import ApiResponse

    proof = ops.call(
        "POST", "/v1/onboard/proof", None, d.proof_body(ApiResponse(200, hello.json()))
    )
    assert proof.status_code == 200
    import base64

    cert = x509.load_der_x509_certificate(base64.b64decode(proof.json()["certificate_b64"]))
    crl0 = x509.load_der_x509_crl(ops.call("GET", "/v1/ca/crl", None).content)
    assert crl0.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    r = ops.call("POST", f"/v1/admin/devices/{d.device_id}/revoke", t)
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    again = ops.call("POST", f"/v1/admin/devices/{d.device_id}/revoke", t)
    assert again.json() == r.json()
    crl = x509.load_der_x509_crl(ops.call("GET", "/v1/ca/crl", None).content)
    issuing = x509.load_pem_x509_certificates((ops.settings.ca_dir / "issuing.pem").read_bytes())[0]
    assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert (ops.settings.ca_dir / "crl.der").read_bytes() == ops.call(
        "GET", "/v1/ca/crl", None
    ).content
    # A revoked device cannot onboard again or be enabled.
    h = ops.call(
        "POST",
        "/v1/onboard/hello",
        None,
        {"device_id": d.device_id, "public_key": d.public_key.hex()},
    )
    assert h.status_code == 403 and h.json()["error"] == "not_registered"
    r = ops.call("POST", f"/v1/admin/devices/{d.device_id}/enable", t)
    assert r.status_code == 409
    events = [
        (e.action, e.actor, e.source)
        for e in ops.registry.audit("acme", target=f"device:{d.device_id}")
    ]
    assert events == [
        ("device.revoke", "operator:operator1", "203.0.113.7"),
        ("device.onboard", f"device:{d.device_id}", "203.0.113.7"),
    ]


def test_audit_api_shows_who_what_when_where(ops: Ops, tokens: dict[str, str]) -> None:
    t = tokens["globex-operator"]
    ops.call("POST", "/v1/admin/batches", t, {"name": "aud"})
    ops.call("POST", "/v1/admin/batches/aud/state", t, {"active": False})
    r = ops.call("GET", "/v1/admin/audit?limit=2", tokens["globex-viewer"])
    rows = r.json()
    assert [(x["action"], x["target"], x["actor"], x["source"]) for x in rows] == [
        ("batch.disable", "batch:aud", "operator:operator1", "203.0.113.7"),
        ("batch.create", "batch:aud", "operator:operator1", "203.0.113.7"),
    ]
    assert all(x["tenant"] == "globex" and x["at"] > 1.7e9 for x in rows)


def test_revoking_a_batch_needs_the_operator_role_in_its_tenant(
    ops: Ops, tokens: dict[str, str]
) -> None:
    t = tokens["acme-operator"]
    ops.call("POST", "/v1/admin/batches", t, {"name": "rb"})
    devices = [ops.device() for _ in range(3)]
    data = "\n".join(d.csv_line() for d in devices)
    ops.call("POST", "/v1/admin/batches/rb/import", t, {"format": "csv", "data": data})
    before = ops.registry.audit(limit=10000)
    r = ops.call("POST", "/v1/admin/batches/rb/revoke", tokens["acme-viewer"])
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = ops.call("POST", "/v1/admin/batches/rb/revoke", tokens["globex-operator"])
    assert r.status_code == 404 and "acme" not in r.text
    r = ops.call("POST", "/v1/admin/batches/nope/revoke", t)
    assert r.status_code == 404
    assert r.json()["detail"] == "batch 'nope' does not exist; see: qlink batch list"
    assert ops.registry.audit(limit=10000) == before
    assert {d.state for d in ops.registry.devices("acme", "rb")} == {"registered"}

    r = ops.call("POST", "/v1/admin/batches/rb/revoke", t)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "batch": "rb",
        "tenant": "acme",
        "devices": 3,
        "revoked": 3,
        "already_revoked": 0,
    }
    again = ops.call("POST", "/v1/admin/batches/rb/revoke", t)
    assert (again.json()["revoked"], again.json()["already_revoked"]) == (0, 3)
    revokes = [
        (e.target, e.actor)
        for e in ops.registry.audit("acme", action="device.revoke", limit=10000)
        if e.target in {f"device:{d.device_id}" for d in devices}
    ]
    assert sorted(revokes) == sorted(
        (f"device:{d.device_id}", "operator:operator1") for d in devices
    )
