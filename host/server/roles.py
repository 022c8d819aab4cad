"""Which role each action needs: one table, read by the operator API (host/server/admin.py) and
the web console (host/server/console/), so the two cannot drift apart.

Roles are ordered: viewer reads; operator also changes batches, devices and rollouts; admin also
manages its tenant's tokens. A `platform` action is the platform operator's alone: an admin of
the `default` tenant (creating tenants and targets, publishing releases).

`ADMIN_ROUTES` and `CONSOLE_ROUTES` name the action of every route of the two surfaces;
tests/console/test_roles.py walks both routers and fails for a route missing here or enforcing
something else than its line says.
"""

from __future__ import annotations

from dataclasses import dataclass

from host.server.schemas import ROLE_ADMIN, ROLE_OPERATOR, ROLE_VIEWER, ROLES
from host.server.store.tenants import DEFAULT_TENANT

__all__ = ["ROLES", "ROLE_ADMIN", "ROLE_OPERATOR", "ROLE_VIEWER"]


@dataclass(frozen=True)
class Rule:
    role: str  # the lowest role that may
    what: str  # "creating a tenant": for the refusal's sentence
    platform: bool = False  # only an admin of the default tenant


# Reads (every role).
READ = "read"
# Tenants, targets, releases: the platform operator's.
TENANT_CREATE = "tenant.create"
TARGET_CREATE = "target.create"
RELEASE_PUBLISH = "release.publish"
# Batches.
BATCH_CREATE = "batch.create"
BATCH_STATE = "batch.state"
BATCH_REVOKE = "batch.revoke"
BATCH_MOVE = "batch.move"
BATCH_IMPORT = "batch.import"
BATCH_TRANSFER = "batch.transfer"
# Devices.
DEVICE_REVOKE = "device.revoke"
DEVICE_DISABLE = "device.disable"
DEVICE_ENABLE = "device.enable"
DEVICE_COMMAND = "device.command"
DEVICE_RENEW = "device.renew"
DEVICE_TRANSFER = "device.transfer"
DEVICE_REENROL = "device.reenrol"
DEVICE_DECOMMISSION = "device.decommission"
CLAIM_CREATE = "claim.create"
# Rollouts.
ROLLOUT_CREATE = "rollout.create"
ROLLOUT_PAUSE = "rollout.pause"
ROLLOUT_RESUME = "rollout.resume"
ROLLOUT_ABORT = "rollout.abort"
# Tokens.
TOKEN_CREATE = "token.create"  # noqa: S105 (an action name, not a secret)

ACTIONS: dict[str, Rule] = {
    READ: Rule(ROLE_VIEWER, "reading"),
    TENANT_CREATE: Rule(ROLE_ADMIN, "creating a tenant", platform=True),
    TARGET_CREATE: Rule(ROLE_ADMIN, "adding a target", platform=True),
    RELEASE_PUBLISH: Rule(ROLE_ADMIN, "publishing a release", platform=True),
    BATCH_CREATE: Rule(ROLE_OPERATOR, "creating a batch"),
    BATCH_STATE: Rule(ROLE_OPERATOR, "activating or deactivating a batch"),
    BATCH_REVOKE: Rule(ROLE_OPERATOR, "revoking a batch"),
    BATCH_MOVE: Rule(ROLE_OPERATOR, "moving a batch to another target"),
    BATCH_IMPORT: Rule(ROLE_OPERATOR, "importing identities"),
    BATCH_TRANSFER: Rule(ROLE_OPERATOR, "issuing a batch's transfer codes"),
    DEVICE_REVOKE: Rule(ROLE_OPERATOR, "revoking a device"),
    DEVICE_DISABLE: Rule(ROLE_OPERATOR, "disabling a device"),
    DEVICE_ENABLE: Rule(ROLE_OPERATOR, "enabling a device"),
    DEVICE_COMMAND: Rule(ROLE_OPERATOR, "sending a command"),
    DEVICE_RENEW: Rule(ROLE_OPERATOR, "renewing a certificate"),
    DEVICE_TRANSFER: Rule(ROLE_OPERATOR, "issuing a transfer code"),
    DEVICE_REENROL: Rule(ROLE_OPERATOR, "re-enrolling a device"),
    DEVICE_DECOMMISSION: Rule(ROLE_OPERATOR, "decommissioning a device"),
    CLAIM_CREATE: Rule(ROLE_OPERATOR, "claiming a device"),
    ROLLOUT_CREATE: Rule(ROLE_OPERATOR, "creating a rollout"),
    ROLLOUT_PAUSE: Rule(ROLE_OPERATOR, "pausing a rollout"),
    ROLLOUT_RESUME: Rule(ROLE_OPERATOR, "resuming a rollout"),
    ROLLOUT_ABORT: Rule(ROLE_OPERATOR, "aborting a rollout"),
    TOKEN_CREATE: Rule(ROLE_ADMIN, "creating a token"),
}
for _role in ROLES:  # a bare role name is an action too: "needs at least this role"
    ACTIONS.setdefault(_role, Rule(_role, f"this page ({_role})"))

