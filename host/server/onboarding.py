"""The onboarding rules: `hello` hands out a challenge, `proof` turns a signed challenge and a
CSR into a certificate (docs/protocol.md is the contract; host/server/deviceapi.py is their HTTP
face, which logs one line per request and never a secret).

Every refusal is an `OnboardingRefused` with the status, code and sentence of the protocol.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from starlette.concurrency import run_in_threadpool

from host.server import ServerError
from host.server.ca import CertificateAuthority
from host.server.challenge import Challenges, Opened, expiry_ms
from host.server.deviceid import BadDeviceId, parse_device_id
from host.server.policy import (
    Policies,
    PolicyDriver,
    PolicyError,
    PolicyUnavailable,
    device_topic_prefix,
)
from host.server.ratelimit import RateLimiter
from host.server.schemas import STATE_ONBOARDED, STATE_REGISTERED, DeviceRecord
from host.server.settings import Settings
from host.server.store import Actor, Store
from host.server.store.names import is_name

DOMAIN_LABEL = b"qlink-onboard-v1\x00"
_MAX_CSR_B64 = 4096  # a P-256 CSR is ~250 bytes DER; anything far larger is not one
log = logging.getLogger("qlink.onboard")


class OnboardingRefused(ServerError):
    """A request the protocol refuses: HTTP status, error code and a sentence to act on."""

    def __init__(self, status: int, code: str, detail: str, retry_after: int = 0) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after  # seconds (429): the answer's Retry-After
        self.device_id = "-"  # filled in once known, for the log line

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def _bad(detail: str) -> OnboardingRefused:
    return OnboardingRefused(400, "bad_request", detail)


def _used() -> OnboardingRefused:
    return OnboardingRefused(
        403,
        "challenge_used",
        "this challenge was used already, or one given after it was; start again with hello",
    )


def _csr(der: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_der_x509_csr(der)
    except ValueError:
        raise OnboardingRefused(400, "bad_csr", "csr_b64 is not a PKCS#10 request") from None


def _candidates(csr: x509.CertificateSigningRequest) -> list[str]:
    """The devices a proof's CSR may be for: the ID of the key it holds, then the ID its
    subject names (when it names one), each once."""
    found = []
    try:
        key = csr.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            found.append(hashlib.sha256(_uncompressed(key)).hexdigest())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        pass
    try:
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        names = []
    for attr in names:
        try:
            device_id = parse_device_id(attr.value)
        except BadDeviceId:
            continue
        if device_id not in found:
            found.append(device_id)
    return found


def signature_holds(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """ECDSA P-256 / SHA-256 by a device: `signature` is r || s (32 bytes each, big-endian,
    as the firmware writes it), `public_key` the registered uncompressed point."""
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def proof_message(
    challenge: bytes, device_id: str, host: str, ota_key: bytes | None = None
) -> bytes:
    """What the device signs (SHA-256 of it, ECDSA P-256), per docs/protocol.md; a device that
    sends its OTA key (docs/ota.md) signs its 65 bytes at the end too."""
    msg = DOMAIN_LABEL + challenge + device_id.encode("ascii") + b"\x00" + host.encode("ascii")
    return msg if ota_key is None else msg + ota_key


_HELLO_FIELDS = frozenset({"device_id", "public_key"})
_PROOF_FIELDS = frozenset({"challenge_id", "signature", "csr_b64", "ota_key"})


def _only(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        names = ", ".join(repr(u[:40]) for u in unknown[:5])
        raise _bad(f"unknown field(s) {names}; allowed: {', '.join(sorted(allowed))}")


def proof_digest(cid: str, sig_hex: str, csr_der: bytes, ota_key: bytes | None = None) -> str:
    """Names one exact proof: the same proof sent again is a retry, not a replay."""
    data = cid.encode() + b"\x00" + sig_hex.encode() + b"\x00" + csr_der
    return hashlib.sha256(data if ota_key is None else data + b"\x00" + ota_key).hexdigest()


def _ota_key(body: dict[str, Any]) -> bytes | None:
    """The proof's optional OTA key (docs/ota.md "The device's OTA key"): a P-256 point."""
    if body.get("ota_key") is None:  # absent (or null): a device without OTA
        return None
    point = bytes.fromhex(_hex_field(body, "ota_key", 130))
    try:
        if point[0] != 4:
            raise ValueError
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise _bad(
            "ota_key must be an uncompressed P-256 point (04 then X and Y, 130 hex characters)"
        ) from None
    return point


