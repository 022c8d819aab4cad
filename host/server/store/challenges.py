"""Used onboarding challenges: the record that makes a challenge single use, written in the
transaction that records the device's certificate.

A challenge is not stored when it is handed out (host/server/challenge.py makes and checks it
from the server's key): a hello writes nothing. The proof's transaction inserts the challenge
as used, with the digest of the proof that used it, so a second proof for it finds the row (a
retry of the same proof gets the same answer, another proof is refused). Used challenges stay
an hour past their expiry, then are purged (at most once a minute, in a proof's transaction).

This is the onboarding hot path: each proof costs one write transaction of one INSERT, one
UPDATE and, when the certificate is new, an audit event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from host.server.holds import hold
from host.server.schemas import STATE_ONBOARDED, STATE_REGISTERED, DeviceRecord
from host.server.store import audit
from host.server.store.audit import Actor
from host.server.store.database import Database
from host.server.store.devices import REVOKE_SERIAL

_PURGE_EVERY_S = 60.0
_KEEP_USED_S = 3600  # past expiry: a device that lost its answer may send its proof again
_USE = (
    "INSERT INTO challenges (id, device_id, challenge, expires, used_at, proof_hash)"
    " VALUES (:id, :device_id, :challenge, :expires, :now, :hash) ON CONFLICT (id) DO NOTHING"
)
_USED = (
    "SELECT id, device_id, challenge, expires, used_at, proof_hash FROM challenges"
    # A row without used_at is a challenge a hello stored before hellos stored nothing.
    " WHERE id = :id AND used_at IS NOT NULL"
)
_PURGE = "DELETE FROM challenges WHERE expires < :before"
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
    """A used challenge as recorded."""

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

    def used(self, cid: str) -> ChallengeInfo | None:
        """The record of challenge `cid` if a proof used it (and it was not purged yet)."""
        m = self._db.one(_USED, {"id": cid})
        if m is None:
            return None
        return ChallengeInfo(
            m["id"],
            m["device_id"],
            bytes(m["challenge"]),
            m["expires"],
            m["used_at"],
            m["proof_hash"],
        )

    def complete(
        self,
        cid: str,
        dev: DeviceRecord,
        challenge: bytes,
        expires: int,
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
        """Record the challenge (`challenge`, expiring at `expires`) as used and mark the
        device onboarded, in one transaction.

        `dev` is the device as the proof read it; `cert_der` its (new or unchanged)
        certificate, and a new serial gets an audit event; the serial it replaces goes onto
        the CRL's list (the caller publishes the CRL), so that only the current certificate
        opens the broker. The first onboarding time is kept.
        False when the challenge was used already (a concurrent or later second proof: `used`
        tells which) or the device left the registered/onboarded states; then nothing
        changes. `policy_cleared`: the
        policy driver registered the device, which removed any exception it held there.
        `ota_key`: the OTA public key the proof sent (kept in the same UPDATE).
        """
        serial_hex = format(serial, "x")
        done = False
        purge = time.monotonic()
        with self._db.transaction() as tx:
            if purge - self._last_purge > _PURGE_EVERY_S:
                self._last_purge = purge
                tx.execute(_PURGE, {"before": now - _KEEP_USED_S})
            # The device first: one that left the onboarding states (or the registry) changes
            # nothing, and its challenge stays unused.
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
            used = {
                "id": cid,
                "device_id": dev.device_id,
                "challenge": challenge,
                "expires": expires,
                "now": now,
                "hash": proof_hash,
            }
            if tx.execute(_USE, used) != 1:
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
        """Drop the used challenges that expired before `before`."""
        with self._db.transaction() as tx:
            return tx.execute(_PURGE, {"before": before})
