"""The console's live feed (host/server/console/live.py, docs/console.md "Live updates"): each
change reaches the listeners whose tenant and filter match it and no other, once, even when it
commits late; a listener that falls behind is told to read its page again instead of missing
changes, one that does not read and gone ones are dropped, without stalling the others; the task
runs only while someone listens; the stream is well-formed server-sent events, also through a
real server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from host.server.console import live, pages_live
from host.server.console.live import Listener, LiveFeed, LiveRequestInvalid
from host.server.console.pages_live import live_query
from host.server.schemas import STATES
from host.server.store import Store
from host.server.viewmodels import DeviceChange, RolloutChange

A = "a" * 64
B = "b" * 64
C = "c" * 64

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- a small server-sent events parser (WHATWG HTML, "Interpreting an event stream") --------
@dataclass
class Event:
    event: str
    data: Any
    id: str | None


def parse_sse(text: str) -> tuple[list[Event], list[str]]:
    """Events and comment lines of a complete stream."""
    events: list[Event] = []
    comments: list[str] = []
    fields: dict[str, list[str]] = {}
    assert text == "" or text.endswith("\n\n"), f"stream ends mid-event: {text[-40:]!r}"
    for line in text.split("\n"):
        if line == "":
            if "data" in fields:
                events.append(
                    Event(
                        fields.get("event", ["message"])[0],
                        json.loads("\n".join(fields["data"])),
                        fields.get("id", [None])[0],
                    )
                )
            fields = {}
        elif line.startswith(":"):
            comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
    return events, comments


def frames(listener: Listener) -> list[Event]:
    """What is waiting in a listener's queue, taken as its stream takes it, parsed (None, the
    end, as an event "end")."""
    out: list[Event] = []
    items = []
    while not listener.queue.empty():
        items.append(listener.queue.get_nowait())
    listener.taken(items)
    for item in items:
        if item is None:
            out.append(Event("end", None, None))
        else:
            out += parse_sse(item.decode())[0]
    return out


# -- fakes -------------------------------------------------------------------------------------
@dataclass
class FakeStatus:
    id: int
    tenant: str
    state: str
    counts: dict[str, int]
    devices: list[Any]


@dataclass
class FakeRolloutDevice:
    device_id: str
    state: str
    reason: str | None


@dataclass
class Fakes:
    """The store's answers, as Views gives them: changed after the cursor, oldest first, 500 at
    most (a full answer leaves out its last instant unless the whole page is one)."""

    rows: list[DeviceChange] = field(default_factory=list)
    rollouts: list[RolloutChange] = field(default_factory=list)
    counts: dict[str | None, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[int, FakeStatus] = field(default_factory=dict)
    polls: int = 0
    summary_reads: int = 0

    def poll_devices(self, cursor: float) -> list[DeviceChange]:
        self.polls += 1
        found = sorted((r for r in self.rows if r.changed_at > cursor), key=lambda r: r.changed_at)
        page = found[: live.PAGE]
        if len(page) == live.PAGE:
            kept = [r for r in page if r.changed_at != page[-1].changed_at]
            page = kept or page
        return page

    def poll_rollouts(self, cursor: float) -> list[RolloutChange]:
        return [r for r in self.rollouts if r.updated_at > cursor]

    def summaries(self) -> dict[str | None, dict[str, Any]]:
        self.summary_reads += 1
        return dict(self.counts)

    def status(self, rollout_id: int, tenant: str | None) -> FakeStatus:
        s = self.statuses.get(rollout_id)
        if s is None or (tenant is not None and s.tenant != tenant):
            raise LookupError(f"no rollout {rollout_id}")
        return s

    def feed(self, interval_s: float = 0.02, **kw: Any) -> LiveFeed:
        return LiveFeed(
            self.poll_devices,
            self.poll_rollouts,
            self.summaries,
            interval_s,
            rollout_status=self.status,
            **kw,
        )

    def change(self, device_id: str, tenant: str = "acme", at: float | None = None, **kw: Any):
        row = DeviceChange(
            id=device_id,
            tenant=tenant,
            state=kw.get("state", "onboarded"),
            disabled=kw.get("disabled", False),
            online=kw.get("online", True),
            fw=kw.get("fw", "1.0.0"),
            last_seen=kw.get("last_seen"),
            telemetry=kw.get("telemetry"),
            changed_at=time.time() if at is None else at,
        )
        self.rows.append(row)
        return row


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def ticks(feed: LiveFeed, n: int = 2) -> None:
    """Wait until the task made `n` more polls (each a whole tick's fan-out)."""
    start = feed.ticks
    await until(lambda: feed.ticks >= start + n)


def of(kind: str, events: list[Event]) -> list[Event]:
    return [e for e in events if e.event == kind]


# -- delivery --------------------------------------------------------------------------------
async def test_a_change_reaches_only_listeners_of_its_tenant_and_filter() -> None:
    f = Fakes()
    feed = f.feed()
    acme = feed.subscribe("acme")
    globex = feed.subscribe("globex")
    everyone = feed.subscribe(None)
    watch_a = feed.subscribe("acme", device=A)
    watch_b = feed.subscribe("acme", device=B)
    foreign_a = feed.subscribe("globex", device=A)  # guessed another tenant's device ID
    rollout = feed.subscribe("acme", rollout=1)
    await ticks(feed)
    for x in (acme, globex, everyone, watch_a, watch_b, foreign_a, rollout):
        frames(x)
    f.change(A, "acme", telemetry={"temp": 21.5}, last_seen=1.5)
    await ticks(feed)
    got = of("device", frames(acme))
    assert [e.data for e in got] == [
        {
            "id": A,
            "state": "onboarded",
            "online": True,
            "disabled": False,
            "fw": "1.0.0",
            "last_seen": 1.5,
            "telemetry": {"temp": 21.5},
        }
    ]
    assert [e.data["id"] for e in of("device", frames(everyone))] == [A]
    assert [e.data["id"] for e in of("device", frames(watch_a))] == [A]
    for x in (globex, watch_b, foreign_a, rollout):
        assert of("device", frames(x)) == []
    for x in (acme, globex, everyone, watch_a, watch_b, foreign_a, rollout):
        feed.unsubscribe(x)


async def test_each_change_is_delivered_once_though_the_overlap_reads_it_again() -> None:
    f = Fakes()
    feed = f.feed()
    x = feed.subscribe("acme", device=A)
    first = f.change(A)
    await ticks(feed, 4)  # each of these ticks reads the row again (it is in the overlap)
    assert [e.data["id"] for e in of("device", frames(x))] == [A]
    f.change(A, at=first.changed_at + 0.001, online=False)  # a new change of the same device
    await ticks(feed, 3)
    assert [e.data["online"] for e in of("device", frames(x))] == [False]
    feed.unsubscribe(x)


async def test_a_row_committed_late_with_an_older_stamp_is_not_missed() -> None:
    f = Fakes()
    feed = f.feed()
    x = feed.subscribe("acme")
    newer = f.change(B)
    await ticks(feed)
    assert [e.data["id"] for e in of("device", frames(x))] == [B]
    # Stamped before B but visible only now (its transaction committed after B's):
    f.change(A, at=newer.changed_at - 1.5)
    # Stamped further back than the overlap: the feed's stated limit.
    f.change(C, at=newer.changed_at - live.OVERLAP_S - 1.0)
    await ticks(feed)
    assert [e.data["id"] for e in of("device", frames(x))] == [A]
    feed.unsubscribe(x)


async def test_a_listener_that_joins_gets_the_changes_of_the_overlap_window() -> None:
    f = Fakes()
    feed = f.feed()
    early = feed.subscribe("acme")
    f.change(A)
    await ticks(feed)
    late = feed.subscribe("acme", device=A)
    other = feed.subscribe("acme", device=B)
    assert [e.data["id"] for e in of("device", frames(late))] == [A]
    assert of("device", frames(other)) == []
    for x in (early, late, other):
        feed.unsubscribe(x)


async def test_a_burst_larger_than_a_page_is_read_in_pages(monkeypatch) -> None:
    monkeypatch.setattr(live, "PAGE", 10)
    f = Fakes()
    feed = f.feed()
    x = feed.subscribe("acme")
    await ticks(feed)
    now = time.time()
    ids = [f"{n:064x}" for n in range(35)]
    for n, device_id in enumerate(ids):
        f.change(device_id, at=now + n * 0.001)
    await ticks(feed, 2)
    assert [e.data["id"] for e in of("device", frames(x))] == ids
    feed.unsubscribe(x)


async def test_a_page_at_one_instant_makes_its_watchers_read_again(monkeypatch) -> None:
    monkeypatch.setattr(live, "PAGE", 10)
    f = Fakes()
    feed = f.feed()
    fleet = feed.subscribe("acme")
    watcher = feed.subscribe("acme", device=A)
    rollout = feed.subscribe("acme", rollout=7)
    await ticks(feed)
    frames(fleet)
    now = time.time()
    for n in range(12):  # one transaction stamped 12 rows alike: more than a page
        f.change(f"{n:064x}", at=now)
    await until(lambda: fleet.behind and watcher.behind)
    got = frames(fleet)
    assert [e.event for e in got if e.event != "summary"][-1] == "resync"
    assert of("resync", frames(watcher)) == [Event("resync", {}, None)]
    assert not fleet.closed and not watcher.closed  # the streams stay open
    assert not rollout.behind and frames(rollout) == []  # a rollout page shows no device rows
    f.change(A, at=now + 1)  # once the resync is taken, changes flow again
    await until(lambda: not watcher.queue.empty())
    assert [e.data["id"] for e in of("device", frames(watcher))] == [A]
    for x in (fleet, watcher, rollout):
        feed.unsubscribe(x)


# -- listeners come and go ---------------------------------------------------------------------
async def test_the_task_runs_only_while_someone_listens() -> None:
    f = Fakes()
    feed = f.feed()
    assert not feed.running
    a = feed.subscribe("acme")
    b = feed.subscribe("globex", device=A)
    await ticks(feed)
    assert feed.running and feed.listeners == 2
    feed.unsubscribe(a)
    await ticks(feed)
    assert feed.running and feed.listeners == 1
    feed.unsubscribe(b)
    feed.unsubscribe(b)  # twice is harmless
    assert feed.listeners == 0 and not feed.running
    polls = f.polls
    await asyncio.sleep(0.1)
    assert f.polls == polls  # nothing polls any more
    c = feed.subscribe("acme")  # and it starts again
    await ticks(feed)
    feed.unsubscribe(c)


async def test_a_listener_that_falls_behind_gets_one_resync_and_the_others_everything(
    monkeypatch,
) -> None:
    monkeypatch.setattr(live, "QUEUE_SIZE", 4)
    f = Fakes()
    feed = f.feed()
    slow = feed.subscribe("acme")
    fast = feed.subscribe("acme")
    await ticks(feed)
    frames(slow)
    got: list[Event] = []
    now = time.time()
    for n in range(12):
        f.change(f"{n:064x}", at=now + n * 0.001)
        await ticks(feed)  # a tick begun before the change may miss it; the next one sends it
        got += frames(fast)
    assert [e.data["id"] for e in of("device", got)] == [f"{n:064x}" for n in range(12)]
    assert of("resync", got) == []
    # The slow one: the changes its queue took, then one resync in its last place; nothing
    # after it until its stream takes it, and it is not dropped.
    assert slow.queue.full() and slow.behind and not slow.closed
    waiting = frames(slow)
    assert [e.event for e in waiting][-1] == "resync"
    assert [e.data["id"] for e in of("device", waiting)] == [f"{n:064x}" for n in range(3)]
    f.change(A, at=now + 1)
    await until(lambda: not slow.queue.empty())
    assert [e.data["id"] for e in of("device", frames(slow))] == [A]
    assert feed.listeners == 2
    for x in (slow, fast):
        feed.unsubscribe(x)


async def test_a_listener_that_does_not_read_is_dropped_when_its_queue_is_full(
    monkeypatch,
) -> None:
    monkeypatch.setattr(live, "QUEUE_SIZE", 4)
    monkeypatch.setattr(live, "SUMMARY_EVERY_S", 0.0)
    f = Fakes()
    f.counts["acme"] = {"total": 0, "by_state": {}, "online": 0, "disabled": 0}
    feed = f.feed()
    stuck = feed.subscribe("acme")
    fast = feed.subscribe("acme")
    now = time.time()
    for n in range(8):  # device frames, the resync, then counts it has no room for
        f.counts["acme"] = {**f.counts["acme"], "total": n + 1}
        f.change(f"{n:064x}", at=now + n * 0.001)
        await ticks(feed, 1)
        frames(fast)
    await until(lambda: stuck.closed)
    assert frames(stuck) == [Event("end", None, None)]  # its stream ends; the page reconnects
    assert feed.listeners == 1 and not fast.closed
    feed.unsubscribe(fast)


async def test_a_listener_that_joins_after_a_bulk_change_gets_one_resync(monkeypatch) -> None:
    monkeypatch.setattr(live, "QUEUE_SIZE", 4)
    f = Fakes()
    feed = f.feed()
    early = feed.subscribe("acme", device=C)  # keeps the task, and its overlap window, running
    now = time.time()
    for n in range(6):  # an import: more changes in the overlap window than a queue takes
        f.change(f"{n:064x}", at=now + n * 0.001)
    await ticks(feed, 2)
    late = feed.subscribe("acme")
    assert [e.event for e in frames(late)] == ["resync"]  # its page reads itself once
    assert not late.closed and not late.behind
    few = feed.subscribe("acme", device=f"{5:064x}")  # what fits is replayed as it was
    assert [e.data["id"] for e in of("device", frames(few))] == [f"{5:064x}"]
    for x in (early, late, few):
        feed.unsubscribe(x)


# -- summaries and rollouts -------------------------------------------------------------------
async def test_a_summary_is_sent_when_the_counts_change_and_at_most_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live, "SUMMARY_EVERY_S", 0.3)
    f = Fakes()
    f.counts["acme"] = {"total": 1, "by_state": {"onboarded": 1}, "online": 0, "secret": 1}
    feed = f.feed()
    x = feed.subscribe("acme")
    await until(lambda: not x.queue.empty())
    first = of("summary", frames(x))  # the counts when it joined
    assert [e.data for e in first] == [{"total": 1, "by_state": {"onboarded": 1}, "online": 0}]
    f.change(A, "acme")  # a change whose counts stay the same: no summary
    await until(lambda: f.summary_reads == 2)
    await ticks(feed, 2)
    assert of("summary", frames(x)) == []
    f.counts["acme"] = {"total": 2, "by_state": {"onboarded": 2}, "online": 1}
    started, got = time.monotonic(), []
    for n in range(40):  # changes in every tick, for longer than the interval
        f.change(f"{n:064x}", "acme")
        await ticks(feed, 1)
        got += of("summary", frames(x))
    elapsed = time.monotonic() - started
    await ticks(feed, 3)
    got += of("summary", frames(x))
    assert [e.data["total"] for e in got] == [2]  # counts unchanged since: nothing more
    assert 2 <= f.summary_reads - 2 <= 2 + elapsed / live.SUMMARY_EVERY_S
    feed.unsubscribe(x)


