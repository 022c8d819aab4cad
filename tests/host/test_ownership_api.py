"""Ownership transfer, re-enrolment and decommissioning through the server's HTTP faces,
in-process: the device API's successor request and the operator API's transfer, claim, reenrol
and decommission, with roles and tenants as for every other change; and what each owner's API
answers show of the other's identity: nothing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from apiutil import in_process
from cryptography import x509
from ownerutil import successor_body

from hil.simdevice import ApiResponse, SimDevice
from host.server.application import Application
from host.server.policy import MemoryPolicy
from host.server.settings import Settings


class Api:
    def __init__(self, portal: Any, client: httpx.AsyncClient, settings: Settings) -> None:
        self.portal, self.client = portal, client
        self.registry = Application.for_operator(settings)
        self.root = (settings.ca_dir / "root.der").read_bytes()
        self.tokens: dict[str, str] = {}

    def call(self, method: str, path: str, who: str | None, body: Any = None) -> httpx.Response:
        kw: dict[str, Any] = {}
        if who is not None:
            kw["headers"] = {"Authorization": f"Bearer {self.tokens[who]}"}
        if body is not None:
            kw["json"] = body
        return self.portal.call(lambda: self.client.request(method, path, **kw))

    def device(self) -> SimDevice:
        return SimDevice("https://localhost", self.root)

    def onboard(self, d: SimDevice) -> dict[str, Any]:
        hello = self.call(
            "POST",
            "/v1/onboard/hello",
            None,
            {"device_id": d.device_id, "public_key": d.public_key.hex()},
        )
        assert hello.status_code == 200, hello.text
        proof = self.call(
            "POST", "/v1/onboard/proof", None, d.proof_body(ApiResponse(200, hello.json()))
        )
        assert proof.status_code == 200, proof.text
        answer: dict[str, Any] = proof.json()
        return answer

    def onboarded(self, who: str, batch: str) -> SimDevice:
        """A device imported into `batch` by `who` and onboarded."""
        d = self.device()
        r = self.call(
            "POST",
            f"/v1/admin/batches/{batch}/import",
            who,
            {"format": "csv", "data": d.csv_line()},
        )
        assert r.status_code == 200, r.text
        self.onboard(d)
        return d


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("own"), broker_port=18883)
    with in_process(settings, MemoryPolicy()) as (portal, client):
        a = Api(portal, client, settings)
        for tenant, batch in (("acme", "line"), ("globex", "fleet")):
            a.registry.create_tenant(tenant)
            a.registry.create_batch(batch, tenant)
            for role in ("viewer", "operator"):
                a.tokens[f"{tenant}-{role}"], _ = a.registry.create_token(role, tenant, role)
        yield a
        a.registry.close()


def serial_marks(answer: dict[str, Any]) -> list[str]:
    """The certificate's serial as the APIs could show it."""
    serial = x509.load_der_x509_certificate(
        base64.b64decode(answer["certificate_b64"])
    ).serial_number
    return [format(serial, "x"), str(serial)]


