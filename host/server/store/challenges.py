"""Onboarding challenges: single use, expiring, each bound to one device; consuming one and
recording the device's certificate is one transaction.

A device's outstanding challenges are bounded: each insert drops all but the newest `keep` of
its challenges (the new one always stands), so hellos for a known public key cannot grow the
table. Expired challenges are purged: unused ones a few minutes after expiry, used ones (whose
proof a device that lost its answer may send again) after an hour.

This is the onboarding hot path: each hello costs one read and one write transaction (the insert
and its trim), each proof one read (the challenge with its device, in one join) and one write
transaction of two UPDATEs (plus an audit event when the certificate is new).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from host.server.holds import hold
from host.server.schemas import STATE_ONBOARDED, STATE_REGISTERED, DeviceRecord
from host.server.store import audit
from host.server.store.audit import Actor
from host.server.store.database import Database
from host.server.store.devices import REVOKE_SERIAL, SELECT, record

_PURGE_EVERY_S = 60.0
_INSERT = (
    "INSERT INTO challenges (id, device_id, challenge, expires)"
    " VALUES (:id, :device_id, :challenge, :expires)"
)
_TRIM = (
    "DELETE FROM challenges WHERE device_id = :device_id AND id <> :id AND id NOT IN"
    " (SELECT id FROM challenges WHERE device_id = :device_id AND id <> :id"
    " ORDER BY expires DESC LIMIT :others)"
)
_PURGE = (
    "DELETE FROM challenges WHERE expires < :before"
    " OR (used_at IS NULL AND expires < :unused_before)"
)
_WITH_DEVICE = (
    SELECT.replace(
        "SELECT ",
        "SELECT c.id AS c_id, c.challenge AS c_challenge, c.expires AS c_expires,"
        " c.used_at AS c_used_at, c.proof_hash AS c_hash, ",
        1,
    ).replace(
        " FROM devices d", " FROM challenges c JOIN devices d ON d.device_id = c.device_id", 1
    )
    + " WHERE c.id = :id"
)
_USE = "UPDATE challenges SET used_at = :now, proof_hash = :hash WHERE id = :id AND used_at IS NULL"
# A device leaves the onboarding states only by revocation or disabling: then nothing changes.
_ONBOARD = (
    "UPDATE devices SET state = :onboarded, cert_der = :cert_der, serial = :serial,"
    " not_after = :not_after, onboarded_at = COALESCE(onboarded_at, :now),"
    # A retry that gets the same certificate changes nothing the console shows.
    " changed_at = CASE WHEN serial = CAST(:serial AS VARCHAR(40)) THEN changed_at ELSE :now END,"
    # A proof without an OTA key (older firmware) keeps the one a proof sent before.
    " ota_key = COALESCE(:ota_key, ota_key)"
    "{clear}"
    " WHERE device_id = :device_id AND state IN (:registered, :onboarded) AND disabled = FALSE"
)
_ONBOARD_KEEP = _ONBOARD.format(clear="")
_ONBOARD_CLEAR = _ONBOARD.format(clear=", policy_exception = FALSE")


@dataclass(frozen=True)
class ChallengeInfo:
    id: str
    device_id: str
    challenge: bytes
    expires: int
    used_at: float | None
    proof_hash: str | None = None


class Challenges:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._last_purge = 0.0

    def add(
        self,
        cid: str,
        device_id: str,
        challenge: bytes,
        expires: int,
        *,
        keep: int = 4,
        purge_before: float = 0,
        purge_unused_before: float = 0,
    ) -> None:
        """Store a challenge and drop the device's older ones beyond the newest `keep`; with
        `purge_before`, also drop every challenge expired before it, and unused ones expired
        before `purge_unused_before` (at most once a minute: housekeeping, not each hello)."""
        now = time.monotonic()
        row = {"id": cid, "device_id": device_id, "challenge": challenge, "expires": expires}
        trim = {"device_id": device_id, "id": cid, "others": keep - 1}
        with self._db.transaction() as tx:
            if bool(purge_before) and now - self._last_purge > _PURGE_EVERY_S:
                self._last_purge = now
                tx.execute(
                    _PURGE,
                    {"before": purge_before, "unused_before": purge_unused_before or purge_before},
                )
            tx.execute(_INSERT, row)
            tx.execute(_TRIM, trim)

    def with_device(self, cid: str) -> tuple[ChallengeInfo, DeviceRecord] | None:
        """A challenge and its device in one query (the proof's first read)."""
        m = self._db.one(_WITH_DEVICE, {"id": cid})
        if m is None:
            return None
        challenge = ChallengeInfo(
            m["c_id"],
            m["device_id"],
            bytes(m["c_challenge"]),
            m["c_expires"],
            m["c_used_at"],
            m["c_hash"],
        )
        return challenge, record(m)

    def complete(
        self,
        cid: str,
        dev: DeviceRecord,
        cert_der: bytes,
        serial: int,
        not_after: float,
        now: float,
        *,
        proof_hash: str | None = None,
        actor: Actor | None = None,
        policy_cleared: bool = False,
        ota_key: bytes | None = None,
    ) -> bool:
        """Consume the challenge and mark the device onboarded, in one transaction.

        `dev` is the device as the proof read it; `cert_der` its (new or unchanged)
        certificate, and a new serial gets an audit event; the serial it replaces goes onto
        the CRL's list (the caller publishes the CRL), so that only the current certificate
        opens the broker. The first onboarding time is kept.
        False when the challenge was consumed meanwhile (a concurrent replay) or the device
        left the registered/onboarded states; then nothing changes. `policy_cleared`: the
        policy driver registered the device, which removed any exception it held there.
        `ota_key`: the OTA public key the proof sent (kept in the same UPDATE).
        """
        serial_hex = format(serial, "x")
        done = False
        with self._db.transaction() as tx:
            if tx.execute(_USE, {"id": cid, "now": now, "hash": proof_hash}) != 1:
                self._db.rollback()
            changed = tx.execute(
                _ONBOARD_CLEAR if policy_cleared else _ONBOARD_KEEP,
                {
                    "device_id": dev.device_id,
                    "cert_der": cert_der,
                    "serial": serial_hex,
                    "not_after": not_after,
                    "now": now,
                    "ota_key": ota_key,
                    "registered": STATE_REGISTERED,
                    "onboarded": STATE_ONBOARDED,
                },
            )
            if changed != 1:
                self._db.rollback()
            # Compared with the serial the proof read: two proofs racing with new
            # certificates each get their event, a retry with the same certificate none.
            if dev.serial != serial_hex:
                if dev.serial is not None and dev.not_after is not None:
                    tx.execute(
                        REVOKE_SERIAL,
                        {
                            "serial": dev.serial,
                            "device_id": dev.device_id,
                            "not_after": dev.not_after,
                            "now": now,
                        },
                    )
                who = actor or Actor(f"device:{dev.device_id}", "-")
                audit.record(
                    tx,
                    who,
                    dev.tenant,
                    "device.onboard",
                    f"device:{dev.device_id}",
                    serial=serial_hex,
                )
            hold("onboard_transaction")
            done = True
        return done

    def purge(self, before: float) -> int:
        """Drop challenges that expired before `before` (used or not)."""
        with self._db.transaction() as tx:
            return tx.execute(_PURGE, {"before": before, "unused_before": before})
