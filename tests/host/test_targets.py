"""Targets as records and moves in the store (SQLite and, where it starts, PostgreSQL), the
checks of what an operator gives for a target, the operator API's targets and moves, and a move
to AWS IoT through moto (registration only: nothing can connect to moto's MQTT). The move to a
real external Mosquitto is tests/host/test_move_external.py's."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from apiutil import OperatorApi as Api
from apiutil import operator_api
from cliutil import run_qlink
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws

from hil.simdevice import ApiResponse, SimDevice
from host.server.application import Application
from host.server.policy import MemoryPolicy
from host.server.policy.aws import AwsIotPolicy
from host.server.settings import Settings
from host.server.store import Conflict, Invalid, NotFound, Store
from host.server.targets import TargetSpec

ALL_TABLES = ("targets", "batches", "moves", "commands", "audit")


def ca_pem(
    cn: str = "Test Root CA",
    *,
    days: tuple[float, float] = (0, 30),
    ca: bool | None = True,
    issuer: str | None = None,
) -> bytes:
    """A certificate valid from `days[0]` to `days[1]` days from now; `ca`: its
    basicConstraints (None: none); `issuer`: another name than its own."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    by = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]) if issuer else name
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(by)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def tables(store: Store) -> dict[str, list[dict[str, Any]]]:
    return {t: store.db.all(f"SELECT * FROM {t} ORDER BY 1") for t in ALL_TABLES}


@pytest.fixture
def store(database: str | Path) -> Iterator[Store]:
    s = Store(database)
    s.tenants.create("acme")
    yield s
    s.close()


def add(store: Store, name: str, kind: str = "mosquitto") -> None:
    extra = (
        {"admin_port": 8884, "admin_user": "admin", "secret": "f"} if kind == "mosquitto" else {}
    )
    der = x509.load_pem_x509_certificate(ca_pem()).public_bytes(serialization.Encoding.DER)
    store.targets.create(name, kind, host="mqtt.example", port=8883, ca_der=der, **extra)


# -- the store ----------------------------------------------------------------------------------
def test_managed_exists_in_every_store_and_a_target_name_is_taken_once(store: Store) -> None:
    assert [(t.name, t.kind) for t in store.targets.list()] == [("managed", "managed")]
    add(store, "eu")
    before = tables(store)
    with pytest.raises(Conflict, match="target 'eu' already exists; pick another name"):
        add(store, "eu")
    with pytest.raises(Invalid, match="target name must be 1 to 64 characters"):
        add(store, "../x")
    with pytest.raises(Invalid, match="kind must be mosquitto or aws, not 'managed'"):
        add(store, "other", "managed")
    assert tables(store) == before
    [event] = store.audit.list(action="target.create")
    assert (event.tenant, event.target, event.detail["kind"]) == (
        "default",
        "target:eu",
        "mosquitto",
    )


def test_a_batch_names_its_target_and_its_policy_follows_the_kind(store: Store) -> None:
    add(store, "eu")
    add(store, "cloud", "aws")
    assert store.batches.create("b0", "acme").target == "managed"
    made = [
        store.batches.create(f"b{i}", "acme", target=t)
        for i, t in enumerate(("managed", "eu", "cloud"), start=1)
    ]
    assert [(b.target, b.policy) for b in made] == [
        ("managed", "mosquitto"),
        ("eu", "external"),
        ("cloud", "aws"),
    ]
    azure = store.batches.create("dps", "acme", "azure", target="managed")
    assert (azure.target, azure.policy) == ("managed", "azure")
    before = tables(store)
    with pytest.raises(NotFound, match="target 'nowhere' does not exist; see: qlink target list"):
        store.batches.create("b9", "acme", target="nowhere")
    with pytest.raises(
        Invalid, match=r"policy aws does not go with target 'eu' \(kind mosquitto\)"
    ):
        store.batches.create("b9", "acme", "aws", target="eu")
    with pytest.raises(Invalid, match="policy must be one of mosquitto, aws, azure"):
        store.batches.create("b9", "acme", "external")
    assert tables(store) == before


def test_a_batch_made_with_policy_aws_and_no_target_gets_the_aws_target(store: Store) -> None:
    b = store.batches.create("cloud", "acme", "aws")
    assert (b.target, b.policy) == ("aws", "aws")
    aws = store.targets.get("aws")
    assert (aws.kind, aws.host, aws.ca_der) == ("aws", None, None)  # no endpoint: as before
    assert store.batches.create("cloud2", "acme", "aws").target == "aws"  # made once


