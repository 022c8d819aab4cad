"""The console's read models (host/server/store/views.py; docs/console.md).

Frozen dataclasses, not pydantic: the device list builds 50 per page and the live feed one per
change, and the console renders them itself (no OpenAPI schema to describe). They live apart
from host/server/schemas.py so that a `qlink` command, which imports the schemas, does not pay
for making them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DeviceListRow:
    """One line of the console's device list."""

    id: str
    tenant: str
    batch: str
    state: str  # registered, onboarded, revoked
    disabled: bool
    online: bool
    fw: str | None
    last_seen: float | None
    not_after: float | None
    onboarded_at: float | None


@dataclass(frozen=True, slots=True)
class FleetSummary:
    total: int
    by_state: dict[str, int]  # every state of STATES, 0 included
    online: int
    disabled: int


@dataclass(frozen=True, slots=True)
class ExpiringCert:
    device_id: str
    tenant: str
    not_after: float


@dataclass(frozen=True, slots=True)
class FailedUpdate:
    rollout_id: int
    device_id: str
    tenant: str
    state: str  # rolled_back or refused
    reason: str | None
    at: float


@dataclass(frozen=True, slots=True)
class PufWarning:
    device_id: str
    tenant: str
    used_pct: int


@dataclass(frozen=True, slots=True)
class HaltedRollout:
    id: int
    tenant: str
    release: str
    detail: str | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class AlertList(Generic[_T]):
    """The first items of one kind of alert and how many there are in all."""

    items: list[_T]
    total: int


@dataclass(frozen=True, slots=True)
class Alerts:
    expiring: AlertList[ExpiringCert]  # soonest first
    failed_updates: AlertList[FailedUpdate]  # newest first
    puf: AlertList[PufWarning]  # most used first
    halted: AlertList[HaltedRollout]  # newest first


@dataclass(frozen=True, slots=True)
class Dashboard:
    summary: FleetSummary
    onboardings_per_minute: list[int]  # oldest minute first, the current one last
    alerts: Alerts


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """A device as the live feed sends it (docs/console.md "Live updates")."""

    id: str
    tenant: str
    state: str
    disabled: bool
    online: bool
    fw: str | None
    last_seen: float | None
    telemetry: dict[str, Any] | None
    changed_at: float


@dataclass(frozen=True, slots=True)
class RolloutChange:
    id: int
    tenant: str
    updated_at: float  # the newest of the rollout's row and its devices' rows
