"""Policy drivers: how the server tells a broker what a device may do; `Policies`: the
drivers by batch policy name, and the one owner of what a broker may hold for a device.

A batch of policy `external` is served by an external Mosquitto target (its batch's target,
host/server/targets.py): one driver per such target, made on first use by the factory the
server gives (`targets`) and kept, like the others, until `close`.

A driver whose broker gives rights by certificate (Mosquitto's pattern ACL) needs to hear of a
device at onboarding only when the broker may hold an exception for it (a deny entry). That
mark (`DeviceRecord.policy_exception`) is set, and committed, before a deny is sent, and
cleared once onboarding or enabling has removed the entry: `Policies` is the only code that
decides it; the store records it.

A driver whose broker keeps its denials as one set (`DenySet`: the qlink plugin of the managed
Mosquitto) takes many devices in one message: a batch revocation, and the denials the server
applies again at start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from host.server import ServerError
from host.server.store.targets import KIND_MOSQUITTO, POLICY_OF_KIND

if TYPE_CHECKING:
    from host.server.schemas import DeviceRecord
    from host.server.store.devices import Devices


class PolicyError(ServerError):
    """The broker did not accept a policy change; the operation can be retried."""


class PolicyUnavailable(PolicyError):
    """The device's batch names a policy driver this server has not configured."""

    def __init__(self, policy: str) -> None:
        super().__init__(
            f"the policy driver {policy!r} of this device's batch is not configured on the "
            "server; retry later"
        )
        self.policy = policy


class PolicyDriver(Protocol):
    # True when the certificate alone gives a device its rights at the broker: onboarding then
    # calls register_device only for a device the broker may hold an exception for (a deny).
    rights_from_certificate: bool

    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        """Let `device_id` (with this certificate, for drivers that register certificates)
        connect and use `qlink/<tenant>/<device_id>/#`. Idempotent; on failure it raises
        PolicyError and leaves nothing that a retry cannot complete."""

    def disable_device(self, device_id: str) -> None:
        """Refuse the device's connections and drop its live one; idempotent."""

    def enable_device(self, device_id: str) -> None:
        """Undo `disable_device`; idempotent."""

    def delete_device(self, device_id: str) -> None:
        """Remove every trace of the device from the broker; idempotent."""

    def close(self) -> None: ...


@runtime_checkable
class DenySet(Protocol):
    """A driver whose broker denies many devices per request."""

    def deny_devices(self, device_ids: Sequence[str]) -> None:
        """Refuse every one of the devices and drop their live connections; idempotent."""

    def restore_denials(self, device_ids: Sequence[str]) -> None:
        """At start: the broker's whole denied set from the store, then devices are served
        (until then a broker that keeps the set in memory serves none)."""


def device_topic_prefix(tenant: str, device_id: str) -> str:
    return f"qlink/{tenant}/{device_id}"


class MemoryPolicy:
    """A driver that only records calls: for in-process API tests without a broker."""

    rights_from_certificate = False

    def __init__(self) -> None:
        self.registered: dict[str, str] = {}
        self.disabled: set[str] = set()
        self.deny_requests: list[list[str]] = []  # each deny_devices call's devices
        self.fail_next: PolicyError | None = None

    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        self._maybe_fail()
        self.registered[device_id] = tenant

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err

    def disable_device(self, device_id: str) -> None:
        self._maybe_fail()
        self.disabled.add(device_id)

    def enable_device(self, device_id: str) -> None:
        self._maybe_fail()
        self.disabled.discard(device_id)

    def deny_devices(self, device_ids: Sequence[str]) -> None:
        self._maybe_fail()
        self.deny_requests.append(list(device_ids))
        self.disabled.update(device_ids)

    def restore_denials(self, device_ids: Sequence[str]) -> None:
        self.deny_devices(device_ids)

    def delete_device(self, device_id: str) -> None:
        self._maybe_fail()
        self.registered.pop(device_id, None)
        self.disabled.discard(device_id)

    def close(self) -> None:
        pass


EXTERNAL = POLICY_OF_KIND[KIND_MOSQUITTO]  # the policy of an external Mosquitto's batches


class _TargetCall:
    """An external Mosquitto target's driver, reached (and connected, the first time) when
    one of its methods is called."""

    rights_from_certificate = False

    def __init__(self, policies: Policies, target: str) -> None:
        self._policies = policies
        self._target = target

    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        driver = self._policies.target_driver(self._target)
        driver.register_device(tenant, device_id, certificate_der)

    def disable_device(self, device_id: str) -> None:
        self._policies.target_driver(self._target).disable_device(device_id)

    def enable_device(self, device_id: str) -> None:
        self._policies.target_driver(self._target).enable_device(device_id)

    def delete_device(self, device_id: str) -> None:
        self._policies.target_driver(self._target).delete_device(device_id)

    def close(self) -> None:
        pass  # the driver is the Policies' to close