async def test_one_read_of_the_counts_serves_every_tenant_and_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live, "SUMMARY_EVERY_S", 0.2)
    f = Fakes()
    f.counts = {
        "acme": {"total": 1, "by_state": {"onboarded": 1}, "online": 1, "disabled": 0},
        "globex": {"total": 2, "by_state": {"registered": 2}, "online": 0, "disabled": 1},
        None: {"total": 3, "by_state": {"onboarded": 1, "registered": 2}, "online": 1},
    }
    feed = f.feed()
    acme = [feed.subscribe("acme") for _ in range(5)]
    globex, everyone, empty = feed.subscribe("globex"), feed.subscribe(None), feed.subscribe("e")
    watcher = feed.subscribe("acme", device=A)  # a device page shows no counts
    await until(lambda: f.summary_reads == 1 and not empty.queue.empty())
    for x in acme:
        assert [e.data["total"] for e in frames(x)] == [1]
    assert [e.data for e in frames(globex)] == [f.counts["globex"]]
    assert [e.data["total"] for e in frames(everyone)] == [3]
    # A tenant without devices: zeros, every state listed.
    zeros = {"total": 0, "by_state": dict.fromkeys(STATES, 0), "online": 0, "disabled": 0}
    assert [e.data for e in frames(empty)] == [zeros]
    assert frames(watcher) == []
    # Nothing changes: the counts are not read again, however many ticks.
    await ticks(feed, 10)
    assert f.summary_reads == 1
    # A change of one tenant: one read, each listener whose counts changed hears of it.
    f.counts["globex"] = {**f.counts["globex"], "online": 2}
    f.change(B, "globex")
    await until(lambda: f.summary_reads == 2)
    await ticks(feed, 2)
    assert [e.data["online"] for e in of("summary", frames(globex))] == [2]
    for x in (*acme, everyone, empty, watcher):
        assert of("summary", frames(x)) == []
    # A console that joins gets no counts of the last read (they may be older than its page):
    # the next read, made for it, brings the current ones, and only it hears them.
    f.counts["globex"] = {**f.counts["globex"], "online": 3}  # not yet polled as a change
    late = feed.subscribe("globex")
    assert of("summary", frames(late)) == []
    await until(lambda: f.summary_reads == 3)
    await ticks(feed, 2)
    assert [e.data["online"] for e in of("summary", frames(late))] == [3]
    await ticks(feed, 3)
    assert f.summary_reads == 3 and of("summary", frames(late)) == []
    for x in (*acme, globex, everyone, empty, watcher, late):
        feed.unsubscribe(x)


