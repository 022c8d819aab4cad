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


def read_ca(path: Path) -> str:
    """A root CA PEM file's text, checked to hold a certificate."""
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as e:
        raise ClientError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        text = ""  # DER or anything binary
    problem = f"{path} is not a PEM certificate (qlink ca root writes one)"
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ClientError(problem)
    _context(text, problem)
    return text


def _context(ca_pem: str, problem: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError):
        raise ClientError(problem) from None


class AdminClient:
    def __init__(self, url: str, token: str, ca_pem: str | None = None) -> None:
        if not url.startswith("https://"):
            raise ClientError("the server URL must start with https://")
        try:
            httpx.URL(url)
        except httpx.InvalidURL as e:
            raise ClientError(f"the server URL {url!r} is not valid: {e}") from None
        if not token.isascii() or not token.isprintable():
            raise ClientError("the token must be printable ASCII (it starts with qlk_)")
        self.url = url.rstrip("/")
        self.token = token
        self.ca_pem = ca_pem

    @classmethod
    def from_login(cls) -> AdminClient:
        path = config_dir() / "login.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ClientError(f"not logged in ({path} missing); run: qlink login URL") from None
        damaged = ClientError(f"{path} is damaged; run qlink login URL again")
        if not isinstance(doc, dict):
            raise damaged
        url, token, ca_pem = doc.get("url"), doc.get("token"), doc.get("ca_pem")
        if not isinstance(url, str) or not isinstance(token, str):
            raise damaged
        if ca_pem is not None and not isinstance(ca_pem, str):
            raise damaged
        try:
            client = cls(url, token, ca_pem)
            if client.ca_pem is not None:
                _context(client.ca_pem, "its root CA is not a PEM certificate")
        except ClientError as e:
            raise ClientError(f"{path} is damaged ({e}); run qlink login URL again") from None
        return client

    def save(self) -> Path:
        path = config_dir() / "login.json"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"url": self.url, "token": self.token, "ca_pem": self.ca_pem}
        atomic_write(path, json.dumps(doc).encode(), 0o600)
        return path

    def _client(self) -> httpx.Client:
        verify: ssl.SSLContext | bool = True
        if self.ca_pem is not None:
            verify = _context(self.ca_pem, "the root CA is not a PEM certificate")
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
