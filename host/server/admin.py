"""The operator API (`/v1/admin`): bearer tokens with a role in one tenant.

viewer reads; operator also creates and imports batches, moves them to another target, and
revokes, disables and enables devices, sends them commands, issues and claims transfer codes,
re-enrols and decommissions devices; admin also creates tokens for its tenant. Anything of
another tenant answers 404 exactly as if it did not exist. An admin of the `default` tenant is
the platform operator's: it alone creates tenants and targets (the brokers batches are served
by, which every token may list) and lists all tenants (any other token sees only its own), so a
tenant's admin can never start a tenant beside its own. Every change is in the audit log with
the token's operator and the client address.

Which role each action needs is host/server/roles.py, the table the web console reads too.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from host.server import ServerError, jsonin, roles
from host.server.application import Application
from host.server.bodies import (
    BatchCreate,
    BatchMove,
    BatchState,
    ClaimCreate,
    CommandCreate,
    DecommissionCreate,
    ImportRequest,
    RolloutCreate,
    TargetCreate,
    TenantCreate,
    TokenCreate,
    TransferCreate,
)
from host.server.identities import ImportFormatError
from host.server.policy import PolicyError
from host.server.schemas import (
    ROLE_ADMIN,
    AuditOut,
    BatchExport,
    BatchOut,
    BatchRevokeOut,
    ClaimOut,
    CommandOut,
    DecommissionOut,
    DeviceOut,
    DeviceRecord,
    ImportRejectedBody,
    ImportResult,
    MoveOut,
    OperatorOut,
    ReleaseOut,
    RolloutOut,
    RolloutSummary,
    TargetOut,
    TenantOut,
    TokenOut,
    TransferCodeOut,
    WhoAmI,
    errors,
)
from host.server.store import (
    DEFAULT_TENANT,
    Actor,
    Conflict,
    DatabaseUnavailable,
    ImportRejected,
    Invalid,
    NotFound,
)

_bearer = HTTPBearer(auto_error=False, description="An operator token: qlink token create")
T = TypeVar("T")


class ApiError(ServerError):
    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.code, "detail": self.detail, **self.extra}, status_code=self.status
        )


def _app(request: Request) -> Application:
    application: Application = request.app.state.application
    return application


def _operator(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> OperatorOut:
    if creds is None:
        raise ApiError(401, "unauthenticated", "send an operator token: Authorization: Bearer ...")
    op = _app(request).authenticate(creds.credentials)
    if op is None:
        raise ApiError(401, "unauthenticated", "this token is unknown or revoked")
    return op


Op = Annotated[OperatorOut, Depends(_operator)]


def _need(op: OperatorOut, action: str) -> None:
    """Refuse `action` (host/server/roles.py: the one table of who may do what) unless the
    token's role and tenant allow it."""
    if roles.allowed(action, op.role, op.tenant):
        return
    rule = roles.rule(action)
    if rule.platform:
        raise ApiError(
            403,
            "forbidden",
            f"{rule.what} needs an admin token of tenant {DEFAULT_TENANT} (the platform "
            f"operator's); this token is {op.role} in tenant {op.tenant}",
        )
    raise ApiError(403, "forbidden", f"this needs the {rule.role} role; the token has {op.role}")


def _actor(request: Request, op: OperatorOut) -> Actor:
    return Actor(f"operator:{op.name}", request.client.host if request.client else "-")


async def _call(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run an application call off the event loop, mapping its errors to API answers."""
    try:
        return await run_in_threadpool(fn, *args, **kw)
    except NotFound as e:
        raise ApiError(404, "not_found", str(e)) from None
    except Conflict as e:
        raise ApiError(409, "conflict", str(e)) from None
    except ImportRejected as e:
        rows = [{"line": r.line, "reason": r.reason} for r in e.errors]
        raise ApiError(422, "import_rejected", str(e), rows=rows) from None
    except (ImportFormatError, Invalid) as e:
        raise ApiError(400, "bad_request", str(e)) from None
    except PolicyError as e:
        raise ApiError(503, "broker_unavailable", f"{e}; nothing changed, retry") from None
    except DatabaseUnavailable as e:
        raise ApiError(503, "unavailable", str(e)) from None


class _JsonRequest(Request):
    """A request whose JSON body is read by jsonin (depth, duplicate keys, constants)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = jsonin.loads(await self.body())
            except jsonin.JsonRejected as e:  # a syntax error goes on to FastAPI's own 400
                raise HTTPException(400, f"the body is refused: {e}") from None
        return self._json


class _JsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive))

        return bounded


