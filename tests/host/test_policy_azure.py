"""Azure DPS export: individual enrollments and enrollment groups in the shape of the DPS
service REST API (api-version 2021-10-01), checked against a JSON schema of its documented
fields; the driver's disable/enable/delete."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hil.simdevice import SimDevice, make_csr
from host.server.ca import CertificateAuthority
from host.server.policy import PolicyError
from host.server.policy.azure import AzureDpsExport, enrollment_group, individual_enrollment

# The documented DPS model (IndividualEnrollment / EnrollmentGroup / AttestationMechanism /
# X509Attestation / X509CertificateWithInfo / ReprovisionPolicy / DeviceCapabilities).
_X509_CERT = {
    "type": "object",
    "required": ["certificate"],
    "properties": {"certificate": {"type": "string"}},
    "additionalProperties": False,
}
_COMMON = {
    "provisioningStatus": {"enum": ["enabled", "disabled"]},
    "capabilities": {
        "type": "object",
        "required": ["iotEdge"],
        "properties": {"iotEdge": {"type": "boolean"}},
    },
    "reprovisionPolicy": {
        "type": "object",
        "properties": {
            "updateHubAssignment": {"type": "boolean"},
            "migrateDeviceData": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
    "allocationPolicy": {"enum": ["hashed", "geoLatency", "static", "custom"]},
    "initialTwin": {"type": "object"},
}


def _attestation(kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "x509"],
        "properties": {
            "type": {"const": "x509"},
            "x509": {
                "type": "object",
                "required": [kind],
                "properties": {
                    kind: {
                        "type": "object",
                        "required": ["primary"],
                        "properties": {"primary": _X509_CERT, "secondary": _X509_CERT},
                        "additionalProperties": False,
                    }
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    }


INDIVIDUAL = {
    "type": "object",
    "required": ["registrationId", "attestation"],
    "properties": {
        "registrationId": {"type": "string", "pattern": "^[a-z0-9.\\-_:]{1,128}$"},
        "deviceId": {"type": "string"},
        "attestation": _attestation("clientCertificates"),
        **_COMMON,
    },
    "additionalProperties": False,
}
GROUP = {
    "type": "object",
    "required": ["enrollmentGroupId", "attestation"],
    "properties": {
        "enrollmentGroupId": {"type": "string", "pattern": "^[a-zA-Z0-9.\\-_:]{1,128}$"},
        "attestation": _attestation("signingCertificates"),
        **_COMMON,
    },
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, str, bytes]:
    ca = CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"))
    d = SimDevice("https://localhost", b"")
    cert = ca.issue_device(x509.load_der_x509_csr(make_csr(d.key, d.device_id)), d.device_id, 30)
    return ca, d.device_id, cert.public_bytes(serialization.Encoding.DER)


def _cert_of(doc: dict[str, Any], kind: str) -> x509.Certificate:
    b64 = doc["attestation"]["x509"][kind]["primary"]["certificate"]
    return x509.load_pem_x509_certificate(base64.b64decode(b64))


def test_individual_enrollment_matches_schema(issued: Any) -> None:
    _, device_id, der = issued
    doc = individual_enrollment(device_id, der, "acme")
    jsonschema_rs.validate(INDIVIDUAL, doc)
    assert doc["registrationId"] == device_id and doc["provisioningStatus"] == "enabled"
    assert _cert_of(doc, "clientCertificates").public_bytes(serialization.Encoding.DER) == der


def test_enrollment_group_matches_schema(issued: Any) -> None:
    ca, _, _ = issued
    doc = enrollment_group("qlink-acme-line1", ca.issuing_der())
    jsonschema_rs.validate(GROUP, doc)
    assert _cert_of(doc, "signingCertificates") == ca.issuing_cert


def test_driver_writes_disables_deletes(issued: Any, tmp_path: Path) -> None:
    _, device_id, der = issued
    drv = AzureDpsExport(tmp_path)
    drv.register_device("acme", device_id, der)
    drv.register_device("acme", device_id, der)
    path = tmp_path / "acme" / f"{device_id}.json"
    jsonschema_rs.validate(INDIVIDUAL, json.loads(path.read_text()))
    drv.disable_device(device_id)
    assert json.loads(path.read_text())["provisioningStatus"] == "disabled"
    drv.enable_device(device_id)
    assert json.loads(path.read_text())["provisioningStatus"] == "enabled"
    drv.delete_device(device_id)
    drv.delete_device(device_id)
    assert not path.exists()


def test_driver_needs_the_certificate(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="certificate"):
        AzureDpsExport(tmp_path).register_device("acme", "0" * 64)


@pytest.mark.parametrize(
    "patch",
    [{"attestation": {"type": "tpm"}}, {"provisioningStatus": "on"}, {"registrationID": "x"}],
    ids=["tpm", "bad_status", "misspelt_key"],
)
def test_schema_check_is_not_vacuous(issued: Any, patch: dict[str, Any]) -> None:
    _, device_id, der = issued
    with pytest.raises(jsonschema_rs.ValidationError):
        jsonschema_rs.validate(INDIVIDUAL, {**individual_enrollment(device_id, der, "a"), **patch})
