"""What the web console reads (docs/console.md): the device list, the dashboard's counts and
alerts, the live feed's changes and a device's telemetry history. Read-only.

`tenant=None` sees every tenant; otherwise only rows of batches of that tenant count.

The device list pages by device ID (keyset: `device_id > after`), so every page costs the same
at any depth. Each of its filters has an index that walks in device-ID order
(`ix_devices_state_id`, `ix_devices_batch_id_id`, `ix_devices_fw_id`, a prefix is a range of the
primary key): the database reads the 50 rows of a page and sorts nothing. The devices are the
outer loop of the join with batches (`CROSS JOIN` makes SQLite keep that order; PostgreSQL
plans a CROSS JOIN with a WHERE as any inner join): a tenant's page then walks the device-ID
index and skips other tenants' rows, which costs in proportion to the rows it skips but never
sorts the tenant's whole fleet. tests/host/test_console_views.py checks the plans at 100,000
devices.
"""

from __future__ import annotations

import json
import re
from typing import Any

from host.server.schemas import (
    OTA_REFUSED,
    OTA_ROLLED_BACK,
    ROLLOUT_HALTED,
    STATE_ONBOARDED,
    STATES,
)
from host.server.store.database import Database, Row
from host.server.store.errors import Invalid, NotFound
from host.server.viewmodels import (
    AlertList,
    Alerts,
    DeviceChange,
    DeviceListRow,
    ExpiringCert,
    FailedUpdate,
    FleetSummary,
    HaltedRollout,
    PufWarning,
    RolloutChange,
)

PAGE = 50  # devices on a page of the console's list
MAX_PAGE = 500
_HEX = re.compile(r"[0-9a-f]{1,64}")
_DEVICES = "FROM devices d CROSS JOIN batches b WHERE b.id = d.batch_id"
_LIST_COLUMNS = (
    "SELECT d.device_id, b.tenant, b.name AS batch, d.state, d.disabled, d.online, d.fw,"
    " d.last_seen, d.not_after, d.onboarded_at "
)


def _tenant(sql: str, tenant: str | None, column: str = "b.tenant") -> str:
    return sql if tenant is None else f"{sql} AND {column} = :tenant"


def _change(r: Row) -> DeviceChange:
    telemetry = r["last_telemetry"]
    return DeviceChange(
        id=r["device_id"],
        tenant=r["tenant"],
        state=r["state"],
        disabled=bool(r["disabled"]),
        online=bool(r["online"]),
        fw=r["fw"],
        last_seen=r["last_seen"],
        telemetry=json.loads(telemetry) if telemetry else None,
        changed_at=r["changed_at"],
    )


# The distinct firmware versions, one index seek each (a loose index scan).
_FW_VERSIONS = (
    "WITH RECURSIVE v(fw) AS ("
    " SELECT MIN(fw) FROM devices"
    " UNION ALL"
    " SELECT (SELECT MIN(d.fw) FROM devices d WHERE d.fw > v.fw) FROM v WHERE v.fw IS NOT NULL"
    ") SELECT v.fw FROM v WHERE v.fw IS NOT NULL"
)


