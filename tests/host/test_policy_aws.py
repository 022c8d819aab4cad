"""The AWS IoT policy driver against moto's IoT mock through a real boto3 client: thing,
certificate, tenant policy JSON; disable/enable/delete; a failure leaves nothing behind and
the device retryable."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from moto import mock_aws

from hil.simdevice import SimDevice, make_csr
from host.server.ca import CertificateAuthority
from host.server.policy import PolicyError
from host.server.policy.aws import AwsIotPolicy, tenant_policy, tenant_policy_name


@pytest.fixture
def iot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(k, v)
    # use_valid_cert: certificate IDs are SHA-256 of the DER, as AWS computes them.
    with mock_aws(config={"iot": {"use_valid_cert": True}}):
        yield boto3.client("iot", region_name="eu-west-1")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"))


def device_cert(ca: CertificateAuthority) -> tuple[str, bytes]:
    d = SimDevice("https://localhost", b"")
    from cryptography import x509

    cert = ca.issue_device(x509.load_der_x509_csr(make_csr(d.key, d.device_id)), d.device_id, 30)
    return d.device_id, cert.public_bytes(serialization.Encoding.DER)


def test_register_creates_thing_certificate_and_tenant_policy(iot: Any, ca: Any) -> None:
    driver = AwsIotPolicy(iot)
    device_id, der = device_cert(ca)
    driver.register_device("acme", device_id, der)
    driver.register_device("acme", device_id, der)  # idempotent
    thing = iot.describe_thing(thingName=device_id)
    assert thing["attributes"] == {"tenant": "acme"}
    principals = iot.list_thing_principals(thingName=device_id)["principals"]
    assert len(principals) == 1
    cert_id = principals[0].rsplit("/", 1)[-1]
    assert cert_id == hashlib.sha256(der).hexdigest()
    desc = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
    assert desc["status"] == "ACTIVE"
    policies = iot.list_attached_policies(target=principals[0])["policies"]
    assert [p["policyName"] for p in policies] == ["qlink-acme"]
    doc = json.loads(iot.get_policy(policyName="qlink-acme")["policyDocument"])
    assert doc == tenant_policy("acme")
    topics = [s["Resource"] for s in doc["Statement"] if "iot:Publish" in s["Action"]]
    assert topics == ["arn:aws:iot:*:*:topic/qlink/acme/${iot:Connection.Thing.ThingName}/*"]


def test_disable_enable_delete(iot: Any, ca: Any) -> None:
    driver = AwsIotPolicy(iot)
    device_id, der = device_cert(ca)
    driver.register_device("acme", device_id, der)
    cert_id = hashlib.sha256(der).hexdigest()

    def status() -> str:
        return iot.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"]

    driver.disable_device(device_id)
    assert status() == "INACTIVE"
    driver.enable_device(device_id)
    assert status() == "ACTIVE"
    driver.delete_device(device_id)
    driver.delete_device(device_id)  # idempotent
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []


def test_failure_midway_leaves_nothing_and_retry_succeeds(
    iot: Any, ca: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = AwsIotPolicy(iot)
    device_id, der = device_cert(ca)
    real = iot.attach_thing_principal
    from botocore.exceptions import ClientError

    def broken(**_kw: Any) -> None:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}}, "x")

    monkeypatch.setattr(iot, "attach_thing_principal", broken)
    with pytest.raises(PolicyError, match="AWS IoT refused AttachThingPrincipal: Throttling"):
        driver.register_device("acme", device_id, der)
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    monkeypatch.setattr(iot, "attach_thing_principal", real)
    driver.register_device("acme", device_id, der)
    assert len(iot.list_thing_principals(thingName=device_id)["principals"]) == 1


def test_register_without_certificate_is_refused(iot: Any) -> None:
    with pytest.raises(PolicyError, match="certificate"):
        AwsIotPolicy(iot).register_device("acme", "0" * 64)


def test_policy_name_per_tenant() -> None:
    assert tenant_policy_name("acme") == "qlink-acme"


# `*`, `?`: IAM wildcards in a resource; `+`, `#`: MQTT wildcards; `${...}`: a policy variable.
WILD_TENANTS = ["*", "a*", "+", "#", "a?", "${iot:ClientId}", "..", "a/b", "caf\u00e9", ""]


@pytest.mark.parametrize("tenant", WILD_TENANTS, ids=repr)
def test_no_policy_for_a_tenant_that_is_not_a_name(tenant: str) -> None:
    with pytest.raises(PolicyError, match="tenant must be 1 to 64 characters"):
        tenant_policy(tenant)
    with pytest.raises(PolicyError, match="tenant must be 1 to 64 characters"):
        tenant_policy_name(tenant)


@pytest.mark.parametrize("tenant", WILD_TENANTS, ids=repr)
def test_register_refuses_such_a_tenant_before_asking_aws(iot: Any, ca: Any, tenant: str) -> None:
    """A tenant recorded before the name rule reaches no policy name or topic resource: the
    driver refuses it before any call, so nothing exists at AWS afterwards."""
    device_id, der = device_cert(ca)
    with pytest.raises(PolicyError, match="no AWS IoT policy for this tenant"):
        AwsIotPolicy(iot).register_device(tenant, device_id, der)
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []


def test_onboarding_with_aws_batch_end_to_end_in_process(
    iot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch with policy aws: the proof registers thing + certificate; a driver failure is a
    503 with the device still registered, and the retry onboards it."""
    from hil.simdevice import ApiResponse
    from host.server.application import Application
    from host.server.onboarding import OnboardingRefused
    from host.server.policy import MemoryPolicy
    from host.server.settings import Settings

    settings = Settings(data_dir=tmp_path)
    reg = Application.for_server(settings, broker_port=1, policy=MemoryPolicy())
    reg.policies.drivers["aws"] = AwsIotPolicy(iot)
    reg.create_tenant("acme")
    reg.create_batch("cloud", "acme", policy="aws")
    d = SimDevice("https://localhost", b"")
    reg.import_devices("cloud", [d.csv_line()])
    svc = reg.onboarding
    from botocore.exceptions import ClientError

    real = iot.create_policy

    def broken(**_kw: Any) -> None:
        raise ClientError({"Error": {"Code": "InternalFailure", "Message": "x"}}, "CreatePolicy")

    monkeypatch.setattr(iot, "create_policy", broken)
    h = svc.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
    body = d.proof_body(ApiResponse(200, h))
    with pytest.raises(OnboardingRefused) as info:
        svc.proof(body)
    assert (info.value.status, info.value.code) == (503, "broker_unavailable")
    dev = reg.device(d.device_id)
    assert dev is not None and (dev.state, dev.cert_der) == ("registered", None)
    assert iot.list_things()["things"] == []
    monkeypatch.setattr(iot, "create_policy", real)
    _, answer = svc.proof(body)  # the same proof: the challenge was not consumed
    assert reg.device(d.device_id).state == "onboarded"  # type: ignore[union-attr]
    assert iot.describe_thing(thingName=d.device_id)["thingName"] == d.device_id
    assert answer["device_id"] == d.device_id
    reg.close()


def test_tenant_policy_grants_only_own_client_id_and_topics() -> None:
    """AWS IoT refuses what the policy does not grant (a CONNECT under another client ID, a
    SUBSCRIBE beyond the device's own topic filter: SUBACK 0x80), so the document must name the
    thing's own client ID and its own prefix in its tenant, nothing wider."""
    from host.server.policy.aws import tenant_policy

    doc = tenant_policy("acme")
    grants = {
        (a if isinstance(a, str) else tuple(a)): s["Resource"]
        for s in doc["Statement"]
        for a in [s["Action"]]
    }
    thing = "${iot:Connection.Thing.ThingName}"
    assert grants == {
        "iot:Connect": f"arn:aws:iot:*:*:client/{thing}",
        ("iot:Publish", "iot:Receive"): f"arn:aws:iot:*:*:topic/qlink/acme/{thing}/*",
        "iot:Subscribe": f"arn:aws:iot:*:*:topicfilter/qlink/acme/{thing}/*",
    }
    assert all(s["Effect"] == "Allow" for s in doc["Statement"])
