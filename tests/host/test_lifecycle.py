"""Device state changes through the application layer (host/server/lifecycle.py): each typed
use case asks the broker first, records second, is idempotent, and is scoped to its tenant."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.simdevice import ApiResponse, SimDevice
from host.server.application import Application
from host.server.policy import MemoryPolicy, PolicyError
from host.server.settings import Settings
from host.server.store import Actor, Conflict, NotFound

ALICE = Actor("operator:alice", "198.51.100.4")


class CountingCrl(Application):
    published = 0

    def publish_crl(self) -> None:
        self.published += 1
        super().publish_crl()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[CountingCrl, MemoryPolicy, SimDevice]]:
    policy = MemoryPolicy()
    built = Application.for_server(Settings(data_dir=tmp_path), broker_port=1, policy=policy)
    a = CountingCrl(built.settings, built.store, ca=built.ca, policies=built.policies)
    a.create_batch("b", "acme")
    d = SimDevice("https://localhost", b"")
    a.import_devices("b", [d.csv_line()])
    h = a.onboarding.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
    a.onboarding.proof(d.proof_body(ApiResponse(200, h)))
    yield a, policy, d
    a.close()


def events(a: Application, d: SimDevice) -> list[str]:
    return [e.action for e in reversed(a.audit(target=f"device:{d.device_id}"))]


def test_revoke_puts_the_certificate_on_the_crl_once(app: tuple) -> None:
    a, policy, d = app
    before = a.device(d.device_id)
    assert before is not None and before.serial is not None
    after = a.revoke(d.device_id, tenant="acme", actor=ALICE)
    assert (after.state, after.policy_exception) == ("revoked", True)
    assert [r.serial for r in a.revoked_certs()] == [int(before.serial, 16)]
    assert a.published == 1 and d.device_id not in policy.registered
    assert a.revoke(d.device_id, tenant="acme", actor=ALICE).state == "revoked"
    assert a.published == 1  # a repeat changes and publishes nothing
    assert events(a, d) == ["device.onboard", "device.revoke"]


def test_a_revoked_device_stays_revoked(app: tuple) -> None:
    a, _policy, d = app
    a.revoke(d.device_id, actor=ALICE)
    with pytest.raises(Conflict, match="stays revoked"):
        a.enable(d.device_id, actor=ALICE)
    dev = a.device(d.device_id)
    assert dev is not None and dev.state == "revoked"


def test_disable_and_enable_are_idempotent(app: tuple) -> None:
    a, policy, d = app
    assert a.disable(d.device_id, actor=ALICE).disabled
    assert a.disable(d.device_id, actor=ALICE).disabled
    assert d.device_id in policy.disabled
    enabled = a.enable(d.device_id, actor=ALICE)
    assert not enabled.disabled and not enabled.policy_exception
    assert not a.enable(d.device_id, actor=ALICE).disabled
    assert events(a, d) == ["device.onboard", "device.disable", "device.enable"]


def test_a_broker_refusal_changes_nothing(app: tuple) -> None:
    a, policy, d = app
    policy.fail_next = PolicyError("broker down")
    with pytest.raises(PolicyError):
        a.revoke(d.device_id, actor=ALICE)
    dev = a.device(d.device_id)
    assert dev is not None and dev.state == "onboarded" and a.revoked_certs() == []
    assert a.published == 0 and events(a, d) == ["device.onboard"]


@pytest.mark.parametrize("device_id", ["0" * 64, "xyz", "", "A" * 65])
def test_an_unknown_or_malformed_id_is_not_found(app: tuple, device_id: str) -> None:
    a, _policy, _d = app
    for change in (a.revoke, a.disable, a.enable):
        with pytest.raises(NotFound, match="does not exist"):
            change(device_id, actor=ALICE)


def test_another_tenants_device_does_not_exist_and_is_untouched(app: tuple) -> None:
    a, policy, d = app
    for change in (a.revoke, a.disable, a.enable):
        with pytest.raises(NotFound):
            change(d.device_id, tenant="globex", actor=ALICE)
    dev = a.device(d.device_id)
    assert dev is not None and (dev.state, dev.disabled, dev.policy_exception) == (
        "onboarded",
        False,
        False,
    )
    assert policy.disabled == set() and events(a, d) == ["device.onboard"]


def test_an_upper_case_id_names_the_same_device(app: tuple) -> None:
    a, _policy, d = app
    assert a.disable(d.device_id.upper(), actor=ALICE).device_id == d.device_id
