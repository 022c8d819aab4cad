"""Azure IoT Hub Device Provisioning Service (DPS) as export: enrollment documents in the
shape of the DPS service REST API (api-version 2021-10-01), for an operator to load with the
REST API (`PUT https://<dps>.azure-devices-provisioning.net/enrollmentGroups/<id>`, e.g. through
`az rest`) or Microsoft's SDKs.

- `individual_enrollment(device_id, certificate_der, tenant)`: X.509 attestation with the
  device's own certificate (`attestation.x509.clientCertificates.primary.certificate`).
- `enrollment_group(group_id, issuing_ca_der)`: X.509 CA attestation with the issuing CA
  (`attestation.x509.signingCertificates.primary.certificate`), which admits every device
  the qlink CA issues, with no per-device step; `qlink ca azure-dps-group` prints it.

A certificate is given as DPS takes it and Microsoft's own SDK sends it: the base64 of its DER
(`X509CertificateWithInfo.certificate`; the service also takes the PEM text itself, never the
base64 of a PEM). tests/host/test_policy_azure.py checks every document against the models of
Microsoft's DPS service SDK, and that the certificate in it is the CA's or the device's.

`AzureDpsExport` is the policy driver: on onboarding it writes the device's individual
enrollment to `<dir>/<tenant>/<device_id>.json`; disabling sets `provisioningStatus` to
`disabled`, deleting removes the file. Every write is atomic, so it is idempotent and a failure
leaves the previous file. Each path is built by `files.path_in`: a tenant that is not a plain
name (`..`, a separator) or a directory whose link leads elsewhere is refused, so the file is
always where disable and delete look for it.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from host.server.deviceid import BadDeviceId, parse_device_id
from host.server.files import PathOutside, atomic_write, path_in
from host.server.policy import PolicyError
from host.server.store.names import check_name

API_VERSION = "2021-10-01"


def certificate_b64(der: bytes) -> str:
    """`X509CertificateWithInfo.certificate`: the base64 of the certificate's DER (checked to
    be one certificate)."""
    cert = x509.load_der_x509_certificate(der)
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def _common(status: str) -> dict[str, Any]:
    # No `capabilities`: its default (not an IoT Edge device) is what qlink devices are, and the
    # enrollment group of DPS's earlier API versions has no such field.
    return {
        "provisioningStatus": status,
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
            "x509": {
                "clientCertificates": {"primary": {"certificate": certificate_b64(certificate_der)}}
            },
        },
        "capabilities": {"iotEdge": False},
        "initialTwin": {"tags": {"qlinkTenant": tenant}, "properties": {"desired": {}}},
        **_common(status),
    }


def enrollment_group(
    group_id: str, issuing_ca_der: bytes, status: str = "enabled"
) -> dict[str, Any]:
    """The group that admits every device whose certificate the issuing CA signed. Its ID is an
    operator-chosen name (store/names.py), which DPS's own rule for group IDs also admits."""
    check_name("enrollment group ID", group_id)
    return {
        "enrollmentGroupId": group_id,
        "attestation": {
            "type": "x509",
            "x509": {
                "signingCertificates": {"primary": {"certificate": certificate_b64(issuing_ca_der)}}
            },
        },
        **_common(status),
    }


class AzureDpsExport:
    rights_from_certificate = False

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _file(self, tenant: str, device_id: str) -> Path:
        """`<dir>/<tenant>/<device_id>.json`, or PolicyError when that is not a file inside the
        directory (a tenant recorded before the name rule, a link leading out)."""
        try:
            name = f"{parse_device_id(device_id)}.json"
        except BadDeviceId as e:
            raise PolicyError(f"the Azure DPS export refuses it: {e}") from None
        try:
            return path_in(self.dir, tenant, name)
        except PathOutside as e:
            raise PolicyError(
                f"the Azure DPS export refuses tenant {tenant[:64]!r}: {e} (an enrollment "
                "must be a file in the export's directory, where disable and delete look)"
            ) from None

    def _path(self, device_id: str) -> Path | None:
        """The device's enrollment file, in whichever tenant's directory holds it."""
        try:
            tenants = sorted(p.name for p in self.dir.iterdir() if p.is_dir())
        except FileNotFoundError:
            return None
        for tenant in tenants:
            try:
                path = self._file(tenant, device_id)
            except PolicyError:
                continue
            if path.is_file():
                return path
        return None

    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        if certificate_der is None:
            raise PolicyError("an Azure DPS enrollment needs the device's certificate")
        path = self._file(tenant, device_id)
        doc = individual_enrollment(device_id, certificate_der, tenant)
        try:
            atomic_write(path, json.dumps(doc, indent=1).encode())
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
