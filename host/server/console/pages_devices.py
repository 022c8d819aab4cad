"""The device pages (docs/console.md "Pages"): the list (`/console/devices`: filters, ID-prefix
search, keyset pages of 50) and one device (`/console/devices/ID`: identity, certificate chain,
telemetry chart, PUF health, commands, audit trail), with its actions: renew, revoke, disable,
enable, transfer code, re-enrol.

Each action calls the same Application use case the operator API (host/server/admin.py) calls,
with the user's tenant and actor. The list reads one `device_page` query per page (51 rows: the
51st only says whether a next page exists), so its cost does not grow with the fleet.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from cryptography import x509
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from host.server import roles
from host.server.application import Application
from host.server.console.web import (
    SHORT_ID,
    Refusal,
    application,
    call,
    form_with_csrf,
    redirect,
    render,
    require_user,
)
from host.server.deviceid import is_device_id
from host.server.schemas import STATES, DeviceRecord, PufHealthOut
from host.server.viewmodels import DeviceListRow

PAGE = 50  # devices on a page of the list
AUDIT_LIMIT = 50  # audit rows on a device's page
STATE_CHOICES = (*STATES, "disabled")  # "disabled" is the flag, as Views.device_page reads it
SERIES = ("mem_free", "uptime_ms")  # telemetry fields the chart can draw, the default first
_HEX = re.compile(r"[0-9a-fA-F]{1,64}")
_MAX_FILTER = 128  # characters of a batch name or firmware version read from a query


class BadFilter(Exception):
    """A list filter that cannot be one; its message is shown beside the form."""


# -- the list ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    state: str | None = None
    batch: str | None = None
    fw: str | None = None
    prefix: str | None = None
    after: str | None = None

    def query(self, **changes: str | None) -> str:
        """This page's query string with `changes` (None drops a key), for links."""
        values = {
            "state": self.state,
            "batch": self.batch,
            "fw": self.fw,
            "q": self.prefix,
            "after": self.after,
        }
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v})


def _text(params: QueryParams, key: str) -> str | None:
    value = params.get(key, "").strip()
    if len(value) > _MAX_FILTER:
        raise BadFilter(f"{key} is too long: at most {_MAX_FILTER} characters")
    return value or None


def read_filters(params: QueryParams) -> Filters:
    """The list's filters from its query; BadFilter with what to change for a bad one."""
    state = _text(params, "state")
    if state is not None and state not in STATE_CHOICES:
        raise BadFilter(f"state must be one of {', '.join(STATE_CHOICES)}")
    prefix = _text(params, "q")
    if prefix is not None and not _HEX.fullmatch(prefix):
        raise BadFilter(
            "search a device by the start of its ID: 1 to 64 hexadecimal characters (0-9, a-f)"
        )
    after = _text(params, "after")
    if after is not None and not _HEX.fullmatch(after):
        raise BadFilter("after must be a device ID (hexadecimal); start again from the first page")
    return Filters(
        state=state,
        batch=_text(params, "batch"),
        fw=_text(params, "fw"),
        prefix=prefix.lower() if prefix else None,
        after=after.lower() if after else None,
    )


def list_context(app: Application, tenant: str, f: Filters) -> dict[str, Any]:
    """Everything the list page shows: one page of devices and the filters' choices."""
    rows: list[DeviceListRow] = app.device_page(
        tenant,
        state=f.state,
        batch=f.batch,
        fw=f.fw,
        prefix=f.prefix,
        after=f.after,
        limit=PAGE + 1,
    )
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    return {
        "rows": rows,
        "next_query": f.query(after=rows[-1].id) if more else None,
        "batch_names": app.batch_names(tenant),
        "fw_versions": app.fw_versions(tenant),
    }


async def device_list(request: Request) -> Response:
    user = await require_user(request, roles.READ)
    app = application(request)
    error: str | None = None
    try:
        filters = read_filters(request.query_params)
    except BadFilter as e:
        error, filters = str(e), Filters()
    if error is None:
        try:
            ctx = await call(list_context, app, user.tenant, filters)
        except Refusal as e:
            if e.status != 400:
                raise
            error = e.sentence
    if error is not None:
        ctx = {"rows": [], "next_query": None, "batch_names": [], "fw_versions": []}
        names, versions = await call(_choices, app, user.tenant)
        ctx.update(batch_names=names, fw_versions=versions)
        # What was typed stays in the form, so it can be corrected.
        typed = {k: request.query_params.get(k, "")[:_MAX_FILTER] for k in ("state", "q")}
        return render(
            request,
            "devices.html",
            status=400,
            f=filters,
            typed=typed,
            error=error,
            states=STATE_CHOICES,
            short=SHORT_ID,
            first_query=filters.query(after=None),
            **ctx,
        )
    return render(
        request,
        "devices.html",
        f=filters,
        typed={"state": filters.state or "", "q": filters.prefix or ""},
        error=None,
        states=STATE_CHOICES,
        short=SHORT_ID,
        first_query=filters.query(after=None),
        **ctx,
    )


