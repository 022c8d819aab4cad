"""An external Mosquitto as a policy driver: a broker the operator runs, with the
dynamic-security plugin, reached by the server as its dynamic-security admin (a user name and
password over TLS verified against the target's CA: host/server/targets.py).

What the operator's broker must do (docs/operator.md "Targets"): a device listener with
`require_certificate true` and `use_identity_as_username true` trusting the qlink CA, so a
device's MQTT user name is its certificate's CN, its device ID (Mosquitto 2.0 then skips the
password check: the certificate is the login, and the rights below are all a device has);
default ACL access that denies publishing and subscribing; an admin listener for the server.

Per device, a client named by its ID (no password) with a role of its own that allows only
publishing on `qlink/<tenant>/<id>/telemetry` and `.../event` and subscribing to and receiving
`.../cmd` (the plugin's ACLs name topics, not `%u` patterns, so the role is per device).
Disabling or revoking gives the client the shared `qlink-deny` role alone (everything refused,
its connection dropped by the plugin), kept so that no default of the broker applies to it;
enabling gives its own role back. Every call is idempotent: what exists already is checked and
changed only when it differs, so a retry drops no live connection.

At connection the driver checks the broker's default ACL access, makes the deny role and the
`qlink-server` role (publish on `qlink/+/+/cmd`, read `qlink/+/+/event` and `.../telemetry`)
and gives the latter to its own admin user, whose connections the plugin then drops once: the
driver waits for its connection to come back.

The plugin rewrites its whole JSON file after every change, so registering a device costs a
file write that grows with the number of clients the broker holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from host.server.mqtt import Login
from host.server.policy import PolicyError, device_topic_prefix
from host.server.policy.dynsec import DynsecClient, error_of
from host.server.store.names import name_problem

log = logging.getLogger("qlink.policy.external")

SERVER_ROLE = "qlink-server"
DENY_ROLE = "qlink-deny"
_CHUNK = 100  # commands per message when many devices are denied at once
_EXISTS = "already exists"
_NOT_FOUND = "not found"


def server_acls() -> list[dict[str, Any]]:
    """The server's rights beside the plugin's admin role: send commands, read events and
    telemetry."""
    return [
        {"acltype": "publishClientSend", "topic": "qlink/+/+/cmd", "allow": True},
        {"acltype": "subscribePattern", "topic": "qlink/+/+/event", "allow": True},
        {"acltype": "publishClientReceive", "topic": "qlink/+/+/event", "allow": True},
        {"acltype": "subscribePattern", "topic": "qlink/+/+/telemetry", "allow": True},
        {"acltype": "publishClientReceive", "topic": "qlink/+/+/telemetry", "allow": True},
    ]


def deny_acls() -> list[dict[str, Any]]:
    return [
        {"acltype": "publishClientSend", "topic": "#", "allow": False},
        {"acltype": "subscribePattern", "topic": "#", "allow": False},
        {"acltype": "publishClientReceive", "topic": "#", "allow": False},
    ]


def device_role(device_id: str) -> str:
    return f"qlink-device-{device_id}"


def device_acls(tenant: str, device_id: str) -> list[dict[str, Any]]:
    """The device's rights: its own telemetry and event topics, its own command topic."""
    problem = name_problem("tenant", tenant)
    if problem is not None:  # a tenant from before the name rule could hold `+` or `#`
        raise PolicyError(f"no role for a device of this tenant: {problem}")
    prefix = device_topic_prefix(tenant, device_id)
    return [
        {"acltype": "publishClientSend", "topic": f"{prefix}/telemetry", "allow": True},
        {"acltype": "publishClientSend", "topic": f"{prefix}/event", "allow": True},
        {"acltype": "subscribeLiteral", "topic": f"{prefix}/cmd", "allow": True},
        {"acltype": "publishClientReceive", "topic": f"{prefix}/cmd", "allow": True},
    ]


def _acl_set(acls: list[dict[str, Any]]) -> set[tuple[str, str, bool]]:
    return {(str(a.get("acltype")), str(a.get("topic")), bool(a.get("allow"))) for a in acls}


