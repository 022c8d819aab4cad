"""The dashboard (`/console/`): the tenant's devices by state, online now and disabled,
onboardings per minute over the last hour (a bar chart drawn on the server) and the four alert
lists (certificates expiring within 7 days, failed updates, PUF-health warnings, halted
rollouts). Everything comes from one `Application.dashboard` call: a handful of counting queries,
the same at 10 devices and at 100,000 (no device row reaches Python but the alerts' first few).
static/dashboard.js keeps the counts current from the live feed's `summary` events."""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from host.server import roles
from host.server.console.web import application, call, render, require_user, utc
from host.server.schemas import STATES

# The chart's box (SVG user units; it scales to the page's width).
CHART_W = 640
CHART_H = 180
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 8, 12, 30


@dataclass(frozen=True)
class Bar:
    """One minute's bar: its box and what it says to a screen reader or a hovering pointer."""

    x: float
    y: float
    width: float
    height: float
    count: int
    label: str  # "17:40 UTC: 3 onboardings"


@dataclass(frozen=True)
class BarChart:
    """The onboardings-per-minute chart, laid out for the template (presentation attributes
    only: the CSP forbids style attributes)."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    bars: list[Bar]
    peak: int  # the y axis' top
    total: int
    busiest: int  # the most in one minute
    start: str  # the first minute's start, UTC
    end: str  # now, UTC


def bar_chart(counts: list[int], now: float) -> BarChart:
    """`counts` (one per minute, oldest first, the last one ending at `now`) as bars in the
    chart's box. An empty hour draws no bar (and says so in the chart's description)."""
    minutes = len(counts)
    left, right = _LEFT, CHART_W - _RIGHT
    top, bottom = _TOP, CHART_H - _BOTTOM
    busiest = max(counts, default=0)
    peak = max(busiest, 1)
    slot = (right - left) / max(minutes, 1)
    gap = min(2.0, slot / 4)
    start = now - 60 * minutes
    bars = []
    for i, n in enumerate(counts):
        if n <= 0:
            continue
        height = (bottom - top) * n / peak
        at = time.strftime("%H:%M", time.gmtime(start + 60 * i))
        bars.append(
            Bar(
                x=round(left + i * slot + gap / 2, 1),
                y=round(bottom - height, 1),
                width=round(slot - gap, 1),
                height=round(height, 1),
                count=n,
                label=f"{at} UTC: {n} onboarding{'' if n == 1 else 's'}",
            )
        )
    return BarChart(
        width=CHART_W,
        height=CHART_H,
        left=left,
        right=right,
        top=top,
        bottom=bottom,
        bars=bars,
        peak=peak,
        total=sum(counts),
        busiest=busiest,
        start=utc(start),
        end=utc(now),
    )


async def dashboard(request: Request) -> Response:
    user = await require_user(request, roles.READ)
    now = time.time()
    board = await call(application(request).dashboard, user.tenant, now)
    return render(
        request,
        "dashboard.html",
        now=now,
        summary=board.summary,
        states=STATES,
        chart=bar_chart(board.onboardings_per_minute, now),
        alerts=board.alerts,
    )


routes = [Route("/", dashboard, methods=["GET"])]
