"""The API's JSON shapes as pydantic models: they validate operator requests and make the
OpenAPI schema (`/openapi.json`) exact, which the schemathesis test checks answers against."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorBody(BaseModel):
    error: str
    detail: str


class RowErrorBody(BaseModel):
    line: int
    reason: str


class ImportRejectedBody(ErrorBody):
    rows: list[RowErrorBody]


# -- device API (parsed by hand in onboarding.py for its exact error codes; documented here) -
class HelloRequest(Strict):
    device_id: str = Field(pattern="^[0-9a-fA-F]{64}$")
    public_key: str = Field(pattern="^[0-9a-fA-F]{130}$")


class HelloAnswer(BaseModel):
    challenge_id: str
    challenge: str
    expires: int


class ProofRequest(Strict):
    challenge_id: str = Field(pattern="^[0-9a-fA-F]{32}$")
    signature: str = Field(pattern="^[0-9a-fA-F]{128}$")
    csr_b64: str = Field(min_length=1, max_length=4096)


class BrokerInfo(BaseModel):
    host: str
    port: int
    ca_b64: str


class ProofAnswer(BaseModel):
    device_id: str
    certificate_b64: str
    chain_b64: list[str]
    broker: BrokerInfo
    topics: dict[str, str]
    policy: dict[str, Any]


# -- operator API --------------------------------------------------------------------------
class WhoAmI(BaseModel):
    name: str
    tenant: str
    role: str


class BatchCreate(Strict):
    name: str = Field(min_length=1, max_length=128)
    policy: Literal["mosquitto", "aws", "azure"] = "mosquitto"


class BatchOut(BaseModel):
    name: str
    tenant: str
    active: bool
    devices: int
    policy: str
    created_at: float


class BatchState(Strict):
    active: bool


class ImportRequest(Strict):
    format: Literal["csv", "json"]
    data: str


class ImportResult(BaseModel):
    imported: int


class DeviceOut(BaseModel):
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


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["viewer", "operator", "admin"]


class TokenOut(BaseModel):
    token: str
    name: str
    tenant: str
    role: str


class AuditOut(BaseModel):
    at: float
    actor: str
    source: str
    tenant: str
    action: str
    target: str
    detail: dict[str, Any]


class ExportedDevice(BaseModel):
    device_id: str
    public_key: str
    state: str
    disabled: bool
    serial: str | None
    not_after: float | None
    onboarded_at: float | None
    revoked_at: float | None


class BatchExport(BaseModel):
    format: str
    batch: dict[str, Any]
    exported_at: float
    devices: list[ExportedDevice]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}