router = APIRouter(prefix="/v1/admin", responses=errors(400, 401, 408, 413), route_class=_JsonRoute)


@router.get("/whoami", response_model=WhoAmI)
async def whoami(op: Op) -> WhoAmI:
    return op


def _platform(op: OperatorOut) -> bool:
    """Whether `op` acts for the platform operator: an admin of the `default` tenant."""
    return op.tenant == DEFAULT_TENANT and op.may(ROLE_ADMIN)


@router.get("/tenants", response_model=list[TenantOut])
async def list_tenants(request: Request, op: Op) -> list[TenantOut]:
    return await _call(_app(request).tenants, None if _platform(op) else op.tenant)


@router.post("/tenants", response_model=TenantOut, status_code=201, responses=errors(403, 409))
async def create_tenant(request: Request, op: Op, body: TenantCreate) -> TenantOut:
    _need(op, roles.TENANT_CREATE)
    return await _call(_app(request).create_tenant, body.name, _actor(request, op))


@router.get("/targets", response_model=list[TargetOut])
async def list_targets(request: Request, op: Op) -> list[TargetOut]:
    """The brokers batches are served by (never an admin password)."""
    return list(await _call(_app(request).list_targets))


@router.post("/targets", response_model=TargetOut, status_code=201, responses=errors(403, 409, 503))
async def create_target(request: Request, op: Op, body: TargetCreate) -> TargetOut:
    """Add a broker (an external Mosquitto, asked first unless `check` is false, or an AWS IoT
    endpoint); batches move to it with POST /v1/admin/batches/{name}/policy."""
    _need(op, roles.TARGET_CREATE)
    from host.server.targets import TargetSpec

    spec = TargetSpec(
        body.name,
        body.kind,
        body.host,
        body.port,
        body.ca_pem.encode(),
        body.admin_user,
        body.admin_password,
        body.admin_port,
    )
    return await _call(_app(request).add_target, spec, _actor(request, op), check=body.check)


@router.get("/batches", response_model=list[BatchOut])
async def list_batches(request: Request, op: Op) -> list[BatchOut]:
    return await _call(_app(request).batches, op.tenant)


@router.post("/batches", response_model=BatchOut, status_code=201, responses=errors(403, 404, 409))
async def create_batch(request: Request, op: Op, body: BatchCreate) -> BatchOut:
    _need(op, roles.BATCH_CREATE)
    return await _call(
        _app(request).create_batch,
        body.name,
        op.tenant,
        body.policy,
        _actor(request, op),
        target=body.target,
    )


@router.get("/batches/{name}", response_model=BatchOut, responses=errors(404))
async def get_batch(request: Request, op: Op, name: str) -> BatchOut:
    return await _call(_app(request).batch, name, op.tenant)


@router.post("/batches/{name}/state", response_model=BatchOut, responses=errors(403, 404))
async def set_batch_state(request: Request, op: Op, name: str, body: BatchState) -> BatchOut:
    _need(op, roles.BATCH_STATE)
    return await _call(
        _app(request).set_batch_active, name, body.active, op.tenant, _actor(request, op)
    )


@router.post(
    "/batches/{name}/revoke", response_model=BatchRevokeOut, responses=errors(403, 404, 503)
)
async def revoke_batch(request: Request, op: Op, name: str) -> BatchRevokeOut:
    """Revoke every device of the batch: the broker denies them all at once and drops their
    connections, the CRL lists their certificates, each gets its `device.revoke` audit event.
    Devices revoked before are counted, not changed: a repeat revokes only what is left."""
    _need(op, roles.BATCH_REVOKE)
    return await _call(
        _app(request).revoke_batch, name, tenant=op.tenant, actor=_actor(request, op)
    )


@router.post("/batches/{name}/policy", response_model=MoveOut, responses=errors(403, 404, 409, 503))
async def move_batch(request: Request, op: Op, name: str, body: BatchMove) -> MoveOut:
    """Move the batch's devices to another target: each registered there first, then the
    batch's target set, then each sent `broker` (docs/protocol.md "Moving a device to another
    broker"); the answer is the progress, which the devices' events carry on (GET)."""
    _need(op, roles.BATCH_MOVE)
    return await _call(
        _app(request).move_batch, name, body.to, tenant=op.tenant, actor=_actor(request, op)
    )


