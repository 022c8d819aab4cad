"""PUF health as devices report it at the start of each session (docs/identity.md "PUF health"):
a bounded history per device, and the share of its correction budget the latest report used.

The budget is read two ways, and the larger share counts: the decoder margin (the errors it could
still have corrected: profile 5's saturated soft decisions start at 31; the device's own largest
reported margin stands for its budget, used = 1 - margin / largest margin), and the corrected
raw bits against the limit past which the device fails closed (`corrected_limit`, which the
device reports: 25 % of the bits its decoder reads). The margin of a soft decoder stays
saturated long after raw errors have started to climb; the bits show the drift early. A device
past the operator's drift threshold is flagged (`drifting`) and may be re-enrolled.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping

from host.server.schemas import PufHealthOut
from host.server.store.database import Database

HISTORY_KEPT = 64  # rows per device
_FIELDS = ("margin", "corrected_bits", "health_failures")


class PufHealthLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, device_id: str, at: float, health: Mapping[str, int]) -> int | None:
        """Add one report; returns the budget share used (percent), None without a margin."""
        values = {k: health.get(k) for k in _FIELDS}
        margin = values["margin"]
        with self._db.transaction() as tx:
            row = tx.one(
                "SELECT puf_margin_max FROM devices WHERE device_id = :d", {"d": device_id}
            )
            if row is None:
                return None
            best = row["puf_margin_max"]
            used = None
            if margin is not None:
                best = margin if best is None else max(best, margin)
                used = round(100 * (1 - margin / best)) if best else 100
            # The corrected bits against the device's own fail-closed limit: a soft-decision
            # margin stays saturated long after the raw errors have started to climb.
            limit = health.get("corrected_limit")
            bits = values["corrected_bits"]
            if limit and bits is not None:
                used = max(used or 0, min(100, round(100 * bits / limit)))
            tx.execute(
                "INSERT INTO puf_health (device_id, at, margin, corrected_bits, health_failures)"
                " VALUES (:d, :at, :margin, :corrected_bits, :health_failures)",
                {"d": device_id, "at": at, **values},
            )
            tx.execute(
                "UPDATE devices SET puf_margin_max = :best, puf_used_pct = :used"
                " WHERE device_id = :d",
                {"best": best, "used": used, "d": device_id},
            )
            # Bounded: the newest HISTORY_KEPT rows stay.
            tx.execute(
                "DELETE FROM puf_health WHERE device_id = :d AND id NOT IN (SELECT id FROM"
                " puf_health WHERE device_id = :d ORDER BY at DESC, id DESC LIMIT :n)",
                {"d": device_id, "n": HISTORY_KEPT},
            )
        return used

    def history(self, device_id: str, limit: int = HISTORY_KEPT) -> builtins.list[PufHealthOut]:
        """Newest first."""
        rows = self._db.all(
            "SELECT at, margin, corrected_bits, health_failures FROM puf_health"
            " WHERE device_id = :d ORDER BY at DESC, id DESC LIMIT :n",
            {"d": device_id, "n": limit},
        )
        return [PufHealthOut.model_construct(**r) for r in rows]
