"""Device state changes after onboarding: revoke, disable, enable. Each is a typed use case:
the broker first (through the policy layer, which may refuse: then nothing changes here), then
the store with its audit event; a revocation also re-publishes the CRL.

Every change is idempotent: repeating it leaves the device as it is and logs nothing new.
A revoked device stays revoked.
"""

from __future__ import annotations

from collections.abc import Callable

from host.server.deviceid import BadDeviceId, parse_device_id
from host.server.policy import Policies
from host.server.schemas import STATE_REVOKED, DeviceRecord
from host.server.store import Actor, Conflict, NotFound, Store


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
