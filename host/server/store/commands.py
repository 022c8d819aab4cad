"""Commands the server signed for devices (docs/protocol.md "Command channel"), and their state.

A command's sequence number is the device's next one, taken inside the transaction that stores
it (a unique key on device and seq settles a race between two processes: the loser retries).
States only move forward: queued -> delivered -> done | failed; queued or delivered -> expired
once its expiry has passed without an outcome. An outcome reported twice, or for a command that
has ended, changes nothing.
"""

from __future__ import annotations

import builtins
import json
import time
from typing import Any

from host.server.schemas import (
    COMMAND_DELIVERED,
    COMMAND_DONE,
    COMMAND_EXPIRED,
    COMMAND_FAILED,
    COMMAND_QUEUED,
    CommandOut,
    DeviceRecord,
)
from host.server.store import audit
from host.server.store.audit import Actor
from host.server.store.database import Database, Tx
from host.server.store.errors import DuplicateKey

_COLUMNS = "device_id, tenant, seq, kind, args, state, created_at, expires_at, updated_at, detail"
_OPEN = (COMMAND_QUEUED, COMMAND_DELIVERED)
# Which states an outcome may move a command from.
_FROM = {
    COMMAND_DELIVERED: (COMMAND_QUEUED,),
    COMMAND_DONE: _OPEN,
    COMMAND_FAILED: _OPEN,
}
_ATTEMPTS = 5


def _out(row: dict[str, Any]) -> CommandOut:
    return CommandOut.model_construct(
        device_id=row["device_id"],
        tenant=row["tenant"],
        seq=row["seq"],
        kind=row["kind"],
        args=json.loads(row["args"]),
        state=row["state"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        updated_at=row["updated_at"],
        detail=row["detail"],
    )


class Commands:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(
        self,
        dev: DeviceRecord,
        kind: str,
        args: dict[str, Any],
        ttl_s: float,
        actor: Actor,
    ) -> CommandOut:
        """A new queued command with the device's next sequence number."""
        now = time.time()
        row = {
            "device_id": dev.device_id,
            "tenant": dev.tenant,
            "kind": kind,
            "args": json.dumps(args, sort_keys=True, separators=(",", ":")),
            "state": COMMAND_QUEUED,
            "now": now,
            # Whole seconds: the device compares its clock with an integer `exp`.
            "expires_at": float(int(now + ttl_s)),
            "actor": actor.name[:128],
        }
        for attempt in range(_ATTEMPTS):
            try:
                with self._db.transaction() as tx:
                    last = tx.one(
                        "SELECT MAX(seq) AS seq FROM commands WHERE device_id = :device_id",
                        {"device_id": dev.device_id},
                    )
                    seq = int((last or {}).get("seq") or 0) + 1
                    tx.execute(
                        "INSERT INTO commands (device_id, tenant, seq, kind, args, state,"
                        " created_at, expires_at, updated_at, detail, actor)"
                        " VALUES (:device_id, :tenant, :seq, :kind, :args, :state, :now,"
                        " :expires_at, :now, NULL, :actor)",
                        {**row, "seq": seq},
                    )
                    audit.record(
                        tx,
                        actor,
                        dev.tenant,
                        "device.command",
                        f"device:{dev.device_id}",
                        kind=kind,
                        seq=seq,
                    )
                break
            except DuplicateKey:
                # Another process took this seq between our read and insert (PostgreSQL's
                # READ COMMITTED allows it; SQLite's write lock does not): take the next.
                if attempt == _ATTEMPTS - 1:
                    raise
        return _out({**row, "seq": seq, "created_at": now, "updated_at": now, "detail": None})

    def get(self, device_id: str, seq: int) -> CommandOut | None:
        row = self._db.one(
            f"SELECT {_COLUMNS} FROM commands WHERE device_id = :d AND seq = :seq",
            {"d": device_id, "seq": seq},
        )
        return None if row is None else _out(row)

    def list(self, device_id: str, *, limit: int = 100) -> builtins.list[CommandOut]:
        """Newest first; open commands past their expiry are reported (and stored) expired."""
        self.expire(device_id)
        rows = self._db.all(
            f"SELECT {_COLUMNS} FROM commands WHERE device_id = :d ORDER BY seq DESC LIMIT :n",
            {"d": device_id, "n": limit},
        )
        return [_out(r) for r in rows]

    def pending(self, device_id: str, above_seq: int) -> builtins.list[CommandOut]:
        """Open, unexpired commands with seq above `above_seq`, oldest first: what a device
        that just came online has not accepted yet."""
        self.expire(device_id)
        rows = self._db.all(
            f"SELECT {_COLUMNS} FROM commands WHERE device_id = :d AND seq > :seq"
            " AND state IN (:q, :dl) ORDER BY seq",
            {"d": device_id, "seq": above_seq, "q": COMMAND_QUEUED, "dl": COMMAND_DELIVERED},
        )
        return [_out(r) for r in rows]

    def outstanding(self, device_id: str, kind: str) -> bool:
        """An open, unexpired command of `kind` for the device."""
        row = self._db.one(
            "SELECT 1 FROM commands WHERE device_id = :d AND kind = :kind"
            " AND state IN (:q, :dl) AND expires_at > :now LIMIT 1",
            {
                "d": device_id,
                "kind": kind,
                "q": COMMAND_QUEUED,
                "dl": COMMAND_DELIVERED,
                "now": time.time(),
            },
        )
        return row is not None

    def report(self, device_id: str, seq: int, state: str, detail: str | None = None) -> bool:
        """The device's word on command `seq`: delivered (accepted), done or failed. False when
        it changes nothing (unknown, ended, or a step back)."""
        with self._db.transaction() as tx:
            return report_in(tx, device_id, seq, state, detail, time.time())

    def expire(self, device_id: str | None = None) -> int:
        """Mark open commands past their expiry expired (one device's, or all); how many."""
        sql = (
            "UPDATE commands SET state = :e, updated_at = :now"
            " WHERE state IN (:q, :dl) AND expires_at <= :now"
        )
        params: dict[str, Any] = {
            "e": COMMAND_EXPIRED,
            "q": COMMAND_QUEUED,
            "dl": COMMAND_DELIVERED,
            "now": time.time(),
        }
        if device_id is not None:
            sql += " AND device_id = :d"
            params["d"] = device_id
        return self._db.write_one(sql, params)


def report_in(
    tx: Tx,
    device_id: str,
    seq: int,
    state: str,
    detail: str | None,
    now: float,
    source: str = "broker",
) -> bool:
    """`Commands.report` inside the caller's transaction (a successor request marks its
    command done in the transaction that records the next identity)."""
    row = tx.one(
        "SELECT tenant, kind, state FROM commands WHERE device_id = :d AND seq = :seq",
        {"d": device_id, "seq": seq},
    )
    if row is None or row["state"] not in _FROM[state]:
        return False
    tx.execute(
        "UPDATE commands SET state = :state, updated_at = :now, detail = :detail"
        " WHERE device_id = :d AND seq = :seq",
        {"state": state, "now": now, "detail": detail, "d": device_id, "seq": seq},
    )
    if state != COMMAND_DELIVERED:
        audit.record(
            tx,
            Actor(f"device:{device_id}", source),
            row["tenant"],
            f"device.command_{state}",
            f"device:{device_id}",
            kind=row["kind"],
            seq=seq,
            **({"reason": detail} if detail else {}),
        )
    return True