def test_set_target_records_the_move_once(store: Store) -> None:
    add(store, "eu")
    store.batches.create("b", "acme")
    moved = store.batches.set_target("b", None, "eu")
    assert (moved.target, moved.policy) == ("eu", "external")
    store.batches.set_target("b", None, "eu")  # there already: nothing new
    [event] = store.audit.list(action="batch.move")
    assert event.detail == {"from_target": "managed", "to_target": "eu"}
    with pytest.raises(NotFound, match="target 'x' does not exist"):
        store.batches.set_target("b", None, "x")


def _device(store: Store) -> str:
    d = SimDevice("https://localhost", b"")
    store.batches.import_devices("b", [d.csv_line()])
    return d.device_id


def test_a_move_goes_forward_by_what_the_device_says_where_it_says_it(store: Store) -> None:
    add(store, "eu")
    store.batches.create("b", "acme")
    a, b = _device(store), _device(store)
    for d in (a, b):
        store.moves.registered(d, "managed", "eu")
        store.moves.commanded(d, 7)
    moves = store.moves
    assert not moves.arrived(a, "acme", "managed")  # it spoke where it was: no move
    assert not moves.fell_back(b, "acme", "managed", 6, "unreachable")  # another command
    assert not moves.fell_back(b, "acme", "managed", 7, "timeout")  # another reason
    assert not moves.fell_back(b, "acme", "eu", 7, "unreachable")  # said on the new broker
    assert moves.arrived(a, "acme", "eu")
    assert not moves.arrived(a, "acme", "eu")  # moved already: nothing new
    assert moves.fell_back(b, "acme", "managed", 7, "unreachable")
    assert not moves.fell_back(a, "acme", "managed", 7, "unreachable")  # it has moved
    moves.commanded(a, 8)  # a command stored after the device arrived leaves it moved
    got = {m.device_id: (m.state, m.seq) for m in moves.of_batch("b", "acme")}
    assert got == {a: ("moved", 7), b: ("fell_back", 7)}
    assert moves.arrived(b, "acme", "eu")  # a device that fell back may still arrive later
    actions = sorted(e.action for e in store.audit.list() if e.action.startswith("device."))
    assert actions == ["device.fell_back", "device.moved", "device.moved"]
    [event] = store.audit.list(action="device.fell_back")
    assert event.detail == {"from_target": "managed", "to_target": "eu"}


def test_an_upgrade_keeps_each_batch_on_the_broker_it_had(tmp_path: Path) -> None:
    from test_server_storage import _sqlite_at  # the migration helper of the storage tests

    path = _sqlite_at(tmp_path / "r.sqlite", "0005")
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO batches (name, tenant, active, policy, created_at) VALUES (?, ?, 1, ?, 0)",
            [("m", "default", "mosquitto"), ("a", "default", "aws"), ("z", "default", "azure")],
        )
    reg = Store(path)
    try:
        assert {b.name: (b.target, b.policy) for b in reg.batches.list()} == {
            "a": ("aws", "aws"),
            "m": ("managed", "mosquitto"),
            "z": ("managed", "azure"),
        }
        assert [(t.name, t.kind, t.host) for t in reg.targets.list()] == [
            ("aws", "aws", None),
            ("managed", "managed", None),
        ]
    finally:
        reg.close()