def test_neither_owners_api_shows_anything_of_the_others_identity(api: Api) -> None:
    d = api.device()
    api.call(
        "POST",
        "/v1/admin/batches/line/import",
        "acme-operator",
        {"format": "csv", "data": d.csv_line()},
    )
    old_marks = [d.device_id, d.public_key.hex(), *serial_marks(api.onboard(d)), "acme"]

    r = api.call("POST", f"/v1/admin/devices/{d.device_id}/transfer", "acme-operator")
    assert r.status_code == 201, r.text
    assert set(r.json()) == {"device_id", "code", "expires_at"}
    code = r.json()["code"]
    r = api.call("POST", "/v1/admin/claims", "globex-operator", {"code": code, "batch": "fleet"})
    assert r.status_code == 201, r.text
    claim = r.json()
    assert (claim["state"], claim["device_id"]) == ("pending", None)
    assert not any(m in r.text for m in old_marks)
    [cmd] = api.call("GET", f"/v1/admin/devices/{d.device_id}/commands", "acme-viewer").json()
    assert (cmd["kind"], cmd["args"]) == ("transfer", {"epoch": 1})

    nxt = api.device()
    r = api.call(
        "POST", "/v1/onboard/successor", None, successor_body(d, nxt.key, "transfer", cmd["seq"])
    )
    assert (r.status_code, r.json()) == (200, {"device_id": nxt.device_id})
    answer = api.onboard(nxt)
    assert answer["topics"]["telemetry"] == f"qlink/globex/{nxt.device_id}/telemetry"
    new_marks = [nxt.device_id, nxt.public_key.hex(), *serial_marks(answer), "globex"]
    done = api.call("GET", f"/v1/admin/claims/{claim['claim']}", "globex-viewer").json()
    assert (done["state"], done["device_id"]) == ("done", nxt.device_id)

    sides = {
        "globex": (nxt.device_id, "fleet", old_marks),
        "acme": (d.device_id, "line", new_marks),
    }
    for tenant, (own_id, batch, foreign) in sides.items():
        for path in (
            "/v1/admin/devices",
            f"/v1/admin/devices/{own_id}",
            f"/v1/admin/devices/{own_id}/commands",
            "/v1/admin/audit?limit=10000",
            f"/v1/admin/batches/{batch}/export",
            "/v1/admin/batches",
            "/v1/admin/tenants",
        ):
            r = api.call("GET", path, f"{tenant}-viewer")
            assert r.status_code == 200, (path, r.text)
            leaked = [m for m in foreign if m in r.text]
            assert leaked == [], (tenant, path, leaked)
    # Each owner's device does not exist for the other.
    assert api.call("GET", f"/v1/admin/devices/{d.device_id}", "globex-viewer").status_code == 404
    assert api.call("GET", f"/v1/admin/devices/{nxt.device_id}", "acme-viewer").status_code == 404
    assert api.call("GET", f"/v1/admin/claims/{claim['claim']}", "acme-viewer").status_code == 404


def test_the_successor_request_answers_with_the_protocols_codes(api: Api) -> None:
    d = api.onboarded("acme-operator", "line")
    nxt = api.device()
    r = api.call("POST", "/v1/onboard/successor", None, successor_body(d, nxt.key, "transfer", 1))
    assert (r.status_code, r.json()["error"]) == (409, "no_successor_expected")
    stranger = api.device()
    r = api.call(
        "POST", "/v1/onboard/successor", None, successor_body(stranger, nxt.key, "transfer", 1)
    )
    assert (r.status_code, r.json()["error"]) == (403, "not_registered")
    r = api.call("POST", "/v1/onboard/successor", None, {"device_id": d.device_id})
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")
    assert set(r.json()) == {"error", "detail"}
    r = api.call("GET", "/v1/onboard/successor", None)
    assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed")
    assert api.registry.device(nxt.device_id) is None


def test_reenrolment_and_decommissioning_through_the_operator_api(api: Api) -> None:
    d = api.onboarded("acme-operator", "line")
    r = api.call("POST", f"/v1/admin/devices/{d.device_id}/reenrol", "acme-operator")
    assert r.status_code == 202 and r.json()["kind"] == "reenrol"
    nxt = api.device()
    body = successor_body(d, nxt.key, "reenrol", r.json()["seq"])
    r = api.call("POST", "/v1/onboard/successor", None, body)
    assert (r.status_code, r.json()) == (200, {"device_id": nxt.device_id})
    new = api.call("GET", f"/v1/admin/devices/{nxt.device_id}", "acme-viewer").json()
    old = api.call("GET", f"/v1/admin/devices/{d.device_id}", "acme-viewer").json()
    assert (new["batch"], new["predecessor"], old["successor"], old["state"]) == (
        "line",
        d.device_id,
        nxt.device_id,
        "revoked",
    )
    api.onboard(nxt)
    r = api.call(
        "POST",
        f"/v1/admin/devices/{nxt.device_id}/decommission",
        "acme-operator",
        {"wait_s": 0},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["confirmed"], out["device"]["state"], out["command"]["kind"]) == (
        False,
        "revoked",
        "decommission",
    )
    r = api.call(
        "POST", f"/v1/admin/devices/{nxt.device_id}/decommission", "acme-operator", {"wait_s": 0}
    )
    assert (r.status_code, r.json()["error"]) == (409, "conflict")


