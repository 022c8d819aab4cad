"""The owner's use cases of a device's identity (docs/protocol.md "Successor identities"):
transfer codes, claims, re-enrolment and decommissioning. The application layer
(host/server/application.py) exposes them; the device's side of a move is successors.py.

- Transfer: the current owner issues a code (`transfer_code`, or one per device of a batch),
  the new owner claims it into a batch of its own (`claim`), which sends the device `transfer`
  with `{"epoch": E}`; the device's successor request then moves it (successors.py).
- Re-enrolment: `reenrol` sends `reenrol`; the device moves at its next cold boot.
- Decommission: `decommission` sends `decommission`, waits a while for the device's `done` (the
  server's event intake records it in the store, from whichever process reads the broker),
  then revokes the device in any case.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from host.server.commands import unreachable
from host.server.schemas import (
    COMMAND_DELIVERED,
    COMMAND_QUEUED,
    STATE_ONBOARDED,
    STATE_REVOKED,
    ClaimOut,
    CommandOut,
    DecommissionOut,
    DeviceRecord,
    TransferCodeOut,
)
from host.server.store import Actor, Conflict, Invalid
from host.server.store.transfers import check_code, new_code

if TYPE_CHECKING:
    from host.server.application import Application

LAST_EPOCH = 7  # seeds 0..7 (docs/identity.md "Seeds"): epoch 7 is a device's last owner
_MIN_CODE_TTL_S = 600
_MAX_CODE_TTL_S = 30 * 86400
# The device moves when it next comes online (transfer) or cold boots (re-enrolment): its
# command waits as long as a command may.
_MOVE_TTL_S = 30 * 86400
_POLL_S = 0.1  # how often decommissioning looks in the store for the device's `done`
# The transfer command's author in the current owner's log: not the claimer, whom that owner is
# not told of.
_TRANSFER_ACTOR = Actor("server:transfer", "server")


class Ownership:
    def __init__(self, app: Application) -> None:
        self._app = app
        self._store = app.store

    # -- transfer ------------------------------------------------------------------------------
    def transfer_code(
        self, device_id: str, *, ttl_s: float, tenant: str | None, actor: Actor
    ) -> TransferCodeOut:
        """A new single-use code for the device (its open code before, if any, is replaced)."""
        _check_ttl(ttl_s)
        dev = self._app.require_device(device_id, tenant)
        self._check_transferable(dev)
        return self._store.transfers.issue(dev, new_code(), ttl_s, actor)

    def transfer_codes(
        self, batch: str, *, ttl_s: float, tenant: str | None, actor: Actor
    ) -> list[TransferCodeOut]:
        """One code for every device of the batch that can be transferred now (onboarded, not
        disabled, no move under way); the others are left out."""
        _check_ttl(ttl_s)
        b = self._store.batches.get(batch, tenant)
        codes = []
        for dev in self._store.devices.list(b.tenant, b.name, state=STATE_ONBOARDED):
            try:
                self._check_transferable(dev)
                codes.append(self._store.transfers.issue(dev, new_code(), ttl_s, actor))
            except Conflict:
                continue
        return codes

    def _check_transferable(self, dev: DeviceRecord) -> None:
        why = unreachable(dev)
        if why is not None:
            raise Conflict(f"device {dev.device_id} {why}; it cannot be transferred")
        if dev.epoch >= LAST_EPOCH:
            raise Conflict(
                f"device {dev.device_id} has had all of its {LAST_EPOCH + 1} owner identities; "
                f"re-enrol it first: qlink device reenrol {dev.device_id}"
            )
        if self._store.commands.outstanding(dev.device_id, "reenrol"):
            raise Conflict(
                f"device {dev.device_id} is re-enrolling (a reenrol command is open); transfer "
                "it once it has moved to its new identity"
            )

    def claim(self, code: str, tenant: str, batch: str, actor: Actor) -> ClaimOut:
        """Redeem a transfer code into batch `batch` of `tenant`: the code is consumed and the
        device is sent `transfer`. The answer is the claim: nothing of the device. Claiming
        the same code into the same batch again is the same claim."""
        check_code(code)
        claimed = self._store.transfers.claim(code, tenant, batch, actor)
        if claimed.seq is None:
            try:
                cmd = self._app.send_command(
                    claimed.device_id,
                    "transfer",
                    {"epoch": claimed.epoch},
                    ttl_s=_MOVE_TTL_S,
                    actor=_TRANSFER_ACTOR,
                )
            except Conflict:
                # Its message names the device, which the claimer does not own yet.
                raise Conflict(
                    "the device of this transfer code cannot take the transfer now (its owner "
                    "revoked or disabled it); ask its owner"
                ) from None
            self._store.transfers.set_seq(claimed.handle, cmd.seq)
        return self._store.transfers.status(claimed.handle, tenant)

    def claim_status(self, handle: str, tenant: str | None) -> ClaimOut:
        return self._store.transfers.status(handle, tenant)

    # -- re-enrolment and decommissioning -------------------------------------------------------
    def reenrol(self, device_id: str, *, tenant: str | None, actor: Actor) -> CommandOut:
        """Command the device to re-enrol at its next cold boot (fresh helper data, a new
        identity linked to this record)."""
        dev = self._app.require_device(device_id, tenant)
        if self._store.commands.outstanding(dev.device_id, "transfer"):
            raise Conflict(
                f"device {dev.device_id} is being transferred (a transfer command is open); "
                "its new owner can re-enrol it"
            )
        return self._app.send_command(
            dev.device_id, "reenrol", ttl_s=_MOVE_TTL_S, tenant=tenant, actor=actor
        )

    def decommission(
        self, device_id: str, *, wait_s: float, tenant: str | None, actor: Actor
    ) -> DecommissionOut:
        """Command the device to erase itself, wait up to `wait_s` for its `done`, then revoke
        it whatever it said: `confirmed` tells whether it reported the erase."""
        if not 0 <= wait_s <= 300:
            raise Invalid("the wait for the device's answer must be 0 to 300 s")
        dev = self._app.require_device(device_id, tenant)
        if dev.state == STATE_REVOKED:
            raise Conflict(f"device {dev.device_id} is revoked already; nothing can reach it")
        # The broker first: a server that cannot apply the revocation is said before the
        # device is told to erase itself.
        lifecycle = self._app.lifecycle
        cmd = None
        if unreachable(dev) is None:
            cmd = self._app.send_command(dev.device_id, "decommission", tenant=tenant, actor=actor)
            cmd = self._outcome(cmd, wait_s)
        revoked = lifecycle.revoke(dev.device_id, tenant=tenant, actor=actor)
        confirmed = cmd is not None and cmd.state == "done"
        return DecommissionOut(device=revoked, confirmed=confirmed, command=cmd)

    def _outcome(self, cmd: CommandOut, wait_s: float) -> CommandOut:
        """The command once it ended or `wait_s` passed. The device's answer reaches the store
        through the event intake of the server process, so the store is where to look."""
        deadline = time.monotonic() + wait_s
        while True:
            now = self._store.commands.get(cmd.device_id, cmd.seq) or cmd
            if now.state not in (COMMAND_QUEUED, COMMAND_DELIVERED):
                return now
            left = deadline - time.monotonic()
            if left <= 0:
                return now
            time.sleep(min(_POLL_S, left))


def _check_ttl(ttl_s: float) -> None:
    if not _MIN_CODE_TTL_S <= ttl_s <= _MAX_CODE_TTL_S:
        raise Invalid("a transfer code's time to live must be 10 minutes to 30 days")
