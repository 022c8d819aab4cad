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
    a.create_tenant("acme")
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
    before = events(a, d)
    with pytest.raises(Conflict, match="stays revoked"):  # nor is a flag set that means nothing
        a.disable(d.device_id, actor=ALICE)
    dev = a.device(d.device_id)
    assert dev is not None and dev.state == "revoked" and not dev.disabled
    assert events(a, d) == before


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


# -- a whole batch ----------------------------------------------------------------------------


@pytest.fixture
def batch(app: tuple) -> tuple[CountingCrl, MemoryPolicy, list[str]]:
    """Batch `big` of tenant acme: 24 devices, the first onboarded, the second revoked."""
    a, policy, _d = app
    a.create_batch("big", "acme")
    devices = [SimDevice("https://localhost", b"") for _ in range(24)]
    a.import_devices("big", [d.csv_line() for d in devices])
    h = a.onboarding.hello(
        {"device_id": devices[0].device_id, "public_key": devices[0].public_key.hex()}
    )
    a.onboarding.proof(devices[0].proof_body(ApiResponse(200, h)))
    a.revoke(devices[1].device_id, actor=ALICE)
    a.published = 0
    policy.deny_requests.clear()
    return a, policy, [d.device_id for d in devices]


def _batch_revokes(a: Application) -> int:
    return sum(1 for e in a.audit(action="device.revoke") if e.target.startswith("device:"))


def test_revoking_a_batch_denies_its_devices_in_one_request_and_publishes_the_crl_once(
    batch: tuple,
) -> None:
    a, policy, ids = batch
    seen: list[tuple[int, int]] = []
    before = _batch_revokes(a)
    result = a.revoke_batch(
        "big", actor=ALICE, progress=lambda done, total: seen.append((done, total))
    )
    assert (result.batch, result.tenant, result.devices) == ("big", "acme", 24)
    assert (result.revoked, result.already_revoked) == (23, 1)
    assert policy.deny_requests == [sorted(i for i in ids if i != ids[1])]
    assert a.published == 1
    assert {d.state for d in a.devices(batch="big")} == {"revoked"}
    onboarded = a.device(ids[0])
    assert onboarded is not None and onboarded.serial is not None
    assert int(onboarded.serial, 16) in {r.serial for r in a.revoked_certs()}
    assert _batch_revokes(a) - before == 23  # one audit event per device, by its operator
    assert {e.actor for e in a.audit(action="device.revoke")} == {ALICE.name}
    assert seen[-1] == (23, 23) and len(seen) == 23
    # The other batch of the tenant is untouched.
    assert {d.state for d in a.devices(batch="b")} == {"onboarded"}


def test_revoking_a_batch_again_changes_nothing(batch: tuple) -> None:
    a, policy, _ids = batch
    a.revoke_batch("big", tenant="acme", actor=ALICE)
    count, published = _batch_revokes(a), a.published
    again = a.revoke_batch("big", tenant="acme", actor=ALICE)
    assert (again.revoked, again.already_revoked, again.devices) == (0, 24, 24)
    assert len(policy.deny_requests) == 1 and a.published == published
    assert _batch_revokes(a) == count


@pytest.mark.parametrize(("name", "tenant"), [("nope", None), ("big", "globex"), ("", None)])
def test_an_unknown_batch_is_not_found_and_nothing_changes(
    batch: tuple, name: str, tenant: str | None
) -> None:
    a, policy, _ids = batch
    states = [(d.device_id, d.state) for d in a.devices()]
    with pytest.raises(NotFound, match=r"does not exist; see: qlink batch list"):
        a.revoke_batch(name, tenant=tenant, actor=ALICE)
    assert [(d.device_id, d.state) for d in a.devices()] == states
    assert policy.deny_requests == [] and a.published == 0


def test_a_broker_refusal_revokes_no_device_of_the_batch(batch: tuple) -> None:
    a, policy, _ids = batch
    policy.fail_next = PolicyError("broker down")
    with pytest.raises(PolicyError):
        a.revoke_batch("big", actor=ALICE)
    assert [d.state for d in a.devices(batch="big")].count("revoked") == 1
    assert a.published == 0
    assert a.revoke_batch("big", actor=ALICE).revoked == 23  # a retry completes it
