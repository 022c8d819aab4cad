"""Ownership transfers (docs/protocol.md "Successor identities"): transfer codes, their claims,
and the record of the move.

A code is `qlt_` + 192 random bits, shown once and stored only as its SHA-256 (as operator
tokens are: a secret of that entropy needs no slow hash). It is single use and expires; a device
has at most one open code (a new one replaces it). A claim consumes the code in the transaction
that records which batch of which tenant the device's next identity goes to; the new owner gets
a random claim handle back, and nothing of the device.

States: open -> claimed -> done (store/successors.py, when the device moved); open -> replaced
(a newer code for the device, or another of its codes claimed); claimed -> void (the claim's
transfer command ended without the move, or never went out, and the owner issued a new code).
An open code past its expiry is expired (compared at use, not stored).

Both IDs of one transfer are in its row only: no read here gives the new owner the device's
current identity, and none gives the old owner the next one.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from host.server.schemas import (
    COMMAND_DELIVERED,
    COMMAND_QUEUED,
    STATE_ONBOARDED,
    ClaimOut,
    DeviceRecord,
    TransferCodeOut,
)
from host.server.store import audit, batches
from host.server.store.audit import Actor
from host.server.store.database import Database, Tx
from host.server.store.errors import Conflict, Invalid, NotFound

CODE_PREFIX = "qlt_"  # a marker, not a secret
_CODE_BYTES = 24  # 192 bits
CODE_LENGTH = len(CODE_PREFIX) + 32  # base64url of 24 bytes is 32 characters
_CODE_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
CLAIM_PREFIX = "clm_"
CODE_TTL_S = 7 * 86400  # a transfer code's default life
# A claim whose command has not gone out yet is left alone this long (its claimer may be
# sending it right now); after that a new code voids it.
_SENDING_S = 60.0

OPEN, REPLACED, CLAIMED, VOID, DONE = "open", "replaced", "claimed", "void", "done"
_ASK = "ask the device's owner for a new one (qlink device transfer)"


def new_code() -> str:
    return CODE_PREFIX + secrets.token_urlsafe(_CODE_BYTES)


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def check_code(code: str) -> None:
    """Invalid unless `code` has a transfer code's shape (a typo is named before any lookup)."""
    if (
        not isinstance(code, str)
        or len(code) != CODE_LENGTH
        or not code.startswith(CODE_PREFIX)
        or not _CODE_ALPHABET.issuperset(code[len(CODE_PREFIX) :])
    ):
        raise Invalid(
            f"a transfer code is {CODE_PREFIX} followed by 32 letters, digits, '-' or '_'; "
            "check what you were given"
        )


@dataclass(frozen=True)
class Claimed:
    """A claim as the server works with it: `device_id` is the device's current identity,
    which the claimer is never shown."""

    handle: str
    device_id: str
    epoch: int  # the owner epoch the device moves to
    seq: int | None  # its transfer command, once sent


def _void_stale(tx: Tx, device_id: str, now: float) -> None:
    """Claims of the device that can no longer complete become void; one whose transfer
    command is still open stands, and a new code is refused while it does."""
    rows = tx.all(
        "SELECT t.id, t.seq, t.claimed_at, c.state AS cmd_state, c.expires_at AS cmd_expires"
        " FROM transfers t LEFT JOIN commands c ON c.device_id = t.device_id AND c.seq = t.seq"
        " WHERE t.device_id = :d AND t.state = :claimed",
        {"d": device_id, "claimed": CLAIMED},
    )
    for r in rows:
        if r["seq"] is None:
            live = r["claimed_at"] > now - _SENDING_S
        else:
            live = r["cmd_state"] in (COMMAND_QUEUED, COMMAND_DELIVERED) and (
                r["cmd_expires"] > now
            )
        if live:
            raise Conflict(
                f"a transfer of device {device_id} is under way: the new owner claimed it and "
                "the device moves when it next comes online; see: qlink device commands "
                f"{device_id}"
            )
        tx.execute(
            "UPDATE transfers SET state = :void WHERE id = :id", {"void": VOID, "id": r["id"]}
        )


