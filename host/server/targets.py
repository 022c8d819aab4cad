"""Targets as the server uses them: the operator's input checked (endpoint, CA, admin
credentials), an external Mosquitto's admin password kept in a file of its own, and for a
target its admin login, its policy driver and the broker block devices are given for it.

The password: written once, by `add`, to `DATA_DIR/targets/<name>.<random>.password` with mode
0600 in a 0700 directory (files.atomic_write creates it with that mode: it is never readable by
anyone but the server's user, not even for a moment). The database holds only that file's name,
so neither a database dump, a PostgreSQL role nor a batch export carries it; no listing, audit
event, log line or error shows it (host/server/mqtt.py's `Login` keeps it out of its repr).
A random part in the name means a failed or concurrent `add` never overwrites the file of a
target that exists.
"""

from __future__ import annotations

import base64
import secrets
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from host.server.files import PathOutside, atomic_write, path_in
from host.server.mqtt import Login
from host.server.schemas import TargetRecord
from host.server.settings import Settings, is_host
from host.server.store import Actor, Conflict, Invalid, Store
from host.server.store.audit import LOCAL
from host.server.store.names import check_name
from host.server.store.targets import KIND_AWS, KIND_MANAGED, KIND_MOSQUITTO

if TYPE_CHECKING:
    from host.server.policy.external import ExternalMosquitto

SECRETS_DIR = "targets"
_PASSWORD_MAX = 256
_USER_MAX = 128


def parse_ca(data: bytes) -> bytes:
    """The DER of the one certificate in `data` (PEM or DER): the CA devices must trust for
    the target's TLS certificate (the proof answer's `ca_b64`)."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise Invalid("the CA must be one X.509 certificate, PEM or DER") from None
    if len(certs) != 1:
        raise Invalid(
            f"the CA must be one certificate (the root devices trust for this broker); "
            f"this holds {len(certs)}"
        )
    _check_ca(certs[0])
    return certs[0].public_bytes(serialization.Encoding.DER)


def _check_ca(cert: x509.Certificate) -> None:
    """A CA devices can verify the broker with today: in its validity period, and a CA (or a
    self-signed certificate, trusted as it is); checked with or without `--no-check`."""
    now = datetime.now(UTC)
    if cert.not_valid_after_utc < now:
        raise Invalid(
            f"the CA certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "devices would refuse the broker: give the CA that signs its certificate now"
        )
    if cert.not_valid_before_utc > now:
        raise Invalid(
            f"the CA certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
            "UTC; devices would refuse the broker until then (check this machine's clock)"
        )
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca and cert.issuer != cert.subject:
        raise Invalid(
            "the certificate given as the CA is not one (no basicConstraints CA:TRUE, and it "
            "is issued by another): give the root that signs the broker's certificate"
        )


def read_password(data: bytes) -> str:
    """A password file's first line, without its line break (what follows, such as a note of
    when it was rotated, is not part of it)."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise Invalid("the admin password file must be UTF-8 text") from None
    return text.split("\n", 1)[0].removesuffix("\r")