class Policies:
    """The policy drivers by batch policy name, over the devices' exception marks."""

    def __init__(
        self,
        drivers: Mapping[str, PolicyDriver],
        devices: Devices,
        targets: Callable[[str], PolicyDriver] | None = None,
    ) -> None:
        self.drivers = dict(drivers)
        self._devices = devices
        self._targets = targets  # makes an external Mosquitto target's driver, by its name
        self._lock = threading.Lock()

    def driver_for(self, dev: DeviceRecord) -> PolicyDriver:
        if dev.policy == EXTERNAL:
            return self.target_driver(dev.target)
        driver = self.drivers.get(dev.policy)
        if driver is None:
            raise PolicyUnavailable(dev.policy)
        return driver

    def for_target(self, name: str, kind: str) -> PolicyDriver:
        """The driver of target `name` of `kind` (managed, mosquitto, aws)."""
        if kind == KIND_MOSQUITTO:
            return self.target_driver(name)
        policy = POLICY_OF_KIND.get(kind, kind)
        driver = self.drivers.get(policy)
        if driver is None:
            raise PolicyUnavailable(policy)
        return driver

    def target_driver(self, name: str) -> PolicyDriver:
        """The driver of external Mosquitto target `name`, connected on first use (its
        PolicyError says why it cannot be) and kept."""
        key = f"target:{name}"
        with self._lock:
            driver = self.drivers.get(key)
            if driver is None:
                if self._targets is None:
                    raise PolicyUnavailable(EXTERNAL)
                driver = self.drivers[key] = self._targets(name)
        return driver

    def onboarding_call(self, dev: DeviceRecord) -> PolicyDriver | None:
        """The driver to tell of the device before it learns its certificate, or None when
        its certificate alone gives it its rights and its broker holds no exception for it."""
        if dev.policy == EXTERNAL:
            # Its broker hears of every device. The driver may not be connected yet: that
            # happens at the call, which onboarding makes off the event loop.
            return _TargetCall(self, dev.target)
        driver = self.driver_for(dev)
        if driver.rights_from_certificate and not dev.policy_exception:
            return None
        return driver

    def deny(self, dev: DeviceRecord, *, revoke: bool) -> None:
        """Cut the device off at its broker (disable, or revoke: for good)."""
        driver = self.driver_for(dev)
        # Marked before the broker hears of it: were this process to die between the deny and
        # the state change, the device's next onboarding still clears the entry.
        self._devices.set_policy_exception(dev.device_id, True)
        if revoke:
            driver.delete_device(dev.device_id)
        else:
            driver.disable_device(dev.device_id)

    def deny_many(self, devs: Sequence[DeviceRecord], *, revoke: bool) -> None:
        """`deny` for many devices: one request per driver that takes a set (DenySet), one per
        device for the others. Every device's driver is found before anything changes."""
        by_driver: dict[int, tuple[PolicyDriver, list[DeviceRecord]]] = {}
        for dev in devs:
            driver = self.driver_for(dev)
            by_driver.setdefault(id(driver), (driver, []))[1].append(dev)
        for dev in devs:  # marked first, as in `deny`
            self._devices.set_policy_exception(dev.device_id, True)
        for driver, group in by_driver.values():
            if isinstance(driver, DenySet):
                driver.deny_devices([d.device_id for d in group])
                continue
            for dev in group:
                if revoke:
                    driver.delete_device(dev.device_id)
                else:
                    driver.disable_device(dev.device_id)

    def allow(self, dev: DeviceRecord) -> None:
        """Undo `deny(revoke=False)`: the broker's entry removed, then its mark."""
        self.driver_for(dev).enable_device(dev.device_id)
        self._devices.set_policy_exception(dev.device_id, False)

    def reapply_denials(self, policy: str) -> int:
        """Deny again every disabled or revoked device of `policy`'s batches (at start: the
        broker's own record of its denials may be lost or older than the store's)."""
        driver = self.drivers.get(policy)
        if driver is None:
            return 0
        denied = self._devices.denied(policy)
        if isinstance(driver, DenySet):
            driver.restore_denials([dev.device_id for dev in denied])
            return len(denied)
        for dev in denied:
            if dev.state == "revoked":
                driver.delete_device(dev.device_id)
            else:
                driver.disable_device(dev.device_id)
        return len(denied)

    def close(self) -> None:
        for driver in self.drivers.values():
            driver.close()
