"""Moves: for each device, the last move of its batch to another target and how far the device
got (docs/protocol.md "Moving a device to another broker").

The server writes `registered` once the new target knows the device and `commanded` with the
`broker` command's seq once the command is stored; the device's own events write the rest: any
event of it on the new target (`online` first: it is connected there) is `moved`; its `broker`
command `failed` with reason `unreachable` on the old target is `fell_back`. A device is where
its row says (`to_target` once moved, else `from_target`), or, without a row, on its batch's
target.

The event intake of every target calls `arrived` for each event: one indexed read for a device
with no move under way.
"""

from __future__ import annotations

import builtins
import time
from typing import Any

from host.server.schemas import (
    MOVE_COMMANDED,
    MOVE_FELL_BACK,
    MOVE_MOVED,
    MOVE_REGISTERED,
    MoveDeviceOut,
)
from host.server.store import audit
from host.server.store.audit import Actor
from host.server.store.database import Database

_COLUMNS = "m.device_id, m.from_target, m.to_target, m.state, m.seq, m.updated_at"
_CHUNK = 2000  # IDs per IN (...) list, as in store/batches.py


def _out(row: dict[str, Any]) -> MoveDeviceOut:
    return MoveDeviceOut.model_construct(**{k: row[k] for k in MoveDeviceOut.model_fields})


def location(move: MoveDeviceOut | None, batch_target: str) -> str:
    """The target a device is on: its move's destination once it arrived, else where the move
    started; a device no move touched is on its batch's target."""
    if move is None:
        return batch_target
    return move.to_target if move.state == MOVE_MOVED else move.from_target


class Moves:
    def __init__(self, db: Database) -> None:
        self._db = db

    def of_batch(self, batch: str, tenant: str) -> builtins.list[MoveDeviceOut]:
        """The moves of the devices of batch `batch` of `tenant`, by device ID."""
        rows = self._db.all(
            f"SELECT {_COLUMNS} FROM moves m JOIN devices d ON d.device_id = m.device_id"
            " JOIN batches b ON b.id = d.batch_id WHERE b.name = :b AND b.tenant = :t"
            " ORDER BY m.device_id",
            {"b": batch, "t": tenant},
        )
        return [_out(r) for r in rows]

    def of_devices(self, device_ids: builtins.list[str]) -> dict[str, MoveDeviceOut]:
        found: dict[str, MoveDeviceOut] = {}
        for i in range(0, len(device_ids), _CHUNK):
            names = {f"i{n}": v for n, v in enumerate(device_ids[i : i + _CHUNK])}
            marks = ", ".join(f":{k}" for k in names)
            for r in self._db.all(
                f"SELECT {_COLUMNS} FROM moves m WHERE m.device_id IN ({marks})", names
            ):
                found[r["device_id"]] = _out(r)
        return found

    def registered(self, device_id: str, from_target: str, to_target: str) -> None:
        """The new target knows the device: its move starts (again) here."""
        self._db.write_one(
            "INSERT INTO moves (device_id, from_target, to_target, state, seq, updated_at)"
            " VALUES (:d, :f, :t, :s, NULL, :now) ON CONFLICT (device_id) DO UPDATE SET"
            " from_target = :f, to_target = :t, state = :s, seq = NULL, updated_at = :now",
            {
                "d": device_id,
                "f": from_target,
                "t": to_target,
                "s": MOVE_REGISTERED,
                "now": time.time(),
            },
        )

    def commanded(self, device_id: str, seq: int) -> None:
        """Its `broker` command is stored (and sent, if its broker could be reached); a device
        that arrived meanwhile (a renewal's answer names the new target too) stays moved."""
        self._db.write_one(
            "UPDATE moves SET state = :s, seq = :seq, updated_at = :now"
            " WHERE device_id = :d AND state = :r",
            {
                "d": device_id,
                "s": MOVE_COMMANDED,
                "seq": seq,
                "now": time.time(),
                "r": MOVE_REGISTERED,
            },
        )

    def arrived(self, device_id: str, tenant: str, target: str) -> bool:
        """The device spoke on `target` (`online`, an acknowledgement: it is connected there):
        moved, if its move leads there."""
        return self._change(
            device_id,
            tenant,
            MOVE_MOVED,
            "to_target = :target AND state IN (:r, :c, :fb)",
            {"target": target, "r": MOVE_REGISTERED, "c": MOVE_COMMANDED, "fb": MOVE_FELL_BACK},
        )

    def fell_back(
        self, device_id: str, tenant: str, target: str, seq: int, reason: str | None
    ) -> bool:
        """The device's `broker` command `seq` failed as `unreachable`, said on `target`, the
        broker it moves from: fell_back."""
        if reason != "unreachable":
            return False
        return self._change(
            device_id,
            tenant,
            MOVE_FELL_BACK,
            "from_target = :target AND seq = :seq AND state = :c",
            {"target": target, "seq": seq, "c": MOVE_COMMANDED},
        )

    def _change(
        self, device_id: str, tenant: str, state: str, where: str, params: dict[str, Any]
    ) -> bool:
        # Most events are of devices with no move under way: a read tells, without taking
        # the write lock; the UPDATE checks again inside the transaction.
        probe = f"SELECT 1 FROM moves WHERE device_id = :d AND {where}"
        if self._db.one(probe, {**params, "d": device_id}) is None:
            return False
        with self._db.transaction() as tx:
            row = tx.one(
                "UPDATE moves SET state = :state, updated_at = :at"
                f" WHERE device_id = :d AND {where} RETURNING from_target, to_target",
                {**params, "state": state, "at": time.time(), "d": device_id},
            )
            if row is None:
                return False
            audit.record(
                tx,
                Actor(f"device:{device_id}", "broker"),
                tenant,
                f"device.{state}",
                f"device:{device_id}",
                from_target=row["from_target"],
                to_target=row["to_target"],
            )
        return True