# -- what the operator gives ---------------------------------------------------------------------
def spec(**kw: Any) -> TargetSpec:
    base: dict[str, Any] = {
        "name": "eu",
        "kind": "mosquitto",
        "host": "mqtt.example",
        "port": 8883,
        "ca": ca_pem(),
        "admin_user": "admin",
        "admin_password": "s3cret-pw",
        "admin_port": 8884,
    }
    return TargetSpec(**{**base, **kw})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "a/b"}, "target name must be 1 to 64 characters"),
        ({"kind": "azure"}, "kind must be mosquitto (an external Mosquitto) or aws"),
        ({"host": "bad host"}, "host must be the DNS name or IP address devices connect to"),
        ({"host": ""}, "host must be the DNS name"),
        ({"host": "broker.example:1883"}, "host must be the DNS name"),  # the port is --port
        ({"host": "[::1]"}, "host must be the DNS name"),
        ({"host": "999.1.1.1"}, "host must be the DNS name"),
        ({"host": "1.2.3.4.5"}, "host must be the DNS name"),
        ({"port": 0}, "port must be 1 to 65535, not 0"),
        ({"admin_port": 70000}, "admin port must be 1 to 65535, not 70000"),
        ({"ca": b"not a certificate"}, "the CA must be one X.509 certificate, PEM or DER"),
        ({"ca": ca_pem() + ca_pem()}, "this holds 2"),
        ({"ca": ca_pem(days=(-60, -1))}, "the CA certificate expired on"),
        ({"ca": ca_pem(days=(2, 30))}, "the CA certificate is not valid before"),
        ({"ca": ca_pem(ca=False, issuer="Other CA")}, "the certificate given as the CA is not"),
        ({"ca": ca_pem(ca=None, issuer="Other CA")}, "the certificate given as the CA is not"),
        ({"admin_user": None}, "an external Mosquitto needs its dynamic-security admin user"),
        ({"admin_user": " admin"}, "no leading or trailing space"),
        ({"admin_password": None}, "needs the admin user's password"),
        ({"admin_password": "two\nlines"}, "printable characters on the first line"),
        ({"kind": "aws"}, "an AWS IoT target takes no admin user, password or port"),
    ],
)
def test_a_bad_target_is_one_sentence(change: dict[str, Any], message: str) -> None:
    with pytest.raises(Invalid) as info:
        spec(**change).check()
    assert message in str(info.value)
    assert "s3cret-pw" not in str(info.value)
    assert "s3cret-pw" not in repr(spec(**change))


def test_a_self_signed_certificate_is_trusted_as_it_is() -> None:
    # A broker with a self-signed certificate: the device pins that certificate itself.
    assert spec(ca=ca_pem("broker.example", ca=None)).check()
    assert spec(ca=ca_pem("broker.example", ca=False)).check()


def test_a_der_ca_is_taken_as_it_is() -> None:
    der = x509.load_pem_x509_certificate(ca_pem()).public_bytes(serialization.Encoding.DER)
    assert spec(ca=der).check() == der