def _hex_field(body: dict[str, Any], name: str, length: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or len(value) != length:
        raise _bad(f"{name} must be a string of {length} hex characters")
    value = value.lower()
    try:
        bytes.fromhex(value)
    except ValueError:
        raise _bad(f"{name} must be a string of {length} hex characters") from None
    return value


def _uncompressed(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


@dataclass
class BrokerEndpoint:
    host: str
    port: int


@dataclass
class Issued:
    """A proof that passed every check, with its certificate: what is left is the policy
    driver's call (`driver`, None when the broker needs none) and the store's record."""

    cid: str
    dev: DeviceRecord
    cert: x509.Certificate
    cert_der: bytes
    digest: str
    source: str
    now: float
    driver: PolicyDriver | None
    order: int  # of its challenge (host/server/challenge.py)
    ota_key: bytes | None = None

    @property
    def device_id(self) -> str:
        return self.dev.device_id


class Onboarding:
    """The onboarding rules over the store, the CA and the policy drivers (no HTTP in here)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        ca: CertificateAuthority,
        policies: Policies,
        broker: BrokerEndpoint,
        challenges: Challenges,
        publish_crl: Callable[[], None] | None = None,
        command_signer_der: bytes | None = None,
        broker_block: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> None:
        self.settings = settings
        self.challenges = challenges  # made and checked from the server's key: never stored
        # The `broker` of a device whose batch is on another target than the managed broker
        # (host/server/targets.py), by target name; None: the managed broker's.
        self._broker_block = broker_block
        # Called after a renewal put the replaced certificate on the CRL's list.
        self.publish_crl = publish_crl
        self.store = store
        self.ca = ca
        self.policies = policies
        self.broker = broker
        # In every answer; the CA's certificates do not change while it is loaded.
        self._issuing_b64 = base64.b64encode(ca.issuing_der()).decode()
        self._root_b64 = base64.b64encode(ca.root_der()).decode()
        self._signer_b64 = (
            base64.b64encode(command_signer_der).decode() if command_signer_der else None
        )
        self.hellos_by_source = RateLimiter(settings.hello_per_source_per_min)
        self.hellos_by_device = RateLimiter(settings.hello_per_device_per_min)

    def _limit_hello(self, device_id: str, source: str) -> None:
        """429 when `source`, or this device from `source`, has used its hellos; keyed by
        source too, so that a stranger's flood does not lock the device itself out."""
        wait = self.hellos_by_source.take(source)
        if wait:
            raise OnboardingRefused(
                429, "rate_limited", f"too many hellos from {source}; retry in {wait} s", wait
            )
        wait = self.hellos_by_device.take(f"{device_id} {source}")
        if wait:
            raise OnboardingRefused(
                429, "rate_limited", f"too many hellos for this device; retry in {wait} s", wait
            )

    def _eligible(self, device_id: str) -> DeviceRecord:
        """The device if it may onboard, else 403."""
        return self._may_onboard(self.store.devices.get(device_id), device_id)

    @staticmethod
    def _may_onboard(dev: DeviceRecord | None, device_id: str) -> DeviceRecord:
        """`dev` (device `device_id` as read) if it may onboard, else 403."""
        if (
            dev is None
            or not dev.batch_active
            or dev.disabled
            or dev.state
            not in (
                STATE_REGISTERED,
                STATE_ONBOARDED,
            )
        ):
            raise OnboardingRefused(
                403,
                "not_registered",
                f"device {device_id} is not registered in an active batch; "
                "ask the operator to import it (qlink batch import)",
            )
        return dev

    def hello(self, body: dict[str, Any], source: str = "-") -> dict[str, Any]:
        _only(body, _HELLO_FIELDS)
        try:
            device_id = parse_device_id(body.get("device_id"))
        except BadDeviceId:
            raise _bad("device_id must be a string of 64 hex characters") from None
        self._limit_hello(device_id, source)
        pub_hex = _hex_field(body, "public_key", 130)
        pub = bytes.fromhex(pub_hex)
        if hashlib.sha256(pub).hexdigest() != device_id:
            raise OnboardingRefused(
                400, "id_mismatch", "device_id must be SHA-256 of the uncompressed public key"
            )
        dev = self._eligible(device_id)
        if dev.public_key != pub:
            raise OnboardingRefused(
                403, "not_registered", f"device {device_id} is registered with another key"
            )
        expires_ms = math.ceil((time.time() + self.settings.challenge_ttl_s) * 1000)
        if dev.used_challenge is not None:
            # After the device's last used challenge, even if the clock went back since (or
            # the TTL was shortened: then a challenge may live as long as the old TTL said).
            expires_ms = max(expires_ms, expiry_ms(dev.used_challenge) + 1)
        cid, challenge = self.challenges.issue(device_id, expires_ms)
        expires = math.ceil(expires_ms / 1000)
        return {"challenge_id": cid, "challenge": challenge.hex(), "expires": expires}

    def proof(self, body: dict[str, Any], source: str = "-") -> tuple[str, dict[str, Any]]:
        """Returns (device_id, answer); the device ID is also known for logging on refusal."""
        step = self.begin_proof(body, source)
        if isinstance(step, Issued):
            if step.driver is not None:
                self.register(step)
            return step.device_id, self.finish_proof(step)
        return step

    async def proof_async(
        self, body: dict[str, Any], source: str = "-"
    ) -> tuple[str, dict[str, Any]]:
        """`proof` for the event loop: the local work (checks, signing, the store) runs in
        the caller, only a policy driver's call to its broker goes to a worker thread."""
        step = self.begin_proof(body, source)
        if isinstance(step, Issued):
            if step.driver is not None:
                await run_in_threadpool(self.register, step)
            return step.device_id, self.finish_proof(step)
        return step

    def begin_proof(self, body: dict[str, Any], source: str) -> Issued | tuple[str, dict[str, Any]]:
        """Check a proof and make its certificate: what is left to do (`Issued`), or, for the
        same proof sent again, the answer it got the first time (device ID, answer)."""
        _only(body, _PROOF_FIELDS)
        cid = _hex_field(body, "challenge_id", 32)
        sig_hex = _hex_field(body, "signature", 128)
        csr_b64 = body.get("csr_b64")
        if not isinstance(csr_b64, str) or not 0 < len(csr_b64) <= _MAX_CSR_B64:
            raise _bad(f"csr_b64 must be a base64 string of at most {_MAX_CSR_B64} characters")
        try:
            csr_der = base64.b64decode(csr_b64, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("csr_b64 is not valid base64") from None
        ota_key = _ota_key(body)

        csr = _csr(csr_der)
        device_id, opened = self._open(cid, csr)
        try:
            return self._check_proof(cid, device_id, opened, sig_hex, csr, csr_der, source, ota_key)
        except OnboardingRefused as e:
            e.device_id = device_id
            raise

    def _open(self, cid: str, csr: x509.CertificateSigningRequest) -> tuple[str, Opened]:
        """The device a challenge ID was given to and the challenge it names; 403 when this
        server gave it to none. The proof names no device: the candidates are the one whose
        key the CSR holds (its ID is that key's SHA-256) and the one its subject names, so
        that a CSR with another key or another subject is refused as such further on."""
        for device_id in _candidates(csr):
            opened = self.challenges.open(cid, device_id)
            if opened is not None:
                return device_id, opened
        raise OnboardingRefused(
            403, "unknown_challenge", "no such challenge; start again with hello"
        )

    def _check_proof(
        self,
        cid: str,
        device_id: str,
        opened: Opened,
        sig_hex: str,
        csr: x509.CertificateSigningRequest,
        csr_der: bytes,
        source: str,
        ota_key: bytes | None = None,
    ) -> Issued | tuple[str, dict[str, Any]]:
        now = time.time()
        digest = proof_digest(cid, sig_hex, csr_der, ota_key)
        read = self.store.devices.get(device_id)
        if now * 1000 > expiry_ms(opened.order):
            # A device that lost its answer may send the same proof again after the challenge
            # expired: the answer it missed, while this is the last challenge it used.
            if read is not None and read.used_challenge == opened.order:
                again = self._answer_again(opened.order, digest, read)
                if again is not None:
                    return device_id, again
            raise OnboardingRefused(
                403, "challenge_expired", "the challenge expired; start again with hello"
            )
        dev = self._may_onboard(read, device_id)
        # A device may be sending a proof again (it lost the answer): the answer it missed,
        # before anything is issued or told to its broker. A race of two proofs is settled by
        # the store (finish_proof).
        again = self._answer_again(opened.order, digest, dev)
        if again is not None:
            return device_id, again
        message = proof_message(opened.challenge, device_id, self.settings.public_host, ota_key)
        if not signature_holds(dev.public_key, message, bytes.fromhex(sig_hex)):
            raise OnboardingRefused(
                403,
                "bad_signature",
                "the signature does not verify over the challenge, device ID and server host "
                f"name {self.settings.public_host!r}"
                f"{' and the OTA key' if ota_key is not None else ''} with the registered key",
            )

        try:
            valid = csr.is_signature_valid
            csr_key = csr.public_key()
            attrs = list(csr.subject)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise OnboardingRefused(400, "bad_csr", "csr_b64 is not a PKCS#10 request") from None
        if not valid:
            raise OnboardingRefused(400, "bad_csr", "the CSR's self-signature does not verify")
        if not isinstance(csr_key, ec.EllipticCurvePublicKey) or (
            _uncompressed(csr_key) != dev.public_key
        ):
            raise OnboardingRefused(
                403, "csr_key_mismatch", "the CSR key must be the device's registered key"
            )
        if not (
            len(attrs) == 1 and attrs[0].oid == NameOID.COMMON_NAME and attrs[0].value == device_id
        ):
            raise OnboardingRefused(
                403, "csr_subject_mismatch", f"the CSR subject must be exactly CN={device_id}"
            )

        # A retry gets the certificate it may have missed; one past the renewal point of its
        # life, within the renewal window, expired, or with a renew command outstanding is
        # replaced.
        cert = None
        if dev.state == STATE_ONBOARDED and dev.cert_der:
            cert_der = dev.cert_der
            cert = x509.load_der_x509_certificate(cert_der)
            end = dev.not_after or cert.not_valid_after_utc.timestamp()
            if self._renewal_due(cert, end, now) or self.store.commands.outstanding(
                device_id, "renew"
            ):
                cert = None
        if cert is None:
            # The tenant goes into the certificate (its OU) for the broker's plugin; a tenant
            # recorded before the name rule keeps the CN-only form (store/names.py).
            tenant = dev.tenant if is_name(dev.tenant) else None
            cert = self.ca.issue_device(
                csr, device_id, self.settings.cert_validity_days, tenant=tenant
            )
            cert_der = cert.public_bytes(serialization.Encoding.DER)

        # The broker must know the device before the device learns its certificate; one that
        # gives rights by certificate needs to hear only of a device it may hold a deny for.
        try:
            driver = self.policies.onboarding_call(dev)
        except PolicyUnavailable as e:
            raise OnboardingRefused(503, "policy_unavailable", str(e)) from None
        return Issued(cid, dev, cert, cert_der, digest, source, now, driver, opened.order, ota_key)

    def _answer_again(
        self, order: int, digest: str, dev: DeviceRecord | None
    ) -> dict[str, Any] | None:
        """None when the challenge of this `order` is still open for the device `dev` (as
        read): no proof used it or one given after it. Else the answer its proof got, when
        this is the same proof (`digest`: the device lost its answer) and the device may
        onboard and holds its certificate; else 403 (`challenge_used`; `not_registered`
        for the same proof of a device that may no longer onboard)."""
        if dev is None or dev.used_challenge is None or order > dev.used_challenge:
            return None
        if order == dev.used_challenge and dev.used_proof == digest:
            dev = self._may_onboard(dev, dev.device_id)
            if dev.state == STATE_ONBOARDED and dev.cert_der:
                return self._answer(dev, dev.cert_der)
        raise _used()

    def _renewal_due(self, cert: x509.Certificate, end: float, now: float) -> bool:
        """Past `renew_at_pct` of the certificate's life, or within the renewal window of its
        end (the store's `not_after`)."""
        start = cert.not_valid_before_utc.timestamp()
        at_share = start + (end - start) * self.settings.renew_at_pct / 100
        in_window = end - self.settings.renewal_window_days * 86400
        return now >= min(at_share, in_window)

    def register(self, step: Issued) -> None:
        """Tell the device's policy driver (its broker) about it; 503 if that fails."""
        assert step.driver is not None
        try:
            step.driver.register_device(step.dev.tenant, step.device_id, step.cert_der)
        except PolicyError as e:
            refused = OnboardingRefused(
                503, "broker_unavailable", f"the broker could not register the device ({e}); retry"
            )
            refused.device_id = step.device_id
            raise refused from None

    def finish_proof(self, step: Issued) -> dict[str, Any]:
        """Consume the challenge and record the certificate: the proof's answer."""
        device_id = step.device_id
        done = self.store.challenges.complete(
            step.order,
            step.dev,
            step.cert_der,
            step.cert.serial_number,
            step.cert.not_valid_after_utc.timestamp(),
            step.now,
            proof_hash=step.digest,
            actor=Actor(f"device:{device_id}", step.source),
            policy_cleared=step.driver is not None,
            ota_key=step.ota_key,
        )
        if not done:
            # Used meanwhile: by this same proof (the device lost its answer, or sent it twice
            # at once), which gets the certificate recorded then; by another, refused.
            try:
                again = self._answer_again(
                    step.order, step.digest, self.store.devices.get(device_id)
                )
            except OnboardingRefused as e:
                e.device_id = device_id
                raise
            if again is None:  # not used: the device left the onboarding states meanwhile
                refused = _used()
                refused.device_id = device_id
                raise refused
            return again
        replaced = step.dev.serial
        if replaced is not None and replaced != format(step.cert.serial_number, "x"):
            # The device can always fetch this answer again (the same proof, or hello + proof:
            # the same certificate), so the replaced certificate goes now: only the current
            # one opens the broker.
            log.info("event=certificate_replaced device=%s revoked=%s", device_id, replaced)
            if self.publish_crl is not None:
                self.publish_crl()
        return self._answer(step.dev, step.cert_der)

    def _answer(self, dev: DeviceRecord, cert_der: bytes) -> dict[str, Any]:
        device_id = dev.device_id
        b64 = base64.b64encode
        prefix = device_topic_prefix(dev.tenant, device_id)
        broker = None
        if dev.target_kind not in (None, "managed") and self._broker_block is not None:
            broker = self._broker_block(dev.target)  # its batch's target (docs/protocol.md)
        return {
            "device_id": device_id,
            "certificate_b64": b64(cert_der).decode(),
            "chain_b64": [self._issuing_b64],
            "broker": broker
            or {
                "host": self.broker.host,
                "port": self.broker.port,
                "ca_b64": self._root_b64,
            },
            "topics": {t: f"{prefix}/{t}" for t in ("telemetry", "event", "cmd")},
            "policy": {
                "telemetry_interval_ms": self.settings.telemetry_interval_ms,
                "renew_at_pct": self.settings.renew_at_pct,
            },
            **({"command_signer_b64": self._signer_b64} if self._signer_b64 else {}),
        }
