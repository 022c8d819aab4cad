"""Policy drivers: how the server tells a broker what a device may do."""

from __future__ import annotations

from typing import Protocol

from host.server import ServerError


class PolicyError(ServerError):
    """The broker did not accept a policy change; the operation can be retried."""


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


def device_topic_prefix(tenant: str, device_id: str) -> str:
    return f"qlink/{tenant}/{device_id}"


class MemoryPolicy:
    """A driver that only records calls: for in-process API tests without a broker."""

    rights_from_certificate = False

    def __init__(self) -> None:
        self.registered: dict[str, str] = {}
        self.disabled: set[str] = set()
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

    def delete_device(self, device_id: str) -> None:
        self._maybe_fail()
        self.registered.pop(device_id, None)
        self.disabled.discard(device_id)

    def close(self) -> None:
        pass
