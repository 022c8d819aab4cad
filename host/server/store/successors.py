"""The successor step's record (docs/protocol.md "Successor identities"): in one transaction the
next identity is registered, the current one revoked (its certificate onto the CRL's list) and
the command that asked for the move marked done. A crash leaves either all of it or none, so the
device's retry of the same request finds the one or the other.

Audit: a transfer writes each owner's side in its own tenant's log, the old ID only in the old
tenant's and the next ID only in the new tenant's; a re-enrolment (one tenant) names both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from host.server.schemas import (
    COMMAND_DELIVERED,
    COMMAND_DONE,
    COMMAND_QUEUED,
    STATE_ONBOARDED,
    STATE_REGISTERED,
    STATE_REVOKED,
    DeviceRecord,
)
from host.server.store import audit
from host.server.store.audit import Actor
from host.server.store.commands import report_in
from host.server.store.database import Database, Tx
from host.server.store.devices import REVOKE_SERIAL
from host.server.store.errors import DuplicateKey, StoreError
from host.server.store.transfers import CLAIMED, DONE

TRANSFER, REENROL = "transfer", "reenrol"
REASONS = (TRANSFER, REENROL)


class NoSuccessorExpected(StoreError):
    """No open `transfer`/`reenrol` command with that seq (or, for a transfer, no claim)."""


class SuccessorTaken(StoreError):
    """The next ID is registered already, to another device."""


class NotOnboarded(StoreError):
    """The current identity is not onboarded (any more)."""


@dataclass(frozen=True)
class Move:
    """A successor request that passed its signature check."""

    current: DeviceRecord
    next_id: str
    public_key: bytes  # the next identity's, uncompressed
    reason: str  # transfer or reenrol
    seq: int
    source: str  # the request's address, for the audit log


@dataclass(frozen=True)
class _Target:
    batch_id: int
    batch: str
    tenant: str
    epoch: int
    transfer_id: int | None = None
    claim: str | None = None


class Successors:
    def __init__(self, db: Database) -> None:
        self._db = db

    def answered(self, device_id: str, reason: str, seq: int, next_id: str) -> bool:
        """Whether command `seq` of the device moved it to `next_id` already (the same request
        again gets the same answer)."""
        params = {"d": device_id, "seq": seq, "n": next_id}
        if reason == TRANSFER:
            sql = (
                "SELECT 1 FROM transfers WHERE device_id = :d AND seq = :seq AND state = :done"
                " AND successor = :n"
            )
            params["done"] = DONE
        else:
            sql = (
                "SELECT 1 FROM devices d JOIN commands c ON c.device_id = d.device_id"
                " WHERE d.device_id = :d AND d.successor = :n AND c.seq = :seq"
                " AND c.kind = :kind AND c.state = :done"
            )
            params.update(kind=REENROL, done=COMMAND_DONE)
        return self._db.one(sql, params) is not None

    def record(self, move: Move) -> None:
        """Register the next identity, revoke the current one, mark the command done: all or
        nothing. Raises NoSuccessorExpected, SuccessorTaken or NotOnboarded (nothing changed)."""
        now = time.time()
        current = move.current
        with self._db.transaction() as tx:
            _expect_command(tx, current.device_id, move.reason, move.seq, now)
            target = _target(tx, move)
            if tx.one("SELECT 1 FROM devices WHERE device_id = :n", {"n": move.next_id}):
                raise SuccessorTaken(move.next_id)
            try:
                tx.execute(
                    "INSERT INTO devices (device_id, public_key, batch_id, state, disabled,"
                    " policy_exception, epoch, predecessor, changed_at) VALUES (:n, :pub,"
                    " :batch_id, :registered, FALSE, FALSE, :epoch, :pred, :now)",
                    {
                        "now": now,
                        "n": move.next_id,
                        "pub": move.public_key,
                        "batch_id": target.batch_id,
                        "registered": STATE_REGISTERED,
                        "epoch": target.epoch,
                        "pred": current.device_id if move.reason == REENROL else None,
                    },
                )
            except DuplicateKey:  # registered by a concurrent request or import
                raise SuccessorTaken(move.next_id) from None
            revoked = tx.one(
                "UPDATE devices SET state = :revoked, revoked_at = :now, successor = :succ,"
                " online = FALSE, changed_at = :now"
                " WHERE device_id = :d AND state = :onboarded AND disabled = FALSE"
                " RETURNING serial, not_after",
                {
                    "revoked": STATE_REVOKED,
                    "now": now,
                    "succ": move.next_id if move.reason == REENROL else None,
                    "d": current.device_id,
                    "onboarded": STATE_ONBOARDED,
                },
            )
            if revoked is None:
                raise NotOnboarded(current.device_id)
            serial = revoked["serial"]
            if serial is not None and revoked["not_after"] is not None:
                tx.execute(
                    REVOKE_SERIAL,
                    {
                        "serial": serial,
                        "device_id": current.device_id,
                        "not_after": revoked["not_after"],
                        "now": now,
                    },
                )
            if not report_in(tx, current.device_id, move.seq, COMMAND_DONE, None, now, move.source):
                raise NoSuccessorExpected(current.device_id)
            if target.transfer_id is not None:
                tx.execute(
                    "UPDATE transfers SET state = :done, successor = :n, completed_at = :now"
                    " WHERE id = :id",
                    {"done": DONE, "n": move.next_id, "now": now, "id": target.transfer_id},
                )
            _audit(tx, move, target, serial)


def _expect_command(tx: Tx, device_id: str, reason: str, seq: int, now: float) -> None:
    cmd = tx.one(
        "SELECT kind, state, expires_at FROM commands WHERE device_id = :d AND seq = :seq",
        {"d": device_id, "seq": seq},
    )
    if (
        cmd is None
        or cmd["kind"] != reason
        or cmd["state"] not in (COMMAND_QUEUED, COMMAND_DELIVERED)
        or cmd["expires_at"] <= now
    ):
        raise NoSuccessorExpected(device_id)


def _target(tx: Tx, move: Move) -> _Target:
    """Where the next identity goes: the claim's batch (transfer, the claimed epoch), or the
    current batch (re-enrolment, epoch 0 of a fresh set of seeds)."""
    if move.reason == REENROL:
        row = tx.one(
            "SELECT d.batch_id, b.name, b.tenant FROM devices d"
            " JOIN batches b ON b.id = d.batch_id WHERE d.device_id = :d",
            {"d": move.current.device_id},
        )
        if row is None:
            raise NotOnboarded(move.current.device_id)
        return _Target(int(row["batch_id"]), row["name"], row["tenant"], 0)
    row = tx.one(
        "SELECT t.id, t.claim, t.to_tenant, t.to_batch_id, t.epoch, b.name FROM transfers t"
        " JOIN batches b ON b.id = t.to_batch_id"
        " WHERE t.device_id = :d AND t.seq = :seq AND t.state = :claimed",
        {"d": move.current.device_id, "seq": move.seq, "claimed": CLAIMED},
    )
    if row is None:
        raise NoSuccessorExpected(move.current.device_id)
    return _Target(
        int(row["to_batch_id"]),
        row["name"],
        row["to_tenant"],
        int(row["epoch"]),
        int(row["id"]),
        row["claim"],
    )


def _audit(tx: Tx, move: Move, target: _Target, serial: str | None) -> None:
    old, new = move.current.device_id, move.next_id
    old_actor = Actor(f"device:{old}", move.source)
    new_actor = Actor(f"device:{new}", move.source)
    tenant = move.current.tenant
    audit.record(tx, old_actor, tenant, "device.revoke", f"device:{old}", serial=serial)
    if move.reason == TRANSFER:
        audit.record(tx, old_actor, tenant, "device.transfer_out", f"device:{old}", seq=move.seq)
        audit.record(
            tx,
            new_actor,
            target.tenant,
            "device.transfer_in",
            f"device:{new}",
            batch=target.batch,
            claim=target.claim,
        )
    else:
        audit.record(
            tx,
            old_actor,
            tenant,
            "device.reenrol_out",
            f"device:{old}",
            successor=new,
            seq=move.seq,
        )
        audit.record(tx, new_actor, tenant, "device.reenrol_in", f"device:{new}", predecessor=old)