# (method, path under /v1/admin) -> action
ADMIN_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/v1/admin/whoami"): READ,
    ("GET", "/v1/admin/tenants"): READ,
    ("POST", "/v1/admin/tenants"): TENANT_CREATE,
    ("GET", "/v1/admin/targets"): READ,
    ("POST", "/v1/admin/targets"): TARGET_CREATE,
    ("GET", "/v1/admin/batches"): READ,
    ("POST", "/v1/admin/batches"): BATCH_CREATE,
    ("GET", "/v1/admin/batches/{name}"): READ,
    ("POST", "/v1/admin/batches/{name}/state"): BATCH_STATE,
    ("POST", "/v1/admin/batches/{name}/revoke"): BATCH_REVOKE,
    ("POST", "/v1/admin/batches/{name}/policy"): BATCH_MOVE,
    ("GET", "/v1/admin/batches/{name}/policy"): READ,
    ("POST", "/v1/admin/batches/{name}/import"): BATCH_IMPORT,
    ("GET", "/v1/admin/batches/{name}/export"): READ,
    ("POST", "/v1/admin/batches/{name}/transfer"): BATCH_TRANSFER,
    ("GET", "/v1/admin/devices"): READ,
    ("GET", "/v1/admin/devices/{device_id}"): READ,
    ("POST", "/v1/admin/devices/{device_id}/revoke"): DEVICE_REVOKE,
    ("POST", "/v1/admin/devices/{device_id}/disable"): DEVICE_DISABLE,
    ("POST", "/v1/admin/devices/{device_id}/enable"): DEVICE_ENABLE,
    ("POST", "/v1/admin/devices/{device_id}/commands"): DEVICE_COMMAND,
    ("GET", "/v1/admin/devices/{device_id}/commands"): READ,
    ("POST", "/v1/admin/devices/{device_id}/renew"): DEVICE_RENEW,
    ("POST", "/v1/admin/devices/{device_id}/transfer"): DEVICE_TRANSFER,
    ("POST", "/v1/admin/devices/{device_id}/reenrol"): DEVICE_REENROL,
    ("POST", "/v1/admin/devices/{device_id}/decommission"): DEVICE_DECOMMISSION,
    ("POST", "/v1/admin/claims"): CLAIM_CREATE,
    ("GET", "/v1/admin/claims/{handle}"): READ,
    ("POST", "/v1/admin/tokens"): TOKEN_CREATE,
    ("GET", "/v1/admin/audit"): READ,
    ("GET", "/v1/admin/ota/releases"): READ,
    ("POST", "/v1/admin/ota/releases"): RELEASE_PUBLISH,
    ("POST", "/v1/admin/ota/rollouts"): ROLLOUT_CREATE,
    ("GET", "/v1/admin/ota/rollouts"): READ,
    ("GET", "/v1/admin/ota/rollouts/{rollout_id}"): READ,
    ("POST", "/v1/admin/ota/rollouts/{rollout_id}/pause"): ROLLOUT_PAUSE,
    ("POST", "/v1/admin/ota/rollouts/{rollout_id}/resume"): ROLLOUT_RESUME,
    ("POST", "/v1/admin/ota/rollouts/{rollout_id}/abort"): ROLLOUT_ABORT,
}

# (method, path under /console) -> action; None: open to anyone (the login page itself).
# A page module adds one line per route it serves.
CONSOLE_ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/login"): None,
    ("POST", "/login"): None,
    ("POST", "/logout"): None,
    ("GET", "/"): READ,
    ("GET", "/live"): READ,
    ("GET", "/devices"): READ,
    ("GET", "/devices/{device_id}"): READ,
    ("POST", "/devices/{device_id}/renew"): DEVICE_RENEW,
    ("POST", "/devices/{device_id}/revoke"): DEVICE_REVOKE,
    ("POST", "/devices/{device_id}/disable"): DEVICE_DISABLE,
    ("POST", "/devices/{device_id}/enable"): DEVICE_ENABLE,
    ("POST", "/devices/{device_id}/transfer"): DEVICE_TRANSFER,
    ("POST", "/devices/{device_id}/reenrol"): DEVICE_REENROL,
    ("GET", "/tenants"): READ,
    ("POST", "/tenants"): TENANT_CREATE,
    ("GET", "/batches"): READ,
    ("POST", "/batches"): BATCH_CREATE,
    ("GET", "/batches/{name}"): READ,
    ("POST", "/batches/{name}/import"): BATCH_IMPORT,
    ("POST", "/batches/{name}/state"): BATCH_STATE,
    ("POST", "/batches/{name}/move"): BATCH_MOVE,
    ("POST", "/batches/{name}/revoke"): BATCH_REVOKE,
    ("GET", "/ota"): READ,
    ("POST", "/ota/rollouts"): ROLLOUT_CREATE,
    ("GET", "/ota/rollouts/{rollout_id}"): READ,
    ("POST", "/ota/rollouts/{rollout_id}/pause"): ROLLOUT_PAUSE,
    ("POST", "/ota/rollouts/{rollout_id}/resume"): ROLLOUT_RESUME,
    ("POST", "/ota/rollouts/{rollout_id}/abort"): ROLLOUT_ABORT,
    ("GET", "/audit"): READ,
}


def rule(action: str) -> Rule:
    try:
        return ACTIONS[action]
    except KeyError:
        raise KeyError(f"no such action in host/server/roles.py: {action!r}") from None


def role_at_least(role: str, needed: str) -> bool:
    """Whether `role` includes `needed` (an unknown role includes nothing)."""
    if role not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


def allowed(action: str, role: str, tenant: str) -> bool:
    """Whether a holder of `role` in `tenant` may do `action`."""
    r = rule(action)
    if r.platform and tenant != DEFAULT_TENANT:
        return False
    return role_at_least(role, r.role)


def refusal(action: str, role: str, tenant: str) -> str:
    """The sentence that refuses `action` to `role` in `tenant` (who: "this token" or the
    user's own words in the console)."""
    r = rule(action)
    if r.platform:
        return (
            f"{r.what} needs an admin of tenant {DEFAULT_TENANT} (the platform operator's); "
            f"you are {role} in tenant {tenant}"
        )
    return f"this needs the {r.role} role; you are {role}"
