"""The API's JSON shapes as pydantic models: they validate operator requests and make the
OpenAPI schema (`/openapi.json`) exact, which the schemathesis test checks answers against.

They are also the store's read models: a listing returns `BatchOut`, `DeviceRecord`,
`OperatorOut` or `AuditOut`, and the API, the CLI's `--json` and the console show
`model_dump(mode="json")` of them. A field the API must never show (a key, a certificate, the
broker bookkeeping) is declared with `exclude=True`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    # Validators and serializers are built on first use, not at import: a `qlink` command
    # that shows two of these models does not pay for building all of them.
    model_config = ConfigDict(defer_build=True)


class Strict(Model):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=False)


class ErrorBody(Model):
    error: str
    detail: str


class RowErrorBody(Model):
    line: int
    reason: str


class ImportRejectedBody(ErrorBody):
    rows: list[RowErrorBody]


# -- device API (parsed by hand in onboarding.py for its exact error codes; documented here) -
class HelloRequest(Strict):
    device_id: str = Field(pattern="^[0-9a-fA-F]{64}$")
    public_key: str = Field(pattern="^[0-9a-fA-F]{130}$")


class HelloAnswer(Model):
    challenge_id: str
    challenge: str
    expires: int


class ProofRequest(Strict):
    challenge_id: str = Field(pattern="^[0-9a-fA-F]{32}$")
    signature: str = Field(pattern="^[0-9a-fA-F]{128}$")
    csr_b64: str = Field(min_length=1, max_length=4096)


class BrokerInfo(Model):
    host: str
    port: int
    ca_b64: str


class ProofAnswer(Model):
    device_id: str
    certificate_b64: str
    chain_b64: list[str]
    broker: BrokerInfo
    topics: dict[str, str]
    policy: dict[str, Any]


# -- operator API --------------------------------------------------------------------------
STATE_REGISTERED = "registered"
STATE_ONBOARDED = "onboarded"
STATE_REVOKED = "revoked"
STATES = (STATE_REGISTERED, STATE_ONBOARDED, STATE_REVOKED)

ROLE_VIEWER = "viewer"
ROLE_OPERATOR = "operator"
ROLE_ADMIN = "admin"
ROLES = (ROLE_VIEWER, ROLE_OPERATOR, ROLE_ADMIN)  # each role may do what the ones before it may


class WhoAmI(Model):
    name: str
    tenant: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this operator's role includes `role`."""
        return ROLES.index(self.role) >= ROLES.index(role)


class OperatorOut(WhoAmI):
    created_at: float
    revoked: bool


class BatchCreate(Strict):
    name: str = Field(min_length=1, max_length=128)
    policy: Literal["mosquitto", "aws", "azure"] = "mosquitto"


class BatchOut(Model):
    name: str
    tenant: str
    active: bool
    devices: int
    policy: str
    created_at: float


class BatchState(Strict):
    active: bool


class ImportRequest(Strict):
    format: Literal["csv", "json", "jsonl", "qdid"]
    data: str


class ImportResult(Model):
    imported: int


class DeviceOut(Model):
    device_id: str
    batch: str
    tenant: str
    state: str
    disabled: bool
    serial: str | None
    not_after: float | None
    onboarded_at: float | None
    revoked_at: float | None
    last_seen: float | None
    last_telemetry: dict[str, Any] | None


class DeviceRecord(DeviceOut):
    """A device as the server works with it: the API's fields and those it never shows."""

    public_key: bytes = Field(exclude=True)
    cert_der: bytes | None = Field(default=None, exclude=True)
    batch_active: bool = Field(default=True, exclude=True)
    policy: str = Field(default="mosquitto", exclude=True)
    # The broker may hold an exception (a deny entry) for it: the policy layer's bookkeeping.
    policy_exception: bool = Field(default=False, exclude=True)


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["viewer", "operator", "admin"]


class TokenOut(Model):
    token: str
    name: str
    tenant: str
    role: str


class AuditOut(Model):
    at: float
    actor: str
    source: str
    tenant: str
    action: str
    target: str
    detail: dict[str, Any]


class ExportedDevice(Model):
    device_id: str
    public_key: str
    state: str
    disabled: bool
    serial: str | None
    not_after: float | None
    onboarded_at: float | None
    revoked_at: float | None


class BatchExport(Model):
    format: str
    batch: dict[str, Any]
    exported_at: float
    devices: list[ExportedDevice]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}
