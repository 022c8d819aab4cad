"""OTA rollouts (docs/ota.md "Rollout"): a release offered to a share of a batch, and each
device's progress in it.

A device's row moves forward only: offered -> downloading -> staged -> trial -> committed, and
rolled_back or refused from any state before an end; committed, rolled_back and refused end it.
A late or repeated event (MQTT QoS 1 delivers at least once, and a device reports again after a
power cut) never moves a row back and never leaves an end. A rollout's own state moves only
from the states a change names (`set_state`), so two processes that race (a device's failure
halting it while an operator pauses it) leave one outcome, each audited once.

Halting or aborting a rollout expires, in the same transaction, its `ota` commands that no
device has accepted yet (store/commands.py: `queued`), so the event intake stops sending them
again when the device comes online.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass
from typing import Any

from host.server.schemas import (
    COMMAND_DELIVERED,
    COMMAND_EXPIRED,
    COMMAND_QUEUED,
    OTA_COMMITTED,
    OTA_DOWNLOADING,
    OTA_ENDED,
    OTA_FAILED,
    OTA_OFFERED,
    OTA_REFUSED,
    OTA_ROLLED_BACK,
    OTA_STAGED,
    OTA_STATES,
    OTA_TRIAL,
    ROLLOUT_ACTIVE,
    ROLLOUT_PAUSED,
    STATE_ONBOARDED,
    RolloutDeviceOut,
    RolloutSummary,
)
from host.server.store import audit, batches
from host.server.store.audit import Actor
from host.server.store.database import Database, Tx
from host.server.store.errors import Conflict

NO_OTA_KEY = "no_ota_key"  # the server's own refusal: the device never sent its OTA key
OPEN_ROLLOUT = (ROLLOUT_ACTIVE, ROLLOUT_PAUSED)  # a batch has at most one of these
# A state may follow any state of a lower rank that has not ended.
_RANK = {
    OTA_OFFERED: 0,
    OTA_DOWNLOADING: 1,
    OTA_STAGED: 2,
    OTA_TRIAL: 3,
    OTA_COMMITTED: 4,
    OTA_ROLLED_BACK: 4,
    OTA_REFUSED: 4,
}
_SUMMARY = (
    "SELECT r.id, r.release_id, b.name AS batch, r.tenant, r.percent, r.max_failures, r.state,"
    " r.detail, r.created_at, r.created_by, r.updated_at"
    " FROM ota_rollouts r JOIN batches b ON b.id = r.batch_id"
)
# Failures that count against max_failures: the device's own word, not the server's
# no_ota_key (that device never tried the release, so it says nothing about it).
_FAILURES = "SUM(CASE WHEN state IN (:rb, :rf) AND COALESCE(reason, '') <> :nk THEN 1 ELSE 0 END)"
_FAILURE_PARAMS = {"rb": OTA_ROLLED_BACK, "rf": OTA_REFUSED, "nk": NO_OTA_KEY}


@dataclass(frozen=True)
class RolloutRow:
    """What the use cases need of a rollout besides its summary."""

    id: int
    release_id: str
    batch_id: int
    tenant: str
    percent: int
    max_failures: int
    state: str


@dataclass(frozen=True)
class Candidate:
    """An onboarded, enabled device of a batch, and whether the server holds its OTA key."""

    device_id: str
    has_key: bool


@dataclass(frozen=True)
class Advanced:
    """A device's event applied to its row in rollout `rollout_id` (`changed`: it moved)."""

    rollout_id: int
    changed: bool
    failures: int


