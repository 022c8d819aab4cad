"""The operator API from the command line: `qlink login` stores the server URL, the token and
the root CA in the user's config directory (0600); `--remote` commands use them."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any

import httpx

from host.server import ServerError
from host.server.files import atomic_write

ENV_CONFIG_DIR = "QLINK_CONFIG_DIR"


class ClientError(ServerError):
    pass


def config_dir() -> Path:
    default = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "qlink"
    return Path(os.environ.get(ENV_CONFIG_DIR, default))


class AdminClient:
    def __init__(self, url: str, token: str, ca_pem: str | None = None) -> None:
        if not url.startswith("https://"):
            raise ClientError("the server URL must start with https://")
        self.url = url.rstrip("/")
        self.token = token
        self.ca_pem = ca_pem

    @classmethod
    def from_login(cls) -> AdminClient:
        path = config_dir() / "login.json"
        try:
            doc = json.loads(path.read_text())
            return cls(doc["url"], doc["token"], doc.get("ca_pem"))
        except (OSError, ValueError, KeyError):
            raise ClientError(f"not logged in ({path} missing); run: qlink login URL") from None

    def save(self) -> Path:
        path = config_dir() / "login.json"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"url": self.url, "token": self.token, "ca_pem": self.ca_pem}
        atomic_write(path, json.dumps(doc).encode(), 0o600)
        return path

    def _client(self) -> httpx.Client:
        verify: ssl.SSLContext | bool = True
        if self.ca_pem is not None:
            verify = ssl.create_default_context(cadata=self.ca_pem)
        return httpx.Client(
            base_url=self.url,
            verify=verify,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def _answer(self, r: httpx.Response) -> Any:
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code >= 400:
            detail = body.get("detail") if isinstance(body, dict) else None
            raise ClientError(f"the server refused ({r.status_code}): {detail or r.text[:200]}")
        return body

    def get(self, path: str) -> Any:
        try:
            with self._client() as c:
                return self._answer(c.get(path))
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach {self.url}: {e}") from e

    def post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            with self._client() as c:
                return self._answer(c.post(path, json=body))
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach {self.url}: {e}") from e