@router.get("/batches/{name}/policy", response_model=MoveOut, responses=errors(404))
async def batch_move_status(request: Request, op: Op, name: str) -> MoveOut:
    """The batch's target and each device's progress towards it (registered, commanded,
    moved, fell_back)."""
    return await _call(_app(request).move_status, name, op.tenant)


@router.post(
    "/batches/{name}/import",
    response_model=ImportResult,
    responses={**errors(403, 404), 422: {"model": ImportRejectedBody}},
)
async def import_batch(request: Request, op: Op, name: str, body: ImportRequest) -> ImportResult:
    _need(op, roles.BATCH_IMPORT)
    n = await _call(
        _app(request).import_devices,
        name,
        body.data,
        tenant=op.tenant,
        fmt=body.format,
        actor=_actor(request, op),
    )
    return ImportResult(imported=n)


@router.get("/batches/{name}/export", response_model=BatchExport, responses=errors(404))
async def export_batch(request: Request, op: Op, name: str) -> BatchExport:
    return await _call(_app(request).export_batch, name, op.tenant)


@router.get("/devices", response_model=list[DeviceOut])
async def list_devices(
    request: Request,
    op: Op,
    batch: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> list[DeviceRecord]:
    return await _call(_app(request).devices, op.tenant, batch, limit=limit, offset=offset)


@router.get("/devices/{device_id}", response_model=DeviceOut, responses=errors(404))
async def get_device(request: Request, op: Op, device_id: str) -> DeviceRecord:
    d = await _call(_app(request).device, device_id, op.tenant)
    if d is None:
        raise ApiError(404, "not_found", f"device {device_id[:64]} does not exist")
    return d


_CHANGE: dict[str, Any] = {"response_model": DeviceOut, "responses": errors(403, 404, 409, 503)}


@router.post("/devices/{device_id}/revoke", **_CHANGE)
async def revoke_device(request: Request, op: Op, device_id: str) -> DeviceRecord:
    _need(op, roles.DEVICE_REVOKE)
    return await _call(_app(request).revoke, device_id, tenant=op.tenant, actor=_actor(request, op))


@router.post("/devices/{device_id}/disable", **_CHANGE)
async def disable_device(request: Request, op: Op, device_id: str) -> DeviceRecord:
    _need(op, roles.DEVICE_DISABLE)
    return await _call(
        _app(request).disable, device_id, tenant=op.tenant, actor=_actor(request, op)
    )


@router.post("/devices/{device_id}/enable", **_CHANGE)
async def enable_device(request: Request, op: Op, device_id: str) -> DeviceRecord:
    _need(op, roles.DEVICE_ENABLE)
    return await _call(_app(request).enable, device_id, tenant=op.tenant, actor=_actor(request, op))


@router.post(
    "/devices/{device_id}/commands",
    response_model=CommandOut,
    status_code=202,
    responses=errors(403, 404, 409),
)
async def send_command(request: Request, op: Op, device_id: str, body: CommandCreate) -> CommandOut:
    """Sign a command for the device and send it (202: queued; its state follows on GET)."""
    _need(op, roles.DEVICE_COMMAND)
    return await _call(
        _app(request).send_operator_command,
        device_id,
        body.kind,
        dict(body.args),
        ttl_s=body.ttl_s,
        tenant=op.tenant,
        actor=_actor(request, op),
    )


@router.get("/devices/{device_id}/commands", response_model=list[CommandOut], responses=errors(404))
async def list_commands(
    request: Request,
    op: Op,
    device_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CommandOut]:
    return await _call(_app(request).commands, device_id, tenant=op.tenant, limit=limit)


@router.post(
    "/devices/{device_id}/renew",
    response_model=CommandOut,
    status_code=202,
    responses=errors(403, 404, 409),
)
async def renew_device(request: Request, op: Op, device_id: str) -> CommandOut:
    """Command the device to renew its certificate now."""
    _need(op, roles.DEVICE_RENEW)
    return await _call(_app(request).renew, device_id, tenant=op.tenant, actor=_actor(request, op))


@router.post(
    "/devices/{device_id}/transfer",
    response_model=TransferCodeOut,
    status_code=201,
    responses=errors(403, 404, 409),
)
async def transfer_device(
    request: Request, op: Op, device_id: str, body: TransferCreate | None = None
) -> TransferCodeOut:
    """A single-use transfer code for the device (shown once; a new one replaces its open
    code). The new owner redeems it with POST /v1/admin/claims."""
    _need(op, roles.DEVICE_TRANSFER)
    ttl = (body or TransferCreate()).ttl_s
    return await _call(
        _app(request).transfer_code,
        device_id,
        ttl_s=ttl,
        tenant=op.tenant,
        actor=_actor(request, op),
    )


@router.post(
    "/batches/{name}/transfer",
    response_model=list[TransferCodeOut],
    status_code=201,
    responses=errors(403, 404),
)
async def transfer_batch(
    request: Request, op: Op, name: str, body: TransferCreate | None = None
) -> list[TransferCodeOut]:
    """A transfer code for every device of the batch that can be transferred now (onboarded,
    enabled, no move under way); each is shown once."""
    _need(op, roles.BATCH_TRANSFER)
    ttl = (body or TransferCreate()).ttl_s
    return await _call(
        _app(request).transfer_codes, name, ttl_s=ttl, tenant=op.tenant, actor=_actor(request, op)
    )


@router.post("/claims", response_model=ClaimOut, status_code=201, responses=errors(403, 404, 409))
async def claim(request: Request, op: Op, body: ClaimCreate) -> ClaimOut:
    """Redeem a transfer code into a batch of this tenant: the device is sent `transfer` and
    moves to a new identity in that batch. The answer is the claim, nothing of the device."""
    _need(op, roles.CLAIM_CREATE)
    return await _call(_app(request).claim, body.code, op.tenant, body.batch, _actor(request, op))


@router.get("/claims/{handle}", response_model=ClaimOut, responses=errors(404))
async def get_claim(request: Request, op: Op, handle: str) -> ClaimOut:
    """A claim's state (pending, done, failed) and, once done, the device's new ID."""
    return await _call(_app(request).claim_status, handle, op.tenant)


@router.post(
    "/devices/{device_id}/reenrol",
    response_model=CommandOut,
    status_code=202,
    responses=errors(403, 404, 409),
)
async def reenrol_device(request: Request, op: Op, device_id: str) -> CommandOut:
    """Command the device to re-enrol at its next cold boot: fresh helper data, a new ID in
    the same batch, linked to this record."""
    _need(op, roles.DEVICE_REENROL)
    return await _call(
        _app(request).reenrol, device_id, tenant=op.tenant, actor=_actor(request, op)
    )


@router.post(
    "/devices/{device_id}/decommission",
    response_model=DecommissionOut,
    responses=errors(403, 404, 409, 503),
)
async def decommission_device(
    request: Request, op: Op, device_id: str, body: DecommissionCreate | None = None
) -> DecommissionOut:
    """Command the device to erase itself, wait up to `wait_s` (default 10 s) for its answer,
    then revoke it; `confirmed` tells whether it reported the erase."""
    _need(op, roles.DEVICE_DECOMMISSION)
    return await _call(
        _app(request).decommission,
        device_id,
        wait_s=(body or DecommissionCreate()).wait_s,
        tenant=op.tenant,
        actor=_actor(request, op),
    )


@router.post("/tokens", response_model=TokenOut, status_code=201, responses=errors(403))
async def create_token(request: Request, op: Op, body: TokenCreate) -> TokenOut:
    _need(op, roles.TOKEN_CREATE)
    token, info = await _call(
        _app(request).create_token, body.name, op.tenant, body.role, _actor(request, op)
    )
    return TokenOut(token=token, name=info.name, tenant=info.tenant, role=info.role)


@router.get("/audit", response_model=list[AuditOut])
async def audit(
    request: Request,
    op: Op,
    action: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> list[AuditOut]:
    _need(op, roles.READ)
    return await _call(_app(request).audit, op.tenant, action=action, since=since, limit=limit)


# -- firmware releases (docs/ota.md "Release"): the platform's, for every tenant ---------------
def _releases_do(fn: Callable[..., T], *args: Any) -> T:
    """A release use case, its refusals answered with their own codes (release_exists, ...)."""
    from host.server.releases import ReleaseError

    try:
        return fn(*args)
    except ReleaseError as e:
        raise ApiError(e.status, e.code, str(e)) from None


@router.get("/ota/releases", response_model=list[ReleaseOut])
async def list_releases(request: Request, op: Op) -> list[ReleaseOut]:
    """Published firmware releases, newest first, with the payload bytes served."""
    _need(op, roles.READ)
    return await _call(_releases_do, _app(request).releases.releases)


@router.post(
    "/ota/releases",
    response_model=ReleaseOut,
    status_code=201,
    responses=errors(403, 409),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def publish_release(request: Request, op: Op) -> ReleaseOut:
    """Publish a release bundle (`.qota`, the bytes `qlink ota build` wrote): checked against
    the server's root like `qlink ota publish`; 400 names the rule it breaks, 409
    release_exists for a release ID published before."""
    _need(op, roles.RELEASE_PUBLISH)
    data = await request.body()
    application = _app(request)
    return await _call(_releases_do, application.releases.publish, data, _actor(request, op))


# -- OTA rollouts (docs/ota.md "Rollout"): a tenant's, over its own batches --------------------
RolloutId = Annotated[int, FastApiPath(ge=1, le=2**31 - 1)]
_ROLLOUT_CHANGE: dict[str, Any] = {
    "response_model": RolloutOut,
    "responses": errors(403, 404, 409),
}


@router.post(
    "/ota/rollouts", response_model=RolloutOut, status_code=201, responses=errors(403, 404, 409)
)
async def create_rollout(request: Request, op: Op, body: RolloutCreate) -> RolloutOut:
    """Offer a published release to `percent` % of the batch's onboarded devices (rounded
    up, in device ID order), and to devices of the batch that come online within that share
    while it is active; more than `max_failures` failed devices halt it."""
    _need(op, roles.ROLLOUT_CREATE)
    return await _call(
        _app(request).rollouts.create,
        body.release,
        body.batch,
        body.percent,
        body.max_failures,
        tenant=op.tenant,
        actor=_actor(request, op),
    )


@router.get("/ota/rollouts", response_model=list[RolloutSummary])
async def list_rollouts(request: Request, op: Op) -> list[RolloutSummary]:
    """The tenant's rollouts, newest first, with their counts per device state."""
    return await _call(_app(request).rollouts.list, op.tenant)


@router.get("/ota/rollouts/{rollout_id}", response_model=RolloutOut, responses=errors(404))
async def get_rollout(request: Request, op: Op, rollout_id: RolloutId) -> RolloutOut:
    """The rollout, its counts per device state and every device's progress."""
    return await _call(_app(request).rollouts.status, rollout_id, op.tenant)


@router.post("/ota/rollouts/{rollout_id}/pause", **_ROLLOUT_CHANGE)
async def pause_rollout(request: Request, op: Op, rollout_id: RolloutId) -> RolloutOut:
    """No new offers; devices with an open offer go on."""
    _need(op, roles.ROLLOUT_PAUSE)
    return await _call(_app(request).rollouts.pause, rollout_id, op.tenant, _actor(request, op))


@router.post("/ota/rollouts/{rollout_id}/resume", **_ROLLOUT_CHANGE)
async def resume_rollout(request: Request, op: Op, rollout_id: RolloutId) -> RolloutOut:
    _need(op, roles.ROLLOUT_RESUME)
    return await _call(_app(request).rollouts.resume, rollout_id, op.tenant, _actor(request, op))


@router.post("/ota/rollouts/{rollout_id}/abort", **_ROLLOUT_CHANGE)
async def abort_rollout(request: Request, op: Op, rollout_id: RolloutId) -> RolloutOut:
    """End it: no new offers, offers no device accepted yet expire, heads answer
    not_offered."""
    _need(op, roles.ROLLOUT_ABORT)
    return await _call(_app(request).rollouts.abort, rollout_id, op.tenant, _actor(request, op))


ca_router = APIRouter(prefix="/v1/ca")


@ca_router.get(
    "/crl",
    response_class=Response,
    responses={200: {"content": {"application/pkix-crl": {}}, "description": "DER CRL"}},
)
async def crl(request: Request) -> Response:
    """The issuing CA's certificate revocation list (DER, RFC 5280), re-signed daily and on
    every revocation."""
    der = await run_in_threadpool(_app(request).current_crl)
    return Response(der, media_type="application/pkix-crl")


@ca_router.get(
    "/root",
    response_class=Response,
    responses={200: {"content": {"application/pkix-cert": {}}, "description": "DER root"}},
)
async def root(request: Request) -> Response:
    """The platform root CA certificate (DER): what devices pin."""
    return Response(_app(request).ca.root_der(), media_type="application/pkix-cert")