def share(percent: int, devices: int) -> int:
    """How many of `devices` a rollout of `percent` offers to: rounded up (ceil), so any
    percentage of a non-empty batch reaches at least one device."""
    return -(-percent * devices // 100)


def _row(r: dict[str, Any]) -> RolloutRow:
    return RolloutRow(
        int(r["id"]),
        r["release_id"],
        int(r["batch_id"]),
        r["tenant"],
        int(r["percent"]),
        int(r["max_failures"]),
        r["state"],
    )


def _actor_name(actor: Actor) -> str:
    return actor.name[:128]


class Rollouts:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- reads -------------------------------------------------------------------------
    def batch(self, name: str, tenant: str | None) -> dict[str, Any]:
        """The batch row (id, name, tenant, policy, ...): NotFound with the step to take."""
        with self._db.transaction(write=False) as tx:
            return batches.find(tx, name, tenant)

    def candidates(self, batch_id: int) -> builtins.list[Candidate]:
        """The batch's onboarded, enabled devices in device ID order (a rollout's share is
        taken from its head)."""
        rows = self._db.all(
            "SELECT device_id, CASE WHEN ota_key IS NULL THEN 0 ELSE 1 END AS has_key"
            " FROM devices WHERE batch_id = :b AND state = :s AND disabled = FALSE"
            " ORDER BY device_id",
            {"b": batch_id, "s": STATE_ONBOARDED},
        )
        return [Candidate(r["device_id"], bool(r["has_key"])) for r in rows]

    def eligible(self, batch_id: int) -> int:
        """How many devices `candidates` would list."""
        row = self._db.one(
            "SELECT COUNT(*) AS n FROM devices WHERE batch_id = :b AND state = :s"
            " AND disabled = FALSE",
            {"b": batch_id, "s": STATE_ONBOARDED},
        )
        return int((row or {}).get("n") or 0)

    def has_ota_key(self, device_id: str) -> bool:
        row = self._db.one(
            "SELECT 1 FROM devices WHERE device_id = :d AND ota_key IS NOT NULL", {"d": device_id}
        )
        return row is not None

    def row(self, rollout_id: int, tenant: str | None = None) -> RolloutRow | None:
        sql = "SELECT * FROM ota_rollouts WHERE id = :id"
        if tenant is not None:
            sql += " AND tenant = :t"
        r = self._db.one(sql, {"id": rollout_id, "t": tenant})
        return None if r is None else _row(r)

    def summary(self, rollout_id: int, tenant: str | None = None) -> RolloutSummary | None:
        found = self._summaries(" WHERE r.id = :id", {"id": rollout_id}, tenant)
        return found[0] if found else None

    def list(self, tenant: str | None = None) -> builtins.list[RolloutSummary]:
        """Newest first."""
        return self._summaries("", {}, tenant)

    def _summaries(
        self, where: str, params: dict[str, Any], tenant: str | None
    ) -> builtins.list[RolloutSummary]:
        if tenant is not None:
            where += (" AND" if where else " WHERE") + " r.tenant = :t"
            params = {**params, "t": tenant}
        rows = self._db.all(_SUMMARY + where + " ORDER BY r.id DESC", params)
        if not rows:
            return []
        ids = {f"i{n}": r["id"] for n, r in enumerate(rows)}
        counts: dict[int, dict[str, int]] = {r["id"]: dict.fromkeys(OTA_STATES, 0) for r in rows}
        failures: dict[int, int] = dict.fromkeys(counts, 0)
        marks = ", ".join(f":{k}" for k in ids)
        for c in self._db.all(
            f"SELECT rollout_id, state, COUNT(*) AS n, {_FAILURES} AS f"
            f" FROM ota_rollout_devices WHERE rollout_id IN ({marks}) GROUP BY rollout_id, state",
            {**ids, **_FAILURE_PARAMS},
        ):
            counts[c["rollout_id"]][c["state"]] = int(c["n"])
            failures[c["rollout_id"]] += int(c["f"] or 0)
        return [
            RolloutSummary.model_construct(
                id=r["id"],
                release=r["release_id"],
                batch=r["batch"],
                tenant=r["tenant"],
                percent=r["percent"],
                max_failures=r["max_failures"],
                state=r["state"],
                detail=r["detail"],
                created_at=r["created_at"],
                created_by=r["created_by"],
                updated_at=r["updated_at"],
                counts=counts[r["id"]],
                failures=failures[r["id"]],
            )
            for r in rows
        ]

    def devices(self, rollout_id: int) -> builtins.list[RolloutDeviceOut]:
        """Every device's row, by device ID."""
        return [
            RolloutDeviceOut.model_construct(**r)
            for r in self._db.all(
                "SELECT device_id, state, reason, seq, updated_at FROM ota_rollout_devices"
                " WHERE rollout_id = :r ORDER BY device_id",
                {"r": rollout_id},
            )
        ]

    def open_offer(self, release_id: str, device_id: str) -> int | None:
        """The newest active or paused rollout of `release_id` in which the device's offer is
        open (not ended): its ID, else None."""
        row = self._db.one(
            "SELECT r.id FROM ota_rollout_devices rd JOIN ota_rollouts r ON r.id = rd.rollout_id"
            " WHERE rd.device_id = :d AND r.release_id = :rel AND r.state IN (:a, :p)"
            " AND rd.state NOT IN (:c, :rb, :rf) ORDER BY r.id DESC LIMIT 1",
            {
                "d": device_id,
                "rel": release_id,
                "a": ROLLOUT_ACTIVE,
                "p": ROLLOUT_PAUSED,
                "c": OTA_COMMITTED,
                "rb": OTA_ROLLED_BACK,
                "rf": OTA_REFUSED,
            },
        )
        return None if row is None else int(row["id"])

    def to_offer(self, device_id: str) -> tuple[RolloutRow, bool] | None:
        """The active rollout of the device's batch that has no live offer for it (no row, or
        an `offered` row whose command was never stored or expired unaccepted), and whether
        the row exists: one indexed read, so an `online` event costs little while no rollout
        runs."""
        row = self._db.one(
            "SELECT r.*, rd.device_id AS has_row FROM devices d"
            " JOIN ota_rollouts r ON r.batch_id = d.batch_id"
            " LEFT JOIN ota_rollout_devices rd ON rd.rollout_id = r.id"
            " AND rd.device_id = d.device_id"
            " WHERE d.device_id = :d AND r.state = :a"
            " AND (rd.device_id IS NULL OR (rd.state = :o AND (rd.seq IS NULL OR EXISTS ("
            "SELECT 1 FROM commands c WHERE c.device_id = rd.device_id AND c.seq = rd.seq"
            " AND (c.state = :e OR (c.state IN (:q, :dl) AND c.expires_at <= :now))))))"
            " ORDER BY r.id DESC LIMIT 1",
            {
                "d": device_id,
                "a": ROLLOUT_ACTIVE,
                "o": OTA_OFFERED,
                "e": COMMAND_EXPIRED,
                "q": COMMAND_QUEUED,
                "dl": COMMAND_DELIVERED,
                "now": time.time(),
            },
        )
        return None if row is None else (_row(row), row["has_row"] is not None)

    def rows(self, rollout_id: int) -> int:
        row = self._db.one(
            "SELECT COUNT(*) AS n FROM ota_rollout_devices WHERE rollout_id = :r",
            {"r": rollout_id},
        )
        return int((row or {}).get("n") or 0)

    def open_rows(self, rollout_id: int) -> int:
        """Rows not ended yet."""
        row = self._db.one(
            "SELECT COUNT(*) AS n FROM ota_rollout_devices WHERE rollout_id = :r"
            " AND state NOT IN (:c, :rb, :rf)",
            {"r": rollout_id, "c": OTA_COMMITTED, "rb": OTA_ROLLED_BACK, "rf": OTA_REFUSED},
        )
        return int((row or {}).get("n") or 0)

    # -- changes -----------------------------------------------------------------------
    def create(
        self,
        *,
        release_id: str,
        batch_id: int,
        batch: str,
        tenant: str,
        percent: int,
        max_failures: int,
        offered: builtins.list[str],
        no_key: builtins.list[str],
        actor: Actor,
    ) -> int:
        """A new active rollout with a row for each device of its share (`offered`, their
        commands not stored yet; `no_key` refused as no_ota_key). Conflict when the batch has
        an active or paused rollout: its devices would get two offers."""
        now = time.time()
        with self._db.transaction() as tx:
            busy = tx.one(
                "SELECT id, state FROM ota_rollouts WHERE batch_id = :b AND state IN (:a, :p)",
                {"b": batch_id, "a": ROLLOUT_ACTIVE, "p": ROLLOUT_PAUSED},
            )
            if busy is not None:
                raise Conflict(
                    f"batch {batch} already has rollout {busy['id']} ({busy['state']}); a "
                    f"device takes one offer at a time: abort it first (qlink ota rollout "
                    f"abort {busy['id']})"
                )
            made = tx.one(
                "INSERT INTO ota_rollouts (release_id, batch_id, tenant, percent, max_failures,"
                " state, detail, created_at, created_by, updated_at) VALUES (:rel, :b, :t, :p,"
                " :f, :s, NULL, :now, :by, :now) RETURNING id",
                {
                    "rel": release_id,
                    "b": batch_id,
                    "t": tenant,
                    "p": percent,
                    "f": max_failures,
                    "s": ROLLOUT_ACTIVE,
                    "now": now,
                    "by": _actor_name(actor),
                },
            )
            assert made is not None  # RETURNING gives the row just inserted
            rid = int(made["id"])
            rows = [
                {"r": rid, "d": d, "s": OTA_OFFERED, "why": None, "now": now} for d in offered
            ] + [
                {"r": rid, "d": d, "s": OTA_REFUSED, "why": NO_OTA_KEY, "now": now} for d in no_key
            ]
            if rows:
                tx.executemany(
                    "INSERT INTO ota_rollout_devices (rollout_id, device_id, state, reason, seq,"
                    " updated_at) VALUES (:r, :d, :s, :why, NULL, :now)",
                    rows,
                )
            audit.record(
                tx,
                actor,
                tenant,
                "ota.rollout_create",
                f"rollout:{rid}",
                release=release_id,
                batch=batch,
                percent=percent,
                max_failures=max_failures,
                offered=len(offered),
                no_ota_key=len(no_key),
            )
        return rid

    def add_device(self, rollout_id: int, device_id: str, has_key: bool) -> bool:
        """A device that came online joins the rollout's share: offered, or refused as
        no_ota_key. False when it has a row already (another event got there first)."""
        return (
            self._db.write_one(
                "INSERT INTO ota_rollout_devices (rollout_id, device_id, state, reason, seq,"
                " updated_at) VALUES (:r, :d, :s, :why, NULL, :now)"
                " ON CONFLICT (rollout_id, device_id) DO NOTHING",
                {
                    "r": rollout_id,
                    "d": device_id,
                    "s": OTA_OFFERED if has_key else OTA_REFUSED,
                    "why": None if has_key else NO_OTA_KEY,
                    "now": time.time(),
                },
            )
            == 1
        )

    def drop(self, rollout_id: int, device_id: str) -> None:
        """Forget a row whose offer could not be stored (the device was revoked or disabled
        since it was chosen): it was never offered, and would keep the rollout from ending."""
        self._db.write_one(
            "DELETE FROM ota_rollout_devices WHERE rollout_id = :r AND device_id = :d"
            " AND state = :o AND seq IS NULL",
            {"r": rollout_id, "d": device_id, "o": OTA_OFFERED},
        )

    def commanded(self, rollout_id: int, device_id: str, seq: int) -> None:
        """The offer's `ota` command is stored with `seq`."""
        self._db.write_one(
            "UPDATE ota_rollout_devices SET seq = :seq, updated_at = :now"
            " WHERE rollout_id = :r AND device_id = :d",
            {"r": rollout_id, "d": device_id, "seq": seq, "now": time.time()},
        )

    def advance(
        self,
        release_id: str,
        device_id: str,
        state: str,
        reason: str | None,
        actor: Actor,
        *,
        rollout_id: int | None = None,
    ) -> Advanced | None:
        """The device's row in the newest rollout of `release_id` that has one (or in
        `rollout_id`) moves to `state` if that is forward; None when it has no such row."""
        before = tuple(s for s, rank in _RANK.items() if rank < _RANK[state] and s not in OTA_ENDED)
        marks = ", ".join(f":b{n}" for n in range(len(before)))
        where = "rd.device_id = :d AND r.release_id = :rel"
        params: dict[str, Any] = {"d": device_id, "rel": release_id}
        if rollout_id is not None:
            where += " AND r.id = :rid"
            params["rid"] = rollout_id
        with self._db.transaction() as tx:
            found = tx.one(
                "SELECT r.id, r.tenant FROM ota_rollout_devices rd"
                " JOIN ota_rollouts r ON r.id = rd.rollout_id"
                f" WHERE {where} ORDER BY r.id DESC LIMIT 1",
                params,
            )
            if found is None:
                return None
            rid = int(found["id"])
            changed = bool(before) and (
                tx.execute(
                    "UPDATE ota_rollout_devices SET state = :s, reason = :why, updated_at = :now"
                    f" WHERE rollout_id = :r AND device_id = :d AND state IN ({marks})",
                    {
                        "s": state,
                        "why": reason[:64] if reason and state in OTA_FAILED else None,
                        "now": time.time(),
                        "r": rid,
                        "d": device_id,
                        **{f"b{n}": s for n, s in enumerate(before)},
                    },
                )
                == 1
            )
            if changed:
                detail: dict[str, Any] = {"rollout": rid, "release": release_id}
                if reason and state in OTA_FAILED:
                    detail["reason"] = reason[:64]
                audit.record(
                    tx,
                    actor,
                    found["tenant"],
                    f"ota.device_{state}",
                    f"device:{device_id}",
                    **detail,
                )
            failures = tx.one(
                f"SELECT {_FAILURES} AS f FROM ota_rollout_devices WHERE rollout_id = :r",
                {"r": rid, **_FAILURE_PARAMS},
            )
        return Advanced(rid, changed, int((failures or {}).get("f") or 0))

    def set_state(
        self,
        rollout_id: int,
        to: str,
        from_states: tuple[str, ...],
        actor: Actor,
        *,
        detail: str | None = None,
        expire: bool = False,
    ) -> bool:
        """Move the rollout to `to` if it is in one of `from_states` (audited as
        `ota.rollout_<to>`); with `expire`, its `ota` commands no device accepted yet expire
        in the same transaction. False when it was in none of them."""
        marks = ", ".join(f":f{n}" for n in range(len(from_states)))
        now = time.time()
        with self._db.transaction() as tx:
            row = tx.one(
                f"UPDATE ota_rollouts SET state = :to, updated_at = :now,"
                f" detail = COALESCE(:detail, detail)"
                f" WHERE id = :r AND state IN ({marks}) RETURNING tenant, release_id",
                {
                    "to": to,
                    "now": now,
                    "detail": detail,
                    "r": rollout_id,
                    **{f"f{n}": s for n, s in enumerate(from_states)},
                },
            )
            if row is None:
                return False
            expired = _expire_offers(tx, rollout_id, now) if expire else 0
            extra: dict[str, Any] = {"release": row["release_id"]}
            if detail:
                extra["detail"] = detail
            if expire:
                extra["expired_offers"] = expired
            audit.record(
                tx, actor, row["tenant"], f"ota.rollout_{to}", f"rollout:{rollout_id}", **extra
            )
        return True


def _expire_offers(tx: Tx, rollout_id: int, now: float) -> int:
    """The rollout's `ota` commands still queued (no device accepted them): expired."""
    return tx.execute(
        "UPDATE commands SET state = :e, updated_at = :now WHERE kind = 'ota' AND state = :q"
        " AND EXISTS (SELECT 1 FROM ota_rollout_devices rd WHERE rd.rollout_id = :r"
        " AND rd.device_id = commands.device_id AND rd.seq = commands.seq)",
        {"e": COMMAND_EXPIRED, "q": COMMAND_QUEUED, "now": now, "r": rollout_id},
    )