async def test_a_failed_read_of_the_counts_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "SUMMARY_EVERY_S", 0.0)
    f = Fakes()
    f.counts["acme"] = {"total": 1, "by_state": {}, "online": 0, "disabled": 0}
    feed = f.feed()
    x = feed.subscribe("acme")
    await until(lambda: f.summary_reads == 1)
    frames(x)
    fails = [True]
    real = f.summaries

    def flaky() -> dict[str | None, dict[str, Any]]:
        if fails.pop() if fails else False:
            raise OSError("database is away")
        return real()

    monkeypatch.setattr(feed, "_summaries", flaky)
    f.counts["acme"] = {"total": 2, "by_state": {}, "online": 0, "disabled": 0}
    f.change(A, "acme")
    await until(lambda: bool(x.queue.qsize() >= 2))  # the device, then the counts
    assert [e.data["total"] for e in of("summary", frames(x))] == [2]
    feed.unsubscribe(x)


async def test_a_rollout_page_gets_its_rollout_and_no_other_tenants() -> None:
    f = Fakes()
    f.statuses[1] = FakeStatus(
        1, "acme", "active", {"offered": 1}, [FakeRolloutDevice(A, "offered", None)]
    )
    f.statuses[2] = FakeStatus(2, "globex", "active", {}, [])
    feed = f.feed()
    mine = feed.subscribe("acme", rollout=1)
    foreign = feed.subscribe("acme", rollout=2)  # another tenant's rollout
    admin = feed.subscribe(None, rollout=2)
    await until(lambda: not mine.queue.empty() and not admin.queue.empty())
    assert [e.data for e in frames(mine)] == [
        {
            "id": 1,
            "state": "active",
            "counts": {"offered": 1},
            "devices": [{"id": A, "state": "offered", "reason": None}],
        }
    ]
    f.statuses[2] = FakeStatus(2, "globex", "halted", {}, [])
    f.rollouts.append(RolloutChange(2, "globex", time.time()))
    await ticks(feed, 3)
    assert [e.data["state"] for e in frames(admin)] == ["active", "halted"]
    assert frames(foreign) == []
    for x in (mine, foreign, admin):
        feed.unsubscribe(x)


