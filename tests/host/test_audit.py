"""The audit log: every state change leaves exactly one event (who, what, when, from where) in
the same transaction; a repeated (no-op) change and a refused change leave none."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hil.simdevice import SimDevice
from host.server.application import Application
from host.server.policy import MemoryPolicy, PolicyError
from host.server.settings import Settings
from host.server.store import Actor, ImportRejected

ALICE = Actor("operator:alice", "198.51.100.4")


def actions(reg: Application) -> list[tuple[str, str, str, str]]:
    return [(a.action, a.target, a.actor, a.source) for a in reversed(reg.audit())]


def test_every_change_is_one_event_and_no_ops_are_none(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    policy = MemoryPolicy()
    reg = Application.for_server(settings, broker_port=1, policy=policy)
    svc = reg.onboarding
    t0 = time.time()
    reg.create_tenant("acme", actor=ALICE)
    reg.create_batch("b", "acme", actor=ALICE)
    d = SimDevice("https://localhost", b"")
    reg.import_devices("b", [d.csv_line()], actor=ALICE)
    reg.import_devices("b", [d.csv_line()], actor=ALICE)  # a retry is logged (added 0)
    reg.set_batch_active("b", False, actor=ALICE)
    reg.set_batch_active("b", False, actor=ALICE)  # no-op
    reg.set_batch_active("b", True, actor=ALICE)
    reg.create_token("bob", "acme", "viewer", actor=ALICE)
    reg.revoke_tokens("bob", "acme", actor=ALICE)
    reg.revoke_tokens("bob", "acme", actor=ALICE)  # no-op
    from hil.simdevice import ApiResponse

    h = svc.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
    body = d.proof_body(ApiResponse(200, h))
    svc.proof(body, "203.0.113.9")
    svc.proof(body, "203.0.113.9")  # the same proof retried: no new certificate, no event
    reg.disable(d.device_id, tenant="acme", actor=ALICE)
    reg.disable(d.device_id, tenant="acme", actor=ALICE)  # no-op
    policy.fail_next = PolicyError("down")
    with pytest.raises(PolicyError):
        reg.enable(d.device_id, tenant="acme", actor=ALICE)  # refused: nothing changes
    reg.enable(d.device_id, tenant="acme", actor=ALICE)
    reg.revoke(d.device_id, tenant="acme", actor=ALICE)
    with pytest.raises(ImportRejected):
        reg.import_devices("b", ["junk"], actor=ALICE)
    dev = f"device:{d.device_id}"
    assert actions(reg) == [
        ("tenant.create", "tenant:acme", *ALICE.__dict__.values()),
        ("batch.create", "batch:b", *ALICE.__dict__.values()),
        ("batch.import", "batch:b", *ALICE.__dict__.values()),
        ("batch.import", "batch:b", *ALICE.__dict__.values()),
        ("batch.disable", "batch:b", *ALICE.__dict__.values()),
        ("batch.enable", "batch:b", *ALICE.__dict__.values()),
        ("token.create", "operator:bob", *ALICE.__dict__.values()),
        ("token.revoke", "operator:bob", *ALICE.__dict__.values()),
        ("device.onboard", dev, f"device:{d.device_id}", "203.0.113.9"),
        ("device.disable", dev, *ALICE.__dict__.values()),
        ("device.enable", dev, *ALICE.__dict__.values()),
        ("device.revoke", dev, *ALICE.__dict__.values()),
    ]
    events = reg.audit()
    assert all(a.tenant == "acme" and t0 <= a.at <= time.time() for a in events)
    imports = [a.detail for a in events if a.action == "batch.import"]
    assert imports == [{"added": 0, "unchanged": 1}, {"added": 1, "unchanged": 0}]
    assert [a.action for a in reg.audit(action="device.revoke")] == ["device.revoke"]
    assert reg.audit("globex") == []
    reg.close()
