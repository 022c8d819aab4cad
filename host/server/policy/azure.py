"""Azure IoT Hub Device Provisioning Service (DPS) as export: enrollment documents in the
shape of the DPS service REST API (api-version 2021-10-01), for an operator to load with
`az iot dps enrollment ...` or the REST API.

- `individual_enrollment(device_id, certificate_der)`: X.509 attestation with the device's own
  certificate (`attestation.x509.clientCertificates.primary.certificate`, base64 PEM).
- `enrollment_group(group_id, issuing_ca_der)`: X.509 CA attestation with the issuing CA
  (`attestation.x509.signingCertificates.primary.certificate`), which admits every device
  the qlink CA issues, with no per-device step.

`AzureDpsExport` is the policy driver: on onboarding it writes the device's individual
enrollment to `<dir>/<tenant>/<device_id>.json`; disabling sets `provisioningStatus` to
`disabled`, deleting removes the file. Every write is atomic, so it is idempotent and a failure
leaves the previous file.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from host.server.files import atomic_write
from host.server.policy import PolicyError


def _pem_b64(der: bytes) -> str:
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return base64.b64encode(pem).decode()


def _common(status: str) -> dict[str, Any]:
    return {
        "provisioningStatus": status,
        "capabilities": {"iotEdge": False},
        "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": True},
        "allocationPolicy": "hashed",
    }


def individual_enrollment(
    device_id: str, certificate_der: bytes, tenant: str, status: str = "enabled"
) -> dict[str, Any]:
    return {
        "registrationId": device_id,
        "deviceId": device_id,
        "attestation": {
            "type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": _pem_b64(certificate_der)}}},
        },
        "initialTwin": {"tags": {"qlinkTenant": tenant}, "properties": {"desired": {}}},
        **_common(status),
    }


def enrollment_group(
    group_id: str, issuing_ca_der: bytes, status: str = "enabled"
) -> dict[str, Any]:
    return {
        "enrollmentGroupId": group_id,
        "attestation": {
            "type": "x509",
            "x509": {"signingCertificates": {"primary": {"certificate": _pem_b64(issuing_ca_der)}}},
        },
        **_common(status),
    }


class AzureDpsExport:
    rights_from_certificate = False

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, device_id: str) -> Path | None:
        found = sorted(self.dir.glob(f"*/{device_id}.json"))
        return found[0] if found else None

    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        if certificate_der is None:
            raise PolicyError("an Azure DPS enrollment needs the device's certificate")
        doc = individual_enrollment(device_id, certificate_der, tenant)
        try:
            atomic_write(
                self.dir / tenant / f"{device_id}.json", json.dumps(doc, indent=1).encode()
            )
        except OSError as e:
            raise PolicyError(f"cannot write the Azure DPS enrollment: {e.strerror}") from e

    def _status(self, device_id: str, status: str) -> None:
        path = self._path(device_id)
        if path is None:
            return
        doc = json.loads(path.read_text())
        doc["provisioningStatus"] = status
        atomic_write(path, json.dumps(doc, indent=1).encode())

    def disable_device(self, device_id: str) -> None:
        self._status(device_id, "disabled")

    def enable_device(self, device_id: str) -> None:
        self._status(device_id, "enabled")

    def delete_device(self, device_id: str) -> None:
        path = self._path(device_id)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        pass