def _port(what: str, port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise Invalid(f"{what} must be 1 to 65535, not {port!r}")
    return port


@dataclass(frozen=True)
class TargetSpec:
    """A target as the operator gives it (checked by `check`)."""

    name: str
    kind: str
    host: str
    port: int
    ca: bytes  # PEM or DER of one certificate
    admin_user: str | None = None
    admin_password: str | None = field(default=None, repr=False)
    admin_port: int | None = None  # the admin listener; default: `port`

    def check(self) -> bytes:
        """Raise Invalid naming the first thing wrong; the CA's DER."""
        check_name("target name", self.name)
        if self.kind not in (KIND_MOSQUITTO, KIND_AWS):
            raise Invalid(
                f"kind must be {KIND_MOSQUITTO} (an external Mosquitto) or {KIND_AWS} "
                f"(AWS IoT), not {self.kind[:32]!r}"
            )
        if not is_host(self.host or ""):  # a name or address alone: the port is its own field
            raise Invalid(
                "host must be the DNS name or IP address devices connect to, not "
                f"{self.host[:64]!r}"
            )
        _port("port", self.port)
        ca_der = parse_ca(self.ca)
        if self.kind == KIND_AWS:
            if self.admin_user or self.admin_password or self.admin_port:
                raise Invalid(
                    "an AWS IoT target takes no admin user, password or port (the server "
                    "uses boto3's credentials)"
                )
            return ca_der
        if self.admin_port is not None:
            _port("admin port", self.admin_port)
        user = self.admin_user or ""
        if not 0 < len(user) <= _USER_MAX or not user.isprintable() or user.strip() != user:
            raise Invalid(
                f"an external Mosquitto needs its dynamic-security admin user: 1 to {_USER_MAX} "
                "printable characters, no leading or trailing space"
            )
        password = self.admin_password or ""
        if not 0 < len(password) <= _PASSWORD_MAX or not password.isprintable():
            raise Invalid(
                f"an external Mosquitto needs the admin user's password: 1 to {_PASSWORD_MAX} "
                "printable characters on the first line of the password file"
            )
        return ca_der


def tls_context(ca_der: bytes) -> ssl.SSLContext:
    """Verifies a target's certificate chain to `ca_der` and its host name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # As PEM: after the last DER certificate, Python's `ssl` takes any error left on the
    # thread's OpenSSL queue as its own (a PKCS#11 library's start leaves some there).
    ctx.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(ca_der))
    return ctx


class TargetService:
    """Targets over the store and the data directory's password files."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._blocks: dict[str, dict[str, Any] | None] = {}

    @property
    def secrets_dir(self) -> Path:
        return self._settings.data_dir / SECRETS_DIR

    def add(self, spec: TargetSpec, actor: Actor = LOCAL, *, check: bool = True) -> TargetRecord:
        """Record a new target. With `check`, an external Mosquitto is asked first (its TLS
        certificate, the admin login, its default rights and the roles the server needs);
        whatever fails, nothing is recorded."""
        ca_der = spec.check()
        if spec.name in {t.name for t in self._store.targets.list()}:
            raise Conflict(f"target {spec.name!r} already exists; pick another name")
        admin_port = (spec.admin_port or spec.port) if spec.kind == KIND_MOSQUITTO else None
        if check and spec.kind == KIND_MOSQUITTO:
            from host.server.policy.external import ExternalMosquitto

            login = Login(
                spec.host,
                admin_port or spec.port,
                tls_context(ca_der),
                spec.admin_user,
                spec.admin_password,
            )
            ExternalMosquitto(spec.name, login).close()
        secret = None
        if spec.kind == KIND_MOSQUITTO:
            assert spec.admin_password is not None  # spec.check
            secret = self._write_secret(spec.name, spec.admin_password)
        try:
            return self._store.targets.create(
                spec.name,
                spec.kind,
                host=spec.host,
                port=spec.port,
                ca_der=ca_der,
                admin_port=admin_port,
                admin_user=spec.admin_user,
                secret=secret,
                actor=actor,
            )
        except BaseException:
            if secret is not None:
                (self.secrets_dir / secret).unlink(missing_ok=True)
            raise

    def _write_secret(self, name: str, password: str) -> str:
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.secrets_dir.chmod(0o700)
        file = f"{name}.{secrets.token_hex(6)}.password"
        atomic_write(path_in(self.secrets_dir, file), password.encode(), 0o600)
        return file

    def _password(self, rec: TargetRecord) -> str:
        try:
            return read_password(path_in(self.secrets_dir, rec.secret or "").read_bytes())
        except (OSError, PathOutside):
            raise Invalid(
                f"the admin password of target {rec.name} is missing from "
                f"{self.secrets_dir}; add the target again under another name"
            ) from None

    def list(self) -> list[TargetRecord]:
        return self._store.targets.list()

    def get(self, name: str) -> TargetRecord:
        return self._store.targets.get(name)

    def login(self, rec: TargetRecord) -> Login:
        """The server's admin login to external Mosquitto target `rec`."""
        if rec.kind != KIND_MOSQUITTO or rec.host is None or rec.ca_der is None:
            raise Invalid(f"target {rec.name} is not an external Mosquitto")
        port = rec.admin_port or rec.port or 0
        return Login(rec.host, port, tls_context(rec.ca_der), rec.admin_user, self._password(rec))

    def driver(self, name: str) -> ExternalMosquitto:
        """A connected policy driver of external Mosquitto target `name` (PolicyError if it
        cannot be reached or refuses the login)."""
        from host.server.policy.external import ExternalMosquitto

        return ExternalMosquitto(name, self.login(self.get(name)))

    def broker_block(self, name: str) -> dict[str, Any] | None:
        """The proof answer's `broker` for a device of a batch on target `name`, or None for
        the managed broker's (also for an AWS IoT target without an endpoint, as before
        targets). Targets never change, so each is read once per process."""
        if name not in self._blocks:
            rec = self.get(name)
            block = None
            if rec.kind != KIND_MANAGED and rec.host and rec.port and rec.ca_der:
                ca_b64 = base64.b64encode(rec.ca_der).decode()
                block = {"host": rec.host, "port": rec.port, "ca_b64": ca_b64}
            self._blocks[name] = block
        return self._blocks[name]