def _choices(app: Application, tenant: str) -> tuple[list[str], list[str]]:
    return app.batch_names(tenant), app.fw_versions(tenant)


# -- one device ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CertView:
    """One certificate of the chain, as the page shows it."""

    role: str  # "device", "issuing CA", "root CA"
    subject: str
    issuer: str
    serial_hex: str
    serial: int
    not_before: float
    not_after: float
    days_left: int


def cert_view(role: str, cert: x509.Certificate, now: float) -> CertView:
    before = cert.not_valid_before_utc.timestamp()
    after = cert.not_valid_after_utc.timestamp()
    return CertView(
        role=role,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial_hex=format(cert.serial_number, "X"),
        serial=cert.serial_number,
        not_before=before,
        not_after=after,
        days_left=math.floor((after - now) / 86400),
    )


def chain(app: Application, dev: DeviceRecord, now: float) -> list[CertView]:
    """The device's certificate, then the CA's chain up to its root (empty before onboarding)."""
    if dev.cert_der is None:
        return []
    ca = app.ca
    return [
        cert_view("device", x509.load_der_x509_certificate(dev.cert_der), now),
        cert_view("issuing CA", ca.issuing_cert, now),
        cert_view("root CA", ca.root_cert, now),
    ]


@dataclass(frozen=True)
class Chart:
    """An inline SVG line chart, laid out on the server (plain presentation attributes)."""

    series: str
    points: list[tuple[float, float]]  # (Unix time, value), oldest first
    polyline: str  # "x,y x,y ..." in the SVG's own units
    dots: list[tuple[float, float]]
    y_min: float
    y_max: float
    t_min: float
    t_max: float
    width: int = 640
    height: int = 220
    left: int = 72  # the plot area inside the SVG
    right: int = 624
    top: int = 16
    bottom: int = 176


def _scale(value: float, low: float, high: float, out_low: float, out_high: float) -> float:
    if high == low:
        return (out_low + out_high) / 2
    return out_low + (value - low) * (out_high - out_low) / (high - low)


def line_chart(series: str, points: Sequence[tuple[float, float]]) -> Chart:
    """The chart of `points` (time, value); an empty chart for no points."""
    pts = list(points)
    if not pts:
        return Chart(series, [], "", [], 0, 0, 0, 0)
    ts = [t for t, _ in pts]
    vs = [v for _, v in pts]
    base = Chart(series, pts, "", [], min(vs), max(vs), min(ts), max(ts))
    dots = [
        (
            round(_scale(t, base.t_min, base.t_max, base.left, base.right), 1),
            round(_scale(v, base.y_min, base.y_max, base.bottom, base.top), 1),
        )
        for t, v in pts
    ]
    line = " ".join(f"{x},{y}" for x, y in dots)
    return Chart(series, pts, line, dots, base.y_min, base.y_max, base.t_min, base.t_max)


def telemetry_points(
    history: Sequence[tuple[float, dict[str, Any]]], series: str
) -> list[tuple[float, float]]:
    """(time, value) of every message that carries `series` as a number."""
    out: list[tuple[float, float]] = []
    for at, body in history:
        value = body.get(series)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((float(at), float(value)))
    return out


@dataclass(frozen=True)
class PufRow:
    at: float
    margin: int | None
    corrected_bits: int | None
    health_failures: int | None
    used_pct: int | None


def puf_rows(history: Sequence[PufHealthOut]) -> list[PufRow]:
    """Newest first, each with the budget share it used, as the store computes the latest one:
    1 - margin / the largest margin reported up to then (the corrected-bits limit is not kept
    per report, so this is the margin's reading alone)."""
    best: int | None = None
    out: list[PufRow] = []
    for h in reversed(history):  # oldest first for the running largest margin
        used = None
        if h.margin is not None:
            best = h.margin if best is None else max(best, h.margin)
            used = round(100 * (1 - h.margin / best)) if best else 100
        out.append(PufRow(h.at, h.margin, h.corrected_bits, h.health_failures, used))
    out.reverse()
    return out


def sparkline(rows: Sequence[PufRow]) -> Chart:
    """Budget used (%) over time, on a fixed 0-100 scale."""
    pts = [(r.at, float(r.used_pct)) for r in reversed(rows) if r.used_pct is not None]
    chart = Chart("puf_used_pct", pts, "", [], 0, 100, 0, 0, 240, 48, 2, 238, 4, 44)
    if not pts:
        return chart
    t_min, t_max = pts[0][0], pts[-1][0]
    dots = [
        (
            round(_scale(t, t_min, t_max, chart.left, chart.right), 1),
            round(_scale(v, 0, 100, chart.bottom, chart.top), 1),
        )
        for t, v in pts
    ]
    line = " ".join(f"{x},{y}" for x, y in dots)
    return Chart("puf_used_pct", pts, line, dots, 0, 100, t_min, t_max, 240, 48, 2, 238, 4, 44)


