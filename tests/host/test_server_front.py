"""The device API and OTA downloads are answered in front of the framework (app.QlinkApi): a
failure there is still the JSON 500 the framework gives, logged once; the framework's own
routes keep their error handling."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio.from_thread
import httpx
import pytest

from host.server.app import QlinkApi, create_app
from host.server.application import Application
from host.server.policy import MemoryPolicy
from host.server.settings import Settings

INTERNAL = {"error": "internal", "detail": "the server failed; retry later or see its log"}
HELLO = {"device_id": "a" * 64, "public_key": "04" + "b" * 128}


@pytest.fixture
def env(tmp_path: Any) -> Iterator[tuple[Any, QlinkApi, httpx.AsyncClient, str]]:
    settings = Settings(data_dir=tmp_path, max_body_bytes=4096)
    app = create_app(settings, policy=MemoryPolicy())
    assert isinstance(app, QlinkApi)
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        reg = Application.for_operator(settings)
        token, _ = reg.create_token("ops", "default", "admin")
        reg.close()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="https://localhost",
        )
        yield portal, app, client, token
        portal.call(client.aclose)


def _failing(*_a: Any, **_k: Any) -> Any:
    raise RuntimeError("a fault no rule foresaw")


def _internal_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=internal_error" in r.getMessage()]


def test_a_device_request_that_fails_is_a_json_500_logged_once(
    env: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    portal, app, client, _token = env
    monkeypatch.setattr(app.state.application.onboarding, "hello", _failing)
    with caplog.at_level(logging.ERROR, logger="qlink.server"):
        r = portal.call(lambda: client.post("/v1/onboard/hello", json=HELLO))
    assert r.status_code == 500 and r.json() == INTERNAL
    assert _internal_errors(caplog) == ["event=internal_error type=RuntimeError"]
    assert "a fault no rule foresaw" not in r.text


def test_a_framework_route_that_fails_is_logged_once_too(
    env: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    portal, app, client, token = env
    monkeypatch.setattr(app.state.application, "devices", _failing)
    headers = {"Authorization": f"Bearer {token}"}
    with caplog.at_level(logging.ERROR, logger="qlink.server"):
        r = portal.call(lambda: client.get("/v1/admin/devices", headers=headers))
    assert r.status_code == 500 and r.json() == INTERNAL
    assert _internal_errors(caplog) == ["event=internal_error type=RuntimeError"]


def test_the_framework_still_serves_what_the_front_passes_on(env: Any) -> None:
    portal, _app, client, _token = env
    r = portal.call(lambda: client.get("/healthz"))
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    # The framework's body limit still answers its routes (the front's is the device one).
    r = portal.call(lambda: client.post("/v1/admin/batches", content=b"x" * 4097))
    assert r.status_code == 413 and r.json()["error"] == "too_large"