# -- the stream --------------------------------------------------------------------------------
class FakeRequest:
    """What the stream uses of a Starlette request: the ASGI scope and `receive`."""

    def __init__(self, spec_version: str = "2.4") -> None:
        self.scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}}
        self.left = asyncio.Event()
        self.receives = 0

    @property
    def gone(self) -> bool:
        return self.left.is_set()

    @gone.setter
    def gone(self, value: bool) -> None:
        if value:
            self.left.set()

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        if self.receives == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}


async def read_stream(body: AsyncIterable[Any], until_text: str, timeout: float = 5.0) -> str:
    text = ""
    async with asyncio.timeout(timeout):
        async for chunk in body:
            text += chunk.decode() if isinstance(chunk, bytes) else chunk
            if until_text in text:
                return text
    return text


async def test_the_stream_is_framed_as_server_sent_events_with_keepalives() -> None:
    f = Fakes()
    feed = f.feed(keepalive_s=0.05)
    request = FakeRequest()
    answer = await pages_live.live_endpoint(request, feed, "acme", device=A)  # type: ignore[arg-type]
    assert answer.media_type == "text/event-stream"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-accel-buffering"] == "no"
    body = answer.body_iterator
    text = await read_stream(body, ": keepalive")
    f.change(A, fw="1.1.0")
    text += await read_stream(body, "event: device")
    text += await read_stream(body, ": keepalive")
    events, comments = parse_sse(text.removeprefix(f"retry: {live.RETRY_MS}\n\n"))
    assert len(comments) >= 2 and set(comments) == {"keepalive"}  # before and after it
    assert [(e.event, e.data["fw"]) for e in events] == [("device", "1.1.0")]
    assert events[0].id is not None and events[0].id.isdigit()
    assert text.startswith(f"retry: {live.RETRY_MS}\n\n")
    assert feed.listeners == 1
    request.gone = True  # the client went: the stream ends and forgets its listener
    assert await read_stream(body, "never") in ("", ": keepalive\n\n")
    assert feed.listeners == 0 and not feed.running


