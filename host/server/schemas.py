"""The API's answers as pydantic models: they make the OpenAPI schema (`/openapi.json`) exact,
which the schemathesis test checks answers against (the request bodies are in bodies.py).

They are also the store's read models: a listing returns `BatchOut`, `DeviceRecord`,
`OperatorOut` or `AuditOut`, and the API, the CLI's `--json` and the console show
`model_dump(mode="json")` of them. A field the API must never show (a key, a certificate, the
broker bookkeeping) is declared with `exclude=True`."""

# No `from __future__ import annotations`: pydantic would evaluate every field's string
# annotation when it makes the class, which costs each `qlink` command ~8 ms.
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EXPORT_FORMAT = "qlink-batch-v1"  # a batch export's "format" (an import takes it back)


class Model(BaseModel):
    # Validators and serializers are built on first use, not at import: a `qlink` command
    # that shows two of these models does not pay for building all of them.
    model_config = ConfigDict(defer_build=True)


class ErrorBody(Model):
    error: str
    detail: str


class RowErrorBody(Model):
    line: int
    reason: str


class ImportRejectedBody(ErrorBody):
    rows: list[RowErrorBody]


# -- device API ----------------------------------------------------------------------------
class HelloAnswer(Model):
    challenge_id: str
    challenge: str
    expires: int


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


class OtaWrap(Model):
    epk: str  # the server's ephemeral P-256 public key, 130 hex
    key: str  # the content key xor the KEK's first half, 64 hex
    tag: str  # HMAC-SHA256 over epk || key, 64 hex


class OtaHeadAnswer(Model):
    """GET /v1/ota/<release>/head (docs/ota.md "Device API")."""

    release: str
    manifest: str  # the manifest bytes, as a JSON string
    signature: str  # r || s, 128 hex
    signer_b64: str  # the release key's certificate (DER)
    payload_size: int
    wrap: OtaWrap


# -- operator API --------------------------------------------------------------------------
STATE_REGISTERED = "registered"
STATE_ONBOARDED = "onboarded"
STATE_REVOKED = "revoked"
STATES = (STATE_REGISTERED, STATE_ONBOARDED, STATE_REVOKED)

# A command's states (docs/protocol.md "Command channel"); only forward moves.
COMMAND_QUEUED = "queued"
COMMAND_DELIVERED = "delivered"
COMMAND_DONE = "done"
COMMAND_FAILED = "failed"
COMMAND_EXPIRED = "expired"
COMMAND_STATES = (COMMAND_QUEUED, COMMAND_DELIVERED, COMMAND_DONE, COMMAND_FAILED, COMMAND_EXPIRED)

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


class BatchOut(Model):
    name: str
    tenant: str
    active: bool
    devices: int
    policy: str
    created_at: float
    # The broker that serves its devices (a target: `qlink target list`).
    target: str = "managed"


class TargetOut(Model):
    """A broker that serves batches; never its admin password (docs/operator.md "Targets")."""

    name: str
    kind: str  # managed, mosquitto (an external Mosquitto), aws
    host: str | None
    port: int | None
    admin_port: int | None = None
    admin_user: str | None = None
    ca_sha256: str | None = None  # of the CA certificate (DER) devices are given for it
    created_at: float


class TargetRecord(TargetOut):
    """A target as the server works with it: the CA itself and where its password lies."""

    ca_der: bytes | None = Field(default=None, exclude=True)
    secret: str | None = Field(default=None, exclude=True)  # a file name, not the password


# A device's progress in its batch's move to another target (docs/protocol.md "Moving a
# device to another broker"): registered at the new target, sent `broker`, then what the
# device says: online on the new target (moved) or back on the old one (fell_back).
MOVE_REGISTERED = "registered"
MOVE_COMMANDED = "commanded"
MOVE_MOVED = "moved"
MOVE_FELL_BACK = "fell_back"
MOVE_STATES = (MOVE_REGISTERED, MOVE_COMMANDED, MOVE_MOVED, MOVE_FELL_BACK)


class MoveDeviceOut(Model):
    device_id: str
    from_target: str
    to_target: str
    state: str
    seq: int | None  # its `broker` command
    updated_at: float


class MoveOut(Model):
    """A batch's target and how far its devices' move to it got (counts by state)."""

    batch: str
    tenant: str
    target: str
    devices: int
    registered: int
    commanded: int
    moved: int
    fell_back: int
    progress: list[MoveDeviceOut]


class TenantOut(Model):
    name: str
    created_at: float
    batches: int
    devices: int


class ImportResult(Model):
    imported: int


class BatchRevokeOut(Model):
    """What `batch revoke` did: `revoked` now, `already_revoked` before, of `devices`."""

    batch: str
    tenant: str
    devices: int
    revoked: int
    already_revoked: int


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
    # Share of its PUF's correction budget the device's latest report used (store/puf.py).
    puf_used_pct: int | None = None
    # The same device's records before and after a re-enrolment (same tenant; a transfer to
    # another owner links nothing: docs/protocol.md "Successor identities").
    predecessor: str | None = None
    successor: str | None = None