@pytest.fixture
def qlink(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    monkeypatch.setenv("QLINK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    return lambda *args: run_qlink(monkeypatch, capsys, *args)


def test_a_bad_target_by_cli_creates_nothing(qlink: Any, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ca_pem())
    pw = tmp_path / "pw"
    pw.write_text("s3cret-pw\n")
    common = ["--host", "mqtt.example", "--ca", str(ca), "--admin-user", "admin"]
    for args, message in (
        (["x*", "--kind", "mosquitto", *common], "target name must be 1 to 64"),
        (["eu", "--kind", "mosquitto", *common], "needs the admin user's password"),
        (["eu", "--kind", "aws", *common], "takes no admin user"),
        (
            ["eu", "--kind", "mosquitto", *common, "--admin-password-file", "/nonexistent"],
            "cannot read /nonexistent",
        ),
    ):
        code, out, err = qlink("target", "add", *args)
        assert (code, out) == (1, ""), err
        assert message in err and "s3cret-pw" not in err
    assert not (tmp_path / "data").exists()


def test_no_check_still_refuses_a_ca_devices_would_refuse(qlink: Any, tmp_path: Path) -> None:
    # --no-check skips the login to the broker, not the look at the CA the devices will pin.
    expired, leaf = tmp_path / "expired.pem", tmp_path / "leaf.pem"
    expired.write_bytes(ca_pem(days=(-60, -1)))
    leaf.write_bytes(ca_pem("mqtt.example", ca=False, issuer="Some CA"))
    pw = tmp_path / "pw"
    pw.write_text("s3cret-pw\n")
    assert qlink("batch", "create", "keep")[0] == 0
    for ca, message in ((expired, "the CA certificate expired on"), (leaf, "is not one")):
        args = ["--kind", "mosquitto", "--host", "mqtt.example", "--ca", str(ca)]
        args += ["--admin-user", "admin", "--admin-password-file", str(pw), "--no-check"]
        code, out, err = qlink("target", "add", "eu", *args)
        assert (code, out) == (1, ""), err
        assert message in err
    code, out, _ = qlink("target", "list", "--json")
    assert code == 0 and [t["name"] for t in json.loads(out)] == ["managed"]
    assert not (tmp_path / "data" / "targets").exists()


def test_an_aws_target_by_cli_is_listed_with_its_endpoint(qlink: Any, tmp_path: Path) -> None:
    ca = tmp_path / "AmazonRootCA1.pem"
    ca.write_bytes(ca_pem("Amazon Root CA 1"))
    host = "abc123-ats.iot.eu-west-1.amazonaws.com"
    code, out, err = qlink(
        "target", "add", "aws-eu", "--kind", "aws", "--host", host, "--ca", str(ca), "--json"
    )
    assert code == 0, err
    assert (json.loads(out)["host"], json.loads(out)["port"]) == (host, 8883)
    code, out, _ = qlink("target", "list")
    assert "aws-eu" in out and f"{host}:8883" in out and "the server's broker" in out
    code, out, err = qlink("batch", "create", "f1", "--target", "aws-eu", "--json")
    assert code == 0, err
    assert (json.loads(out)["target"], json.loads(out)["policy"]) == ("aws-eu", "aws")


# -- a move to AWS IoT (moto), in process ---------------------------------------------------------
class RecordingLink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic: str, payload: bytes, *, wait: bool = True) -> None:
        self.sent.append((topic, payload))

    def close(self) -> None:
        pass


@pytest.fixture
def iot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws(config={"iot": {"use_valid_cert": True}}):
        yield boto3.client("iot", region_name="eu-west-1")


@pytest.fixture
def cloud(tmp_path: Path, iot: Any) -> Iterator[tuple[Application, RecordingLink, Any]]:
    app = Application.for_server(Settings(data_dir=tmp_path), broker_port=1, policy=MemoryPolicy())
    app.policies.drivers["aws"] = AwsIotPolicy(iot)
    link = RecordingLink()
    app.__dict__["command_link"] = link
    app.create_tenant("acme")
    yield app, link, iot
    app.policies.drivers.pop("mosquitto")  # the test's MemoryPolicy
    app.close()


def onboard(app: Application, d: SimDevice) -> dict[str, Any]:
    ob = app.onboarding
    h = ob.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
    return ob.proof(d.proof_body(ApiResponse(200, h)))[1]


def test_a_batch_moves_to_aws_iot_registered_there_and_told_so(cloud: Any) -> None:
    app, link, iot = cloud
    root = ca_pem("Amazon Root CA 1")
    host = "abc123-ats.iot.eu-west-1.amazonaws.com"
    app.add_target(TargetSpec("aws-eu", "aws", host, 8883, root))
    app.create_batch("f1", "acme")
    devices = [SimDevice("https://localhost", app.ca.root_der()) for _ in range(2)]
    app.import_devices("f1", [d.csv_line() for d in devices])
    first = onboard(app, devices[0])
    assert first["broker"]["port"] == 1  # the managed broker, before the move
    onboard(app, devices[1])
    app.disable(devices[1].device_id)
    steps: list[tuple[int, int]] = []
    out = app.move_batch("f1", "aws-eu", progress=lambda done, total: steps.append((done, total)))
    assert (out.target, out.devices, out.commanded, out.registered) == ("aws-eu", 2, 1, 1)
    assert steps[-1] == (4, 4)
    things = {t["thingName"] for t in iot.list_things()["things"]}
    assert things == {d.device_id for d in devices}
    # The disabled device is registered and denied there: its certificate inactive.
    [arn] = iot.list_thing_principals(thingName=devices[1].device_id)["principals"]
    described = iot.describe_certificate(certificateId=arn.rsplit("/", 1)[-1])
    assert described["certificateDescription"]["status"] == "INACTIVE"
    # `broker` went to the enabled device over the managed broker, where it is.
    [(topic, payload)] = link.sent
    assert topic == f"qlink/acme/{devices[0].device_id}/cmd"
    assert json.loads(payload[64:])["kind"] == "broker"
    answer = onboard(app, devices[0])
    der = x509.load_pem_x509_certificate(root).public_bytes(serialization.Encoding.DER)
    assert answer["broker"] == {
        "host": host,
        "port": 8883,
        "ca_b64": base64.b64encode(der).decode(),
    }
    with pytest.raises(Conflict, match="commands reach devices of Mosquitto targets only"):
        app.send_command(devices[0].device_id, "ping")


def test_moves_that_cannot_work_are_refused_and_change_nothing(cloud: Any) -> None:
    app, link, _iot = cloud
    app.create_batch("legacy", "acme", "aws")
    app.create_batch("dps", "acme", "azure")
    app.create_batch("f1", "acme")
    d = SimDevice("https://localhost", app.ca.root_der())
    app.import_devices("f1", [d.csv_line()])
    onboard(app, d)
    before = tables(app.store)
    for batch, to, error, message in (
        ("f1", "aws", Conflict, "target aws has no endpoint recorded"),
        ("dps", "managed", Conflict, "exported to Azure DPS .policy azure."),
        ("f1", "nowhere", NotFound, "target 'nowhere' does not exist"),
        ("nosuch", "managed", NotFound, "batch 'nosuch' does not exist; see: qlink batch list"),
    ):
        with pytest.raises(error, match=message):
            app.move_batch(batch, to)
    assert tables(app.store) == before and link.sent == []


# -- the operator API ----------------------------------------------------------------------------
@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path, broker_port=18883)
    with operator_api(
        settings, (("default", "admin"), ("acme", "admin"), ("acme", "operator"))
    ) as a:
        yield a


