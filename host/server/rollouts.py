"""OTA rollouts (docs/ota.md "Rollout"): which devices of a batch are offered a release, and
what their events and downloads make of it.

- `create`: the first ceil(P %) of the batch's onboarded, enabled devices in device ID order
  get a row; those whose OTA key the server holds are sent an `ota` command (args `release`,
  `size`), the others are recorded `refused` with reason `no_ota_key` (that device never tried
  the release, so it is not counted as a failure).
- `on_online` (the event intake, for each `online` event): while the rollout is active, a
  device of its batch with no row joins it if the share has room (ceil(P %) of the batch's
  eligible devices now: devices that onboard later are offered as they come online), and a
  device whose offer expired before it took it is offered again. The command is stored
  only: the intake sends it with the device's other pending commands.
- `on_event`: a device's `{"event": "ota", ...}` moves its row forward (store/rollouts.py).
  Failures (rolled_back, refused) past `max_failures` halt the rollout: no new offer, offers
  no device accepted yet expire. Once every row has ended and the share is full it is done.
- `head`: the device API's head document, only for an open offer in an active or paused
  rollout; the device is then `downloading`.
- `pause` (no new offers; open ones go on), `resume`, `abort` (like a halt, by the operator).
Every rollout state change is audited (`ota.rollout_<state>`), and every device's step
(`ota.device_<state>`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from host.server import ServerError
from host.server.commands import COMMAND_POLICIES, unreachable
from host.server.deviceid import is_device_id
from host.server.schemas import (
    OTA_DOWNLOADING,
    OTA_ENDED,
    OTA_FAILED,
    OTA_OFFERED,
    OTA_STATES,
    ROLLOUT_ABORTED,
    ROLLOUT_ACTIVE,
    ROLLOUT_DONE,
    ROLLOUT_HALTED,
    ROLLOUT_PAUSED,
    CommandOut,
    RolloutOut,
    RolloutSummary,
)
from host.server.store import LOCAL, Actor, Conflict, Invalid, NotFound
from host.server.store.rollouts import OPEN_ROLLOUT, RolloutRow, share

if TYPE_CHECKING:
    from host.server.application import Application
    from host.server.identities import Progress

log = logging.getLogger("qlink.ota")

OTA_TTL_S = 7 * 86400  # a device off for up to a week still gets its offer
POLICY = Actor("policy:ota-rollout", "server")  # who halts a rollout, or finds it done
DEVICE_STATES = tuple(s for s in OTA_STATES if s != OTA_OFFERED)  # what a device may report
_RELEASE_MAX = 80  # characters of a release ID (models.OtaRelease.id)


class OtaRefused(ServerError):
    """A device's OTA request the server refuses: HTTP `status` with the error `code`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class RolloutService:
    def __init__(self, app: Application) -> None:
        self._app = app
        self._store = app.store

    # -- operator use cases --------------------------------------------------------------
    def create(
        self,
        release_id: str,
        batch: str,
        percent: int = 100,
        max_failures: int = 0,
        *,
        tenant: str | None = None,
        actor: Actor = LOCAL,
        progress: Progress | None = None,
    ) -> RolloutOut:
        """Offer `release_id` to `percent` % of the batch's onboarded devices (rounded up, in
        device ID order); the rollout halts once more than `max_failures` devices failed."""
        if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
            raise Invalid(f"percent must be a whole number from 1 to 100, not {percent!r}")
        if (
            isinstance(max_failures, bool)
            or not isinstance(max_failures, int)
            or not 0 <= max_failures < 2**31
        ):
            raise Invalid(
                f"max failures must be a whole number of 0 or more (0: the first failure "
                f"halts), not {max_failures!r}"
            )
        b = self._store.rollouts.batch(batch, tenant)
        release = self._app.releases.release(release_id)  # UnknownRelease: NotFound
        if b["policy"] not in COMMAND_POLICIES:
            raise Conflict(
                f"batch {b['name']} is served by policy {b['policy']}; OTA offers are commands, "
                "which reach devices of Mosquitto targets only"
            )
        devices = self._store.rollouts.candidates(int(b["id"]))
        chosen = devices[: share(percent, len(devices))]
        rid = self._store.rollouts.create(
            release_id=release.id,
            batch_id=int(b["id"]),
            batch=b["name"],
            tenant=b["tenant"],
            percent=percent,
            max_failures=max_failures,
            offered=[c.device_id for c in chosen if c.has_key],
            no_key=[c.device_id for c in chosen if not c.has_key],
            actor=actor,
        )
        log.info(
            "event=rollout_created rollout=%d release=%s batch=%s devices=%d",
            rid,
            release.id,
            b["name"],
            len(chosen),
        )
        args = {"release": release.id, "size": int(release.payload_size)}
        for done, c in enumerate(chosen, start=1):
            if c.has_key:
                try:
                    cmd = self._app.send_command(
                        c.device_id, "ota", args, ttl_s=OTA_TTL_S, actor=actor
                    )
                except ServerError as e:  # changed since it was chosen (revoked, disabled)
                    log.warning(
                        "event=rollout_offer_failed rollout=%d device=%s why=%s",
                        rid,
                        c.device_id,
                        e,
                    )
                    self._store.rollouts.drop(rid, c.device_id)
                else:
                    self._store.rollouts.commanded(rid, c.device_id, cmd.seq)
            if progress is not None:
                progress(done, len(chosen))
        self._settle(rid)  # every chosen device may have been refused already
        return self.status(rid)

    def status(self, rollout_id: int, tenant: str | None = None) -> RolloutOut:
        """The rollout, its counts per device state and every device's row."""
        summary = self._store.rollouts.summary(rollout_id, tenant)
        if summary is None:
            raise _unknown(rollout_id)
        return RolloutOut.model_construct(
            **{k: getattr(summary, k) for k in RolloutSummary.model_fields},
            devices=self._store.rollouts.devices(rollout_id),
        )

    def list(self, tenant: str | None = None) -> list[RolloutSummary]:
        """Every rollout (of `tenant`), newest first."""
        return self._store.rollouts.list(tenant)

    def pause(self, rollout_id: int, tenant: str | None = None, actor: Actor = LOCAL) -> RolloutOut:
        """No new offers; devices with an open offer go on (their head still answers)."""
        return self._change(rollout_id, tenant, actor, ROLLOUT_PAUSED, (ROLLOUT_ACTIVE,))

    def resume(
        self, rollout_id: int, tenant: str | None = None, actor: Actor = LOCAL
    ) -> RolloutOut:
        return self._change(rollout_id, tenant, actor, ROLLOUT_ACTIVE, (ROLLOUT_PAUSED,))

    def abort(self, rollout_id: int, tenant: str | None = None, actor: Actor = LOCAL) -> RolloutOut:
        """No new offers, offers not accepted yet expire, and heads answer not_offered."""
        return self._change(
            rollout_id,
            tenant,
            actor,
            ROLLOUT_ABORTED,
            (ROLLOUT_ACTIVE, ROLLOUT_PAUSED, ROLLOUT_HALTED),
            expire=True,
        )

    def _change(
        self,
        rollout_id: int,
        tenant: str | None,
        actor: Actor,
        to: str,
        from_states: tuple[str, ...],
        *,
        expire: bool = False,
    ) -> RolloutOut:
        row = self._store.rollouts.row(rollout_id, tenant)
        if row is None:
            raise _unknown(rollout_id)
        if not self._store.rollouts.set_state(rollout_id, to, from_states, actor, expire=expire):
            now = self._store.rollouts.row(rollout_id, tenant)
            state = now.state if now is not None else row.state
            hint = {
                ROLLOUT_HALTED: "; abort it, then create a new rollout (a higher --max-failures"
                " lets more devices fail)",
                ROLLOUT_DONE: "; it has ended",
                ROLLOUT_ABORTED: "; it has ended",
            }.get(state, "")
            raise Conflict(
                f"rollout {rollout_id} is {state}; only a rollout that is "
                f"{' or '.join(from_states)} can be {_PAST[to]}{hint}"
            )
        log.info("event=rollout_%s rollout=%d actor=%s", to, rollout_id, actor.name)
        return self.status(rollout_id, tenant)

    # -- the event intake's --------------------------------------------------------------
    def on_event(self, device_id: str, doc: dict[str, Any]) -> bool:
        """A device's `{"event": "ota", "release", "state", "reason"}`: its row moves
        forward. False when nothing changed (malformed, no such row, not forward)."""
        release, state, reason = doc.get("release"), doc.get("state"), doc.get("reason")
        if (
            not isinstance(release, str)
            or not 0 < len(release) <= _RELEASE_MAX
            or state not in DEVICE_STATES
            or (reason is not None and not isinstance(reason, str))
        ):
            log.warning("event=ota_event_malformed device=%s", device_id)
            return False
        assert isinstance(state, str)
        actor = Actor(f"device:{device_id}", "broker")
        moved = self._store.rollouts.advance(
            release, device_id, state, reason[:64] if reason else None, actor
        )
        if moved is None:
            log.info("event=ota_event_ignored device=%s release=%s", device_id, release[:80])
            return False
        log.info(
            "event=ota_%s device=%s rollout=%d changed=%s",
            state,
            device_id,
            moved.rollout_id,
            moved.changed,
        )
        if moved.changed and state in OTA_ENDED:
            row = self._store.rollouts.row(moved.rollout_id)
            if row is not None and row.state in OPEN_ROLLOUT:
                if state in OTA_FAILED and moved.failures > row.max_failures:
                    why = f"{reason}" if reason else "no reason"
                    detail = (
                        f"{moved.failures} device(s) failed, more than max failures "
                        f"{row.max_failures}; the last: {device_id} {state} ({why[:64]})"
                    )
                    if self._store.rollouts.set_state(
                        row.id, ROLLOUT_HALTED, OPEN_ROLLOUT, POLICY, detail=detail, expire=True
                    ):
                        log.warning("event=rollout_halted rollout=%d detail=%r", row.id, detail)
                else:
                    self._settle(row.id, row)
        return moved.changed

    def on_online(self, device_id: str) -> CommandOut | None:
        """Offer the active rollout of the device's batch to a device that came online, if
        it has no row yet and the share has room. The command is stored, not sent: the
        caller sends it with the device's other pending commands."""
        found = self._store.rollouts.to_offer(device_id)
        if found is None:  # the common case: one indexed read
            return None
        row, has_row = found
        dev = self._store.devices.get(device_id)
        if dev is None or unreachable(dev) is not None:
            return None
        rollouts = self._store.rollouts
        has_key = rollouts.has_ota_key(device_id)
        # A row without a live offer: its command was never stored (a crash in create) or
        # expired before the device took it (off longer than the command lived): offer again.
        if not has_row:
            if rollouts.rows(row.id) >= share(row.percent, rollouts.eligible(row.batch_id)):
                return None  # the share is full
            if not rollouts.add_device(row.id, device_id, has_key):
                return None  # another event got there first
        if not has_key:  # recorded refused as no_ota_key: that may fill the share
            self._settle(row.id)
            return None
        try:
            release = self._app.releases.release(row.release_id)
        except NotFound:
            return None
        cmd = self._store.commands.create(
            dev,
            "ota",
            {"release": release.id, "size": int(release.payload_size)},
            OTA_TTL_S,
            POLICY,
        )
        rollouts.commanded(row.id, device_id, cmd.seq)
        log.info("event=rollout_offered rollout=%d device=%s seq=%d", row.id, device_id, cmd.seq)
        return cmd

    # -- the device API's ----------------------------------------------------------------
    def head(self, release_id: str, device_id: str) -> dict[str, Any]:
        """The head document for a device with an open offer of the release (docs/ota.md
        "Device API"); the device is then downloading. OtaRefused otherwise."""
        from host.server.releases import NoOtaKey

        try:
            self._app.releases.release(release_id)
        except NotFound as e:
            raise OtaRefused(404, "unknown_release", str(e)) from None
        device_id = device_id.lower()
        rid = None
        if is_device_id(device_id):
            rid = self._store.rollouts.open_offer(release_id, device_id)
        dev = None if rid is None else self._store.devices.get(device_id)
        if rid is None or dev is None:
            raise OtaRefused(
                404,
                "not_offered",
                f"device {device_id[:64]} has no open offer of release {release_id}",
            )
        try:
            doc = self._app.releases.head(release_id, dev)
        except NoOtaKey as e:
            raise OtaRefused(409, "no_ota_key", str(e)) from None
        except NotFound as e:
            raise OtaRefused(404, "unknown_release", str(e)) from None
        self._store.rollouts.advance(
            release_id,
            device_id,
            OTA_DOWNLOADING,
            None,
            Actor(f"device:{device_id}", "device-api"),
            rollout_id=rid,
        )
        return doc

    # -- inside ----------------------------------------------------------------------------
    def _settle(self, rollout_id: int, row: RolloutRow | None = None) -> None:
        """Done once every row ended, there is at least one, and the share is full."""
        rollouts = self._store.rollouts
        row = row or rollouts.row(rollout_id)
        if row is None or row.state not in OPEN_ROLLOUT or rollouts.open_rows(rollout_id):
            return
        rows = rollouts.rows(rollout_id)
        if rows and rows >= share(row.percent, rollouts.eligible(row.batch_id)):
            if rollouts.set_state(rollout_id, ROLLOUT_DONE, OPEN_ROLLOUT, POLICY):
                log.info("event=rollout_done rollout=%d", rollout_id)


_PAST = {ROLLOUT_PAUSED: "paused", ROLLOUT_ACTIVE: "resumed", ROLLOUT_ABORTED: "aborted"}


def _unknown(rollout_id: int) -> NotFound:
    return NotFound(f"rollout {rollout_id} does not exist; see: qlink ota rollout list")
