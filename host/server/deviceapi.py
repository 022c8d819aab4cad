"""The device API's HTTP face: POST /v1/onboard/hello and /v1/onboard/proof.

`DeviceApi` answers them straight from ASGI, in front of the operator API's framework: a device
request costs one JSON parse, the onboarding rules and one JSON answer. Everything else (and
these paths with another method) goes on to the FastAPI app, whose routes below only document
the two for the OpenAPI schema. The limits are the same as everywhere: a body over the device
limit gets 413, one that does not arrive in time 408, one that is not a JSON object 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from host.server.limits import (
    App,
    Receive,
    Scope,
    Send,
    declared_length_refusal,
    reject,
    send_json,
)
from host.server.onboarding import Onboarding, OnboardingRefused
from host.server.schemas import HelloAnswer, HelloRequest, ProofAnswer, ProofRequest

log = logging.getLogger("qlink.onboard")

PREFIX = "/v1/onboard"
_ROUTES = {f"{PREFIX}/hello": "hello", f"{PREFIX}/proof": "proof"}


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def answer(
    service: Onboarding, route: str, raw: bytes, source: str
) -> tuple[int, dict[str, Any]]:
    """One device request (`route` is "hello" or "proof") to (status, JSON answer); logs one
    line: request ID, device ID, outcome."""
    rid = secrets.token_hex(4)
    device = "-"
    try:
        try:
            body = json.loads(raw)
        except ValueError:  # also bytes that are not UTF-8
            body = None
        if not isinstance(body, dict):
            raise OnboardingRefused(400, "bad_request", "the body must be a JSON object")
        if route == "hello":
            if isinstance(body.get("device_id"), str):
                device = body["device_id"][:64]
            result = service.hello(body)
        else:
            device, result = await service.proof_async(body, source)
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
        return e.status, {"error": e.code, "detail": e.detail}
    log.info("event=%s request=%s device=%s outcome=ok status=200", route, rid, device)
    return 200, result


class DeviceApi:
    """ASGI middleware serving the two device routes itself (see the module's docstring)."""

    def __init__(self, app: App, *, max_body: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        refusal = declared_length_refusal(scope, self.max_body)
        if refusal is not None:
            await reject(send, *refusal)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        await reject(
                            send, 413, "too_large", f"the body exceeds {self.max_body} bytes"
                        )
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await reject(
                send, 408, "timeout", f"the request body did not arrive within {self.timeout:g} s"
            )
            return
        client = scope.get("client")
        service: Onboarding = scope["app"].state.onboarding
        status, body = await answer(service, route, b"".join(chunks), client[0] if client else "-")
        await send_json(send, status, body)


router = APIRouter(prefix=PREFIX)


def _doc(request: type[Any], answer: type[Any], *codes: int) -> dict[str, Any]:
    """OpenAPI for a hand-parsed route: its request body and every answer it can give."""
    from host.server.schemas import errors

    return {
        "response_model": None,
        "responses": {200: {"model": answer}, **errors(400, 408, 413, *codes)},
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request.model_json_schema()}},
            }
        },
    }


async def _routed(request: Request, route: str) -> JSONResponse:
    """The same answer when a request reaches the framework (an app without `DeviceApi`)."""
    source = request.client.host if request.client else "-"
    service: Onboarding = request.app.state.onboarding
    status, body = await answer(service, route, await request.body(), source)
    return JSONResponse(body, status_code=status)


@router.post("/hello", **_doc(HelloRequest, HelloAnswer, 403))
async def hello(request: Request) -> JSONResponse:
    return await _routed(request, "hello")


@router.post("/proof", **_doc(ProofRequest, ProofAnswer, 403, 503))
async def proof(request: Request) -> JSONResponse:
    return await _routed(request, "proof")
