"""The application layer: the server's use cases over its store, CA and policy drivers, built
once from the settings. The device API, the operator API and the `qlink` CLI all call it; none
of them reaches the store, the CA or a driver another way.

- `Application.for_server(...)`: what an API process builds at start (the CA, every policy
  driver connected, the broker endpoint devices are sent to).
- `Application.for_operator(settings)`: what a `qlink` command builds: the store at once, the
  CA and the policy drivers (a connection to the running server's broker) only when a use case
  needs them, so a command that reads the store pays for nothing else.

Reads and changes take `tenant`: `None` is the local operator, who sees every tenant; an
operator token's tenant sees only its own (another tenant's batch or device does not exist).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING

from host.server import ServerError
from host.server.schemas import AuditOut, BatchExport, BatchOut, DeviceRecord, OperatorOut
from host.server.settings import Settings
from host.server.store import LOCAL, Actor, RevokedCert, Store

if TYPE_CHECKING:
    from host.server.ca import CertificateAuthority
    from host.server.identities import Progress
    from host.server.lifecycle import Lifecycle
    from host.server.onboarding import BrokerEndpoint, Onboarding
    from host.server.policy import Policies, PolicyDriver


class ServerNotRunning(ServerError):
    def __init__(self) -> None:
        super().__init__(
            "the server is not running; start it (qlink server) so its broker applies the change"
        )


class Application:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        ca: CertificateAuthority | None = None,
        policies: Policies | None = None,
        broker: BrokerEndpoint | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        if ca is not None:
            self.__dict__["ca"] = ca
        if policies is not None:
            self.__dict__["policies"] = policies
        self._broker = broker

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def for_server(
        cls,
        settings: Settings,
        *,
        broker_port: int,
        admin_port: int = 0,
        policy: PolicyDriver | None = None,
    ) -> Application:
        """An API process's application: the managed broker's driver on its admin listener
        (`admin_port`; `policy` replaces it in tests), the other drivers the settings configure,
        and devices sent to `broker_port`."""
        from host.server.broker import ADMIN_HOST
        from host.server.ca import CertificateAuthority
        from host.server.onboarding import BrokerEndpoint
        from host.server.policy import Policies
        from host.server.policy.mosquitto import MosquittoDynsec

        ca = CertificateAuthority.load_or_create(
            settings.ca_dir, settings.public_host, settings.hsm
        )
        store = Store(settings.database)
        try:
            driver = policy or MosquittoDynsec(ca, ADMIN_HOST, admin_port)
        except BaseException:
            store.close()
            raise
        policies = Policies({"mosquitto": driver, **extra_drivers(settings)}, store.devices)
        return cls(
            settings,
            store,
            ca=ca,
            policies=policies,
            broker=BrokerEndpoint(settings.public_host, broker_port),
        )

    @classmethod
    def for_operator(cls, settings: Settings) -> Application:
        """The local operator's application (the `qlink` CLI on the data directory)."""
        return cls(settings, Store(settings.database))

    @cached_property
    def ca(self) -> CertificateAuthority:
        from host.server.ca import CertificateAuthority

        return CertificateAuthority.load_or_create(
            self.settings.ca_dir, self.settings.public_host, self.settings.hsm
        )

    @cached_property
    def policies(self) -> Policies:
        """For the local operator: the drivers, the managed one connected to the broker of the
        server running on this data directory."""
        from host.server.broker import ADMIN_HOST
        from host.server.policy import Policies, PolicyError
        from host.server.policy.mosquitto import MosquittoDynsec

        try:
            info = json.loads(self.settings.server_json.read_text())
            port = int(info["broker_admin_port"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ServerNotRunning from None
        try:
            driver = MosquittoDynsec(self.ca, ADMIN_HOST, port)
        except PolicyError as e:
            raise PolicyError(f"cannot reach the server's broker: {e}") from e
        return Policies({"mosquitto": driver, **extra_drivers(self.settings)}, self.store.devices)

    @cached_property
    def onboarding(self) -> Onboarding:
        from host.server.onboarding import BrokerEndpoint, Onboarding

        broker = self._broker or BrokerEndpoint(self.settings.public_host, 0)
        return Onboarding(
            self.settings, self.store, self.ca, self.policies, broker, self.publish_crl
        )

    @cached_property
    def lifecycle(self) -> Lifecycle:
        from host.server.lifecycle import Lifecycle

        return Lifecycle(self.store, self.policies, self.publish_crl)

    def close(self) -> None:
        if "policies" in self.__dict__:
            self.policies.close()
        self.store.close()

    # -- reads ----------------------------------------------------------------------------
    def batches(self, tenant: str | None = None) -> list[BatchOut]:
        return self.store.batches.list(tenant)

    def batch(self, name: str, tenant: str | None = None) -> BatchOut:
        return self.store.batches.get(name, tenant)

    def devices(
        self,
        tenant: str | None = None,
        batch: str | None = None,
        *,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[DeviceRecord]:
        return self.store.devices.list(tenant, batch, state=state, limit=limit, offset=offset)

    def device(self, device_id: str, tenant: str | None = None) -> DeviceRecord | None:
        from host.server.deviceid import is_device_id

        if not is_device_id(device_id):
            return None
        return self.store.devices.get(device_id.lower(), tenant)

    def audit(
        self,
        tenant: str | None = None,
        *,
        action: str | None = None,
        target: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[AuditOut]:
        """Newest first."""
        return self.store.audit.list(tenant, action=action, target=target, since=since, limit=limit)

    def operators(self, tenant: str | None = None) -> list[OperatorOut]:
        return self.store.tokens.list(tenant)

    def authenticate(self, token: str) -> OperatorOut | None:
        return self.store.tokens.authenticate(token)

    def export_batch(self, name: str, tenant: str | None = None) -> BatchExport:
        return self.store.batches.export(name, tenant)

    def revoked_certs(self) -> list[RevokedCert]:
        return self.store.devices.revoked_certs()

    def current_crl(self) -> bytes:
        """The CRL (DER) as it should be now, re-signed when the published one is stale."""
        return self.ca.current_crl(self._revoked())

    # -- use cases ------------------------------------------------------------------------
    def create_batch(
        self, name: str, tenant: str = "default", policy: str = "mosquitto", actor: Actor = LOCAL
    ) -> BatchOut:
        return self.store.batches.create(name, tenant, policy, actor)

    def set_batch_active(
        self, name: str, active: bool, tenant: str | None = None, actor: Actor = LOCAL
    ) -> BatchOut:
        return self.store.batches.set_active(name, active, tenant, actor)

    def import_devices(
        self,
        batch: str,
        lines: Iterable[str] | str,
        *,
        tenant: str | None = None,
        fmt: str | None = None,
        actor: Actor = LOCAL,
        progress: Progress | None = None,
    ) -> int:
        return self.store.batches.import_devices(
            batch, lines, tenant=tenant, fmt=fmt, actor=actor, progress=progress
        )

    def create_token(
        self, name: str, tenant: str, role: str, actor: Actor = LOCAL
    ) -> tuple[str, OperatorOut]:
        return self.store.tokens.create(name, tenant, role, actor)

    def revoke_tokens(self, name: str, tenant: str, actor: Actor = LOCAL) -> int:
        return self.store.tokens.revoke(name, tenant, actor)

    def revoke(
        self, device_id: str, *, tenant: str | None = None, actor: Actor = LOCAL
    ) -> DeviceRecord:
        return self.lifecycle.revoke(device_id, tenant=tenant, actor=actor)

    def disable(
        self, device_id: str, *, tenant: str | None = None, actor: Actor = LOCAL
    ) -> DeviceRecord:
        return self.lifecycle.disable(device_id, tenant=tenant, actor=actor)

    def enable(
        self, device_id: str, *, tenant: str | None = None, actor: Actor = LOCAL
    ) -> DeviceRecord:
        return self.lifecycle.enable(device_id, tenant=tenant, actor=actor)

    def publish_crl(self) -> None:
        """Write the CRL with every revoked certificate and make the broker re-read it (from
        any process: the broker's pid file names it)."""
        from host.server.broker import reload_broker

        self.ca.publish_crl(self._revoked())
        reload_broker(self.settings.broker_dir)

    def _revoked(self) -> list[tuple[int, float]]:
        return [(r.serial, r.revoked_at) for r in self.store.devices.revoked_certs()]


def extra_drivers(settings: Settings) -> dict[str, PolicyDriver]:
    """The policy drivers besides the managed broker's, by batch policy name."""
    from host.server.policy.azure import AzureDpsExport

    drivers: dict[str, PolicyDriver] = {"azure": AzureDpsExport(settings.data_dir / "azure")}
    if settings.aws_region:
        import boto3

        from host.server.policy.aws import AwsIotPolicy

        drivers["aws"] = AwsIotPolicy(boto3.client("iot", region_name=settings.aws_region))
    return drivers
