"""One typed settings object for the server, the CLI and the rig."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from host.server import ServerError

if TYPE_CHECKING:
    from host.server.hsm import Pkcs11Config

ENV_DATA_DIR = "QLINK_DATA_DIR"
ENV_DATABASE_URL = "QLINK_DATABASE_URL"


class SettingsError(ServerError, ValueError):
    """A setting out of its range: the sentence names it and what it may be."""


# A host name devices verify in TLS (RFC 1123 labels) or an IP address.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_MAX_DAYS = 36_525  # a hundred years: longer than any device or CA lives


def is_host(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    labels = name.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):
        return False  # dotted numbers that are no IP address (999.1.1.1, 1.2.3.4.5)
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def default_data_dir() -> Path:
    return Path(os.environ.get(ENV_DATA_DIR, "./qlink-data"))


@dataclass(frozen=True)
class Settings:
    """Where the server keeps its state and how devices reach it.

    Port 0 (API or broker) asks the OS for a free port; the chosen ports are published in
    `data_dir/server.json` once the server accepts connections.
    """

    data_dir: Path = field(default_factory=default_data_dir)
    bind_host: str = "127.0.0.1"
    api_port: int = 8443
    public_host: str = "localhost"  # the name devices verify in TLS and sign into their proof
    broker_port: int = 8883
    challenge_ttl_s: int = 60
    cert_validity_days: float = 365  # fractions allowed, down to a minute
    # An onboarded device that asks again within this many days of its certificate's expiry
    # gets a new certificate (before that, the one it has).
    renewal_window_days: float = 30
    # The agent renews once this share (percent) of its certificate's life has passed; the
    # server issues a new certificate from then on (or within the window above, whichever
    # comes first, or when a renew command is outstanding).
    renew_at_pct: int = 67
    # A device whose latest PUF report used this share (percent) of its correction budget is
    # flagged as drifting (docs/identity.md "PUF health").
    puf_drift_pct: int = 50
    # The re-enrolment policy: command a drifting device to re-enrol (else only flag it).
    auto_reenrol: bool = False
    tenant: str = "default"
    telemetry_interval_ms: int = 2000
    # Empty: SQLite (WAL) in data_dir/registry.sqlite. Else a SQLAlchemy URL (postgresql://...).
    database_url: str = field(default_factory=lambda: os.environ.get(ENV_DATABASE_URL, ""))
    # Batches with policy "aws" use AWS IoT Core in this region (boto3's usual credentials).
    aws_region: str = field(default_factory=lambda: os.environ.get("QLINK_AWS_REGION", ""))
    # The issuing CA's key in a PKCS#11 token (PIN from QLINK_PKCS11_PIN); empty: a 0600 file.
    pkcs11_module: str = field(default_factory=lambda: os.environ.get("QLINK_PKCS11_MODULE", ""))
    pkcs11_token: str = field(default_factory=lambda: os.environ.get("QLINK_PKCS11_TOKEN", ""))
    workers: int = 1  # uvicorn worker processes (one per core for throughput)
    max_body_bytes: int = 16 * 1024 * 1024  # operator API (a 10,000-device import is ~2 MB)
    max_device_body_bytes: int = 16 * 1024  # device API (a proof is ~1 KB)
    body_timeout_s: float = 10.0  # a client must send its whole body within this time
    # Abuse limits of the unauthenticated hello (0 turns one off): hellos a minute per source
    # address and per device from one source (token buckets: the whole minute's worth may come
    # at once, so a fleet behind one address that powers up together is not slowed). A hello
    # stores nothing (host/server/challenge.py), so outstanding challenges need no bound.
    hello_per_source_per_min: int = 30_000
    hello_per_device_per_min: int = 12
    # The console locks a user for this long after 5 failed logins in a row (docs/console.md).
    console_lockout_s: float = 900.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"{f.name} must be a finite number, not {value}")
        for name in ("api_port", "broker_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{name} must be between 0 and 65535, not {port}")
        for name in ("public_host", "bind_host"):
            if not is_host(getattr(self, name)):
                raise SettingsError(
                    f"{name} must be a host name (letters, digits and '-' between dots) or an "
                    f"IP address, not {getattr(self, name)!r}"
                )
        if self.challenge_ttl_s < 1:
            raise SettingsError("challenge TTL must be at least 1 second")
        if self.challenge_ttl_s > 86_400:  # a challenge given out stands a day at most
            raise SettingsError("challenge TTL must be at most a day (86400 seconds)")
        if not 60 <= self.cert_validity_days * 86400 <= _MAX_DAYS * 86400:
            raise SettingsError(
                "certificate validity must be at least one minute (1/1440 day) and at most "
                f"{_MAX_DAYS} days"
            )
        if not 0 <= self.renewal_window_days < self.cert_validity_days:
            raise SettingsError("renewal window must be 0 or more days, less than the validity")
        if not 1 <= self.renew_at_pct <= 99:
            raise SettingsError("renew-at share must be between 1 and 99 percent")
        if not 1 <= self.puf_drift_pct <= 100:
            raise SettingsError("PUF drift threshold must be between 1 and 100 percent")
        if self.workers < 1:
            raise SettingsError("workers must be at least 1")
        if self.hello_per_source_per_min < 0 or self.hello_per_device_per_min < 0:
            raise SettingsError("hello rate limits must be 0 (off) or more")
        if self.console_lockout_s < 0:
            raise SettingsError("console lockout must be 0 or more seconds")

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def challenge_key_path(self) -> Path:
        """The key onboarding challenges are made with (host/server/challenge.py)."""
        return self.data_dir / "challenge.key"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "registry.sqlite"

    @property
    def hsm(self) -> Pkcs11Config | None:
        if not self.pkcs11_module:
            return None
        from host.server.hsm import Pkcs11Config

        pin = os.environ.get("QLINK_PKCS11_PIN", "")
        if not pin or not self.pkcs11_token:
            raise SettingsError("a PKCS#11 module needs QLINK_PKCS11_TOKEN and QLINK_PKCS11_PIN")
        return Pkcs11Config(self.pkcs11_module, self.pkcs11_token, pin)

    @property
    def database(self) -> Path | str:
        """What the store opens: the SQLite file, or the database URL."""
        return self.database_url or self.db_path

    @property
    def server_json(self) -> Path:
        return self.data_dir / "server.json"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"
