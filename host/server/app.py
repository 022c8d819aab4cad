"""The ASGI app and the process around it: broker, policy driver, telemetry, uvicorn over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from host.server.broker import ManagedBroker
from host.server.ca import CertificateAuthority
from host.server.files import atomic_write
from host.server.onboarding import BrokerEndpoint, Onboarding, error_response, router
from host.server.policy import PolicyDriver
from host.server.policy.mosquitto import MosquittoDynsec
from host.server.registry import Registry
from host.server.settings import Settings
from host.server.telemetry import TelemetrySubscriber

log = logging.getLogger("qlink.server")


def create_app(settings: Settings, *, policy: PolicyDriver | None = None) -> FastAPI:
    """The server app. With `policy` given (tests), no broker or telemetry is started and the
    broker endpoint in answers is `settings.public_host:settings.broker_port`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ca = CertificateAuthority.load_or_create(settings.ca_dir, settings.public_host)
        registry = Registry(settings.db_path)
        broker: ManagedBroker | None = None
        telemetry: TelemetrySubscriber | None = None
        driver = policy
        try:
            if driver is None:
                broker = ManagedBroker(
                    settings.broker_dir, ca, settings.bind_host, settings.broker_port
                )
                await asyncio.to_thread(broker.start)
                driver = await asyncio.to_thread(
                    MosquittoDynsec, ca, settings.bind_host, broker.port
                )
                telemetry = await asyncio.to_thread(
                    TelemetrySubscriber, registry, ca, settings.bind_host, broker.port
                )
            port = broker.port if broker else settings.broker_port
            app.state.broker_port = port
            app.state.onboarding = Onboarding(
                settings, registry, ca, driver, BrokerEndpoint(settings.public_host, port)
            )
            yield
        finally:
            if telemetry is not None:
                telemetry.close()
            if driver is not None and policy is None:
                driver.close()
            if broker is not None:
                broker.stop()
            registry.close()

    app = FastAPI(
        title="qlink",
        version=version("qlink"),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(router)

    @app.exception_handler(HTTPException)
    async def _http_error(_r: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "bad_request"
        if exc.status_code == 405:
            code = "method_not_allowed"
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal_error(_r: Request, exc: Exception) -> JSONResponse:
        log.error("event=internal_error type=%s", type(exc).__name__, exc_info=exc)
        return error_response(500, "internal", "the server failed; retry later or see its log")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM once it has shut down, which ends the process before any
    code after `serve()` runs: `server.json` goes away as the shutdown begins instead."""

    def __init__(self, config: uvicorn.Config, announcement: Path) -> None:
        super().__init__(config)
        self.announcement = announcement

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.announcement.unlink()
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    """Run the server until SIGTERM/SIGINT; `server.json` tells others where it listens."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        settings.server_json.unlink()
    ca = CertificateAuthority.load_or_create(settings.ca_dir, settings.public_host)
    sock = _listen(settings.bind_host, settings.api_port)
    api_port = int(sock.getsockname()[1])
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        ssl_certfile=str(ca.cert_path("server")),
        ssl_keyfile=str(ca.key_path("server")),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _Server(config, settings.server_json)

    async def announce() -> None:
        # uvicorn has no readiness event; its `started` flag flips once it accepts connections.
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.02)
        info = {
            "api_url": f"https://{settings.public_host}:{api_port}",
            "api_port": api_port,
            "broker_host": settings.public_host,
            "broker_port": app.state.broker_port,
            "pid": os.getpid(),
        }
        atomic_write(settings.server_json, json.dumps(info).encode())
        log.info("event=server_ready api_port=%d broker_port=%d", api_port, info["broker_port"])

    async def main() -> None:
        watcher = asyncio.create_task(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()
            with contextlib.suppress(FileNotFoundError):
                settings.server_json.unlink()

    try:
        asyncio.run(main())
    finally:
        sock.close()
    if not server.started:
        raise SystemExit(1)
