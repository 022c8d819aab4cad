"""Moving a batch to another target (docs/protocol.md "Moving a device to another broker").

1. Register: every onboarded device that is not revoked and not on the new target yet is
   registered there (a disabled one is registered and denied at once, so enabling it later
   gives it its rights there). The store changes only once every registration succeeded: a
   failure (the target unreachable, a refused login) leaves qlink's records as they were, and
   the registrations made are idempotent, so running the move again completes them.
2. The batch's target becomes the new one (its devices' next proof answer names it).
3. Every enabled device is sent `broker` over the admin link of the target it is on (a signed
   command, kept until it expires, resent when the device comes online there); a device on AWS
   IoT, where the server sends no commands yet, stays `registered` and learns its new broker
   at its next onboarding (a renewal).

The devices then say where they are (store/moves.py, host/server/events.py). Running the move
again skips the devices that arrived and commands the others (a device that fell back, or was
disabled then) again, from where they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from host.server.policy import PolicyError, PolicyUnavailable
from host.server.schemas import (
    MOVE_COMMANDED,
    MOVE_FELL_BACK,
    MOVE_MOVED,
    MOVE_REGISTERED,
    STATE_ONBOARDED,
    DeviceRecord,
    MoveOut,
)
from host.server.store import Actor, Conflict, NotFound
from host.server.store.moves import location
from host.server.store.targets import KIND_AWS, KIND_MANAGED, KIND_MOSQUITTO, POLICY_OF_KIND

if TYPE_CHECKING:
    from host.server.application import Application
    from host.server.identities import Progress
    from host.server.schemas import BatchOut

MOVE_TTL_S = 7 * 86400  # a device off for up to a week still gets its `broker` command


class BatchMoves:
    def __init__(self, app: Application) -> None:
        self._app = app
        self._store = app.store

    def _batch(self, name: str, tenant: str | None) -> BatchOut:
        try:
            return self._store.batches.get(name, tenant)
        except NotFound:
            raise NotFound(f"batch {name[:64]!r} does not exist; see: qlink batch list") from None

    def status(self, name: str, tenant: str | None = None) -> MoveOut:
        """The batch's target and its devices' progress towards it."""
        batch = self._batch(name, tenant)
        rows = self._store.moves.of_batch(batch.name, batch.tenant)
        count = {
            s: sum(1 for r in rows if r.state == s)
            for s in (MOVE_REGISTERED, MOVE_COMMANDED, MOVE_MOVED, MOVE_FELL_BACK)
        }
        return MoveOut(
            batch=batch.name,
            tenant=batch.tenant,
            target=batch.target,
            devices=len(rows),
            registered=count[MOVE_REGISTERED],
            commanded=count[MOVE_COMMANDED],
            moved=count[MOVE_MOVED],
            fell_back=count[MOVE_FELL_BACK],
            progress=rows,
        )

    def move(
        self,
        name: str,
        to: str,
        *,
        tenant: str | None,
        actor: Actor,
        progress: Progress | None = None,
    ) -> MoveOut:
        batch = self._batch(name, tenant)
        target = self._store.targets.get(to)
        if batch.policy == "azure":
            raise Conflict(
                f"batch {batch.name} is exported to Azure DPS (policy azure); its devices are "
                "provisioned there, not moved between brokers by qlink"
            )
        if target.kind != KIND_MANAGED and not target.host:
            raise Conflict(
                f"target {to} has no endpoint recorded, so devices could not be told where to "
                f"go; add one with it (qlink target add NAME --kind {target.kind} --host ... "
                "--port ... --ca ...) and move the batch there"
            )
        try:
            driver = self._app.policies.for_target(to, target.kind)  # nothing changed yet
        except PolicyUnavailable:
            if target.kind != KIND_AWS:
                raise
            raise PolicyError(
                f"target {to} is AWS IoT and this server has no AWS IoT account; set "
                "QLINK_AWS_REGION (and boto3's credentials) where it runs"
            ) from None
        devs = self._store.devices.list(batch.tenant, batch.name, state=STATE_ONBOARDED)
        moves = self._store.moves.of_devices([d.device_id for d in devs])
        plan = [
            (d, here)
            for d in devs
            if (here := location(moves.get(d.device_id), batch.target)) != to
        ]
        total = 2 * len(plan)
        for done, (dev, _here) in enumerate(plan, start=1):
            driver.register_device(dev.tenant, dev.device_id, dev.cert_der)
            if dev.disabled:
                self._app.policies.deny(self._at(dev, to, target.kind), revoke=False)
            if progress is not None:
                progress(done, total)
        for dev, here in plan:
            self._store.moves.registered(dev.device_id, here, to)
        self._store.batches.set_target(batch.name, batch.tenant, to, actor)
        kinds = {t.name: t.kind for t in self._store.targets.list()}
        for done, (dev, here) in enumerate(plan, start=len(plan) + 1):
            if not dev.disabled and kinds.get(here) in (KIND_MANAGED, KIND_MOSQUITTO):
                cmd = self._store.commands.create(dev, "broker", {}, MOVE_TTL_S, actor)
                self._store.moves.commanded(dev.device_id, cmd.seq)
                self._app.publish_command(cmd, here)
            if progress is not None:
                progress(done, total)
        return self.status(batch.name, batch.tenant)

    @staticmethod
    def _at(dev: DeviceRecord, target: str, kind: str) -> DeviceRecord:
        """The device as it is once its batch is on `target`."""
        policy = POLICY_OF_KIND[kind]
        return dev.model_copy(update={"target": target, "target_kind": kind, "policy": policy})