class Views:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- the device list ---------------------------------------------------------------------
    def device_page(
        self,
        tenant: str | None,
        *,
        state: str | None = None,
        batch: str | None = None,
        fw: str | None = None,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = PAGE,
    ) -> list[DeviceListRow]:
        """Up to `limit` devices after the device ID `after`, by device ID. `state` is
        registered, onboarded, revoked or disabled (the flag); `batch` a batch name (of the
        tenant); `fw` a firmware version as telemetry reported it; `prefix` the start of a
        device ID (hex, either case). Raises Invalid for a state, prefix or limit that cannot
        be one."""
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid(f"a page holds 1 to {MAX_PAGE} devices, not {limit}")
        params: dict[str, Any] = {"tenant": tenant, "limit": limit}
        sql = _tenant(_LIST_COLUMNS + _DEVICES, tenant)
        if state == "disabled":
            sql += " AND d.disabled = TRUE"
        elif state is not None:
            if state not in STATES:
                choices = ", ".join((*STATES, "disabled"))
                raise Invalid(f"state must be one of {choices}, not {state[:32]!r}")
            sql += " AND d.state = :state"
            params["state"] = state
        if batch is not None:
            sql += " AND b.name = :batch"
            params["batch"] = batch
            ids = self._batch_ids(tenant, batch)
            if not ids:
                return []
            if len(ids) == 1:  # the batch's own index, in device-ID order
                sql += " AND d.batch_id = :batch_id"
                params["batch_id"] = ids[0]
        if fw is not None:
            sql += " AND d.fw = :fw"
            params["fw"] = fw
        if prefix:
            low = prefix.lower()
            if not _HEX.fullmatch(low):
                raise Invalid(
                    "search a device by the start of its ID: 1 to 64 hexadecimal characters"
                )
            # Every ID that starts with it sorts from it to it + "g" ("g" follows every hex digit).
            sql += " AND d.device_id >= :low AND d.device_id < :high"
            params.update(low=low, high=low + "g")
        if after is not None:
            sql += " AND d.device_id > :after"
            params["after"] = after
        sql += " ORDER BY d.device_id LIMIT :limit"
        return [
            DeviceListRow(
                id=r["device_id"],
                tenant=r["tenant"],
                batch=r["batch"],
                state=r["state"],
                disabled=bool(r["disabled"]),
                online=bool(r["online"]),
                fw=r["fw"],
                last_seen=r["last_seen"],
                not_after=r["not_after"],
                onboarded_at=r["onboarded_at"],
            )
            for r in self._db.all(sql, params)
        ]

    def _batch_ids(self, tenant: str | None, batch: str) -> list[int]:
        sql = _tenant("SELECT id FROM batches WHERE name = :batch", tenant, "tenant")
        return [int(r["id"]) for r in self._db.all(sql, {"batch": batch, "tenant": tenant})]

    def batch_names(self, tenant: str | None) -> list[str]:
        """The tenant's batch names in order (the list's batch filter): the batches table
        alone, no device is counted."""
        sql = "SELECT name FROM batches" + ("" if tenant is None else " WHERE tenant = :tenant")
        return [r["name"] for r in self._db.all(sql + " ORDER BY name", {"tenant": tenant})]

    def batch_counts(self, tenant: str | None, batch: str) -> dict[str, int]:
        """How many devices of the tenant's batch `batch` are in each state: every state of
        STATES, 0 included. One GROUP BY over the batch's index, never its rows one by one.
        Raises NotFound for a batch the tenant does not have."""
        ids = self._batch_ids(tenant, batch)
        if not ids:
            raise NotFound(
                f"batch {batch!r} does not exist; create it first: qlink batch create {batch}"
            )
        counts = dict.fromkeys(STATES, 0)
        marks = ", ".join(f":b{i}" for i in range(len(ids)))
        rows = self._db.all(
            f"SELECT state, COUNT(*) AS n FROM devices WHERE batch_id IN ({marks}) GROUP BY state",
            {f"b{i}": v for i, v in enumerate(ids)},
        )
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + int(r["n"])
        return counts

    def fw_versions(self, tenant: str | None) -> list[str]:
        """Every firmware version a device reported, in order (the list's filter choices).

        A fleet runs a handful of versions: the versions are walked on the fw index one step
        each (the next one above the last), so the read costs a few index seeks however many
        devices there are, where a DISTINCT reads every row (22 ms at 100,000 devices)."""
        sql = _FW_VERSIONS
        if tenant is not None:
            sql += (
                " AND EXISTS (SELECT 1 FROM devices d JOIN batches b ON b.id = d.batch_id"
                " WHERE d.fw = v.fw AND b.tenant = :tenant)"
            )
        return [r["fw"] for r in self._db.all(sql + " ORDER BY v.fw", {"tenant": tenant})]

    # -- the dashboard -----------------------------------------------------------------------
    def summary(self, tenant: str | None) -> FleetSummary:
        sql = _tenant(
            "SELECT d.state, COUNT(*) AS n,"
            " SUM(CASE WHEN d.online THEN 1 ELSE 0 END) AS online,"
            " SUM(CASE WHEN d.disabled THEN 1 ELSE 0 END) AS disabled " + _DEVICES,
            tenant,
        )
        by_state = dict.fromkeys(STATES, 0)
        online = disabled = 0
        for r in self._db.all(sql + " GROUP BY d.state", {"tenant": tenant}):
            by_state[r["state"]] = int(r["n"])
            online += int(r["online"] or 0)
            disabled += int(r["disabled"] or 0)
        return FleetSummary(sum(by_state.values()), by_state, online, disabled)

    def summaries(self) -> dict[str | None, FleetSummary]:
        """`summary` of every tenant that has a batch, and under None every tenant's, from
        one grouped count (the live feed's: one read serves all its listeners). The count walks
        `ix_devices_summary` alone, in its order (nothing sorted, no join); the batches' tenants
        are matched here. A tenant that is not in the answer has no devices."""
        tenant_of = {
            int(r["id"]): r["tenant"] for r in self._db.all("SELECT id, tenant FROM batches", {})
        }
        counts: dict[str | None, list[Any]] = {
            t: [dict.fromkeys(STATES, 0), 0, 0] for t in (None, *tenant_of.values())
        }
        for r in self._db.all(
            "SELECT batch_id, state, online, disabled, COUNT(*) AS n FROM devices"
            " GROUP BY batch_id, state, online, disabled",
            {},
        ):
            tenant = tenant_of.get(int(r["batch_id"]))
            if tenant is None:  # not a batch's: summary's join leaves it out too
                continue
            n = int(r["n"])
            for c in (counts[tenant], counts[None]):
                c[0][r["state"]] = c[0].get(r["state"], 0) + n
                c[1] += n if r["online"] else 0
                c[2] += n if r["disabled"] else 0
        return {
            t: FleetSummary(sum(by_state.values()), by_state, online, disabled)
            for t, (by_state, online, disabled) in counts.items()
        }

    def onboardings_per_minute(
        self, tenant: str | None, now: float, minutes: int = 60
    ) -> list[int]:
        """Devices first onboarded in each of the last `minutes` minutes before `now`, oldest
        first (the last one ends at `now`)."""
        if not 1 <= minutes <= 24 * 60:
            raise Invalid(f"the chart covers 1 to 1440 minutes, not {minutes}")
        since = now - 60 * minutes
        # Minutes since `since`, rounded down (the value is never negative here): SQLite's CAST
        # truncates, PostgreSQL's rounds.
        minute = "(d.onboarded_at - :since) / 60"
        minute = (
            f"FLOOR({minute})" if self._db.dialect == "postgresql" else f"CAST({minute} AS INTEGER)"
        )
        sql = _tenant(
            f"SELECT {minute} AS m, COUNT(*) AS n {_DEVICES}"
            " AND d.onboarded_at >= :since AND d.onboarded_at < :now",
            tenant,
        )
        counts = [0] * minutes
        for r in self._db.all(
            f"{sql} GROUP BY {minute}", {"tenant": tenant, "since": since, "now": now}
        ):
            m = int(r["m"])
            if 0 <= m < minutes:
                counts[m] += int(r["n"])
        return counts

    def alerts(
        self,
        tenant: str | None,
        now: float,
        expiring_within_s: float = 7 * 86400,
        puf_drift_pct: int = 50,
        limit: int = 10,
    ) -> Alerts:
        """The dashboard's alerts, each list its first `limit` items and its total: onboarded
        devices whose certificate ends before `now + expiring_within_s` (soonest first, the
        expired ones too), devices that rolled an update back or refused it (newest first),
        devices past `puf_drift_pct` of their PUF correction budget, halted rollouts."""
        p: dict[str, Any] = {
            "tenant": tenant,
            "limit": limit,
            "until": now + expiring_within_s,
            "onboarded": STATE_ONBOARDED,
            "pct": puf_drift_pct,
            "rb": OTA_ROLLED_BACK,
            "rf": OTA_REFUSED,
            "halted": ROLLOUT_HALTED,
        }
        expiring_where = _tenant(
            f"{_DEVICES} AND d.state = :onboarded AND d.not_after < :until", tenant
        )
        expiring = AlertList(
            [
                ExpiringCert(r["device_id"], r["tenant"], r["not_after"])
                for r in self._db.all(
                    f"SELECT d.device_id, b.tenant, d.not_after {expiring_where}"
                    " ORDER BY d.not_after, d.device_id LIMIT :limit",
                    p,
                )
            ],
            self._count(expiring_where, p),
        )
        failed_where = _tenant(
            "FROM ota_rollout_devices rd JOIN ota_rollouts r ON r.id = rd.rollout_id"
            " WHERE rd.state IN (:rb, :rf)",
            tenant,
            "r.tenant",
        )
        failed = AlertList(
            [
                FailedUpdate(
                    int(r["rollout_id"]),
                    r["device_id"],
                    r["tenant"],
                    r["state"],
                    r["reason"],
                    r["updated_at"],
                )
                for r in self._db.all(
                    "SELECT rd.rollout_id, rd.device_id, r.tenant, rd.state, rd.reason,"
                    f" rd.updated_at {failed_where}"
                    " ORDER BY rd.updated_at DESC, rd.device_id LIMIT :limit",
                    p,
                )
            ],
            self._count(failed_where, p),
        )
        puf_where = _tenant(f"{_DEVICES} AND d.puf_used_pct >= :pct", tenant)
        puf = AlertList(
            [
                PufWarning(r["device_id"], r["tenant"], int(r["puf_used_pct"]))
                for r in self._db.all(
                    f"SELECT d.device_id, b.tenant, d.puf_used_pct {puf_where}"
                    " ORDER BY d.puf_used_pct DESC, d.device_id LIMIT :limit",
                    p,
                )
            ],
            self._count(puf_where, p),
        )
        halted_where = _tenant("FROM ota_rollouts WHERE state = :halted", tenant, "tenant")
        halted = AlertList(
            [
                HaltedRollout(
                    int(r["id"]), r["tenant"], r["release_id"], r["detail"], r["updated_at"]
                )
                for r in self._db.all(
                    f"SELECT id, tenant, release_id, detail, updated_at {halted_where}"
                    " ORDER BY updated_at DESC, id DESC LIMIT :limit",
                    p,
                )
            ],
            self._count(halted_where, p),
        )
        return Alerts(expiring, failed, puf, halted)

    def _count(self, where: str, params: dict[str, Any]) -> int:
        row = self._db.one(f"SELECT COUNT(*) AS n {where}", params)
        return int((row or {}).get("n") or 0)

    # -- the live feed -----------------------------------------------------------------------
    def changes_since(self, cursor: float, limit: int = 500) -> list[DeviceChange]:
        """Devices whose `changed_at` is after `cursor`, oldest change first, every tenant (the
        feed matches each to its listeners). Pass the last one's `changed_at` as the next
        cursor: a full answer leaves out its last rows that share one `changed_at` (unless all
        do), so the next call starts with all of them and none is skipped."""
        rows = self._db.all(
            "SELECT d.device_id, b.tenant, d.state, d.disabled, d.online, d.fw, d.last_seen,"
            " d.last_telemetry, d.changed_at FROM devices d JOIN batches b ON b.id = d.batch_id"
            " WHERE d.changed_at > :cursor ORDER BY d.changed_at, d.device_id LIMIT :limit",
            {"cursor": cursor, "limit": limit},
        )
        if len(rows) == limit:
            last = rows[-1]["changed_at"]
            kept = [r for r in rows if r["changed_at"] != last]
            rows = kept or rows
        return [_change(r) for r in rows]

    def rollout_changes_since(self, cursor: float) -> list[RolloutChange]:
        """Rollouts whose row or any of whose devices' rows changed after `cursor`, oldest
        change first."""
        rows = self._db.all(
            "SELECT id, tenant, MAX(at) AS at FROM ("
            " SELECT id, tenant, updated_at AS at FROM ota_rollouts WHERE updated_at > :c"
            " UNION ALL"
            " SELECT r.id, r.tenant, rd.updated_at AS at FROM ota_rollout_devices rd"
            " JOIN ota_rollouts r ON r.id = rd.rollout_id WHERE rd.updated_at > :c"
            ") u GROUP BY id, tenant ORDER BY MAX(at), id",
            {"c": cursor},
        )
        return [RolloutChange(int(r["id"]), r["tenant"], r["at"]) for r in rows]

    def telemetry_history(self, device_id: str) -> list[tuple[float, dict[str, Any]]]:
        """The device's last telemetry messages (at most TELEMETRY_SLOTS), oldest first."""
        rows = self._db.all(
            "SELECT at, body FROM telemetry_samples WHERE device_id = :d ORDER BY at, slot",
            {"d": device_id},
        )
        return [(r["at"], json.loads(r["body"])) for r in rows]
