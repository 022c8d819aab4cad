"""The device API's HTTP face: POST /v1/onboard/hello, /v1/onboard/proof and
/v1/onboard/successor.

`ROUTES` is its one route table: `DeviceApi` answers these paths straight from ASGI, in front
of the operator API's framework (a device request costs one JSON parse, the onboarding rules
and one JSON answer), and `openapi_paths` documents them in the server's OpenAPI schema from
the same table. Everything else goes on to the framework. The body is read by the one reader
(limits.LimitedReceive): over the device limit 413, not arrived in time 408, not a JSON
object 400, another method than POST 405.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from host.server import jsonin
from host.server.bodies import HelloRequest, ProofRequest, SuccessorRequest
from host.server.limits import (
    App,
    BodyTooLarge,
    BodyTooSlow,
    LimitedReceive,
    Receive,
    Scope,
    Send,
    declared_length_refusal,
    reject,
    send_json,
)
from host.server.onboarding import OnboardingRefused
from host.server.schemas import ErrorBody, HelloAnswer, ProofAnswer, SuccessorAnswer

if TYPE_CHECKING:
    from host.server.application import Application

log = logging.getLogger("qlink.onboard")

PREFIX = "/v1/onboard"


@dataclass(frozen=True)
class DeviceRoute:
    path: str
    name: str  # "hello", "proof" or "successor": the step, the log's event name
    summary: str
    request: type[BaseModel]
    answer: type[BaseModel]
    codes: tuple[int, ...]  # refusals besides 400, 405, 408 and 413


ROUTES: dict[str, DeviceRoute] = {
    r.path: r
    for r in (
        DeviceRoute(
            f"{PREFIX}/hello",
            "hello",
            "A single-use challenge for a registered device",
            HelloRequest,
            HelloAnswer,
            (403,),
        ),
        DeviceRoute(
            f"{PREFIX}/proof",
            "proof",
            "The signed challenge and a CSR: the device's certificate and broker",
            ProofRequest,
            ProofAnswer,
            (403, 503),
        ),
        DeviceRoute(
            f"{PREFIX}/successor",
            "successor",
            "The current key signs the next one: transfer or re-enrolment moves the device",
            SuccessorRequest,
            SuccessorAnswer,
            (403, 409, 429),
        ),
    )
}
_ALWAYS = (400, 405, 408, 413)


def application_of(scope: Scope) -> Application:
    """The application the app was started with."""
    application: Application = scope["app"].state.application
    return application


async def answer(
    application: Application, route: str, raw: bytes, source: str
) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    """One device request (`route` is a DeviceRoute's name) to (status, JSON answer, extra
    headers); logs one line: request ID, device ID, outcome."""
    rid = secrets.token_hex(4)
    device = "-"
    try:
        try:
            body = jsonin.loads(raw)
        except ValueError as e:  # JsonRejected or a syntax error
            raise OnboardingRefused(400, "bad_request", f"the body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise OnboardingRefused(400, "bad_request", "the body must be a JSON object")
        if route != "proof" and isinstance(body.get("device_id"), str):
            device = body["device_id"][:64]
        if route == "hello":
            result = application.onboarding.hello(body, source)
        elif route == "proof":
            device, result = await application.onboarding.proof_async(body, source)
        else:  # the store, the broker's deny and the CRL: off the event loop
            device, result = await run_in_threadpool(application.successors.successor, body, source)
    except OnboardingRefused as e:
        if route == "proof":
            device = e.device_id
        log.info(
            "event=%s request=%s device=%s outcome=%s status=%d",
            route,
            rid,
            device,
            e.code,
            e.status,
        )
        extra = [(b"retry-after", b"%d" % e.retry_after)] if e.retry_after else []
        return e.status, {"error": e.code, "detail": e.detail}, extra
    log.info("event=%s request=%s device=%s outcome=ok status=200", route, rid, device)
    return 200, result, []


class DeviceApi:
    """ASGI middleware serving the routes of `ROUTES` itself (see the module's docstring)."""

    def __init__(self, app: App, *, max_body: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await send_json(
                send,
                405,
                {"error": "method_not_allowed", "detail": "Method Not Allowed"},
                [(b"allow", b"POST")],
            )
            return
        refusal = declared_length_refusal(scope, self.max_body)
        if refusal is not None:
            await reject(send, *refusal)
            return
        try:
            raw = await LimitedReceive(receive, self.max_body, self.timeout).read()
        except BodyTooLarge:
            await reject(send, 413, "too_large", f"the body exceeds {self.max_body} bytes")
            return
        except BodyTooSlow:
            await reject(
                send, 408, "timeout", f"the request body did not arrive within {self.timeout:g} s"
            )
            return
        if raw is None:  # the client went away
            return
        client = scope.get("client")
        source = client[0] if client else "-"
        status, body, extra = await answer(application_of(scope), route.name, raw, source)
        await send_json(send, status, body, extra)


def openapi_paths(ref_template: str = "#/components/schemas/{model}") -> tuple[dict, dict]:  # type: ignore[type-arg]
    """The device routes for the OpenAPI schema: (paths, component schemas)."""
    from pydantic.json_schema import models_json_schema

    models: set[type[BaseModel]] = {ErrorBody}
    for r in ROUTES.values():
        models.update((r.request, r.answer))
    refs, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template=ref_template,
    )

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"application/json": {"schema": refs[(model, "validation")]}}

    paths: dict[str, Any] = {}
    for r in ROUTES.values():
        responses: dict[str, Any] = {
            "200": {"description": "Successful Response", "content": body(r.answer)}
        }
        for code in sorted({*_ALWAYS, *r.codes}):
            responses[str(code)] = {"description": "Refused", "content": body(ErrorBody)}
        paths[r.path] = {
            "post": {
                "summary": r.summary,
                "operationId": f"device_{r.name}",
                "tags": ["device"],
                "requestBody": {"required": True, "content": body(r.request)},
                "responses": responses,
            }
        }
    return paths, defs.get("$defs", {})
