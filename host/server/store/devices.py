"""Devices: identities registered by import, their onboarding state, certificate, broker
bookkeeping and last telemetry; and the certificates revoked with them (the CRL's source).

A device of another tenant is reported as not existing; `tenant=None` sees every tenant.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from host.server.schemas import STATE_REVOKED, STATES, DeviceRecord
from host.server.store import audit
from host.server.store.audit import Actor
from host.server.store.database import Database
from host.server.store.errors import Invalid

# A serial onto the CRL's list; one revoked before (a repeat, a crashed revocation) stays.
REVOKE_SERIAL = (
    "INSERT INTO revoked_certs (serial, device_id, not_after, revoked_at)"
    " VALUES (:serial, :device_id, :not_after, :now) ON CONFLICT (serial) DO NOTHING"
)

# The device row and its batch's columns that a DeviceRecord needs, in one join.
SELECT = (
    "SELECT d.device_id, d.public_key, d.state, d.disabled, d.policy_exception, d.cert_der,"
    " d.serial, d.not_after, d.onboarded_at, d.revoked_at, d.last_seen, d.last_telemetry,"
    " d.puf_used_pct, d.epoch, d.predecessor, d.successor, d.ota_key, d.used_challenge,"
    " d.used_proof,"
    " b.name AS batch_name, b.tenant, b.active, b.policy, b.target, t.kind AS target_kind"
    " FROM devices d JOIN batches b ON b.id = d.batch_id"
    " LEFT JOIN targets t ON t.name = b.target"
)
_BY_ID = SELECT + " WHERE d.device_id = :device_id"
_BY_ID_OF_TENANT = _BY_ID + " AND b.tenant = :tenant"
STATE_FILTERS = (*STATES, "disabled")
TELEMETRY_SLOTS = 64  # telemetry messages kept per device (docs/console.md)
FW_MAX = 20  # characters of the firmware version kept (devices.fw)
_TELEMETRY = (
    "UPDATE devices SET last_seen = :at, last_telemetry = :payload, fw = :fw, changed_at = :at"
    " WHERE device_id = :device_id"
    " AND batch_id IN (SELECT id FROM batches WHERE tenant = :tenant)"
)
# One row per slot: the upsert overwrites the message 64 sequence numbers older, so the history
# stays bounded without a pruning pass.
_SAMPLE = (
    "INSERT INTO telemetry_samples (device_id, slot, at, body) VALUES (:device_id, :slot, :at,"
    " :payload) ON CONFLICT (device_id, slot) DO UPDATE SET at = excluded.at, body = excluded.body"
)


@dataclass(frozen=True)
class RevokedCert:
    serial: int
    revoked_at: float


def record(m: Mapping[str, Any]) -> DeviceRecord:
    """A DeviceRecord from a row of SELECT (or of a join that names the same columns).

    Raw DBAPI rows: SQLite gives 0/1 for booleans, a driver may give memoryview for bytes.
    The row comes from our own schema, so it is not validated again (model_construct).
    """
    cert_der = m["cert_der"]
    telemetry = m["last_telemetry"]
    ota_key = m.get("ota_key")
    return DeviceRecord.model_construct(
        device_id=m["device_id"],
        batch=m["batch_name"],
        tenant=m["tenant"],
        state=m["state"],
        disabled=bool(m["disabled"]),
        serial=m["serial"],
        not_after=m["not_after"],
        onboarded_at=m["onboarded_at"],
        revoked_at=m["revoked_at"],
        last_seen=m["last_seen"],
        last_telemetry=json.loads(telemetry) if telemetry else None,
        puf_used_pct=m.get("puf_used_pct"),
        predecessor=m.get("predecessor"),
        successor=m.get("successor"),
        epoch=int(m.get("epoch") or 0),
        public_key=bytes(m["public_key"]),
        cert_der=None if cert_der is None else bytes(cert_der),
        batch_active=bool(m["active"]),
        policy=m["policy"],
        policy_exception=bool(m["policy_exception"]),
        target=m.get("target") or "managed",
        target_kind=m.get("target_kind"),
        ota_key=None if ota_key is None else bytes(ota_key),
        used_challenge=m.get("used_challenge"),
        used_proof=m.get("used_proof"),
    )


class Devices:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, device_id: str, tenant: str | None = None) -> DeviceRecord | None:
        if tenant is None:
            row = self._db.one(_BY_ID, {"device_id": device_id})
        else:
            row = self._db.one(_BY_ID_OF_TENANT, {"device_id": device_id, "tenant": tenant})
        return None if row is None else record(row)

    def list(
        self,
        tenant: str | None = None,
        batch: str | None = None,
        *,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        drifting_pct: int | None = None,
    ) -> list[DeviceRecord]:
        """By batch name, then device ID. `state` is registered, onboarded, revoked or
        disabled (the flag: a disabled device keeps its state); `drifting_pct`: only devices
        whose latest PUF report used at least that percent of the correction budget."""
        where: list[str] = []
        params: dict[str, Any] = {"tenant": tenant, "batch": batch, "state": state}
        if drifting_pct is not None:
            where.append("d.puf_used_pct >= :pct")
            params["pct"] = drifting_pct
        if tenant is not None:
            where.append("b.tenant = :tenant")
        if batch is not None:
            where.append("b.name = :batch")
        if state == "disabled":
            where.append("d.disabled = TRUE")
        elif state is not None:
            if state not in STATES:
                raise Invalid(f"state must be one of {', '.join(STATE_FILTERS)}, not {state!r}")
            where.append("d.state = :state")
        sql = SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY b.name, d.device_id"
        if limit is not None or offset:
            # LIMIT is what both databases take before OFFSET: "no limit" is a huge one.
            sql += " LIMIT :limit OFFSET :offset"
            params.update(limit=2**62 if limit is None else limit, offset=offset)
        return [record(r) for r in self._db.all(sql, params)]

    def denied(self, policy: str) -> builtins.list[DeviceRecord]:
        """Disabled or revoked devices of batches with `policy`: the exceptions a broker must
        keep (applied again when the server starts)."""
        sql = (
            SELECT + " WHERE b.policy = :policy AND (d.disabled = TRUE OR d.state = :revoked)"
            " ORDER BY d.device_id"
        )
        return [record(r) for r in self._db.all(sql, {"policy": policy, "revoked": STATE_REVOKED})]

    # -- the policy layer's bookkeeping -------------------------------------------------
    def set_policy_exception(self, device_id: str, held: bool) -> None:
        """Mark (committed at once) that the broker may hold an exception for the device, or
        that it holds none any more."""
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE devices SET policy_exception = :held WHERE device_id = :device_id",
                {"held": held, "device_id": device_id},
            )

    # -- state changes (host/server/lifecycle.py decides; these record) -----------------
    def revoke(self, dev: DeviceRecord, actor: Actor) -> bool:
        """The device revoked and its certificate on the CRL, with its audit event; False when
        it already was (nothing written)."""
        now = time.time()
        with self._db.transaction() as tx:
            row = tx.one(
                "UPDATE devices SET state = :revoked, revoked_at = :now, online = FALSE,"
                " changed_at = :now WHERE device_id = :device_id AND state <> :revoked"
                " RETURNING serial, not_after",
                {"revoked": STATE_REVOKED, "now": now, "device_id": dev.device_id},
            )
            if row is None:
                return False
            serial = row["serial"]
            if serial is not None and row["not_after"] is not None:
                # A serial revoked before (a repeat of a crashed revocation) stays as it was.
                tx.execute(
                    REVOKE_SERIAL,
                    {
                        "serial": serial,
                        "device_id": dev.device_id,
                        "not_after": row["not_after"],
                        "now": now,
                    },
                )
            audit.record(
                tx, actor, dev.tenant, "device.revoke", f"device:{dev.device_id}", serial=serial
            )
        return True

    def set_disabled(self, dev: DeviceRecord, disabled: bool, actor: Actor) -> bool:
        """Disable or enable, with its audit event; False when it already was so."""
        with self._db.transaction() as tx:
            # Disabling drops the live connection; enabling lets it connect again, and its
            # `online` event says when it did.
            changed = tx.execute(
                "UPDATE devices SET disabled = :disabled, online = FALSE, changed_at = :now"
                " WHERE device_id = :device_id AND disabled = :was",
                {
                    "disabled": disabled,
                    "was": not disabled,
                    "device_id": dev.device_id,
                    "now": time.time(),
                },
            )
            if changed:
                action = "device.disable" if disabled else "device.enable"
                audit.record(
                    tx, actor, dev.tenant, action, f"device:{dev.device_id}", serial=dev.serial
                )
        return bool(changed)

    def revoked_certs(self, now: float | None = None) -> builtins.list[RevokedCert]:
        """Revoked certificates not yet expired (an expired one leaves the CRL, RFC 5280 3.3)."""
        now = time.time() if now is None else now
        rows = self._db.all(
            "SELECT serial, revoked_at FROM revoked_certs WHERE not_after > :now"
            " ORDER BY revoked_at",
            {"now": now},
        )
        return [RevokedCert(int(r["serial"], 16), r["revoked_at"]) for r in rows]

    def record_telemetry(
        self, device_id: str, payload: dict[str, Any], at: float, tenant: str
    ) -> bool:
        """Keep the last telemetry of a known device of `tenant` (the tenant its topic names),
        its firmware version and the message in its history slot (seq modulo
        TELEMETRY_SLOTS); False if there is no such device in that tenant (nothing written).
        `payload` is a parsed telemetry object (host/server/telemetry.py: `seq` an int >= 1;
        without one the message has no slot in the history)."""
        fw = payload.get("fw")
        params = {
            "at": at,
            "payload": json.dumps(payload, sort_keys=True),
            "fw": fw[:FW_MAX] if isinstance(fw, str) else None,
            "device_id": device_id,
            "tenant": tenant,
        }
        seq = payload.get("seq")
        with self._db.transaction() as tx:
            if not tx.execute(_TELEMETRY, params):
                return False
            if isinstance(seq, int):  # always, from the intakes (parse_telemetry)
                tx.execute(_SAMPLE, {**params, "slot": seq % TELEMETRY_SLOTS})
        return True

    def set_online(self, device_id: str, online: bool, at: float | None = None) -> bool:
        """Record the device's presence at its broker (its `online` event, or the broker's
        report that its connection closed); False when it already was so or does not exist."""
        at = time.time() if at is None else at
        return bool(
            self._db.write_one(
                "UPDATE devices SET online = :online, changed_at = :at"
                " WHERE device_id = :device_id AND online = :was",
                {"online": online, "was": not online, "at": at, "device_id": device_id},
            )
        )
