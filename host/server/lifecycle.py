"""Device state changes after onboarding: revoke, disable, enable, and revoke a whole batch.
Each is a typed use case: the broker first (through the policy layer, which may refuse: then
nothing changes here), then the store with its audit event; a revocation also re-publishes the
CRL.

Every change is idempotent: repeating it leaves the device as it is and logs nothing new.
A revoked device stays revoked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from host.server.deviceid import BadDeviceId, parse_device_id
from host.server.policy import Policies
from host.server.schemas import STATE_REVOKED, BatchRevokeOut, DeviceRecord
from host.server.store import Actor, Conflict, NotFound, Store

if TYPE_CHECKING:
    from host.server.identities import Progress


class Lifecycle:
    def __init__(self, store: Store, policies: Policies, publish_crl: Callable[[], None]) -> None:
        self._store = store
        self._policies = policies
        self._publish_crl = publish_crl

    def _device(self, device_id: str, tenant: str | None) -> DeviceRecord:
        try:
            dev = self._store.devices.get(parse_device_id(device_id), tenant)
        except BadDeviceId:
            dev = None
        if dev is None:
            raise NotFound(f"device {device_id[:64]} does not exist; see: qlink devices")
        return dev

    def _now(self, device_id: str) -> DeviceRecord:
        dev = self._store.devices.get(device_id)
        assert dev is not None  # devices are never deleted
        return dev

    def revoke(self, device_id: str, *, tenant: str | None, actor: Actor) -> DeviceRecord:
        """Cut the device off for good: a deny at its broker, its certificate on the CRL (its
        next TLS handshake fails), onboarding refused."""
        dev = self._device(device_id, tenant)
        if dev.state == STATE_REVOKED:
            return dev
        self._policies.deny(dev, revoke=True)
        if self._store.devices.revoke(dev, actor):
            self._publish_crl()
        return self._now(dev.device_id)

    def disable(self, device_id: str, *, tenant: str | None, actor: Actor) -> DeviceRecord:
        """Refuse the device's broker connections (its live one dropped) and its onboarding
        until it is enabled again."""
        dev = self._device(device_id, tenant)
        if dev.state == STATE_REVOKED:  # as `enable` refuses it: the flag would mean nothing
            raise Conflict(f"device {dev.device_id} is revoked; a revoked device stays revoked")
        if dev.disabled:
            return dev
        self._policies.deny(dev, revoke=False)
        self._store.devices.set_disabled(dev, True, actor)
        return self._now(dev.device_id)

    def enable(self, device_id: str, *, tenant: str | None, actor: Actor) -> DeviceRecord:
        """Undo `disable`; a revoked device stays revoked (409)."""
        dev = self._device(device_id, tenant)
        if dev.state == STATE_REVOKED:
            raise Conflict(f"device {dev.device_id} is revoked; a revoked device stays revoked")
        if not dev.disabled:
            return dev
        self._policies.allow(dev)
        self._store.devices.set_disabled(dev, False, actor)
        return self._now(dev.device_id)

    def revoke_batch(
        self, name: str, *, tenant: str | None, actor: Actor, progress: Progress | None = None
    ) -> BatchRevokeOut:
        """Revoke every device of the batch: the broker denies them all at once (one request per
        4096 devices for the managed broker, their live connections dropped), then each is
        revoked in the store with its own `device.revoke` audit event, and the CRL is published
        once. Devices revoked before are left as they are, so a repeat (or a retry after a
        failure) revokes only what is left. `progress(done, total)` follows the store step."""
        try:
            batch = self._store.batches.get(name, tenant)
        except NotFound:
            raise NotFound(f"batch {name[:64]!r} does not exist; see: qlink batch list") from None
        devs = self._store.devices.list(batch.tenant, batch.name)
        todo = [d for d in devs if d.state != STATE_REVOKED]
        if todo:
            self._policies.deny_many(todo, revoke=True)
        revoked = 0
        try:
            for done, dev in enumerate(todo, start=1):
                revoked += self._store.devices.revoke(dev, actor)
                if progress is not None:
                    progress(done, len(todo))
        finally:
            if revoked:
                self._publish_crl()
        return BatchRevokeOut(
            batch=batch.name,
            tenant=batch.tenant,
            devices=len(devs),
            revoked=revoked,
            already_revoked=len(devs) - len(todo),
        )
