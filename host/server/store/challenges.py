"""Used onboarding challenges: the record that makes a challenge single use, written in the
transaction that records the device's certificate.

A challenge is not stored when it is handed out (host/server/challenge.py makes and checks it
from the server's key): a hello writes nothing. The proof's transaction records, on the device's
row, the order of the challenge it used and the digest of the proof, and takes only a challenge
that orders after the one recorded there: a challenge is used once, a challenge given before the
used one is void, and the same proof sent again finds its digest (it gets the same answer,
another proof is refused).

This is the onboarding hot path: each proof costs one write transaction of one UPDATE and, when
the certificate is new, an audit event.
"""

from __future__ import annotations

from host.server.holds import hold
from host.server.schemas import STATE_ONBOARDED, STATE_REGISTERED, DeviceRecord
from host.server.store import audit
from host.server.store.audit import Actor
from host.server.store.database import Database
from host.server.store.devices import REVOKE_SERIAL

# A device leaves the onboarding states only by revocation or disabling: then nothing changes;
# nor when a proof used this challenge or one given after it.
_ONBOARD = (
    "UPDATE devices SET state = :onboarded, cert_der = :cert_der, serial = :serial,"
    " not_after = :not_after, onboarded_at = COALESCE(onboarded_at, :now),"
    # A retry that gets the same certificate changes nothing the console shows.
    " changed_at = CASE WHEN serial = CAST(:serial AS VARCHAR(40)) THEN changed_at ELSE :now END,"
    # A proof without an OTA key (older firmware) keeps the one a proof sent before.
    " ota_key = COALESCE(:ota_key, ota_key), used_challenge = :order, used_proof = :hash"
    "{clear}"
    " WHERE device_id = :device_id AND state IN (:registered, :onboarded) AND disabled = FALSE"
    " AND (used_challenge IS NULL OR used_challenge < :order)"
)
_ONBOARD_KEEP = _ONBOARD.format(clear="")
_ONBOARD_CLEAR = _ONBOARD.format(clear=", policy_exception = FALSE")


class Challenges:
    def __init__(self, db: Database) -> None:
        self._db = db

    def complete(
        self,
        order: int,
        dev: DeviceRecord,
        cert_der: bytes,
        serial: int,
        not_after: float,
        now: float,
        *,
        proof_hash: str,
        actor: Actor | None = None,
        policy_cleared: bool = False,
        ota_key: bytes | None = None,
    ) -> bool:
        """Record the challenge of this `order` as used by the proof `proof_hash` and mark the
        device onboarded, in one transaction.

        `dev` is the device as the proof read it; `cert_der` its (new or unchanged)
        certificate, and a new serial gets an audit event; the serial it replaces goes onto
        the CRL's list (the caller publishes the CRL), so that only the current certificate
        opens the broker. The first onboarding time is kept.
        False when a proof used this challenge or a later one meanwhile (the device's row
        tells which) or the device left the registered/onboarded states; then nothing
        changes. `policy_cleared`: the policy driver registered the device, which removed any
        exception it held there. `ota_key`: the OTA public key the proof sent (kept in the
        same UPDATE).
        """
        serial_hex = format(serial, "x")
        done = False
        with self._db.transaction() as tx:
            changed = tx.execute(
                _ONBOARD_CLEAR if policy_cleared else _ONBOARD_KEEP,
                {
                    "device_id": dev.device_id,
                    "cert_der": cert_der,
                    "serial": serial_hex,
                    "not_after": not_after,
                    "now": now,
                    "ota_key": ota_key,
                    "order": order,
                    "hash": proof_hash,
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
