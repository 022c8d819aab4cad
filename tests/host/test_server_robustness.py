"""Bad requests get a 4xx with a sentence, never a 5xx: huge bodies, slow bodies, malformed
JSON, wrong types, unknown fields (device API and operator API)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio.from_thread
import httpx
import pytest

from host.server.app import create_app
from host.server.application import Application
from host.server.policy import MemoryPolicy
from host.server.settings import Settings


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, httpx.AsyncClient, str]]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("rob"),
        max_body_bytes=64 * 1024,
        max_device_body_bytes=2048,
        body_timeout_s=0.5,
    )
    app = create_app(settings, policy=MemoryPolicy())
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        reg = Application.for_operator(settings)
        reg.create_tenant("acme")
        token, _ = reg.create_token("rob", "acme", "admin")
        reg.close()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://localhost"
        )
        yield portal, client, token
        portal.call(client.aclose)


def call(env: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    portal, client, token = env
    kw.setdefault("headers", {})["Authorization"] = f"Bearer {token}"
    return portal.call(lambda: client.request(method, path, **kw))


def four_xx(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and len(body["detail"]) > 10


@pytest.mark.parametrize("path", ["/v1/onboard/hello", "/v1/onboard/proof"])
def test_device_body_over_limit_is_413(env: Any, path: str) -> None:
    four_xx(call(env, "POST", path, content=b"{" + b" " * 4096 + b"}"), 413, "too_large")


def test_operator_body_over_limit_is_413(env: Any) -> None:
    big = {"format": "csv", "data": "x" * 70_000}
    four_xx(call(env, "POST", "/v1/admin/batches/b/import", json=big), 413, "too_large")


def test_streamed_body_over_limit_is_413(env: Any) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1024

    four_xx(call(env, "POST", "/v1/onboard/hello", content=chunks()), 413, "too_large")


def test_console_body_over_limit_is_a_413_page_not_json(env: Any) -> None:
    """A console form over the limit gets the console's own page (its headers, a sentence with
    the limit in MiB, a link back); the API paths beside it keep their JSON answer."""
    portal, client, _ = env
    declared = portal.call(
        lambda: client.post("/console/login", content=b"name=x&password=" + b"y" * 70_000)
    )

    async def chunks() -> AsyncIterator[bytes]:
        yield b"name=x&password="
        for _ in range(70):
            yield b"y" * 1024

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    streamed = portal.call(lambda: client.post("/console/login", content=chunks(), headers=form))
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert r.headers["content-type"].startswith("text/html")
        assert "at most 0.0625 MiB" in r.text and "Nothing was changed" in r.text
        assert '<a href="/console/">Back to the dashboard</a>' in r.text
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        assert r.headers["cache-control"] == "no-store"
    assert declared.headers["connection"] == "close"  # the body was never read
    api = call(env, "POST", "/v1/admin/batches/b/import", content=b" " * 70_000)
    four_xx(api, 413, "too_large")


def test_a_slow_console_form_is_a_408_page(env: Any) -> None:
    portal, client, _ = env

    async def slow() -> AsyncIterator[bytes]:
        yield b"name=x"
        await asyncio.sleep(1.0)
        yield b"&password=y"

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = portal.call(lambda: client.post("/console/login", content=slow(), headers=form))
    assert r.status_code == 408 and r.headers["content-type"].startswith("text/html")
    assert "did not arrive within 0.5 s" in r.text


def test_slow_body_is_408(env: Any) -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b'{"device_id": '
        await asyncio.sleep(1.0)
        yield b'"x"}'

    four_xx(call(env, "POST", "/v1/onboard/hello", content=slow()), 408, "timeout")
    four_xx(call(env, "POST", "/v1/admin/batches", content=slow()), 408, "timeout")


@pytest.mark.parametrize("path", ["/v1/onboard/hello", "/v1/admin/batches"])
@pytest.mark.parametrize("declared", ["x", "-5"])
def test_bad_content_length_is_400(env: Any, path: str, declared: str) -> None:
    r = call(env, "POST", path, content=b"{}", headers={"content-length": declared})
    four_xx(r, 400, "bad_request")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/admin/batches", b"{nope"),
        ("/v1/admin/batches", b'{"name": 5}'),
        ("/v1/admin/batches", b'{"name": "ok", "color": "red"}'),
        ("/v1/admin/batches", b'{"name": ""}'),
        ("/v1/admin/batches", b'{"name": "ok", "policy": "nope"}'),
        ("/v1/admin/batches", b"[]"),
        ("/v1/admin/batches", b"\xff\xfe"),
        ("/v1/admin/tokens", b'{"name": "a", "role": "root"}'),
        ("/v1/admin/batches/x/import", b'{"format": "xml", "data": ""}'),
        ("/v1/admin/batches/x/state", b'{"active": "yes"}'),
        ("/v1/onboard/hello", b'{"device_id": [], "public_key": {}}'),
        ("/v1/onboard/proof", b"null"),
    ],
    ids=[
        "not_json",
        "name_int",
        "unknown_field",
        "empty_name",
        "bad_policy",
        "array",
        "not_utf8",
        "bad_role",
        "bad_format",
        "bool_as_string",
        "hello_types",
        "proof_null",
    ],
)
def test_malformed_requests_are_400(env: Any, path: str, body: bytes) -> None:
    r = call(env, "POST", path, content=body, headers={"content-type": "application/json"})
    four_xx(r, 400, "bad_request")


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=99999999", "offset=-1"], ids=str)
def test_bad_query_parameters_are_400(env: Any, query: str) -> None:
    four_xx(call(env, "GET", f"/v1/admin/devices?{query}"), 400, "bad_request")


def test_import_format_error_is_400(env: Any) -> None:
    call(env, "POST", "/v1/admin/batches", json={"name": "fmt"})
    r = call(env, "POST", "/v1/admin/batches/fmt/import", json={"format": "json", "data": "{nope"})
    four_xx(r, 400, "bad_request")
    assert "line 1" in r.json()["detail"]


def test_wrong_method_is_405(env: Any) -> None:
    four_xx(call(env, "GET", "/v1/onboard/hello"), 405, "method_not_allowed")


def test_openapi_schema_is_served(env: Any) -> None:
    doc = call(env, "GET", "/openapi.json").json()
    assert "/v1/onboard/proof" in doc["paths"] and "/v1/admin/batches" in doc["paths"]


def test_device_routes_are_documented_from_their_one_table(env: Any) -> None:
    from host.server.deviceapi import ROUTES

    doc = call(env, "GET", "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path, route in ROUTES.items():
        post = doc["paths"][path]["post"]
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{route.request.__name__}"
        assert set(schemas[route.request.__name__]["properties"]) == set(route.request.model_fields)
        answer = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert answer.rsplit("/", 1)[1] in schemas
        assert {"400", "405", "408", "413"} <= set(post["responses"])
        assert list(doc["paths"][path]) == ["post"]


def test_a_path_beside_the_device_routes_goes_to_the_framework(env: Any) -> None:
    for path in ("/v1/onboard/hello/", "/v1/onboard/other"):
        r = call(env, "POST", path, json={})
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
