"""A broker whose rights come from the certificate hears of a device at onboarding only when it
may hold an exception (a deny entry) for it: the `policy_exception` mark, which the policy
layer (host/server/policy, `Policies`) alone decides, is set and committed before any deny is
sent, and cleared once onboarding or enabling removed the entry."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from hil.simdevice import ApiResponse, SimDevice
from host.server.application import Application
from host.server.onboarding import Onboarding, OnboardingRefused
from host.server.policy import MemoryPolicy, PolicyError
from host.server.settings import Settings
from host.server.store import Actor, NotFound

OPERATOR = Actor("operator:alice", "198.51.100.4")


class CertificateRightsPolicy(MemoryPolicy):
    """Records calls like MemoryPolicy, and says rights come with the certificate (like the
    Mosquitto driver); notes the thread each registration ran in."""

    rights_from_certificate = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.threads: list[int] = []
        self.crash_on_disable = False

    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        self.calls.append(("register", device_id))
        self.threads.append(threading.get_ident())
        super().register_device(tenant, device_id, certificate_der)

    def disable_device(self, device_id: str) -> None:
        self.calls.append(("disable", device_id))
        super().disable_device(device_id)
        if self.crash_on_disable:
            # The deny reached the broker; the process dies before the store records it.
            raise SystemExit("killed after the deny")


@pytest.fixture()
def env(tmp_path: Path) -> Any:
    settings = Settings(data_dir=tmp_path)
    policy = CertificateRightsPolicy()
    reg = Application.for_server(settings, broker_port=1, policy=policy)
    svc = reg.onboarding
    reg.create_tenant("acme")
    reg.create_batch("b", "acme")
    yield svc, reg, policy
    reg.close()


def _device(reg: Application) -> SimDevice:
    d = SimDevice("https://localhost", b"")
    reg.import_devices("b", [d.csv_line()])
    return d


def _onboard(svc: Onboarding, d: SimDevice) -> dict[str, Any]:
    h = svc.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
    _, answer = svc.proof(d.proof_body(ApiResponse(200, h)))
    return answer


def _mark(reg: Application, d: SimDevice) -> bool:
    dev = reg.device(d.device_id)
    assert dev is not None
    return dev.policy_exception


def _mark_all(reg: Application) -> None:
    with reg.store.db.transaction() as tx:
        tx.execute("UPDATE devices SET policy_exception = TRUE")


def test_a_new_device_onboards_without_a_broker_call(env: Any) -> None:
    svc, reg, policy = env
    d = _device(reg)
    answer = _onboard(svc, d)
    assert answer["device_id"] == d.device_id and answer["certificate_b64"]
    assert policy.calls == []
    dev = reg.device(d.device_id)
    assert dev is not None and dev.state == "onboarded" and not dev.policy_exception


def test_disable_marks_before_the_deny_and_enable_clears(env: Any) -> None:
    svc, reg, policy = env
    d = _device(reg)
    _onboard(svc, d)
    reg.disable(d.device_id, tenant="acme", actor=OPERATOR)
    assert _mark(reg, d) and d.device_id in policy.disabled
    reg.enable(d.device_id, tenant="acme", actor=OPERATOR)
    assert not _mark(reg, d) and d.device_id not in policy.disabled
    _onboard(svc, d)  # renewal after enable: the entry is gone, the broker is not asked again
    assert [c for c, _ in policy.calls] == ["disable"]


def test_a_deny_whose_record_was_lost_is_cleared_at_the_next_onboarding(env: Any) -> None:
    svc, reg, policy = env
    d = _device(reg)
    policy.crash_on_disable = True
    with pytest.raises(SystemExit):
        reg.disable(d.device_id, tenant="acme", actor=OPERATOR)
    dev = reg.device(d.device_id)
    assert dev is not None and not dev.disabled  # the change itself was not recorded...
    assert dev.policy_exception  # ...but the mark was, before the broker heard of it
    _onboard(svc, d)
    assert policy.calls == [("disable", d.device_id), ("register", d.device_id)]
    assert not _mark(reg, d)
    _onboard(svc, d)  # cleared once: later onboardings do not ask again
    assert len(policy.calls) == 2


def test_a_failed_clear_refuses_with_503_and_keeps_the_mark(env: Any) -> None:
    svc, reg, policy = env
    d = _device(reg)
    reg.disable(d.device_id, tenant="acme", actor=OPERATOR)
    reg.enable(d.device_id, tenant="acme", actor=OPERATOR)
    _mark_all(reg)  # as if the enable's clear had been recorded by an older server
    policy.fail_next = PolicyError("broker down")
    with pytest.raises(OnboardingRefused) as refused:
        _onboard(svc, d)
    assert (refused.value.status, refused.value.code) == (503, "broker_unavailable")
    dev = reg.device(d.device_id)
    assert dev is not None and dev.state == "registered" and dev.policy_exception
    _onboard(svc, d)  # the retry clears it
    assert not _mark(reg, d)


def test_refused_change_of_another_tenants_device_marks_nothing(env: Any) -> None:
    _svc, reg, policy = env
    d = _device(reg)
    with pytest.raises(NotFound):
        reg.disable(d.device_id, tenant="other", actor=OPERATOR)
    assert not _mark(reg, d) and policy.calls == []


def test_proof_async_sends_only_the_broker_call_to_a_worker_thread(env: Any) -> None:
    svc, reg, policy = env
    d = _device(reg)
    _mark_all(reg)
    h = svc.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
    body = d.proof_body(ApiResponse(200, h))

    async def main() -> tuple[int, dict[str, Any]]:
        device_id, answer = await svc.proof_async(body, "192.0.2.1")
        assert device_id == d.device_id
        return threading.get_ident(), answer

    loop_thread, answer = anyio.run(main)
    assert answer["certificate_b64"]
    assert len(policy.threads) == 1 and policy.threads[0] != loop_thread
    assert not _mark(reg, d)
