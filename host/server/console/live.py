"""The console's live feed (docs/console.md "Live updates"): the server-sent events for the
dashboard, the device list, a device's page and a rollout's page (the stream itself:
host/server/console/pages_live.py).

One `LiveFeed` per server process. While at least one console listens, one task reads what
changed in the store once a second, in a worker thread, once for every listener; each change is
encoded once and handed to every listener whose tenant and filter match it: one `put_nowait` per
listener, so the cost of a change does not grow with the number of consoles beyond that put.

The dashboard's counts are one grouped read of every tenant's (`Views.summaries`), made only
after a tick saw a device change and at most every `SUMMARY_EVERY_S`, whatever the number of
tenants and consoles; a console that joins is sent the next read (made soon for it), never the
last one, which may be older than the page it just rendered.

Why the cursor is re-read with an overlap: `changed_at` is stamped when a transaction writes a
row, not when it commits, so a row can become visible after rows with later stamps were already
read. Each tick re-reads the last `OVERLAP_S` seconds before the cursor and drops what it has
already delivered, by (ID, stamp). A row that commits more than `OVERLAP_S` after its stamp is
missed; no write in the store holds a transaction open that long.

Why a console that falls behind is told to read again instead of being sent everything: queues
are bounded. When a console's queue has room for one more frame only (a bulk change, a join
while the overlap window holds more changes than a queue takes, or a page of changes at one
instant that the poll had to skip), it is sent one `resync` event instead of the device frames
it cannot take, and no device frame until its stream has taken that event; the page then reads
what it shows again (one request), so no change is lost and the stream stays open. A console
whose queue is full when anything else arrives (it does not read at all) is dropped: its stream
ends, and its EventSource reconnects and reads its page again, while the other consoles go on
without waiting.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread

from host.server.schemas import STATES

if TYPE_CHECKING:
    pass

log = logging.getLogger("qlink.console.live")

OVERLAP_S = 2.0  # how far before the cursor each tick reads again (late commits)
PAGE = 500  # rows the device poll answers at most per call (Views.changes_since's limit)
MAX_PAGES = 20  # pages one tick reads at most; the rest waits for the next tick
QUEUE_SIZE = 256  # frames a listener may have waiting before it is dropped as too slow
SUMMARY_EVERY_S = 2.0  # the counts are read at most this often
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
RETRY_MS = 3000  # the EventSource's reconnection delay, sent at the start of each stream
SUMMARY_FIELDS = ("total", "by_state", "online", "disabled")
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
# What a console that fell behind gets instead of the device frames it cannot take: read again
# what the page shows (no `id`: the stream's last event ID stays that of the last change sent).
RESYNC = b"event: resync\ndata: {}\n\n"


class DeviceChange(Protocol):
    """A device row as `Views.changes_since` answers it."""

    @property
    def id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def disabled(self) -> bool: ...
    @property
    def online(self) -> bool: ...
    @property
    def fw(self) -> str | None: ...
    @property
    def last_seen(self) -> float | None: ...
    @property
    def telemetry(self) -> Mapping[str, Any] | None: ...
    @property
    def changed_at(self) -> float: ...


class RolloutChange(Protocol):
    """A rollout row as `Views.rollout_changes_since` answers it."""

    @property
    def id(self) -> int: ...
    @property
    def tenant(self) -> str: ...
    @property
    def updated_at(self) -> float: ...


class RolloutDevice(Protocol):
    @property
    def device_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def reason(self) -> str | None: ...


class RolloutStatus(Protocol):
    """What `RolloutService.status` answers (schemas.RolloutOut), as far as the feed reads it."""

    @property
    def id(self) -> int: ...
    @property
    def tenant(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def counts(self) -> Mapping[str, int]: ...
    @property
    def devices(self) -> Sequence[RolloutDevice]: ...


# Rows changed after the cursor, oldest first, at most PAGE of them (Views.changes_since).
PollDevices = Callable[[float], Sequence[DeviceChange]]
PollRollouts = Callable[[float], Sequence[RolloutChange]]  # rollouts changed after the cursor
# Every tenant's counts by tenant (None: every tenant's together), each a mapping or a dataclass
# (schemas.FleetSummary) with `total`, `by_state`, `online` and `disabled` (Views.summaries); a
# tenant it leaves out has no devices.
Summaries = Callable[[], Mapping[str | None, Any]]
StatusOf = Callable[[int, str | None], RolloutStatus]  # raises when the rollout is not the tenant's


class LiveRequestInvalid(ValueError):
    """A `/console/live` query the feed cannot serve; the message says what to ask instead."""


@dataclass(eq=False)
class Listener:
    """One open stream: what it watches and the frames waiting for it (None: the feed ended it)."""

    tenant: str | None  # None: every tenant's
    device: str | None = None
    rollout: int | None = None
    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE)
    )
    closed: bool = False
    # A new listener gets the current summary or rollout status once, whether or not it changed:
    # it may have changed between the page's rendering and the stream's start.
    fresh: bool = True
    # Sent a `resync` its stream has not taken yet: device frames are skipped until it has (the
    # page's read after the resync shows them).
    behind: bool = False

    def taken(self, items: list[bytes | None]) -> None:
        """What its stream took from the queue: after the resync, device frames flow again."""
        if self.behind and RESYNC in items:
            self.behind = False

    def end(self) -> None:
        """Make its stream end now, whatever is still waiting (the feed forgets it first)."""
        while not self.queue.empty():  # what it did not read, its page reads again anyway
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    @property
    def fleet(self) -> bool:
        return self.device is None and self.rollout is None

    def sees(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant


def device_event(c: DeviceChange) -> dict[str, Any]:
    return {
        "id": c.id,
        "state": c.state,
        "online": bool(c.online),
        "disabled": bool(c.disabled),
        "fw": c.fw,
        "last_seen": c.last_seen,
        "telemetry": None if c.telemetry is None else dict(c.telemetry),
    }


def empty_summary() -> dict[str, Any]:
    """The counts of a tenant without devices."""
    return {"total": 0, "by_state": dict.fromkeys(STATES, 0), "online": 0, "disabled": 0}


def summary_event(counts: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(counts) and not isinstance(counts, type):
        data = dataclasses.asdict(counts)
    else:
        data = dict(counts)
    return {k: data[k] for k in SUMMARY_FIELDS if k in data}


def rollout_event(s: RolloutStatus) -> dict[str, Any]:
    return {
        "id": s.id,
        "state": s.state,
        "counts": dict(s.counts),
        "devices": [{"id": d.device_id, "state": d.state, "reason": d.reason} for d in s.devices],
    }


@dataclass
class _Read:
    """What one tick read in its worker thread."""

    devices: list[DeviceChange] = field(default_factory=list)
    rollouts: list[RolloutChange] = field(default_factory=list)
    # Instants whose rows were not all read (a page of them shared one stamp): the consoles that
    # watch devices read their pages again, once an instant.
    lost: set[float] = field(default_factory=set)


class LiveFeed:
    """The process's live feed; `subscribe` a listener, `unsubscribe` it when its stream ends."""

    def __init__(
        self,
        poll_devices: PollDevices,
        poll_rollouts: PollRollouts,
        summaries: Summaries,
        interval_s: float = 1.0,
        *,
        rollout_status: StatusOf | None = None,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self._poll_devices = poll_devices
        self._poll_rollouts = poll_rollouts
        self._summaries = summaries
        self._status = rollout_status
        self.interval_s = interval_s
        self.keepalive_s = keepalive_s
        self._fleet: dict[str | None, set[Listener]] = collections.defaultdict(set)
        self._by_device: dict[str, set[Listener]] = collections.defaultdict(set)
        self._by_rollout: dict[int, set[Listener]] = collections.defaultdict(set)
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        self._cursor = self._rollout_cursor = 0.0
        self._seen: dict[tuple[str, float], None] = {}
        self._lost: dict[float, None] = {}  # instants a resync was sent for (the overlap's)
        self._seen_rollouts: dict[tuple[int, float], None] = {}
        # Device frames of the overlap window, replayed to a listener that joins: the change may
        # have landed between its page's rendering and its stream's start.
        self._recent: collections.deque[tuple[float, str, str, bytes]] = collections.deque()
        # Every tenant's counts as last read (None: not read since the task started), when, and
        # whether a device changed since.
        self._counts: dict[str | None, dict[str, Any]] | None = None
        self._counts_at = -math.inf
        self._counts_dirty = False
        self._event_id = 0
        self.ticks = 0  # for tests and the benchmark: polls made since the process started

    # -- listeners --------------------------------------------------------------------------
    @property
    def listeners(self) -> int:
        return self._count

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(
        self, tenant: str | None, device: str | None = None, rollout: int | None = None
    ) -> Listener:
        """A new listener; starts the feed's task if it is the first. Call it on the loop."""
        if device is not None and rollout is not None:
            raise LiveRequestInvalid("ask for one device or one rollout, not both")
        listener = Listener(tenant, device, rollout)
        if device is not None:
            self._by_device[device].add(listener)
        elif rollout is not None:
            self._by_rollout[rollout].add(listener)
        else:
            # No counts from the last read: they may be older than the page just rendered (a
            # change this process has not polled yet). The next read, soon, is sent to it.
            self._fleet[tenant].add(listener)
        self._count += 1
        replay = [
            frame
            for _at, dev_tenant, dev_id, frame in self._recent
            if listener.sees(dev_tenant) and (listener.fleet or listener.device == dev_id)
        ]
        if len(replay) >= QUEUE_SIZE:  # more than it can take: its page reads itself again
            self._resync(listener)
        for frame in replay:
            self._put_device(listener, frame)
        if self._task is None or self._task.done():
            self._cursor = self._rollout_cursor = time.time() - OVERLAP_S
            self._seen.clear()
            self._lost.clear()
            self._seen_rollouts.clear()
            self._recent.clear()
            self._counts, self._counts_at, self._counts_dirty = None, -math.inf, False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="console-live")
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        """Forget `listener` (twice is harmless); the task stops with the last one."""
        listener.closed = True
        if listener.device is not None:
            self._discard(self._by_device, listener.device, listener)
        elif listener.rollout is not None:
            self._discard(self._by_rollout, listener.rollout, listener)
        else:
            self._discard(self._fleet, listener.tenant, listener)
        if self._count == 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    def _discard(self, index: dict[Any, set[Listener]], key: Any, listener: Listener) -> None:
        group = index.get(key)
        if group is not None and listener in group:
            group.discard(listener)
            self._count -= 1
            if not group:
                del index[key]

    def _put(self, listener: Listener, frame: bytes) -> None:
        if listener.closed:
            return
        try:
            listener.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._drop(listener, "slow")

    def _put_device(self, listener: Listener, frame: bytes) -> None:
        """A device frame, or the resync instead when it would take the queue's last place."""
        if listener.behind or listener.closed:
            return
        if listener.queue.qsize() >= QUEUE_SIZE - 1:
            self._resync(listener)
        else:
            self._put(listener, frame)

    def _resync(self, listener: Listener) -> None:
        if not listener.behind:
            listener.behind = True
            self._put(listener, RESYNC)

    def _drop(self, listener: Listener, why: str) -> None:
        """End `listener`'s stream: its page reconnects and reads itself again."""
        log.info("event=live_listener_dropped why=%s tenant=%s", why, listener.tenant)
        self.unsubscribe(listener)
        listener.end()

    def _frame(self, event: str, data: Mapping[str, Any]) -> bytes:
        self._event_id += 1
        body = json.dumps(data, separators=(",", ":"), allow_nan=False)
        return f"event: {event}\nid: {self._event_id}\ndata: {body}\n\n".encode()

    # -- the task ---------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._count:
            started = loop.time()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be away for a while: try again next tick
                log.exception("event=live_tick_failed")
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    async def tick(self) -> None:
        """One poll and its fan-out (the task calls it every `interval_s`)."""
        self.ticks += 1
        read = await anyio.to_thread.run_sync(
            self._read, self._cursor - OVERLAP_S, self._rollout_cursor - OVERLAP_S
        )
        self._deliver_devices(read)
        rollouts = self._new_rollouts(read.rollouts)
        summaries = self._summaries_due()
        if summaries:  # marked before the read: a change it misses is polled later, and marks
            self._counts_dirty, self._counts_at = False, time.monotonic()
        if rollouts or summaries:
            try:
                statuses, counts = await anyio.to_thread.run_sync(
                    self._read_views, rollouts, summaries
                )
            except BaseException:
                self._counts_dirty |= summaries  # read again next tick
                raise
            for status in {s.id: s for s in statuses}.values():  # each once, whoever asked
                self._deliver_rollout(status)
            if counts is not None:
                self._deliver_summaries(counts)

    def _read(self, since: float, rollout_since: float) -> _Read:
        """The worker thread's part: pages of changed devices, then changed rollouts."""
        read = _Read()
        for _ in range(MAX_PAGES):
            # A full answer may leave out its last instant (Views.changes_since), so a short
            # page does not prove the end: only an empty one does.
            page = list(self._poll_devices(since))
            if not page:
                break
            read.devices += page
            top = max(c.changed_at for c in page)
            if len(page) >= PAGE and top == min(c.changed_at for c in page):
                # A whole page at one instant: the poll cannot page inside it with a time
                # cursor, so the rest of that instant is skipped and its watchers read again.
                read.lost.add(top)
            since = top
        read.rollouts = list(self._poll_rollouts(rollout_since))
        return read

    def _deliver_devices(self, read: _Read) -> None:
        new_lost = read.lost.difference(self._lost)  # each tick reads the overlap again
        if new_lost:
            log.warning("event=live_changes_skipped why=more changes at one instant than a page")
            self._lost.update(dict.fromkeys(new_lost))
            for group in [*self._fleet.values(), *self._by_device.values()]:
                for listener in list(group):
                    self._resync(listener)
        for c in sorted(read.devices, key=lambda c: c.changed_at):
            key = (c.id, c.changed_at)
            self._cursor = max(self._cursor, c.changed_at)
            if key in self._seen:
                continue
            self._seen[key] = None
            self._counts_dirty = True
            targets = self._device_targets(c.tenant, c.id)
            frame = self._frame("device", device_event(c))
            self._recent.append((c.changed_at, c.tenant, c.id, frame))
            for listener in targets:
                self._put_device(listener, frame)
        floor = self._cursor - OVERLAP_S
        self._seen = {k: None for k in self._seen if k[1] >= floor}
        self._lost = {at: None for at in self._lost if at >= floor}
        while self._recent and self._recent[0][0] < floor:
            self._recent.popleft()

    def _device_targets(self, tenant: str, device_id: str) -> list[Listener]:
        found = [*self._fleet.get(tenant, ()), *self._fleet.get(None, ())]
        found += [x for x in self._by_device.get(device_id, ()) if x.sees(tenant)]
        return found

    def _new_rollouts(self, changes: Iterable[RolloutChange]) -> set[tuple[int, str | None]]:
        """The rollouts to read: changed ones someone watches, and those new listeners watch."""
        wanted: set[tuple[int, str | None]] = set()
        for c in changes:
            key = (c.id, c.updated_at)
            self._rollout_cursor = max(self._rollout_cursor, c.updated_at)
            if key in self._seen_rollouts:
                continue
            self._seen_rollouts[key] = None
            if any(x.sees(c.tenant) for x in self._by_rollout.get(c.id, ())):
                wanted.add((c.id, c.tenant))
        floor = self._rollout_cursor - OVERLAP_S
        self._seen_rollouts = {k: None for k in self._seen_rollouts if k[1] >= floor}
        for rollout_id, group in self._by_rollout.items():
            for x in group:
                if x.fresh:  # asked once: an ID that is not the tenant's is not read again
                    x.fresh = False
                    wanted.add((rollout_id, x.tenant))
        return wanted if self._status is not None else set()

    def _summaries_due(self) -> bool:
        """Whether this tick reads the counts: someone shows them, and they were never read, or
        a device changed or a console joined since the last read, at least SUMMARY_EVERY_S ago
        (a change not due yet stays for a later tick)."""
        if not self._fleet:
            return False
        if self._counts is None:
            return True
        waiting = any(x.fresh for group in self._fleet.values() for x in group)
        return (self._counts_dirty or waiting) and (
            time.monotonic() - self._counts_at >= SUMMARY_EVERY_S
        )

    def _read_views(
        self, rollouts: set[tuple[int, str | None]], summaries: bool
    ) -> tuple[list[RolloutStatus], dict[str | None, dict[str, Any]] | None]:
        statuses: list[RolloutStatus] = []
        status_of = self._status
        for rollout_id, tenant in rollouts:
            if status_of is None:
                break
            try:
                statuses.append(status_of(rollout_id, tenant))
            except Exception as e:  # not the tenant's (NotFound), or the database is away
                log.info("event=live_rollout_unread rollout=%d why=%s", rollout_id, e)
        if not summaries:
            return statuses, None
        return statuses, {t: summary_event(c) for t, c in self._summaries().items()}

    def _deliver_rollout(self, status: RolloutStatus) -> None:
        frame = self._frame("rollout", rollout_event(status))
        for x in list(self._by_rollout.get(status.id, ())):
            if x.sees(status.tenant):  # the rollout's own tenant, whoever asked for it
                self._put(x, frame)

    def _counts_of(self, tenant: str | None) -> dict[str, Any]:
        counts = self._counts or {}
        return counts[tenant] if tenant in counts else empty_summary()

    def _deliver_summaries(self, counts: dict[str | None, dict[str, Any]]) -> None:
        """Each listened tenant's counts to its listeners: to all if they changed since the
        last read, else to those that have none yet."""
        before = self._counts
        self._counts = counts
        for tenant, group in list(self._fleet.items()):
            data = self._counts_of(tenant)
            changed = before is None or data != (
                before[tenant] if tenant in before else empty_summary()
            )
            targets = [x for x in group if changed or x.fresh]
            if not targets:
                continue
            frame = self._frame("summary", data)
            for x in targets:
                x.fresh = False
                self._put(x, frame)


def feed_of(state: Any, make: Callable[[], LiveFeed]) -> LiveFeed:
    """The process's feed, kept on the app's `state` (made by `make` on first use)."""
    feed: LiveFeed | None = getattr(state, "console_live_feed", None)
    if feed is None:
        feed = make()
        state.console_live_feed = feed
    return feed
