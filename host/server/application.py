"""The application layer: the server's use cases over its store, CA and policy drivers, built
once from the settings. The device API, the operator API and the `qlink` CLI all call it; none
of them reaches the store, the CA or a driver another way.

- `Application.for_server(...)`: what an API process builds at start (the CA, every policy
  driver connected, the broker endpoint devices are sent to).
- `Application.for_operator(settings)`: what a `qlink` command builds: the store at once, the
  CA and the policy drivers (a connection to the running server's broker) only when a use case
  needs them, so a command that reads the store pays for nothing else.

A batch is served by a target (host/server/targets.py): the managed broker, an external
Mosquitto or AWS IoT. An external Mosquitto's driver and command link are made on first use.

Reads and changes take `tenant`: `None` is the local operator, who sees every tenant; an
operator token's tenant sees only its own (another tenant's batch or device does not exist).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from host.server import ServerError
from host.server.schemas import (
    AuditOut,
    BatchExport,
    BatchOut,
    BatchRevokeOut,
    ClaimOut,
    CommandOut,
    DecommissionOut,
    DeviceRecord,
    MoveOut,
    OperatorOut,
    PufHealthOut,
    TargetRecord,
    TenantOut,
    TransferCodeOut,
)
from host.server.settings import Settings
from host.server.store import LOCAL, Actor, Invalid, RevokedCert, Store
from host.server.store.targets import KIND_MOSQUITTO, MANAGED
from host.server.store.transfers import CODE_TTL_S

if TYPE_CHECKING:
    from host.server.ca import CertificateAuthority
    from host.server.coalesce import Coalesced
    from host.server.commands import CommandSigner
    from host.server.events import MqttCommandLink
    from host.server.identities import Progress
    from host.server.lifecycle import Lifecycle
    from host.server.moves import BatchMoves
    from host.server.onboarding import BrokerEndpoint, Onboarding
    from host.server.ownership import Ownership
    from host.server.policy import Policies, PolicyDriver
    from host.server.releases import ReleaseService
    from host.server.rollouts import RolloutService
    from host.server.store.users import UserRecord
    from host.server.successors import SuccessorService
    from host.server.targets import TargetService, TargetSpec
    from host.server.viewmodels import (
        Dashboard,
        DeviceChange,
        DeviceListRow,
        RolloutChange,
    )


log = logging.getLogger("qlink.app")
_RENEWAL_CRL_INTERVAL_S = 1.0
_MIN_TTL_S = 10
_MAX_TTL_S = 30 * 86400


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
        admin_port: int = 0,
    ) -> None:
        self.settings = settings
        self.store = store
        self._admin_port = admin_port  # the managed broker's admin listener (0: server.json)
        self.target_links: dict[str, MqttCommandLink] = {}  # external targets', by name
        if ca is not None:
            self.__dict__["ca"] = ca
        if policies is not None:
            self.__dict__["policies"] = policies
        self._broker = broker
        self._closed = False

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
        from host.server.targets import TargetService

        ca = CertificateAuthority.load_or_create(
            settings.ca_dir, settings.public_host, settings.hsm
        )
        store = Store(settings.database)
        try:
            driver = policy or MosquittoDynsec(ca, ADMIN_HOST, admin_port)
        except BaseException:
            store.close()
            raise
        targets = TargetService(settings, store)
        policies = Policies(
            {"mosquitto": driver, **extra_drivers(settings)}, store.devices, targets.driver
        )
        built = cls(
            settings,
            store,
            ca=ca,
            policies=policies,
            broker=BrokerEndpoint(settings.public_host, broker_port),
            admin_port=admin_port,
        )
        built.__dict__["targets"] = targets
        return built

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

        port = self._broker_admin_port()
        try:
            driver = MosquittoDynsec(self.ca, ADMIN_HOST, port)
        except PolicyError as e:
            raise PolicyError(f"cannot reach the server's broker: {e}") from e
        return Policies(
            {"mosquitto": driver, **extra_drivers(self.settings)},
            self.store.devices,
            self.targets.driver,
        )

    @cached_property
    def targets(self) -> TargetService:
        from host.server.targets import TargetService

        return TargetService(self.settings, self.store)

    def use_broker_admin_port(self, port: int) -> None:
        """The managed broker's admin port, once it is known (the server's main process)."""
        self._admin_port = port

    def _broker_admin_port(self) -> int:
        """The managed broker's admin port: given at construction, or the running server's."""
        if self._admin_port:
            return self._admin_port
        try:
            info = json.loads(self.settings.server_json.read_text())
            return int(info["broker_admin_port"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ServerNotRunning from None

    @cached_property
    def command_signer(self) -> CommandSigner:
        from host.server.commands import CommandSigner

        return CommandSigner.load_or_create(self.ca)

    @cached_property
    def releases(self) -> ReleaseService:
        """Published firmware releases under the data directory's releases/ (the CA is loaded
        only to publish one)."""
        from host.server.releases import ReleaseService

        return ReleaseService(
            self.settings.data_dir / "releases", self.store, lambda: self.ca.root_cert
        )

    @cached_property
    def command_link(self) -> MqttCommandLink:
        from host.server.broker import ADMIN_HOST
        from host.server.events import MqttCommandLink

        return MqttCommandLink.connect(self.ca, ADMIN_HOST, self._broker_admin_port())

    @cached_property
    def onboarding(self) -> Onboarding:
        from host.server.challenge import Challenges, load_or_create_key
        from host.server.onboarding import BrokerEndpoint, Onboarding

        broker = self._broker or BrokerEndpoint(self.settings.public_host, 0)
        return Onboarding(
            self.settings,
            self.store,
            self.ca,
            self.policies,
            broker,
            Challenges(load_or_create_key(self.settings.challenge_key_path)),
            self.renewal_crl,
            self.command_signer.cert_der,
            self.targets.broker_block,
        )

    @cached_property
    def renewal_crl(self) -> Coalesced:
        """`publish_crl` for renewals: at most once a second (host/server/coalesce.py says
        why); revocations publish at once."""
        from host.server.coalesce import Coalesced

        return Coalesced(self.publish_crl, _RENEWAL_CRL_INTERVAL_S, "crl")

    @cached_property
    def lifecycle(self) -> Lifecycle:
        from host.server.lifecycle import Lifecycle

        return Lifecycle(self.store, self.policies, self.publish_crl)

    @cached_property
    def successors(self) -> SuccessorService:
        """The device API's successor request (transfer and re-enrolment moves)."""
        from host.server.successors import SuccessorService

        return SuccessorService(self.settings, self.store, self.policies, self.publish_crl)

    @cached_property
    def ownership(self) -> Ownership:
        from host.server.ownership import Ownership

        return Ownership(self)

    def close(self) -> None:
        """Flush, close the links and the store; once (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        if "renewal_crl" in self.__dict__:
            self.renewal_crl.flush()
        if "policies" in self.__dict__:
            self.policies.close()
        if "command_link" in self.__dict__:
            self.command_link.close()
        for link in self.target_links.values():
            link.close()
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
        drifting_pct: int | None = None,
    ) -> list[DeviceRecord]:
        """`drifting_pct`: only devices whose PUF used at least that percent of its budget."""
        return self.store.devices.list(
            tenant, batch, state=state, limit=limit, offset=offset, drifting_pct=drifting_pct
        )

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

    def audit_page(
        self,
        tenant: str | None,
        *,
        action: str | None = None,
        target_prefix: str | None = None,
        actor: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[tuple[int, AuditOut]]:
        """A keyset page of the audit log, newest first: (id, event), ids below `before`."""
        return self.store.audit.page(
            tenant,
            action=action,
            target_prefix=target_prefix,
            actor=actor,
            before=before,
            limit=limit,
        )

    def audit_actions(self, tenant: str | None) -> list[str]:
        return self.store.audit.actions(tenant)

    def tenants(self, tenant: str | None = None) -> list[TenantOut]:
        """Every tenant for the local operator (`None`), else only `tenant` itself."""
        return self.store.tenants.list(tenant)

    def operators(self, tenant: str | None = None) -> list[OperatorOut]:
        return self.store.tokens.list(tenant)

    def authenticate(self, token: str) -> OperatorOut | None:
        return self.store.tokens.authenticate(token)

    def export_batch(self, name: str, tenant: str | None = None) -> BatchExport:
        return self.store.batches.export(name, tenant)

    def revoked_certs(self) -> list[RevokedCert]:
        return self.store.devices.revoked_certs()

    # -- the web console's reads (host/server/store/views.py) ------------------------------
    def device_page(
        self,
        tenant: str | None,
        *,
        state: str | None = None,
        batch: str | None = None,
        fw: str | None = None,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> list[DeviceListRow]:
        """A keyset page of the device list, by device ID after `after` (Invalid for a bad
        state, prefix or limit)."""
        return self.store.views.device_page(
            tenant, state=state, batch=batch, fw=fw, prefix=prefix, after=after, limit=limit
        )

    def fw_versions(self, tenant: str | None) -> list[str]:
        return self.store.views.fw_versions(tenant)

    def batch_names(self, tenant: str | None) -> list[str]:
        """The tenant's batch names, in order, without counting their devices."""
        return self.store.views.batch_names(tenant)

    def batch_counts(self, tenant: str | None, batch: str) -> dict[str, int]:
        """Devices of the batch in each state (every state, 0 included); NotFound for a
        batch that is not one of `tenant`'s."""
        return self.store.views.batch_counts(tenant, batch)

    def dashboard(self, tenant: str | None, now: float) -> Dashboard:
        from host.server.viewmodels import Dashboard

        views = self.store.views
        return Dashboard(
            summary=views.summary(tenant),
            onboardings_per_minute=views.onboardings_per_minute(tenant, now),
            alerts=views.alerts(tenant, now, puf_drift_pct=self.settings.puf_drift_pct),
        )

    # -- console users (docs/console.md); the console and `qlink user` hash the password ----
    def user(self, name: str) -> UserRecord | None:
        return self.store.users.get(name)

    def users(self) -> list[UserRecord]:
        return self.store.users.list()

    def has_tenant(self, name: str) -> bool:
        return self.store.tenants.exists(name)

    def create_user(
        self, name: str, tenant: str, role: str, password_hash: str, actor: Actor = LOCAL
    ) -> UserRecord:
        return self.store.users.create(name, tenant, role, password_hash, actor=actor)

    def unlock_user(self, name: str, actor: Actor = LOCAL) -> UserRecord:
        return self.store.users.unlock(name, actor=actor)

    def delete_user(self, name: str, actor: Actor = LOCAL) -> int:
        """Delete a user and end every session of it; the number of sessions ended."""
        return self.store.users.delete(name, actor=actor)

    def changes_since(self, cursor: float, limit: int = 500) -> list[DeviceChange]:
        """Every tenant's changed devices: the live feed matches each to its listeners."""
        return self.store.views.changes_since(cursor, limit)

    def rollout_changes_since(self, cursor: float) -> list[RolloutChange]:
        return self.store.views.rollout_changes_since(cursor)

    def telemetry_history(
        self, device_id: str, tenant: str | None = None
    ) -> list[tuple[float, dict[str, Any]]]:
        """The device's last telemetry messages, oldest first; NotFound when the device is not
        one of `tenant`'s."""
        dev = self.require_device(device_id, tenant)
        return self.store.views.telemetry_history(dev.device_id)

    def current_crl(self) -> bytes:
        """The CRL (DER) as it should be now, re-signed when the published one is stale."""
        return self.ca.current_crl(self._revoked())

    # -- use cases ------------------------------------------------------------------------
    def create_tenant(self, name: str, actor: Actor = LOCAL) -> TenantOut:
        """A new tenant: batches and operator tokens are made only in one that exists."""
        return self.store.tenants.create(name, actor)

    def create_batch(
        self,
        name: str,
        tenant: str = "default",
        policy: str | None = None,
        actor: Actor = LOCAL,
        *,
        target: str | None = None,
    ) -> BatchOut:
        """A new batch served by `target` (default: the managed broker, or for policy `aws`
        the `aws` target); its policy follows the target's kind (store/batches.py)."""
        return self.store.batches.create(name, tenant, policy, actor, target=target)

    # -- targets and moves (host/server/targets.py, host/server/moves.py) -------------------
    def list_targets(self) -> list[TargetRecord]:
        return self.targets.list()

    def add_target(
        self, spec: TargetSpec, actor: Actor = LOCAL, *, check: bool = True
    ) -> TargetRecord:
        """A new target; an external Mosquitto is asked first (unless `check` is False)."""
        return self.targets.add(spec, actor, check=check)

    @cached_property
    def moves(self) -> BatchMoves:
        from host.server.moves import BatchMoves

        return BatchMoves(self)

    @cached_property
    def rollouts(self) -> RolloutService:
        """OTA rollouts (host/server/rollouts.py): create, status, pause, resume, abort, and
        the device events and head requests that move them."""
        from host.server.rollouts import RolloutService

        return RolloutService(self)

    def move_batch(
        self,
        name: str,
        to: str,
        *,
        tenant: str | None = None,
        actor: Actor = LOCAL,
        progress: Progress | None = None,
    ) -> MoveOut:
        """Move the batch's devices to target `to`: registered there first, then the batch's
        target set, then each device sent `broker` (docs/protocol.md)."""
        return self.moves.move(name, to, tenant=tenant, actor=actor, progress=progress)

    def move_status(self, name: str, tenant: str | None = None) -> MoveOut:
        return self.moves.status(name, tenant)

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

    def revoke_batch(
        self,
        name: str,
        *,
        tenant: str | None = None,
        actor: Actor = LOCAL,
        progress: Progress | None = None,
    ) -> BatchRevokeOut:
        return self.lifecycle.revoke_batch(name, tenant=tenant, actor=actor, progress=progress)

    def commands(
        self, device_id: str, *, tenant: str | None = None, limit: int = 100
    ) -> list[CommandOut]:
        """The device's commands, newest first."""
        dev = self.require_device(device_id, tenant)
        return self.store.commands.list(dev.device_id, limit=limit)

    # Kinds an operator sends only through their own use case, which does what the command
    # alone does not (a claim code, the revocation, the target's records, the rollout).
    _OWN_USE_CASE: ClassVar[dict[str, str]] = {
        "transfer": "qlink device transfer (POST .../transfer), which issues the claim code",
        "reenrol": "qlink device reenrol (POST .../reenrol), which checks no move is open",
        "decommission": "qlink device decommission (POST .../decommission), which revokes it",
        "broker": "qlink batch policy NAME --to TARGET, which moves the batch's records",
        "ota": "qlink ota rollout create (POST /v1/admin/rollouts), which tracks the rollout",
    }

    def send_operator_command(
        self,
        device_id: str,
        kind: str,
        args: dict[str, object] | None = None,
        *,
        ttl_s: float = 3600,
        tenant: str | None = None,
        actor: Actor = LOCAL,
    ) -> CommandOut:
        """`send_command` for an operator's own command (`qlink device command`, POST
        .../commands): kinds that have a use case of their own are refused, naming it."""
        own = self._OWN_USE_CASE.get(kind)
        if own is not None:
            raise Invalid(f"a {kind} command is sent by {own}, not on its own")
        return self.send_command(device_id, kind, args, ttl_s=ttl_s, tenant=tenant, actor=actor)

    def send_command(
        self,
        device_id: str,
        kind: str,
        args: dict[str, object] | None = None,
        *,
        ttl_s: float = 3600,
        tenant: str | None = None,
        actor: Actor = LOCAL,
    ) -> CommandOut:
        """Sign a command for the device, store it queued and publish it (QoS 1). A device that
        is offline, or a broker that cannot be reached, gets it when the device next comes
        online (docs/protocol.md "Command channel"): the command is stored either way."""
        from host.server.commands import KINDS, MAX_BODY, CommandError, body, unreachable
        from host.server.store import Conflict

        if kind not in KINDS:
            raise Invalid(f"unknown command kind {kind[:32]!r}; kinds: {', '.join(KINDS)}")
        if not _MIN_TTL_S <= ttl_s <= _MAX_TTL_S:
            raise Invalid(f"a command's time to live must be {_MIN_TTL_S} s to 30 days")
        args = dict(args or {})
        dev = self.require_device(device_id, tenant)
        why = unreachable(dev)
        if why is not None:
            raise Conflict(f"device {dev.device_id} {why}; a command cannot reach it")
        # The largest body this command can have (seq and expiry at their widest) must fit.
        try:
            body(dev.device_id, 2**31 - 1, 2**32, kind, args)
        except CommandError as e:
            raise Invalid(str(e)) from None
        except (TypeError, ValueError):
            raise Invalid(
                f"command arguments must be a JSON object (at most {MAX_BODY} bytes signed)"
            ) from None
        cmd = self.store.commands.create(dev, kind, args, ttl_s, actor)
        self.publish_command(cmd, dev.target if dev.target_kind == KIND_MOSQUITTO else MANAGED)
        return cmd

    def publish_command(self, cmd: CommandOut, target: str) -> bool:
        """Sign and publish a stored command over the admin link of Mosquitto target `target`;
        False when it cannot be sent now (stored and signed: the device gets it at its next
        `online` event there)."""
        from host.server.commands import CommandError
        from host.server.events import command_topic, signed_payload

        payload = signed_payload(self.command_signer, cmd)
        try:
            self.command_link_to(target).send(command_topic(cmd.tenant, cmd.device_id), payload)
        except (CommandError, ServerNotRunning, Invalid) as e:
            log.warning(
                "event=command_not_sent device=%s seq=%d target=%s why=%s",
                cmd.device_id,
                cmd.seq,
                target,
                e,
            )
            return False
        return True

    def command_link_to(self, target: str) -> MqttCommandLink:
        """The admin link commands to devices on `target` go over (made on first use)."""
        if target == MANAGED:
            return self.command_link
        link = self.target_links.get(target)
        if link is None:
            from host.server.events import MqttCommandLink

            made = MqttCommandLink.login(self.targets.login(self.targets.get(target)))
            link = self.target_links.setdefault(target, made)
            if link is not made:  # another thread made one meanwhile
                made.close()
        return link

    def puf_health(
        self, device_id: str, *, tenant: str | None = None, limit: int = 64
    ) -> list[PufHealthOut]:
        """The device's PUF health reports, newest first (bounded history)."""
        dev = self.require_device(device_id, tenant)
        return self.store.puf.history(dev.device_id, limit)

    def drifting(self, tenant: str | None = None) -> list[DeviceRecord]:
        """Devices whose latest PUF report used at least the drift threshold of the budget."""
        return self.devices(tenant, drifting_pct=self.settings.puf_drift_pct)

    def renew(
        self, device_id: str, *, tenant: str | None = None, actor: Actor = LOCAL
    ) -> CommandOut:
        """Command the device to renew its certificate now (a fresh proof; the old serial is
        revoked when the new certificate is issued)."""
        return self.send_command(device_id, "renew", tenant=tenant, actor=actor)

    # -- ownership: transfer, re-enrolment, decommissioning (host/server/ownership.py) ------
    def transfer_code(
        self,
        device_id: str,
        *,
        ttl_s: float = CODE_TTL_S,
        tenant: str | None = None,
        actor: Actor = LOCAL,
    ) -> TransferCodeOut:
        """A single-use transfer code for the device, shown once (a new one replaces the
        device's open code)."""
        return self.ownership.transfer_code(device_id, ttl_s=ttl_s, tenant=tenant, actor=actor)

    def transfer_codes(
        self,
        batch: str,
        *,
        ttl_s: float = CODE_TTL_S,
        tenant: str | None = None,
        actor: Actor = LOCAL,
    ) -> list[TransferCodeOut]:
        """A transfer code for every device of the batch that can be transferred now."""
        return self.ownership.transfer_codes(batch, ttl_s=ttl_s, tenant=tenant, actor=actor)

    def claim(self, code: str, tenant: str, batch: str, actor: Actor = LOCAL) -> ClaimOut:
        """Redeem a transfer code into a batch of `tenant`; the device is sent `transfer`."""
        return self.ownership.claim(code, tenant, batch, actor)

    def claim_status(self, handle: str, tenant: str | None = None) -> ClaimOut:
        return self.ownership.claim_status(handle, tenant)

    def reenrol(
        self, device_id: str, *, tenant: str | None = None, actor: Actor = LOCAL
    ) -> CommandOut:
        """Command the device to re-enrol (fresh helper data at its next cold boot)."""
        return self.ownership.reenrol(device_id, tenant=tenant, actor=actor)

    def decommission(
        self,
        device_id: str,
        *,
        wait_s: float = 10,
        tenant: str | None = None,
        actor: Actor = LOCAL,
    ) -> DecommissionOut:
        """Command the device to erase itself, wait up to `wait_s` for it, revoke it."""
        return self.ownership.decommission(device_id, wait_s=wait_s, tenant=tenant, actor=actor)

    def require_device(self, device_id: str, tenant: str | None = None) -> DeviceRecord:
        """The device, or NotFound with what to do (another tenant's device does not exist)."""
        from host.server.store import NotFound

        dev = self.device(device_id, tenant)
        if dev is None:
            raise NotFound(f"device {device_id[:64]} does not exist; see: qlink devices")
        return dev

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