async def test_an_idle_stream_waits_for_its_queue_and_its_client_without_polling() -> None:
    f = Fakes()
    feed = f.feed(keepalive_s=30)
    request = FakeRequest()
    answer = await pages_live.live_endpoint(request, feed, "acme", device=A)  # type: ignore[arg-type]
    body = answer.body_iterator
    assert await read_stream(body, "retry") == f"retry: {live.RETRY_MS}\n\n"
    reader = asyncio.create_task(read_stream(body, "never", timeout=10))
    await ticks(feed, 5)
    # One receive answered the request, one waits for the disconnect: nothing asks again.
    assert request.receives == 2 and not reader.done()
    request.gone = True
    assert await reader == ""
    assert feed.listeners == 0 and not feed.running


async def test_below_asgi_2_4_the_stream_leaves_receive_to_starlette() -> None:
    f = Fakes()
    feed = f.feed(keepalive_s=30)
    request = FakeRequest("2.3")  # Starlette's StreamingResponse awaits the disconnect itself
    answer = await pages_live.live_endpoint(request, feed, "acme")  # type: ignore[arg-type]
    body = answer.body_iterator
    await read_stream(body, "retry")
    reader = asyncio.create_task(read_stream(body, "never", timeout=10))
    await ticks(feed, 3)
    assert request.receives == 0
    reader.cancel()  # what Starlette does on the disconnect
    with pytest.raises(asyncio.CancelledError):
        await reader
    await body.aclose()  # type: ignore[attr-defined]
    assert feed.listeners == 0 and not feed.running


