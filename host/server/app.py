"""The ASGI app and the process around it: broker, telemetry, uvicorn (one or more workers)
over TLS.

The main process owns the broker and the telemetry and event subscriptions (the event intake
of every external Mosquitto target too: host/server/intakes.py); each uvicorn worker (the main
process itself when there is one) serves the API with its own database pool and its own
policy-driver connection to the broker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException

from host.server import ServerError
from host.server.admin import ApiError, ca_router
from host.server.admin import router as admin_router
from host.server.application import Application
from host.server.broker import ADMIN_HOST, ManagedBroker, die_with_parent
from host.server.ca import CertificateAuthority
from host.server.challenge import load_or_create_key
from host.server.datadir import lock_data_dir
from host.server.deviceapi import DeviceApi, openapi_paths
from host.server.events import EventIntake
from host.server.files import atomic_write
from host.server.intakes import TargetIntakes
from host.server.limits import App, Receive, RequestLimits, Scope, Send, send_json
from host.server.oneflush import OneFlushHttp
from host.server.otaapi import OtaApi
from host.server.otaapi import openapi_paths as ota_openapi_paths
from host.server.policy import Policies, PolicyDriver
from host.server.policy.mosquitto import POLICY_NAME, MosquittoDynsec
from host.server.settings import Settings
from host.server.store import Store
from host.server.targets import TargetService
from host.server.telemetry import TelemetrySubscriber

log = logging.getLogger("qlink.server")
ENV_WORKER_SETTINGS = "QLINK_WORKER_SETTINGS"
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
}


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request does not match the API schema"


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


class QlinkApi(FastAPI):
    """The FastAPI app with `front` (the device API and OTA downloads) answering in front of
    the framework: Starlette's middleware stack (error pages, the body limits of RequestLimits)
    and routing cost a device request more than its answer. `front` passes every other request
    to `framework`, the app as FastAPI serves it. An exception in `front` before its answer
    began is the same JSON 500 the framework gives (its handler is not in that path)."""

    front: App | None = None

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_FRAMEWORK] = True  # its errors are its own (ServerErrorMiddleware answers them)
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # what Starlette sets: the front finds app.state through it
        try:
            await self.front(scope, receive, send)
        except Exception as e:
            if scope.get(_FRAMEWORK):
                raise
            log.error("event=internal_error type=%s", type(e).__name__, exc_info=e)
            try:
                await send_json(send, 500, _INTERNAL)
            except Exception:
                raise e from None  # the answer had begun: the server closes the connection


_FRAMEWORK = "qlink.framework"
_INTERNAL = {"error": "internal", "detail": "the server failed; retry later or see its log"}


def create_app(
    settings: Settings,
    *,
    policy: PolicyDriver | None = None,
    broker_port: int | None = None,
    admin_port: int = 0,
) -> FastAPI:
    """The server app. With `policy` given (tests), no broker is used and the broker endpoint in
    answers is `settings.public_host:settings.broker_port`; else the app connects its policy
    driver to the admin listener (`admin_port`) of the broker whose devices' listener is
    `broker_port` (see `serve`). The application
    (host/server/application.py) is built at start, as `app.state.application`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        port = broker_port if broker_port is not None else settings.broker_port
        application = Application.for_server(
            settings, broker_port=port, admin_port=admin_port, policy=policy
        )
        try:
            app.state.broker_port = port
            app.state.application = application
            yield
        finally:
            if policy is not None:  # the caller's driver: the caller closes it
                application.policies.drivers.pop("mosquitto", None)
            application.close()

    app = QlinkApi(
        title="qlink",
        version=version("qlink"),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.include_router(admin_router)
    app.include_router(ca_router)
    from host.server.console.web import too_large_page

    app.add_middleware(
        RequestLimits,
        max_body=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        pages={"/console": too_large_page(settings.max_body_bytes)},  # a page, not JSON
    )
    # Device requests and OTA downloads are answered in front of the framework (QlinkApi).
    app.front = OtaApi(
        DeviceApi(
            app.framework,
            max_body=settings.max_device_body_bytes,
            body_timeout_s=settings.body_timeout_s,
        )
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            paths, components = openapi_paths()
            ota_paths, ota_components = ota_openapi_paths()
            schema["paths"] = {**paths, **ota_paths, **schema.get("paths", {})}
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, body in {**components, **ota_components}.items():
                schemas.setdefault(name, body)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "bad_request", _validation_detail(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(_r: Request, exc: HTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "bad_request")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal_error(_r: Request, exc: Exception) -> JSONResponse:
        log.error("event=internal_error type=%s", type(exc).__name__, exc_info=exc)
        return JSONResponse(_INTERNAL, status_code=500)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Imported here: Jinja2 and the pages load with the server, never with a `qlink` command.
    from host.server.console import console_app

    app.mount("/console", console_app(), name="console")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=303)

    return app


def worker_app() -> FastAPI:
    """The app of one uvicorn worker process (several workers): settings come from the env."""
    raw = json.loads(os.environ[ENV_WORKER_SETTINGS])
    port = int(raw.pop("_broker_port"))
    admin_port = int(raw.pop("_broker_admin_port"))
    die_with_parent()  # a worker must not outlive its main process (kill -9 of the server)
    configure_logging()
    return create_app(Settings(**raw), broker_port=port, admin_port=admin_port)


_BIND_ERRORS = {
    errno.EADDRINUSE: "port {port} on {host} is in use by another program; "
    "choose another with --port",
    errno.EACCES: "port {port} on {host} needs privileges this user lacks; "
    "choose a port above 1023 with --port",
    errno.EADDRNOTAVAIL: "{host} is not an address of this machine; choose another with --bind",
}


def _listen(host: str, port: int) -> socket.socket:
    # proto IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP, and accepted sockets inherit it. Without it uvicorn's answer head and body leave
    # in two segments and the body waits for the client's delayed ACK (about 40 ms a request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        log.error("event=listen_failed host=%s port=%d error=%r", host, port, e.strerror)
        if isinstance(e, socket.gaierror):  # a name that does not resolve, or no IPv4 one
            raise ServerError(
                f"cannot listen on {host}: {e.strerror}; --bind takes an address of this machine"
            ) from None
        why = _BIND_ERRORS.get(e.errno or 0)
        if why is None:
            raise
        raise ServerError(why.format(host=host, port=port)) from None
    sock.listen(1024)
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
    code after `serve()` runs: `server.json` goes away as the shutdown begins instead.

    It re-raises SIGINT too, but asyncio may then finish its main task before the interrupt
    reaches it, and the process would exit 0: `interrupted` lets `serve` end as Ctrl-C should
    (KeyboardInterrupt, exit 130) either way."""

    def __init__(self, config: uvicorn.Config, on_shutdown: list[object]) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown
        self.interrupted = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT:
            self.interrupted = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for fn in self.on_shutdown:
            fn()  # type: ignore[operator]
        await super().shutdown(sockets)


def _wait_ready(url: str, ca: CertificateAuthority, stop: threading.Event) -> bool:
    """Poll /healthz over TLS until it answers (uvicorn has no readiness event for workers)."""
    ctx = ssl.create_default_context(cafile=str(ca.bundle_path))
    ctx.check_hostname = False
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url + "/healthz", context=ctx, timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _refresh_crl(application: Application, broker: ManagedBroker, stop: threading.Event) -> None:
    """Re-sign the CRL before it expires (an expired CRL makes the broker refuse everyone)."""
    ca = application.ca
    while not stop.wait(_CRL_CHECK_S):
        try:
            before = ca.crl_path.read_bytes() if ca.crl_path.exists() else b""
            if application.current_crl() != before:
                broker.reload()
        except Exception:  # keep refreshing; the next round retries
            log.exception("event=crl_refresh_failed")


_CRL_CHECK_S = 600.0


def serve(settings: Settings) -> None:
    """Run the server until SIGTERM/SIGINT; `server.json` tells others where it listens.

    The data directory's lock comes first and lasts as long as the server: a second server on
    the same directory stops there, before it touches the running one's `server.json`, CA,
    registry or broker (see host/server/datadir.py)."""
    with lock_data_dir(settings.data_dir):
        _serve(settings)


def _reenrol_policy(main: Application) -> Callable[[str], None]:
    """The re-enrolment policy: a device past the PUF drift threshold is commanded to
    re-enrol. Sent from a thread of its own: the event intake's network thread, which calls
    this, must not wait for the broker's acknowledgement of its own publish."""
    from host.server.store import Actor

    policy = Actor("policy:puf-drift", "server")

    def reenrol(device_id: str) -> None:
        try:
            main.reenrol(device_id, actor=policy)
        except ServerError as e:
            log.warning("event=reenrol_policy_failed device=%s why=%s", device_id, e)

    return lambda device_id: threading.Thread(
        target=reenrol, args=(device_id,), name="reenrol", daemon=True
    ).start()


def _serve(settings: Settings) -> None:
    with contextlib.suppress(FileNotFoundError):
        settings.server_json.unlink()
    ca = CertificateAuthority.load_or_create(settings.ca_dir, settings.public_host, settings.hsm)
    store = Store(settings.database)  # migrates once, before any worker starts
    main = Application(settings, store, ca=ca)  # the main process's: CRL, denials, telemetry
    main.publish_crl()  # the broker's crlfile: fresh and complete before it starts
    sock = _listen(settings.bind_host, settings.api_port)
    api_port = int(sock.getsockname()[1])
    broker = ManagedBroker(settings.broker_dir, ca, settings.bind_host, settings.broker_port)
    broker.start()  # in the main thread: see ManagedBroker.start
    telemetry: TelemetrySubscriber | None = None
    events: EventIntake | None = None
    intakes: TargetIntakes | None = None
    stop = threading.Event()
    stopped: list[bool] = []

    def unannounce() -> None:
        stop.set()
        with contextlib.suppress(FileNotFoundError):
            settings.server_json.unlink()

    def stop_broker() -> None:
        if not stopped:
            stopped.append(True)
            if telemetry is not None:
                telemetry.close()
            if events is not None:
                events.close()
            if intakes is not None:
                intakes.close()
            broker.stop()

    def announce() -> None:
        if not _wait_ready(f"https://127.0.0.1:{api_port}", ca, stop):
            return
        info = {
            "api_url": f"https://{settings.public_host}:{api_port}",
            "api_port": api_port,
            "broker_host": settings.public_host,
            "broker_port": broker.port,
            "broker_admin_port": broker.admin_port,
            "pid": os.getpid(),
            # What `qlink devices --drifting` lists by, unless it is given its own threshold.
            "puf_drift_pct": settings.puf_drift_pct,
        }
        if not stop.is_set():
            atomic_write(settings.server_json, json.dumps(info).encode())
            log.info("event=server_ready api_port=%d broker_port=%d", api_port, broker.port)
            log.info(
                "event=console url=https://%s:%d/console/ (users: qlink user create)",
                settings.public_host,
                api_port,
            )

    ssl_args: dict[str, Any] = {
        "ssl_certfile": str(ca.cert_path("server")),
        "ssl_keyfile": str(ca.key_path("server")),
        "log_config": None,
        "access_log": False,
        # httptools (a C parser; h11 is Python: 5-20 % fewer onboardings/s), each answer sent
        # in one write (host/server/oneflush.py)
        "http": OneFlushHttp,
        # No proxy in front by default: a client's X-Forwarded-For must not become the source
        # the audit log records.
        "proxy_headers": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 5,
        "timeout_keep_alive": 5,
        "backlog": 1024,
    }
    started = False
    try:
        # The key challenges are made and checked with, before any worker reads it.
        load_or_create_key(settings.challenge_key_path)
        # Once per start, before any worker serves: the broker's denials from the store.
        denials = Policies(
            {POLICY_NAME: MosquittoDynsec(ca, ADMIN_HOST, broker.admin_port)}, store.devices
        )
        try:
            applied = denials.reapply_denials(POLICY_NAME)
        finally:
            denials.close()
        if applied:
            log.info("event=policy_denials_applied devices=%d", applied)
        telemetry = TelemetrySubscriber(store.devices, ca, ADMIN_HOST, broker.admin_port)
        main.use_broker_admin_port(broker.admin_port)
        on_drift = _reenrol_policy(main) if settings.auto_reenrol else None
        events = EventIntake(
            store,
            ca,
            ADMIN_HOST,
            broker.admin_port,
            drift_pct=settings.puf_drift_pct,
            on_drift=on_drift,
            rollouts=main.rollouts,
        )
        intakes = TargetIntakes(
            store,
            ca,
            TargetService(settings, store),
            drift_pct=settings.puf_drift_pct,
            on_drift=on_drift,
            rollouts=main.rollouts,
        )
        intakes.refresh()  # every target known now is read before the server is announced
        threading.Thread(target=intakes.run, args=(stop,), name="intakes", daemon=True).start()
        threading.Thread(target=announce, name="announce", daemon=True).start()
        threading.Thread(
            target=_refresh_crl, args=(main, broker, stop), name="crl", daemon=True
        ).start()
        if settings.workers == 1:
            app = create_app(settings, broker_port=broker.port, admin_port=broker.admin_port)
            server = _Server(uvicorn.Config(app, **ssl_args), [unannounce, stop_broker])
            try:
                server.run(sockets=[sock])
            finally:
                started = server.started
            if server.interrupted:
                raise KeyboardInterrupt
        else:
            from uvicorn.supervisors import Multiprocess

            raw = {
                f.name: str(getattr(settings, f.name))
                if isinstance(getattr(settings, f.name), Path)
                else getattr(settings, f.name)
                for f in dataclasses.fields(settings)
            }
            os.environ[ENV_WORKER_SETTINGS] = json.dumps(
                {**raw, "_broker_port": broker.port, "_broker_admin_port": broker.admin_port}
            )
            config = uvicorn.Config(
                "host.server.app:worker_app", factory=True, workers=settings.workers, **ssl_args
            )
            Multiprocess(config, sockets=[sock]).run()
            started = True
    finally:
        unannounce()
        stop_broker()
        store.close()
        sock.close()
    if not started:
        raise SystemExit(1)