class DeviceRecord(DeviceOut):
    """A device as the server works with it: the API's fields and those it never shows."""

    public_key: bytes = Field(exclude=True)
    cert_der: bytes | None = Field(default=None, exclude=True)
    batch_active: bool = Field(default=True, exclude=True)
    policy: str = Field(default="mosquitto", exclude=True)
    # The broker may hold an exception (a deny entry) for it: the policy layer's bookkeeping.
    policy_exception: bool = Field(default=False, exclude=True)
    # Its owner epoch (docs/identity.md "Seeds"): the server's to know; no owner is shown how
    # many owners the device had before it.
    epoch: int = Field(default=0, exclude=True)
    # Its batch's target (the broker that serves it) and that target's kind.
    target: str = Field(default="managed", exclude=True)
    target_kind: str | None = Field(default="managed", exclude=True)
    # Its OTA key agreement public key (65 bytes, docs/ota.md), None until its proof sent one.
    ota_key: bytes | None = Field(default=None, exclude=True)
    # The order of the last challenge a proof used and that proof's digest
    # (host/server/store/challenges.py).
    used_challenge: int | None = Field(default=None, exclude=True)
    used_proof: str | None = Field(default=None, exclude=True)


class ReleaseOut(Model):
    """A published firmware release (docs/ota.md "Release"); its ID is `<board>-<version>`."""

    id: str
    version: str
    min_version: str
    board: str
    files: int
    size: int  # bytes of every file, plaintext
    payload_size: int  # bytes of the encrypted payload a device downloads
    manifest_sha256: str
    published_at: float
    published_by: str
    bytes_served: int  # payload bytes sent to devices so far


class CommandOut(Model):
    device_id: str
    tenant: str
    seq: int
    kind: str
    args: dict[str, Any]
    state: str
    created_at: float
    expires_at: float
    updated_at: float
    detail: str | None = None


class SuccessorAnswer(Model):
    device_id: str


class TransferCodeOut(Model):
    """A transfer code: shown once (only its SHA-256 is stored)."""

    device_id: str
    code: str
    expires_at: float


class ClaimOut(Model):
    """A claim as the new owner sees it: `device_id` is the device's new ID once it moved
    (`state` done); nothing of its identity before."""

    claim: str
    tenant: str
    batch: str
    state: str  # pending, done, failed
    created_at: float
    device_id: str | None = None


class DecommissionOut(Model):
    """The device as decommissioning left it (revoked), and whether it confirmed its erase."""

    device: DeviceOut
    confirmed: bool
    command: CommandOut | None = None


class PufHealthOut(Model):
    at: float
    margin: int | None
    corrected_bits: int | None
    health_failures: int | None


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


# An OTA rollout (docs/ota.md "Rollout") and each device's progress in it. Device states move
# forward only, in this order; the last three end it.
ROLLOUT_ACTIVE = "active"
ROLLOUT_PAUSED = "paused"
ROLLOUT_HALTED = "halted"
ROLLOUT_ABORTED = "aborted"
ROLLOUT_DONE = "done"
ROLLOUT_STATES = (ROLLOUT_ACTIVE, ROLLOUT_PAUSED, ROLLOUT_HALTED, ROLLOUT_ABORTED, ROLLOUT_DONE)
OTA_OFFERED = "offered"
OTA_DOWNLOADING = "downloading"
OTA_STAGED = "staged"
OTA_TRIAL = "trial"
OTA_COMMITTED = "committed"
OTA_ROLLED_BACK = "rolled_back"
OTA_REFUSED = "refused"
OTA_STATES = (
    OTA_OFFERED,
    OTA_DOWNLOADING,
    OTA_STAGED,
    OTA_TRIAL,
    OTA_COMMITTED,
    OTA_ROLLED_BACK,
    OTA_REFUSED,
)
OTA_FAILED = (OTA_ROLLED_BACK, OTA_REFUSED)
OTA_ENDED = (OTA_COMMITTED, *OTA_FAILED)


class RolloutDeviceOut(Model):
    device_id: str
    state: str  # offered, downloading, staged, trial, committed, rolled_back, refused
    reason: str | None  # the device's, with refused and rolled_back (no_ota_key: the server's)
    seq: int | None  # its `ota` command
    updated_at: float


class RolloutSummary(Model):
    id: int
    release: str
    batch: str
    tenant: str
    percent: int
    max_failures: int
    state: str  # active, paused, halted, aborted, done
    detail: str | None  # why it halted
    created_at: float
    created_by: str
    updated_at: float
    counts: dict[str, int]  # devices in each device state (every state, 0 included)
    failures: int  # rolled back or refused by the device (no_ota_key is not counted)


class RolloutOut(RolloutSummary):
    """A rollout with every device's progress, by device ID."""

    devices: list[RolloutDeviceOut]


def plain(value: Any) -> Any:
    """A read model (or a list of them) as JSON-ready data: exactly `model_dump(mode="json")`
    for these models, whose fields hold only JSON values once the excluded ones are left out
    (tests/host/test_cli.py checks they agree). A `qlink` command uses it because building
    pydantic's serializer for a model costs more than the rest of the command's output."""
    if isinstance(value, BaseModel):
        return {
            name: plain(getattr(value, name))
            for name, field in type(value).model_fields.items()
            if not field.exclude
        }
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}
