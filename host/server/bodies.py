"""The bodies the HTTP faces accept, as strict pydantic models: they validate operator requests
and document the device API's (which onboarding.py parses by hand for its exact error codes).
They are built when imported, as FastAPI needs them, so they live apart from the read models
(schemas.py) that every `qlink` command loads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from host.server.store.names import NAME_MAX, NAME_PATTERN, name_problem


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HelloRequest(Strict):
    device_id: str = Field(pattern="^[0-9a-fA-F]{64}$")
    public_key: str = Field(pattern="^[0-9a-fA-F]{130}$")


class ProofRequest(Strict):
    challenge_id: str = Field(pattern="^[0-9a-fA-F]{32}$")
    signature: str = Field(pattern="^[0-9a-fA-F]{128}$")
    csr_b64: str = Field(min_length=1, max_length=4096)
    # The device's OTA key agreement public key, uncompressed (docs/ota.md); when sent, the
    # signature covers its 65 bytes too.
    ota_key: str | None = Field(default=None, pattern="^04[0-9a-fA-F]{128}$")


class SuccessorRequest(Strict):
    device_id: str = Field(pattern="^[0-9a-fA-F]{64}$")
    public_key: str = Field(pattern="^[0-9a-fA-F]{130}$")
    reason: Literal["transfer", "reenrol"]
    seq: int = Field(ge=1, le=2**31 - 1)
    signature: str = Field(pattern="^[0-9a-fA-F]{128}$")


def _named(kind: str) -> AfterValidator:
    """The store's name rule (store/names.py) on a body field: a bad name is 400 bad_request
    with the rule's own sentence, and the rule is in the OpenAPI schema."""

    def check(value: str) -> str:
        problem = name_problem(kind, value)
        if problem is not None:
            raise PydanticCustomError("name", problem)
        return value

    return AfterValidator(check)


_NAME_SCHEMA = Field(json_schema_extra={"pattern": NAME_PATTERN, "maxLength": NAME_MAX})
BatchName = Annotated[str, _named("batch name"), _NAME_SCHEMA]
OperatorName = Annotated[str, _named("operator name"), _NAME_SCHEMA]
TenantName = Annotated[str, _named("tenant"), _NAME_SCHEMA]
TargetName = Annotated[str, _named("target name"), _NAME_SCHEMA]


class TenantCreate(Strict):
    name: TenantName


class BatchCreate(Strict):
    name: BatchName
    # Default: the target's (store/batches.py); without a target, mosquitto on `managed`.
    policy: Literal["mosquitto", "aws", "azure"] | None = None
    target: TargetName | None = None


class BatchMove(Strict):
    to: TargetName  # the target the batch's devices move to


class TargetCreate(Strict):
    """A broker for batches (host/server/targets.py checks it further); the password is
    never shown again."""

    name: TargetName
    kind: Literal["mosquitto", "aws"]
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    ca_pem: str = Field(min_length=1, max_length=16384)  # the CA devices trust for it
    admin_user: str | None = Field(default=None, min_length=1, max_length=128)
    admin_password: str | None = Field(default=None, min_length=1, max_length=256)
    admin_port: int | None = Field(default=None, ge=1, le=65535)
    check: bool = True  # ask an external Mosquitto first


class CommandCreate(Strict):
    kind: Literal["ping", "renew", "transfer", "reenrol", "decommission", "broker"]
    args: dict[str, str | int | bool] = Field(default_factory=dict, max_length=16)
    ttl_s: float = Field(default=3600, ge=10, le=30 * 86400)


class TransferCreate(Strict):
    ttl_s: float = Field(default=7 * 86400, ge=600, le=30 * 86400)


class DecommissionCreate(Strict):
    wait_s: float = Field(default=10, ge=0, le=300)


class ClaimCreate(Strict):
    code: str = Field(min_length=1, max_length=64)
    batch: str = Field(min_length=1, max_length=128)  # an existing batch (older names too)


class BatchState(Strict):
    active: bool


class ImportRequest(Strict):
    format: Literal["csv", "json", "jsonl", "qdid"]
    data: str


class TokenCreate(Strict):
    name: OperatorName
    role: Literal["viewer", "operator", "admin"]


class RolloutCreate(Strict):
    """An OTA rollout (docs/ota.md "Rollout")."""

    release: str = Field(min_length=1, max_length=80)  # a published release ID
    batch: str = Field(min_length=1, max_length=128)
    percent: int = Field(default=100, ge=1, le=100)  # of the batch's onboarded devices
    max_failures: int = Field(default=0, ge=0, le=2**31 - 1)  # 0: the first failure halts