class Transfers:
    def __init__(self, db: Database) -> None:
        self._db = db

    def issue(self, dev: DeviceRecord, code: str, ttl_s: float, actor: Actor) -> TransferCodeOut:
        """Record `code` as the device's one open transfer code (an older open one is
        replaced), with the owner's audit event (which never holds the code)."""
        now = time.time()
        expires = float(int(now + ttl_s))
        with self._db.transaction() as tx:
            _void_stale(tx, dev.device_id, now)
            tx.execute(
                "UPDATE transfers SET state = :replaced WHERE device_id = :d AND state = :open",
                {"replaced": REPLACED, "d": dev.device_id, "open": OPEN},
            )
            tx.execute(
                "INSERT INTO transfers (code_hash, device_id, tenant, state, created_at,"
                " expires_at, created_by) VALUES (:hash, :d, :tenant, :open, :now, :exp, :by)",
                {
                    "hash": code_hash(code),
                    "d": dev.device_id,
                    "tenant": dev.tenant,
                    "open": OPEN,
                    "now": now,
                    "exp": expires,
                    "by": actor.name[:128],
                },
            )
            audit.record(
                tx,
                actor,
                dev.tenant,
                "device.transfer_code",
                f"device:{dev.device_id}",
                expires_at=expires,
            )
        return TransferCodeOut(device_id=dev.device_id, code=code, expires_at=expires)

    def claim(self, code: str, tenant: str, batch: str, actor: Actor) -> Claimed:
        """Consume `code` for batch `batch` of `tenant`. The same claim again (same tenant and
        batch) is the same claim; any other use of a consumed, replaced or expired code is
        refused and changes nothing."""
        now = time.time()
        with self._db.transaction() as tx:
            row = tx.one(
                "SELECT t.id, t.device_id, t.tenant, t.state, t.expires_at, t.claim, t.epoch,"
                " t.seq, t.to_tenant, nb.name AS to_batch,"
                " d.state AS dev_state, d.disabled, d.epoch AS dev_epoch"
                " FROM transfers t JOIN devices d ON d.device_id = t.device_id"
                " LEFT JOIN batches nb ON nb.id = t.to_batch_id WHERE t.code_hash = :hash",
                {"hash": code_hash(code)},
            )
            if row is None:
                raise NotFound(f"no such transfer code; check it, or {_ASK}")
            if row["state"] == CLAIMED and (row["to_tenant"], row["to_batch"]) == (tenant, batch):
                return Claimed(row["claim"], row["device_id"], row["epoch"], row["seq"])
            if row["state"] in (CLAIMED, VOID, DONE):
                raise Conflict(f"this transfer code was used already; {_ASK}")
            if row["state"] == REPLACED:
                raise Conflict(f"this transfer code was replaced by a newer one; {_ASK}")
            if row["expires_at"] <= now:
                raise Conflict(f"this transfer code expired; {_ASK}")
            if row["dev_state"] != STATE_ONBOARDED or row["disabled"]:
                # Nothing of the device in the answer: the claimer does not own it yet.
                raise Conflict(
                    "the device of this transfer code cannot be transferred now (its owner "
                    "revoked or disabled it); ask its owner"
                )
            target = batches.find(tx, batch, tenant)
            handle = CLAIM_PREFIX + secrets.token_hex(16)
            epoch = int(row["dev_epoch"]) + 1
            taken = tx.execute(
                "UPDATE transfers SET state = :claimed, claim = :handle, to_tenant = :tenant,"
                " to_batch_id = :batch_id, epoch = :epoch, claimed_at = :now, claimed_by = :by"
                " WHERE id = :id AND state = :open",
                {
                    "claimed": CLAIMED,
                    "handle": handle,
                    "tenant": tenant,
                    "batch_id": target["id"],
                    "epoch": epoch,
                    "now": now,
                    "by": actor.name[:128],
                    "id": row["id"],
                    "open": OPEN,
                },
            )
            if taken != 1:  # a concurrent claim of the same code won
                raise Conflict(f"this transfer code was used already; {_ASK}")
            tx.execute(
                "UPDATE transfers SET state = :replaced"
                " WHERE device_id = :d AND state = :open AND id <> :id",
                {"replaced": REPLACED, "d": row["device_id"], "open": OPEN, "id": row["id"]},
            )
            # Each owner's log names only what it owns: the claim for the new, the device for
            # the old (not who claimed it, nor where it goes).
            audit.record(
                tx, actor, tenant, "transfer.claim", f"claim:{handle}", batch=target["name"]
            )
            audit.record(
                tx,
                Actor("server:transfer", "server"),
                row["tenant"],
                "device.transfer_claimed",
                f"device:{row['device_id']}",
            )
        return Claimed(handle, row["device_id"], epoch, None)

    def set_seq(self, handle: str, seq: int) -> None:
        """The transfer command that carries out the claim."""
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE transfers SET seq = :seq"
                " WHERE claim = :handle AND state = :claimed AND seq IS NULL",
                {"seq": seq, "handle": handle, "claimed": CLAIMED},
            )

    def status(self, handle: str, tenant: str | None = None) -> ClaimOut:
        """The claim as its claimer sees it (another tenant's claim does not exist)."""
        sql = (
            "SELECT t.claim, t.to_tenant, nb.name AS batch, t.state, t.claimed_at, t.successor,"
            " t.seq, c.state AS cmd_state, c.expires_at AS cmd_expires"
            " FROM transfers t JOIN batches nb ON nb.id = t.to_batch_id"
            " LEFT JOIN commands c ON c.device_id = t.device_id AND c.seq = t.seq"
            " WHERE t.claim = :handle"
        )
        if tenant is not None:
            sql += " AND t.to_tenant = :tenant"
        row = self._db.one(sql, {"handle": handle, "tenant": tenant})
        if row is None:
            raise NotFound(f"claim {handle[:40]!r} does not exist; see: qlink audit")
        return ClaimOut(
            claim=row["claim"],
            tenant=row["to_tenant"],
            batch=row["batch"],
            state=_claim_state(row, time.time()),
            created_at=row["claimed_at"],
            device_id=row["successor"],
        )


def _claim_state(row: dict[str, Any], now: float) -> str:
    if row["state"] == DONE:
        return "done"
    if row["state"] == VOID:
        return "failed"
    if row["seq"] is None:
        return "pending"
    open_ = row["cmd_state"] in (COMMAND_QUEUED, COMMAND_DELIVERED) and row["cmd_expires"] > now
    return "pending" if open_ else "failed"