async def test_a_cancelled_stream_forgets_its_listener() -> None:
    f = Fakes()
    feed = f.feed()
    answer = await pages_live.live_endpoint(FakeRequest(), feed, "acme")  # type: ignore[arg-type]
    body = answer.body_iterator
    await read_stream(body, "retry")
    reader = asyncio.create_task(read_stream(body, "never", timeout=60))
    await asyncio.sleep(0.05)
    reader.cancel()  # what the server does when the connection drops
    with pytest.raises(asyncio.CancelledError):
        await reader
    await body.aclose()  # type: ignore[attr-defined]
    assert feed.listeners == 0 and not feed.running


def test_a_query_asks_for_one_device_or_one_rollout() -> None:
    assert live_query(None, None) == (None, None)
    assert live_query(A, None) == (A, None)
    assert live_query(A.upper(), None) == (A, None)  # stored and compared in lower case
    assert live_query(None, "12") == (None, 12)
    for device, rollout, says in [
        (A, "1", "not both"),
        ("g" * 64, None, "device must be 64 hex characters"),
        ("a" * 63, None, "device must be 64 hex characters"),
        (None, "0", "rollout number"),
        (None, "-1", "rollout number"),
        (None, "1e3", "rollout number"),
        (None, str(2**63), "rollout number"),
    ]:
        with pytest.raises(LiveRequestInvalid, match=says):
            live_query(device, rollout)


async def test_a_listener_for_both_a_device_and_a_rollout_is_refused() -> None:
    feed = Fakes().feed()
    with pytest.raises(LiveRequestInvalid, match="not both"):
        feed.subscribe("acme", device=A, rollout=1)
    assert feed.listeners == 0 and not feed.running


