"""The operator API (`/v1/admin`): bearer tokens with a role in one tenant.

viewer reads; operator also creates and imports batches and revokes, disables and enables
devices; admin also creates tokens for its tenant. Anything of another tenant answers 404
exactly as if it did not exist. Every change is in the audit log with the token's operator and
the client address.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from host.server import ServerError
from host.server.broker import reload_broker
from host.server.identities import ImportFormatError
from host.server.models import ROLE_ADMIN, ROLE_OPERATOR, ROLE_VIEWER
from host.server.onboarding import Onboarding, OnboardingRefused
from host.server.policy import PolicyError
from host.server.registry import (
    Actor,
    Conflict,
    DeviceInfo,
    ImportRejected,
    NotFound,
    OperatorInfo,
    Registry,
    RegistryError,
)
from host.server.schemas import (
    AuditOut,
    BatchCreate,
    BatchExport,
    BatchOut,
    BatchState,
    DeviceOut,
    ImportRejectedBody,
    ImportRequest,
    ImportResult,
    TokenCreate,
    TokenOut,
    WhoAmI,
    errors,
)

_bearer = HTTPBearer(auto_error=False, description="An operator token: qlink token create")


class ApiError(ServerError):
    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.code, "detail": self.detail, **self.extra}, status_code=self.status
        )


def _registry(request: Request) -> Registry:
    service: Onboarding = request.app.state.onboarding
    return service.registry


def _operator(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> OperatorInfo:
    if creds is None:
        raise ApiError(401, "unauthenticated", "send an operator token: Authorization: Bearer ...")
    op = _registry(request).authenticate(creds.credentials)
    if op is None:
        raise ApiError(401, "unauthenticated", "this token is unknown or revoked")
    return op


Op = Annotated[OperatorInfo, Depends(_operator)]


def _need(op: OperatorInfo, role: str) -> None:
    if not op.may(role):
        raise ApiError(403, "forbidden", f"this needs the {role} role; the token has {op.role}")


def _actor(request: Request, op: OperatorInfo) -> Actor:
    return Actor(f"operator:{op.name}", request.client.host if request.client else "-")


async def _call(fn: Any, *args: Any, **kw: Any) -> Any:
    """Run a registry call off the event loop, mapping its errors to API answers."""
    try:
        return await run_in_threadpool(fn, *args, **kw)
    except NotFound as e:
        raise ApiError(404, "not_found", str(e)) from None
    except Conflict as e:
        raise ApiError(409, "conflict", str(e)) from None
    except ImportRejected as e:
        rows = [{"line": r.line, "reason": r.reason} for r in e.errors]
        raise ApiError(422, "import_rejected", str(e), rows=rows) from None
    except (ImportFormatError, RegistryError) as e:
        raise ApiError(400, "bad_request", str(e)) from None


router = APIRouter(prefix="/v1/admin", responses=errors(400, 401, 408, 413))


@router.get("/whoami", response_model=WhoAmI)
async def whoami(op: Op) -> dict[str, Any]:
    return op.as_json()


@router.get("/batches", response_model=list[BatchOut])
async def list_batches(request: Request, op: Op) -> list[dict[str, Any]]:
    rows = await _call(_registry(request).batches, op.tenant)
    return [b.as_json() for b in rows]


@router.post("/batches", response_model=BatchOut, status_code=201, responses=errors(403, 409))
async def create_batch(request: Request, op: Op, body: BatchCreate) -> dict[str, Any]:
    _need(op, ROLE_OPERATOR)
    b = await _call(
        _registry(request).create_batch,
        body.name,
        op.tenant,
        body.policy,
        _actor(request, op),
    )
    return b.as_json()  # type: ignore[no-any-return]


@router.get("/batches/{name}", response_model=BatchOut, responses=errors(404))
async def get_batch(request: Request, op: Op, name: str) -> dict[str, Any]:
    b = await _call(_registry(request).batch, name, op.tenant)
    return b.as_json()  # type: ignore[no-any-return]


@router.post("/batches/{name}/state", response_model=BatchOut, responses=errors(403, 404))
async def set_batch_state(request: Request, op: Op, name: str, body: BatchState) -> dict[str, Any]:
    _need(op, ROLE_OPERATOR)
    reg = _registry(request)
    await _call(reg.set_batch_active, name, body.active, op.tenant, _actor(request, op))
    b = await _call(reg.batch, name, op.tenant)
    return b.as_json()  # type: ignore[no-any-return]


@router.post(
    "/batches/{name}/import",
    response_model=ImportResult,
    responses={**errors(403, 404), 422: {"model": ImportRejectedBody}},
)
async def import_batch(request: Request, op: Op, name: str, body: ImportRequest) -> dict[str, Any]:
    _need(op, ROLE_OPERATOR)
    n = await _call(
        _registry(request).import_devices,
        name,
        body.data,
        tenant=op.tenant,
        fmt=body.format,
        actor=_actor(request, op),
    )
    return {"imported": n}


@router.get("/batches/{name}/export", response_model=BatchExport, responses=errors(404))
async def export_batch(request: Request, op: Op, name: str) -> dict[str, Any]:
    return await _call(_registry(request).export_batch, name, op.tenant)  # type: ignore[no-any-return]


@router.get("/devices", response_model=list[DeviceOut])
async def list_devices(
    request: Request,
    op: Op,
    batch: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> list[dict[str, Any]]:
    rows = await _call(_registry(request).devices, op.tenant, batch, limit=limit, offset=offset)
    return [d.as_json() for d in rows]


@router.get("/devices/{device_id}", response_model=DeviceOut, responses=errors(404))
async def get_device(request: Request, op: Op, device_id: str) -> dict[str, Any]:
    d = await _call(_registry(request).device, device_id, op.tenant)
    if d is None:
        raise ApiError(404, "not_found", f"device {device_id[:64]} does not exist")
    return d.as_json()  # type: ignore[no-any-return]


def device_change(
    service: Onboarding, device_id: str, change: str, tenant: str | None, actor: Actor
) -> DeviceInfo:
    """Apply `change` (revoke/disable/enable) on the broker, then in the registry; a revocation
    re-publishes the CRL. Shared by the API and the CLI."""

    def apply(dev: DeviceInfo) -> None:
        try:
            driver = service.driver_for(dev)
        except OnboardingRefused as e:
            raise PolicyError(e.detail) from None
        if change == "revoke":
            driver.delete_device(dev.device_id)
        elif change == "disable":
            driver.disable_device(dev.device_id)
        else:
            driver.enable_device(dev.device_id)

    reg = service.registry
    dev = reg.change_device(device_id, change, apply, tenant=tenant, actor=actor)
    if change == "revoke":
        service.ca.publish_crl([(r.serial, r.revoked_at) for r in reg.revoked_certs()])
        reload_broker(service.settings.broker_dir)  # the broker now refuses the certificate
    return dev


async def _change(request: Request, op: Op, device_id: str, change: str) -> dict[str, Any]:
    _need(op, ROLE_OPERATOR)
    service: Onboarding = request.app.state.onboarding
    try:
        d = await _call(device_change, service, device_id, change, op.tenant, _actor(request, op))
    except PolicyError as e:
        raise ApiError(503, "broker_unavailable", f"{e}; nothing changed, retry") from None
    return d.as_json()  # type: ignore[no-any-return]


_CHANGE = {"response_model": DeviceOut, "responses": errors(403, 404, 409, 503)}


@router.post("/devices/{device_id}/revoke", **_CHANGE)  # type: ignore[arg-type]
async def revoke_device(request: Request, op: Op, device_id: str) -> dict[str, Any]:
    return await _change(request, op, device_id, "revoke")


@router.post("/devices/{device_id}/disable", **_CHANGE)  # type: ignore[arg-type]
async def disable_device(request: Request, op: Op, device_id: str) -> dict[str, Any]:
    return await _change(request, op, device_id, "disable")


@router.post("/devices/{device_id}/enable", **_CHANGE)  # type: ignore[arg-type]
async def enable_device(request: Request, op: Op, device_id: str) -> dict[str, Any]:
    return await _change(request, op, device_id, "enable")


@router.post("/tokens", response_model=TokenOut, status_code=201, responses=errors(403))
async def create_token(request: Request, op: Op, body: TokenCreate) -> dict[str, Any]:
    _need(op, ROLE_ADMIN)
    token, info = await _call(
        _registry(request).create_token, body.name, op.tenant, body.role, _actor(request, op)
    )
    return {"token": token, **info.as_json()}


@router.get("/audit", response_model=list[AuditOut])
async def audit(
    request: Request,
    op: Op,
    action: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> list[dict[str, Any]]:
    _need(op, ROLE_VIEWER)
    rows = await _call(_registry(request).audit, op.tenant, action=action, since=since, limit=limit)
    return [a.as_json() for a in rows]


ca_router = APIRouter(prefix="/v1/ca")


@ca_router.get(
    "/crl",
    response_class=Response,
    responses={200: {"content": {"application/pkix-crl": {}}, "description": "DER CRL"}},
)
async def crl(request: Request) -> Response:
    """The issuing CA's certificate revocation list (DER, RFC 5280), re-signed daily and on
    every revocation."""
    service: Onboarding = request.app.state.onboarding

    def current() -> bytes:
        revoked = [(r.serial, r.revoked_at) for r in service.registry.revoked_certs()]
        return service.ca.current_crl(revoked)

    der = await run_in_threadpool(current)
    return Response(der, media_type="application/pkix-crl")


@ca_router.get(
    "/root",
    response_class=Response,
    responses={200: {"content": {"application/pkix-cert": {}}, "description": "DER root"}},
)
async def root(request: Request) -> Response:
    """The platform root CA certificate (DER): what devices pin."""
    service: Onboarding = request.app.state.onboarding
    return Response(service.ca.root_der(), media_type="application/pkix-cert")