def detail_context(app: Application, tenant: str, device_id: str, series: str) -> dict[str, Any]:
    """Everything a device's page shows (NotFound for a bad or another tenant's ID)."""
    dev = app.require_device(device_id, tenant)
    now = time.time()
    # Presence and firmware live on the list's row: one primary-key range read.
    rows = app.device_page(tenant, prefix=dev.device_id, limit=1)
    row = rows[0] if rows else None
    history = app.telemetry_history(dev.device_id, tenant)
    numeric = sorted(
        {
            k
            for _, body in history
            for k, v in body.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "seq"
        }
    )
    choices = [s for s in SERIES if s in numeric] + [s for s in numeric if s not in SERIES]
    if series not in choices:
        series = choices[0] if choices else SERIES[0]
    puf = puf_rows(app.puf_health(dev.device_id, tenant=tenant))
    return {
        "dev": dev,
        "online": bool(row and row.online),
        "fw": row.fw if row else None,
        "now": now,
        "chain": chain(app, dev, now),
        "chart": line_chart(series, telemetry_points(history, series)),
        "series_choices": choices,
        "history": history,
        "puf": puf,
        "puf_chart": sparkline(puf),
        "commands": app.commands(dev.device_id, tenant=tenant),
        "audit": app.audit(tenant, target=f"device:{dev.device_id}", limit=AUDIT_LIMIT),
    }


async def device_detail(request: Request) -> Response:
    user = await require_user(request, roles.READ)
    device_id = request.path_params["device_id"]
    if not is_device_id(device_id):
        raise Refusal(404, f"device {device_id[:64]} does not exist")
    series = request.query_params.get("series", SERIES[0])[:64]
    ctx = await call(detail_context, application(request), user.tenant, device_id, series)
    return render(request, "device.html", transfer=None, **ctx)


# -- actions ------------------------------------------------------------------------------------
def _device_url(device_id: str) -> str:
    return f"/console/devices/{device_id.lower()}"


async def _action(
    request: Request,
    action: str,
    do: Callable[[Application, str, str, Any], Any],
    done: str,
) -> tuple[Any, Response | None]:
    """The steps every action shares: the role, then the CSRF token, then the use case. Its
    result, or the redirect that shows its refusal as the flash sentence."""
    user = await require_user(request, action)
    form = await form_with_csrf(request)
    device_id = request.path_params["device_id"]
    if not is_device_id(device_id):
        raise Refusal(404, f"device {device_id[:64]} does not exist")
    if action == roles.DEVICE_REVOKE and form.get("confirm") != "yes":
        return None, redirect(
            request,
            _device_url(device_id),
            flash="Tick “I understand” to revoke the device; nothing changed.",
            kind="error",
        )
    app = application(request)
    try:
        result = await call(do, app, device_id, user.tenant, user.actor)
    except Refusal as e:
        if e.status != 400:
            raise
        return None, redirect(request, _device_url(device_id), flash=e.sentence, kind="error")
    return result, redirect(request, _device_url(device_id), flash=done)


def _simple(action: str, method: str, done: str) -> Callable[[Request], Awaitable[Response]]:
    def do(app: Application, device_id: str, tenant: str, actor: Any) -> Any:
        return getattr(app, method)(device_id, tenant=tenant, actor=actor)

    async def endpoint(request: Request) -> Response:
        _, response = await _action(request, action, do, done)
        assert response is not None
        return response

    endpoint.__name__ = f"device_{method}"
    return endpoint


device_renew = _simple(roles.DEVICE_RENEW, "renew", "Renewal commanded: the device renews now.")
device_revoke = _simple(roles.DEVICE_REVOKE, "revoke", "Device revoked.")
device_disable = _simple(roles.DEVICE_DISABLE, "disable", "Device disabled.")
device_enable = _simple(roles.DEVICE_ENABLE, "enable", "Device enabled.")
device_reenrol = _simple(
    roles.DEVICE_REENROL, "reenrol", "Re-enrolment commanded: at its next cold boot."
)


async def device_transfer(request: Request) -> Response:
    """A transfer code, shown once on this answer and nowhere else (not in a flash, not in a
    log): only its SHA-256 is stored."""

    def do(app: Application, device_id: str, tenant: str, actor: Any) -> Any:
        return app.transfer_code(device_id, tenant=tenant, actor=actor)

    code, response = await _action(request, roles.DEVICE_TRANSFER, do, "")
    if code is None:
        assert response is not None
        return response
    return render(request, "device_transfer.html", code=code)


routes = [
    Route("/devices", device_list, methods=["GET"]),
    Route("/devices/{device_id}", device_detail, methods=["GET"]),
    Route("/devices/{device_id}/renew", device_renew, methods=["POST"]),
    Route("/devices/{device_id}/revoke", device_revoke, methods=["POST"]),
    Route("/devices/{device_id}/disable", device_disable, methods=["POST"]),
    Route("/devices/{device_id}/enable", device_enable, methods=["POST"]),
    Route("/devices/{device_id}/transfer", device_transfer, methods=["POST"]),
    Route("/devices/{device_id}/reenrol", device_reenrol, methods=["POST"]),
]
