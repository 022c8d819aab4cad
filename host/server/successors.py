"""The successor request, `POST /v1/onboard/successor` (docs/protocol.md "Successor identities"):
a device's current key signs its next public key, and the server records the next identity in
place of the current one (host/server/deviceapi.py is its HTTP face).

Checks, in this order, each refusal an `OnboardingRefused` with the protocol's code: the body's
shape (400 bad_request), the device API's rate limits (429), the current ID registered and the
signature by its registered key (403 not_registered, bad_signature). A request answered before
gets the same answer here, before anything else is asked of the current identity (it is revoked
by then). Then: the current identity onboarded (403 not_registered), an open command with that
seq and kind and, for a transfer, its claim (409 no_successor_expected), the next ID free (409
successor_taken). Then one transaction (store/successors.py), and the broker's deny and the CRL
as a revocation (lifecycle.py) has them. A broker that cannot be reached at that point is
logged, not answered: the store holds the revocation and the server denies every revoked device
again when it starts. A process stopped between the store and the broker leaves the cut-off to
the device's retry of the same request, which finds it not made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from host.server.deviceid import BadDeviceId, device_id_of, parse_device_id
from host.server.identities import public_key_error
from host.server.onboarding import OnboardingRefused, _hex_field, _only, signature_holds
from host.server.policy import Policies, PolicyError
from host.server.ratelimit import RateLimiter
from host.server.schemas import STATE_ONBOARDED, DeviceRecord
from host.server.settings import Settings
from host.server.store import Store
from host.server.store.successors import (
    REASONS,
    Move,
    NoSuccessorExpected,
    NotOnboarded,
    SuccessorTaken,
)

LABEL = b"qlink-successor-v1\x00"  # domain separation: this signature means nothing elsewhere
_FIELDS = frozenset({"device_id", "public_key", "reason", "seq", "signature"})
_MAX_SEQ = 2**31 - 1  # a command's seq is a signed 32-bit integer on the device
log = logging.getLogger("qlink.onboard")


def successor_message(reason: str, device_id: str, public_key: bytes, seq: int) -> bytes:
    """What the current key signs (SHA-256 of it, ECDSA P-256), per docs/protocol.md."""
    return (
        LABEL
        + reason.encode("ascii")
        + b"\x00"
        + device_id.encode("ascii")
        + public_key
        + str(seq).encode("ascii")
    )


def _bad(detail: str) -> OnboardingRefused:
    return OnboardingRefused(400, "bad_request", detail)


def _not_registered(device_id: str) -> OnboardingRefused:
    return OnboardingRefused(
        403,
        "not_registered",
        f"device {device_id} is not onboarded here (revoked, disabled or never onboarded); "
        "its owner can tell why",
    )


class SuccessorService:
    """The successor request's rules over the store and the policy drivers (no HTTP here)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        policies: Policies,
        publish_crl: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.policies = policies
        self.publish_crl = publish_crl
        # The hello's limits, with buckets of their own: a device that moves still onboards.
        self.by_source = RateLimiter(settings.hello_per_source_per_min)
        self.by_device = RateLimiter(settings.hello_per_device_per_min)

    def _limit(self, device_id: str, source: str) -> None:
        for limiter, key, what in (
            (self.by_source, source, f"from {source}"),
            (self.by_device, f"{device_id} {source}", "for this device"),
        ):
            wait = limiter.take(key)
            if wait:
                raise OnboardingRefused(
                    429, "rate_limited", f"too many requests {what}; retry in {wait} s", wait
                )

    def successor(self, body: dict[str, Any], source: str = "-") -> tuple[str, dict[str, Any]]:
        """(current device ID, answer) for a successor request, or OnboardingRefused."""
        _only(body, _FIELDS)
        try:
            device_id = parse_device_id(body.get("device_id"))
        except BadDeviceId:
            raise _bad("device_id must be a string of 64 hex characters") from None
        self._limit(device_id, source)
        public_key = bytes.fromhex(_hex_field(body, "public_key", 130))
        problem = public_key_error(public_key)
        if problem is not None:
            raise _bad(f"public_key: {problem}")
        reason = body.get("reason")
        if reason not in REASONS:
            raise _bad(f"reason must be one of {', '.join(REASONS)}")
        seq = body.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= _MAX_SEQ:
            raise _bad(f"seq must be the command's sequence number, an integer 1 to {_MAX_SEQ}")
        signature = bytes.fromhex(_hex_field(body, "signature", 128))
        next_id = device_id_of(public_key)
        if next_id == device_id:
            raise _bad("public_key must be the next identity's key, not the current one")

        dev = self.store.devices.get(device_id)
        if dev is None:
            raise _not_registered(device_id)
        self._verify(dev, successor_message(reason, device_id, public_key, seq), signature)
        answer = {"device_id": next_id}
        if self.store.successors.answered(device_id, reason, seq, next_id):
            # A retry: the device lost the first answer. Were this process stopped between the
            # store and the broker the first time, the cut-off is made now.
            if not dev.policy_exception:
                self._cut_off(dev)
            return device_id, answer
        if dev.state != STATE_ONBOARDED or dev.disabled:
            raise _not_registered(device_id)
        move = Move(dev, next_id, public_key, reason, seq, source)
        try:
            self.store.successors.record(move)
        except (NoSuccessorExpected, SuccessorTaken, NotOnboarded) as e:
            # A concurrent copy of this very request may have won the race: its answer is ours.
            if self.store.successors.answered(device_id, reason, seq, next_id):
                return device_id, answer
            raise _refusal(e, device_id, reason, seq) from None
        self._cut_off(dev)
        log.info("event=successor device=%s reason=%s seq=%d outcome=moved", device_id, reason, seq)
        return device_id, answer

    def _verify(self, dev: DeviceRecord, message: bytes, signature: bytes) -> None:
        if not signature_holds(dev.public_key, message, signature):
            raise OnboardingRefused(
                403,
                "bad_signature",
                "the signature does not verify over the reason, device ID, next public key and "
                "seq with the registered key",
            )

    def _cut_off(self, dev: DeviceRecord) -> None:
        """The broker's deny and the CRL, after the store recorded the revocation."""
        try:
            self.policies.deny(dev, revoke=True)
        except PolicyError as e:
            log.warning("event=successor_deny_failed device=%s why=%s", dev.device_id, e)
        if self.publish_crl is not None:
            try:
                self.publish_crl()
            except OSError as e:
                log.error("event=crl_publish_failed device=%s why=%s", dev.device_id, e)


def _refusal(e: Exception, device_id: str, reason: str, seq: int) -> OnboardingRefused:
    if isinstance(e, SuccessorTaken):
        return OnboardingRefused(
            409,
            "successor_taken",
            "the next identity is registered already to another device; nothing changed",
        )
    if isinstance(e, NotOnboarded):
        return _not_registered(device_id)
    return OnboardingRefused(
        409,
        "no_successor_expected",
        f"device {device_id} has no open {reason} command with seq {seq}"
        + (" and claim" if reason == "transfer" else "")
        + "; nothing changed",
    )