def test_the_platform_admin_adds_targets_and_an_operator_moves_a_batch_by_api(
    api: Api,
) -> None:
    body = {
        "name": "aws-eu",
        "kind": "aws",
        "host": "x-ats.iot.eu-west-1.amazonaws.com",
        "port": 8883,
        "ca_pem": ca_pem().decode(),
    }
    before = tables(api.app.store)
    for token in ("acme-admin", "acme-operator"):
        r = api.request("POST", "/v1/admin/targets", token, body)
        assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    r = api.request("POST", "/v1/admin/targets", "default-admin", {**body, "port": 0})
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")
    r = api.request("POST", "/v1/admin/targets", "default-admin", {**body, "ca_pem": "junk"})
    assert (r.status_code, r.json()["detail"]) == (
        400,
        "the CA must be one X.509 certificate, PEM or DER",
    )
    assert tables(api.app.store) == before
    r = api.request("POST", "/v1/admin/targets", "default-admin", body)
    assert r.status_code == 201, r.text
    r = api.request("POST", "/v1/admin/targets", "default-admin", body)
    assert (r.status_code, r.json()["error"]) == (409, "conflict")
    r = api.request("GET", "/v1/admin/targets", "acme-operator")
    assert [t["name"] for t in r.json()] == ["aws-eu", "managed"]

    r = api.request("POST", "/v1/admin/batches", "acme-operator", {"name": "f1"})
    assert r.json()["target"] == "managed"
    r = api.request("POST", "/v1/admin/batches/f1/policy", "acme-operator", {"to": "nowhere"})
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = api.request("POST", "/v1/admin/batches/f1/policy", "acme-operator", {"to": "aws-eu"})
    assert r.status_code == 503  # no AWS IoT driver on this server: nothing changed
    assert "target aws-eu is AWS IoT and this server has no AWS IoT account" in r.json()["detail"]
    assert api.app.batch("f1").target == "managed"
    r = api.request("GET", "/v1/admin/batches/f1/policy", "acme-operator")
    assert (r.status_code, r.json()["target"], r.json()["devices"]) == (200, "managed", 0)
    r = api.request("POST", "/v1/admin/batches/f1/policy", "acme-operator", {"to": "managed"})
    assert (r.status_code, r.json()["target"]) == (200, "managed")  # there already: nothing to do


@pytest.mark.parametrize(
    ("data", "password"),
    [
        (b"s3cret\n", "s3cret"),
        (b"s3cret", "s3cret"),
        (b"s3cret\r\n", "s3cret"),
        (b"s3cret\n# rotated 2026-11\n", "s3cret"),  # a note on the next line is not in it
        (b"two words\n\n", "two words"),
        (b"\ns3cret\n", ""),  # an empty first line: refused by the spec's check, not guessed
    ],
)
def test_the_password_file_gives_its_first_line(data: bytes, password: str) -> None:
    from host.server.targets import read_password

    assert read_password(data) == password


def test_a_password_file_that_is_not_text_is_a_sentence() -> None:
    from host.server.targets import read_password

    with pytest.raises(Invalid, match="must be UTF-8 text"):
        read_password(b"\xff\xfe")