def _roles(answer: dict[str, Any]) -> list[str]:
    client = (answer.get("data") or {}).get("client") or {}
    return [str(r.get("rolename")) for r in client.get("roles") or [] if isinstance(r, dict)]


class ExternalMosquitto:
    """PolicyDriver (and DenySet) for target `name` over its dynamic-security plugin."""

    rights_from_certificate = False  # the broker must hear of every device (its role)

    def __init__(self, name: str, login: Login, timeout_s: float = 5.0) -> None:
        self.name = name
        self.what = f"target {name} at {login.host}:{login.port}"
        self._user = login.username or ""
        self._timeout = timeout_s
        self._dyn = DynsecClient(login, self.what, timeout_s)
        try:
            self._check_defaults()
            self._ensure_role(DENY_ROLE, deny_acls())
            self._ensure_role(SERVER_ROLE, server_acls())
            self._grant_self()
        except PolicyError:
            self.close()
            raise

    def _fail(self, command: str, answer: dict[str, Any], about: str = "") -> PolicyError:
        return PolicyError(f"{self.what} refused {command}{about}: {error_of(answer)}")

    # -- at connection ----------------------------------------------------------------------
    def _check_defaults(self) -> None:
        answer = self._dyn.request("getDefaultACLAccess")
        if error_of(answer):
            raise self._fail("getDefaultACLAccess", answer)
        acls = (answer.get("data") or {}).get("acls") or []
        open_ = sorted(
            str(a.get("acltype"))
            for a in acls
            if isinstance(a, dict)
            and a.get("acltype") in ("publishClientSend", "subscribe")
            and a.get("allow")
        )
        if open_:
            raise PolicyError(
                f"{self.what} lets every client {' and '.join(open_)} on any topic by default, "
                "so devices would reach each other's topics; deny it: mosquitto_ctrl dynsec "
                f"setDefaultACLAccess {open_[0]} deny"
            )

    def _ensure_role(self, role: str, acls: list[dict[str, Any]]) -> None:
        answer = self._dyn.request("createRole", rolename=role, acls=acls)
        error = error_of(answer)
        if error is None:
            return
        if _EXISTS not in error.lower():
            raise self._fail("createRole", answer, f" {role}")
        self._match_role(role, acls)

    def _match_role(self, role: str, acls: list[dict[str, Any]]) -> None:
        """Role `role` as it exists with exactly `acls` (changed only when it differs: the
        plugin drops the connections of the role's clients on every change)."""
        answer = self._dyn.request("getRole", rolename=role)
        if error_of(answer):
            raise self._fail("getRole", answer, f" {role}")
        have = ((answer.get("data") or {}).get("role") or {}).get("acls") or []
        if _acl_set(have) != _acl_set(acls):
            answer = self._dyn.request("modifyRole", rolename=role, acls=acls)
            if error_of(answer):
                raise self._fail("modifyRole", answer, f" {role}")

    def _grant_self(self) -> None:
        """Give the admin user the server's role. The plugin answers, then drops every
        connection of that user (this one too): wait until it is back and the role shows."""
        answer = self._dyn.request("getClient", username=self._user)
        if error_of(answer):
            raise self._fail("getClient", answer, f" {self._user!r} (the admin user)")
        if SERVER_ROLE in _roles(answer):
            return
        self._dyn.send(
            [{"command": "addClientRole", "username": self._user, "rolename": SERVER_ROLE}]
        )
        deadline = time.monotonic() + 2 * self._timeout + 5  # paho reconnects within 5 s
        while time.monotonic() < deadline:
            if not self._dyn.ready.wait(max(0.0, deadline - time.monotonic())):
                break
            try:
                answer = self._dyn.request("getClient", username=self._user)
            except PolicyError:  # dropped under the request: the kick; ask again once back
                continue
            if SERVER_ROLE in _roles(answer):
                log.info("event=target_admin_granted target=%s role=%s", self.name, SERVER_ROLE)
                return
            break
        raise PolicyError(
            f"{self.what}: the admin user {self._user!r} did not get role {SERVER_ROLE}; "
            f"give it by hand: mosquitto_ctrl dynsec addClientRole {self._user} {SERVER_ROLE}"
        )

    # -- PolicyDriver -----------------------------------------------------------------------
    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        acls = device_acls(tenant, device_id)  # refuses a tenant that is not a name, first
        role = device_role(device_id)
        made_role, made_client = self._dyn.request_many(
            [
                {"command": "createRole", "rolename": role, "acls": acls},
                {"command": "createClient", "username": device_id, "roles": [{"rolename": role}]},
            ]
        )
        for command, answer in (("createRole", made_role), ("createClient", made_client)):
            error = error_of(answer)
            if error is not None and _EXISTS not in error.lower():
                raise self._fail(command, answer, f" for device {device_id}")
        if error_of(made_role):
            self._match_role(role, acls)
        if error_of(made_client):
            self._set_roles(device_id, role)
        log.info(
            "event=policy_registered driver=external target=%s device=%s tenant=%s",
            self.name,
            device_id,
            tenant,
        )

    def _set_roles(self, device_id: str, role: str) -> None:
        """The client's roles as `[role]`, changed only when they differ."""
        answer = self._dyn.request("getClient", username=device_id)
        if error_of(answer):
            raise self._fail("getClient", answer, f" for device {device_id}")
        if _roles(answer) != [role]:
            answer = self._dyn.request(
                "modifyClient", username=device_id, roles=[{"rolename": role}]
            )
            if error_of(answer):
                raise self._fail("modifyClient", answer, f" for device {device_id}")

    def deny_devices(self, device_ids: Sequence[str]) -> None:
        """Each device's client with the deny role alone (made if missing); the plugin drops
        their live connections."""
        deny = [{"rolename": DENY_ROLE}]
        for i in range(0, len(device_ids), _CHUNK):
            part = list(device_ids[i : i + _CHUNK])
            answers = self._dyn.request_many(
                [{"command": "modifyClient", "username": d, "roles": deny} for d in part]
            )
            missing = []
            for d, answer in zip(part, answers, strict=True):
                error = error_of(answer)
                if error is not None and _NOT_FOUND in error.lower():
                    missing.append(d)
                elif error is not None:
                    raise self._fail("modifyClient", answer, f" for device {d}")
            answers = (
                self._dyn.request_many(
                    [{"command": "createClient", "username": d, "roles": deny} for d in missing]
                )
                if missing
                else []
            )
            for d, answer in zip(missing, answers, strict=True):
                error = error_of(answer)
                if error is not None and _EXISTS not in error.lower():
                    raise self._fail("createClient", answer, f" for device {d}")
        log.info(
            "event=policy_denied driver=external target=%s devices=%d", self.name, len(device_ids)
        )

    def restore_denials(self, device_ids: Sequence[str]) -> None:
        """The plugin keeps its clients in its own file: denying again is enough."""
        if device_ids:
            self.deny_devices(device_ids)

    def disable_device(self, device_id: str) -> None:
        self.deny_devices([device_id])

    def enable_device(self, device_id: str) -> None:
        answer = self._dyn.request("getRole", rolename=device_role(device_id))
        if error_of(answer):
            raise PolicyError(
                f"{self.what} holds no role for device {device_id} (it was never registered "
                "there); move its batch there again: qlink batch policy NAME --to "
                f"{self.name}"
            )
        self._set_roles(device_id, device_role(device_id))

    def delete_device(self, device_id: str) -> None:
        """For revocation: denied for good (the client stays, with the deny role alone, so
        no default of the broker applies to it), its own role removed."""
        self.deny_devices([device_id])
        answer = self._dyn.request("deleteRole", rolename=device_role(device_id))
        error = error_of(answer)
        if error is not None and _NOT_FOUND not in error.lower():
            raise self._fail("deleteRole", answer, f" for device {device_id}")

    def close(self) -> None:
        self._dyn.close()
