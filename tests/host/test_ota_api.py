"""The device API's OTA routes (host/server/otaapi.py, docs/ota.md "Device API"): the head
document for a device with an open offer, and the payload whole or by byte range."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal
from apiutil import in_process
from test_ota_rollouts import ALICE, Rig, make_rig

from host.server.otaapi import CHUNK, Unsatisfiable, byte_range
from host.server.policy import MemoryPolicy
from host.server.releases import decrypt_payload, parse_manifest, unwrap_key
from host.server.settings import Settings


@dataclass
class Env:
    rig: Rig  # the test's own application over the server's data directory
    portal: BlockingPortal
    client: httpx.AsyncClient
    rollout: int
    offered: list[str]
    outside: list[str]

    def get(self, path: str, **headers: str) -> httpx.Response:
        return self.portal.call(lambda: self.client.get(path, headers=headers))

    def head(self, device: str, release: str | None = None) -> httpx.Response:
        return self.get(f"/v1/ota/{release or self.rig.release}/head?device={device}")

    def payload(self, rng: str | None = None, release: str | None = None) -> httpx.Response:
        headers = {} if rng is None else {"Range": rng}
        return self.get(f"/v1/ota/{release or self.rig.release}/payload", **headers)

    def served(self) -> int:
        return self.rig.app.releases.release(self.rig.release).bytes_served

    @property
    def file(self) -> bytes:
        return self.rig.app.releases.payload_path(self.rig.release).read_bytes()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    rig = make_rig(tmp_path, devices=4)
    out = rig.app.rollouts.create(rig.release, "b", 50, actor=ALICE)
    offered = [d.device_id for d in out.devices]
    outside = [d for d in rig.ids if d not in offered]
    with in_process(Settings(data_dir=tmp_path), MemoryPolicy()) as (portal, client):
        yield Env(rig, portal, client, out.id, offered, outside)
    rig.app.close()


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]


# -- head ------------------------------------------------------------------------------------------
def test_head_gives_the_manifest_and_a_wrap_only_the_device_opens(env: Env) -> None:
    device = env.offered[0]
    r = env.head(device)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    assert int(r.headers["content-length"]) == len(r.content)
    assert set(doc) == {"release", "manifest", "signature", "signer_b64", "payload_size", "wrap"}
    assert doc["release"] == env.rig.release and doc["payload_size"] == len(env.file)
    assert parse_manifest(doc["manifest"].encode()).release_id == env.rig.release
    assert len(bytes.fromhex(doc["signature"])) == 64
    # The wrapped key opens the payload for this device, and for no other.
    ck = unwrap_key(env.rig.release, device, env.rig.keys[device], doc["wrap"])
    assert decrypt_payload(env.rig.release, ck, env.file).endswith(b"\n")
    with pytest.raises(Exception, match="does not hold"):
        unwrap_key(env.rig.release, device, env.rig.keys[env.offered[1]], doc["wrap"])
    assert env.rig.states(env.rollout)[device] == "downloading"
    [ev] = env.rig.app.audit(action="ota.device_downloading")
    assert ev.target == f"device:{device}" and ev.source == "device-api"


def test_head_of_an_unknown_release_is_404_unknown_release(env: Env) -> None:
    for release in ("unix-9.9.9", "%2e%2e", "x" * 300):
        r = env.head(env.offered[0], release)
        assert error(r) == (404, "unknown_release"), release
    assert env.rig.states(env.rollout)[env.offered[0]] == "offered"


def test_head_for_a_device_without_an_open_offer_is_404_not_offered(env: Env) -> None:
    assert error(env.head(env.outside[0])) == (404, "not_offered")  # not in the share
    assert error(env.head("ab" * 32)) == (404, "not_offered")  # no such device
    env.rig.ota(env.offered[1], "committed")
    assert error(env.head(env.offered[1])) == (404, "not_offered")  # its offer ended
    env.rig.app.rollouts.abort(env.rollout, actor=ALICE)
    assert error(env.head(env.offered[0])) == (404, "not_offered")  # the rollout ended
    assert env.rig.states(env.rollout)[env.offered[0]] == "offered"


def test_head_while_paused_still_answers_an_open_offer(env: Env) -> None:
    env.rig.app.rollouts.pause(env.rollout, actor=ALICE)
    assert env.head(env.offered[0]).status_code == 200


def test_head_for_a_device_whose_ota_key_is_gone_is_409_no_ota_key(env: Env) -> None:
    device = env.offered[0]
    env.rig.app.store.db.write_one(
        "UPDATE devices SET ota_key = NULL WHERE device_id = :d", {"d": device}
    )
    r = env.head(device)
    assert error(r) == (409, "no_ota_key")
    assert "OTA key" in r.json()["detail"]
    assert env.rig.states(env.rollout)[device] == "offered"


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?device=",
        "?device=xyz",
        "?device=" + "ab" * 31,
        "?device=a&device=b",
        "?dev=" + "a" * 64,
    ],
)
def test_head_without_one_device_id_is_400(env: Env, query: str) -> None:
    r = env.get(f"/v1/ota/{env.rig.release}/head{query}")
    assert error(r) == (400, "bad_request")


def test_another_method_is_405(env: Env) -> None:
    for leaf in ("head", "payload"):
        url = f"/v1/ota/{env.rig.release}/{leaf}?device={env.offered[0]}"
        r = env.portal.call(env.client.post, url)
        assert error(r) == (405, "method_not_allowed") and r.headers["allow"] == "GET"


def test_a_path_beside_the_ota_routes_goes_to_the_framework(env: Env) -> None:
    for path in ("/v1/ota/x/other", "/v1/ota//head", f"/v1/ota/{env.rig.release}/head/x"):
        assert error(env.get(path)) == (404, "not_found")


# -- payload ---------------------------------------------------------------------------------------
def test_the_whole_payload_is_200_with_its_length_and_counted(env: Env) -> None:
    whole = env.file
    assert len(whole) > 2 * CHUNK  # several chunks: the stream is put together right
    r = env.payload()
    assert r.status_code == 200 and r.content == whole
    assert int(r.headers["content-length"]) == len(whole)
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["accept-ranges"] == "bytes" and "content-range" not in r.headers
    assert env.served() == len(whole)


def test_a_download_resumes_from_an_offset(env: Env) -> None:
    whole = env.file
    n = CHUNK + 1000
    r = env.payload(f"bytes={n}-")
    assert r.status_code == 206 and r.content == whole[n:]
    assert r.headers["content-range"] == f"bytes {n}-{len(whole) - 1}/{len(whole)}"
    assert int(r.headers["content-length"]) == len(whole) - n
    last = env.payload(f"bytes={len(whole) - 1}-")
    assert (last.status_code, last.content) == (206, whole[-1:])
    assert env.served() == len(whole) - n + 1


def test_a_closed_range_is_206_and_clamped_to_the_end(env: Env) -> None:
    whole = env.file
    r = env.payload("bytes=10-1033")
    assert r.status_code == 206 and r.content == whole[10:1034]
    assert r.headers["content-range"] == f"bytes 10-1033/{len(whole)}"
    past = env.payload(f"bytes=5-{len(whole) + 100}")
    assert past.status_code == 206 and past.content == whole[5:]
    suffix = env.payload("bytes=-32")
    assert suffix.status_code == 206 and suffix.content == whole[-32:]
    assert env.served() == 1024 + len(whole) - 5 + 32


@pytest.mark.parametrize("rng", ["bytes={size}-", "bytes={size}-{big}", "bytes=9-3", "bytes=-0"])
def test_an_unsatisfiable_range_is_416_and_counts_nothing(env: Env, rng: str) -> None:
    size = len(env.file)
    r = env.payload(rng.format(size=size, big=size + 10))
    assert error(r) == (416, "range_not_satisfiable")
    assert r.headers["content-range"] == f"bytes */{size}"
    assert env.served() == 0


def test_a_range_that_is_not_one_byte_range_is_ignored(env: Env) -> None:
    for rng in ("items=0-5", "bytes=0-5,10-20", "bytes=x-"):
        r = env.payload(rng)
        assert r.status_code == 200 and r.content == env.file, rng


def test_the_payload_of_an_unknown_release_is_404(env: Env) -> None:
    for release in ("unix-9.9.9", "%2e%2e", "x" * 300):
        assert error(env.payload(release=release)) == (404, "unknown_release")


def test_the_payload_needs_no_offer(env: Env) -> None:
    """It is the same for every device and useless without a wrapped key."""
    env.rig.app.rollouts.abort(env.rollout, actor=ALICE)
    assert env.payload("bytes=0-15").status_code == 206


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        (b"bytes=0-", 100, (0, 99)),
        (b"bytes=99-", 100, (99, 99)),
        (b"bytes=0-0", 100, (0, 0)),
        (b"bytes=10-200", 100, (10, 99)),
        (b"bytes=-10", 100, (90, 99)),
        (b"bytes=-500", 100, (0, 99)),
        (b"Bytes=1-2", 100, (1, 2)),  # the unit is case-insensitive (RFC 9110 14.1)
        (b"bytes=-", 100, None),
        (b"bytes=1-2,5-6", 100, None),
        (b"bits=1-2", 100, None),
        (b"bytes=" + b"9" * 30 + b"-", 100, None),  # not a number we parse: ignored
    ],
)
def test_byte_range(header: bytes | None, size: int, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [(b"bytes=100-", 100), (b"bytes=5-4", 100), (b"bytes=-0", 100), (b"bytes=0-", 0)],
)
def test_byte_range_unsatisfiable(header: bytes, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        byte_range(header, size)


def test_the_ota_routes_are_in_the_openapi_schema(env: Env) -> None:
    doc = env.get("/openapi.json").json()
    head = doc["paths"]["/v1/ota/{release}/head"]["get"]
    assert {"200", "400", "404", "409"} <= set(head["responses"])
    ref = head["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    payload = doc["paths"]["/v1/ota/{release}/payload"]["get"]
    assert {"200", "206", "404", "416"} <= set(payload["responses"])
    assert json.dumps(doc)  # the whole schema stays JSON
