"""The live feed over the real rollout store (host/server/console/live.py, docs/console.md "Live
updates"): a device's OTA event, taken in by the event intake and moved forward in the store,
reaches the rollout's page as a `rollout` event with the new counts and the device's row; a
listener of another tenant that asks for the same rollout gets nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_live import frames, of, ticks, until
from test_ota_rollouts import ALICE, Rig, make_rig

from host.server.console.live import Listener, LiveFeed
from host.server.console.pages_live import application_feed
from host.server.schemas import OTA_STATES

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path, devices=3)  # tenant acme, batch b, onboarded with OTA keys
    r.app.create_tenant("globex")
    yield r
    r.app.close()


def counts(**nonzero: int) -> dict[str, int]:
    return {**dict.fromkeys(OTA_STATES, 0), **nonzero}


async def next_rollout(feed: LiveFeed, listener: Listener) -> dict[str, Any]:
    """The listener's next `rollout` event (the last, if several were waiting)."""
    got: list[Any] = []

    def arrived() -> bool:
        got.extend(of("rollout", frames(listener)))
        return bool(got)

    await until(arrived, timeout=5)
    data: dict[str, Any] = got[-1].data
    return data


async def test_a_devices_ota_event_reaches_its_rollout_page_with_the_new_counts(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", tenant="acme", actor=ALICE)
    devices = sorted(d.device_id for d in out.devices)
    assert len(devices) == 3 and out.counts == counts(offered=3)
    feed = application_feed(rig.app)
    feed.interval_s = 0.05
    mine = feed.subscribe("acme", rollout=out.id)
    foreign = feed.subscribe("globex", rollout=out.id)  # guessed another tenant's rollout ID
    try:
        # A new listener is sent the rollout as it is now, whether or not it changed.
        first = await next_rollout(feed, mine)
        assert first == {
            "id": out.id,
            "state": "active",
            "counts": counts(offered=3),
            "devices": [{"id": d, "state": "offered", "reason": None} for d in devices],
        }

        moved = devices[1]
        rig.ota(moved, "downloading")  # through the event intake, as the broker delivers it
        got = await next_rollout(feed, mine)
        assert (got["id"], got["state"]) == (out.id, "active")
        assert got["counts"] == counts(offered=2, downloading=1)
        assert {d["id"]: d["state"] for d in got["devices"]} == {
            devices[0]: "offered",
            moved: "downloading",
            devices[2]: "offered",
        }

        rig.ota(moved, "committed")
        got = await next_rollout(feed, mine)
        assert got["counts"] == counts(offered=2, committed=1)
        assert {"id": moved, "state": "committed", "reason": None} in got["devices"]

        # A failure carries its reason and halts the rollout (max failures 0).
        rig.ota(devices[0], "rolled_back", reason="boot_failed")
        got = await next_rollout(feed, mine)
        assert got["state"] == "halted"
        assert got["counts"] == counts(offered=1, committed=1, rolled_back=1)
        assert {"id": devices[0], "state": "rolled_back", "reason": "boot_failed"} in got["devices"]

        # The other tenant's listener was read for once (refused: not its rollout) and is
        # never sent this rollout, not even after its changes.
        await ticks(feed, 3)
        assert frames(foreign) == []
    finally:
        feed.unsubscribe(mine)
        feed.unsubscribe(foreign)
    assert not feed.running


async def test_a_rollout_event_is_sent_only_when_something_changed(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", tenant="acme", actor=ALICE)
    feed = application_feed(rig.app)
    feed.interval_s = 0.05
    mine = feed.subscribe("acme", rollout=out.id)
    try:
        await next_rollout(feed, mine)
        # A repeated event (QoS 1 delivers at least once) does not move the row: nothing new.
        target = out.devices[0].device_id
        rig.ota(target, "staged")
        await next_rollout(feed, mine)
        stamp = time.time()
        rig.ota(target, "downloading")  # backwards: ignored by the store
        await ticks(feed, 3)
        assert of("rollout", frames(mine)) == []
        assert max(d.updated_at for d in rig.app.rollouts.status(out.id).devices) < stamp
    finally:
        feed.unsubscribe(mine)