# -- over a real store and a real server ------------------------------------------------------
def identity() -> tuple[str, str]:
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return hashlib.sha256(pub).hexdigest(), pub.hex()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Store, str, str]]:
    s = Store(tmp_path / "registry.sqlite")
    ids = []
    for tenant in ("acme", "globex"):
        s.tenants.create(tenant)
        s.batches.create("b1", tenant)
        device_id, pub = identity()
        s.batches.import_devices("b1", [f"{device_id},{pub}"], tenant=tenant)
        ids.append(device_id)
    yield s, ids[0], ids[1]
    s.close()


def touch(s: Store, device_id: str, **values: Any) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in values)
    s.db.write_one(
        f"UPDATE devices SET {sets}, changed_at = :now WHERE device_id = :d",
        {**values, "now": time.time(), "d": device_id},
    )


def store_feed(s: Store, interval_s: float = 0.05) -> LiveFeed:
    return LiveFeed(
        s.views.changes_since, s.views.rollout_changes_since, s.views.summaries, interval_s
    )


async def test_a_device_changed_in_the_store_between_ticks_reaches_its_tenant(store) -> None:
    s, acme_dev, globex_dev = store
    feed = store_feed(s)
    acme = feed.subscribe("acme")
    globex = feed.subscribe("globex", device=acme_dev)
    watcher = feed.subscribe("acme", device=acme_dev)
    await ticks(feed)
    for x in (acme, globex, watcher):
        frames(x)
    touch(s, acme_dev, online=True, fw="2.0.1")
    await until(lambda: bool(of("device", frames(watcher))))
    await ticks(feed, 2)
    got = of("device", frames(acme))
    assert [(e.data["id"], e.data["online"], e.data["fw"]) for e in got] == [
        (acme_dev, True, "2.0.1")
    ]
    touch(s, globex_dev, online=True)
    await ticks(feed, 3)
    assert of("device", frames(acme)) == []
    assert frames(globex) == []
    for x in (acme, globex, watcher):
        feed.unsubscribe(x)


async def test_the_summary_comes_from_the_store_counts(store) -> None:
    s, acme_dev, _ = store
    feed = store_feed(s)
    x = feed.subscribe("acme")
    seen: list[Event] = []

    def summaries() -> list[int]:
        # The first read may put the devices changed within the overlap window before the
        # summary: keep what arrived until a summary is among it.
        seen.extend(frames(x))
        return [e.data["online"] for e in of("summary", seen)]

    await until(lambda: bool(summaries()))
    assert summaries() == [0]
    touch(s, acme_dev, online=True)
    await until(lambda: summaries()[-1] == 1, timeout=5)
    assert set(summaries()) == {0, 1}
    feed.unsubscribe(x)


def free_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_a_real_server_streams_events_and_forgets_a_client_that_left(store) -> None:
    s, acme_dev, _ = store
    feed = store_feed(s)

    async def endpoint(request: Request) -> Response:
        return await pages_live.live_endpoint(
            request, feed, "acme", request.query_params.get("device")
        )

    app = Starlette(routes=[Route("/console/live", endpoint)])
    sock = free_port()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started)
        port = sock.getsockname()[1]
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"http://127.0.0.1:{port}/console/live?device={acme_dev}"
            async with client.stream("GET", url) as answer:
                assert answer.headers["content-type"].startswith("text/event-stream")
                assert answer.headers["cache-control"] == "no-store"
                chunks = answer.aiter_text()
                text = await read_stream(chunks, "retry")
                await until(lambda: feed.listeners == 1)
                touch(s, acme_dev, online=True, fw="3.0.0")
                text += await read_stream(chunks, "\n\n", timeout=5)
                while '"fw":"3.0.0"' not in text:
                    text += await read_stream(chunks, "\n\n", timeout=5)
        events, _ = parse_sse(text[: text.rindex("\n\n") + 2])
        # The import's own change (stamped within the overlap) may come first.
        assert {(e.event, e.data["id"]) for e in events} == {("device", acme_dev)}
        assert (events[-1].data["online"], events[-1].data["fw"]) == (True, "3.0.0")
        await until(lambda: feed.listeners == 0 and not feed.running)
    finally:
        server.should_exit = True
        await serving
        sock.close()