def test_a_batch_transfer_gives_each_device_its_own_code(api: Api) -> None:
    api.call("POST", "/v1/admin/batches", "acme-operator", {"name": "handover"})
    devices = {api.onboarded("acme-operator", "handover").device_id for _ in range(2)}
    r = api.call("POST", "/v1/admin/batches/handover/transfer", "acme-operator", {"ttl_s": 3600})
    assert r.status_code == 201, r.text
    codes = r.json()
    assert {c["device_id"] for c in codes} == devices and len({c["code"] for c in codes}) == 2
    created = api.registry.audit("acme", action="device.transfer_code", limit=1)[0].at
    assert all(abs(c["expires_at"] - (created + 3600)) <= 1 for c in codes)
    r = api.call("POST", "/v1/admin/batches/handover/transfer", "globex-operator")
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/admin/devices/{id}/transfer", None),
        ("POST", "/v1/admin/batches/line/transfer", None),
        ("POST", "/v1/admin/claims", {"code": "qlt_" + "x" * 32, "batch": "line"}),
        ("POST", "/v1/admin/devices/{id}/reenrol", None),
        ("POST", "/v1/admin/devices/{id}/decommission", {"wait_s": 0}),
    ],
    ids=["transfer", "batch_transfer", "claim", "reenrol", "decommission"],
)
def test_ownership_changes_need_the_operator_role_in_the_devices_tenant(
    api: Api, method: str, path: str, body: Any
) -> None:
    d = api.onboarded("acme-operator", "line")
    url = path.replace("{id}", d.device_id)
    before = (api.registry.audit(limit=100000), api.registry.device(d.device_id))
    r = api.call(method, url, "acme-viewer", body)
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    if "claims" not in url:
        r = api.call(method, url, "globex-operator", body)
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
        assert "acme" not in r.text
    assert (api.registry.audit(limit=100000), api.registry.device(d.device_id)) == before


def test_a_bad_transfer_code_is_answered_and_binds_nothing(api: Api) -> None:
    before = api.registry.audit(limit=100000)
    r = api.call("POST", "/v1/admin/claims", "globex-operator", {"code": "nope", "batch": "fleet"})
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")
    r = api.call(
        "POST", "/v1/admin/claims", "globex-operator", {"code": "qlt_" + "x" * 32, "batch": "fleet"}
    )
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    assert "no such transfer code" in r.json()["detail"]
    assert api.registry.audit(limit=100000) == before


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100 + b"]" * 100,
        b'{"device_id": "a", "device_id": "b"}',
        b'{"seq": NaN}',
        b"\xff\xfe",
        b"[]",
    ],
    ids=["deep", "duplicate_key", "nan", "not_utf8", "not_an_object"],
)
def test_the_successor_body_goes_through_the_one_json_reader(api: Api, raw: bytes) -> None:
    r = api.portal.call(
        lambda: api.client.post(
            "/v1/onboard/successor", content=raw, headers={"content-type": "application/json"}
        )
    )
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")


def test_a_successor_body_over_the_device_limit_is_413(api: Api) -> None:
    raw = b'{"pad": "' + b"x" * (17 * 1024) + b'"}'
    r = api.portal.call(
        lambda: api.client.post(
            "/v1/onboard/successor", content=raw, headers={"content-type": "application/json"}
        )
    )
    assert (r.status_code, r.json()["error"]) == (413, "too_large")


@pytest.mark.parametrize("kind", ["transfer", "reenrol", "decommission", "broker"])
def test_the_raw_command_endpoint_refuses_kinds_with_their_own_use_case(
    api: Api, kind: str
) -> None:
    d = api.onboarded("acme-operator", "line")
    path = f"/v1/admin/devices/{d.device_id}/commands"
    r = api.call("POST", path, "acme-operator", {"kind": kind, "args": {"epoch": 1}})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert f"a {kind} command is sent by " in r.json()["detail"]
    assert api.call("GET", path, "acme-viewer").json() == []  # nothing stored or sent
    r = api.call("POST", path, "acme-operator", {"kind": "ping"})
    assert r.status_code == 202 and r.json()["kind"] == "ping"
