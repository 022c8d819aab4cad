"""The managed Mosquitto as the server sets it up: device rights from the certificate (the
qlink plugin: CN = device ID, OU = tenant; a CN-only certificate falls through to the pattern
ACL `qlink/+/%u/#`), denials in the plugin's set, the admin in the dynamic-security plugin.

Mosquitto 2.0.11 with `use_identity_as_username` skips the password check entirely: any
certificate the CA issued connects; what it may do is the ACL check's answer. Helpers and the
way "does not arrive" is proven: tests/host/brokerutil.py.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokerutil import REFUSED, TENANT, Device, Listener, reaches_broker
from cryptography import x509

from host.server.broker import ADMIN_ROLE, ManagedBroker, admin_acls, initial_dynsec
from host.server.ca import ADMIN_CN, CertificateAuthority
from host.server.files import atomic_write
from host.server.policy import Policies
from host.server.policy.mosquitto import MosquittoDynsec
from host.server.store import LOCAL, Store


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("broker")
    ca = CertificateAuthority.load_or_create(root / "ca")
    broker = ManagedBroker(root / "broker", ca)
    broker.start()
    policy = MosquittoDynsec(ca, "127.0.0.1", broker.admin_port)
    policy.restore_denials([])  # what the server does at start: no denials, devices served
    listener = Listener(ca, broker.admin_port)
    devices = [Device(ca, root) for _ in range(3)]
    a, b, stranger = devices
    policy.register_device(TENANT, a.id)
    policy.register_device(TENANT, b.id)
    for d in devices:
        d.connect(broker.port)
    yield {
        "ca": ca,
        "broker": broker,
        "policy": policy,
        "listener": listener,
        "a": a,
        "b": b,
        "stranger": stranger,
    }
    for d in devices:
        d.close()
    listener.close()
    policy.close()
    broker.stop()


def test_device_publish_to_own_topics_arrives(env: dict) -> None:
    a, listener = env["a"], env["listener"]
    a.publish(a.topic(), b'{"seq":1}')
    assert listener.until(a.topic(), b'{"seq":1}') == [(a.topic(), b'{"seq":1}')]
    a.publish(a.topic(leaf="event"), b'{"event":"online"}')
    assert listener.until(a.topic(leaf="event"), b'{"event":"online"}') == [
        (a.topic(leaf="event"), b'{"event":"online"}')
    ]


def test_device_publish_to_other_device_topic_does_not_arrive(env: dict) -> None:
    a, b, listener = env["a"], env["b"], env["listener"]
    a.publish(a.topic(device_id=b.id), b"forged")
    a.publish(a.topic(), b"sentinel-1")
    assert listener.until(a.topic(), b"sentinel-1") == [(a.topic(), b"sentinel-1")]


def test_device_publish_under_another_tenants_prefix_does_not_arrive(env: dict) -> None:
    # The certificate's OU is the tenant: its own ID under another tenant is not its topic.
    a, b, listener = env["a"], env["b"], env["listener"]
    a.publish(a.topic(tenant="other"), b"own-id-other-tenant")
    a.publish(a.topic(tenant="other", device_id=b.id), b"forged")
    a.publish(a.topic(tenant="other", leaf="event"), b"own-id-other-tenant")
    a.publish(a.topic(), b"sentinel-2")
    assert listener.until(a.topic(), b"sentinel-2") == [(a.topic(), b"sentinel-2")]


def test_device_cannot_publish_outside_its_own_topics(env: dict) -> None:
    s, a, listener = env["stranger"], env["a"], env["listener"]
    for topic in (
        a.topic(),
        s.topic(leaf="cmd"),  # its command channel: the server's alone
        s.topic(leaf="telemetry/x"),
        s.topic(leaf="events"),
        f"qlink/{TENANT}/{s.id}0/telemetry",  # an ID that merely starts with its own
        f"qlink/{TENANT}/x/{s.id}/telemetry",
        f"qlink/{TENANT}x/{s.id}/telemetry",  # a tenant that merely starts with its own
        f"qlink/{TENANT}/{s.id}",
        "qlink/x",
        "other/topic",
        f"other/{TENANT}/{s.id}/telemetry",
        "$CONTROL/dynamic-security/v1",
    ):
        s.publish(topic, b"from-stranger")
    a.publish(a.topic(), b"sentinel-3")
    assert listener.until(a.topic(), b"sentinel-3") == [(a.topic(), b"sentinel-3")]


@pytest.mark.parametrize(
    "topic",
    [
        "qlink/{tenant}/{other}/cmd",
        "qlink/{tenant}/{other}/#",
        "qlink/other/{own}/cmd",
        "qlink/{tenant}/{own}/#",
        "qlink/{tenant}/{own}/+",
        "qlink/{tenant}/{own}/telemetry",
        "qlink/+/{own}/cmd",
        "qlink/#",
        "#",
        "$SYS/#",
        "$CONTROL/qlink/v1/response",
    ],
)
def test_a_subscription_beyond_the_own_cmd_topic_is_refused_with_0x80(
    env: dict, topic: str
) -> None:
    a, b = env["a"], env["b"]
    filt = topic.format(tenant=TENANT, other=b.id, own=a.id)
    codes = a.subscribe(filt)
    assert [c.value for c in codes] == [REFUSED]


def test_the_admin_sends_on_a_devices_cmd_topic_and_only_that_device_receives_it(
    env: dict,
) -> None:
    a, b, listener = env["a"], env["b"], env["listener"]
    assert [c.value for c in a.subscribe(a.topic(leaf="cmd"))] == [1]
    assert [c.value for c in b.subscribe(b.topic(leaf="cmd"))] == [1]
    try:
        for d in (a, b):
            info = listener.client.publish(d.topic(leaf="cmd"), b"for-" + d.id[:8].encode(), 1)
            info.wait_for_publish(5)
        assert a.messages.get(timeout=5) == (a.topic(leaf="cmd"), b"for-" + a.id[:8].encode())
        # One connection's messages arrive in order: a's command would have come to b first.
        assert b.messages.get(timeout=5) == (b.topic(leaf="cmd"), b"for-" + b.id[:8].encode())
        listener.until(b.topic(leaf="cmd"), b"for-" + b.id[:8].encode())  # its own copies
    finally:
        assert a.client is not None and b.client is not None
        a.client.unsubscribe(a.topic(leaf="cmd"))
        b.client.unsubscribe(b.topic(leaf="cmd"))


def test_a_certificate_without_a_tenant_keeps_the_pattern_rights(env: dict, tmp_path: Path) -> None:
    # Issued before the tenant was written in: the plugin defers to the acl_file pattern, its
    # own ID's topics in any tenant, never another device's, until the device renews.
    a, b, listener = env["a"], env["b"], env["listener"]
    old = Device(env["ca"], tmp_path, tenant=None)
    old.connect(env["broker"].port)
    try:
        old.publish(old.topic(device_id=b.id), b"forged")
        old.publish(old.topic(tenant="other"), b"old-form")
        assert listener.until(old.topic(tenant="other"), b"old-form") == [
            (old.topic(tenant="other"), b"old-form")
        ]
        # Granted (the acl_file judges deliveries, not subscriptions), yet nothing delivered:
        # its own message, published after a's, is the first it receives.
        assert [c.value for c in old.subscribe(a.topic())] == [1]
        assert [c.value for c in old.subscribe(old.topic())] == [1]
        a.publish(a.topic(), b"not-for-old")
        old.publish(old.topic(), b"sentinel-old")
        assert old.messages.get(timeout=5) == (old.topic(), b"sentinel-old")
    finally:
        old.close()


def test_register_leaves_no_entry_and_clears_a_deny(env: dict, tmp_path: Path) -> None:
    policy, listener, a = env["policy"], env["listener"], env["a"]
    c = Device(env["ca"], tmp_path)
    try:
        policy.register_device(TENANT, c.id)
        policy.register_device(TENANT, c.id)  # idempotent
        assert policy.request("getClient", username=c.id).get("error") == "Client not found"
        policy.disable_device(c.id)
        assert not reaches_broker(c, env["broker"].port, listener, a)
        policy.register_device(TENANT, c.id)
        assert reaches_broker(c, env["broker"].port, listener, a)
    finally:
        c.close()


def test_the_admin_role_manages_both_plugins_and_sends_commands(env: dict) -> None:
    policy = env["policy"]
    role = policy.request("getRole", rolename=ADMIN_ROLE)["data"]["role"]
    have = {(x["acltype"], x["topic"], x["allow"]) for x in role["acls"]}
    assert {
        ("publishClientSend", "$CONTROL/qlink/v1", True),
        ("publishClientSend", "qlink/+/+/cmd", True),
    } <= have
    assert have == {(x["acltype"], x["topic"], x["allow"]) for x in admin_acls()}
    clients = policy.request("listClients")["data"]["clients"]
    assert clients == [ADMIN_CN]


def test_broker_files(env: dict) -> None:
    broker = env["broker"]
    conf = broker.config_path.read_text().splitlines()
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        "persistence false",
        "set_tcp_nodelay true",
        "use_username_as_clientid true",
        f"listener {broker.port} 127.0.0.1",
        f"listener {broker.admin_port} 127.0.0.1",
        f"cafile {broker.ca.cert_path('admin')}",
        f"plugin_opt_admin {ADMIN_CN}",
    ):
        assert line in conf
    plugins = [x.split(" ", 1)[1] for x in conf if x.startswith("plugin ")]
    assert [Path(x).name.split("-")[0] for x in plugins] == [
        "qlink_acl",
        "mosquitto_dynamic_security.so",
    ]  # the qlink plugin is asked first
    assert f"acl_file {broker.acl_path}" in conf
    acl = [x for x in broker.acl_path.read_text().splitlines() if not x.startswith("#")]
    assert acl == ["pattern readwrite qlink/+/%u/#"]
    assert stat.S_IMODE(broker.acl_path.stat().st_mode) == 0o600
    dynsec = json.loads(broker.dynsec_path.read_text())
    assert dynsec["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": True,
        "subscribe": False,
        "unsubscribe": True,
    }
    assert stat.S_IMODE(broker.dynsec_path.stat().st_mode) == 0o600


def test_broker_stops(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    broker = ManagedBroker(tmp_path / "broker", ca)
    broker.start()
    assert broker.running
    broker.stop()
    assert not broker.running
    import socket

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", broker.port), 1):
        pass


def test_disable_enable_delete_live(env: dict, tmp_path: Path) -> None:
    policy, listener, a = env["policy"], env["listener"], env["a"]
    port = env["broker"].port
    c = Device(env["ca"], tmp_path)
    policy.register_device(TENANT, c.id)
    try:
        assert reaches_broker(c, port, listener, a)
        policy.disable_device(c.id)
        policy.disable_device(c.id)  # idempotent
        assert not reaches_broker(c, port, listener, a)
        policy.enable_device(c.id)
        assert reaches_broker(c, port, listener, a)
        policy.delete_device(c.id)
        policy.delete_device(c.id)  # idempotent
        assert not reaches_broker(c, port, listener, a)
        # The denial is the plugin's alone: no dynamic-security entry, no file rewritten.
        assert policy.request("getClient", username=c.id).get("error") == "Client not found"
    finally:
        c.close()


def test_a_deny_drops_the_live_connection_and_keeps_the_device_out(
    env: dict, tmp_path: Path
) -> None:
    policy, port = env["policy"], env["broker"].port
    c = Device(env["ca"], tmp_path)
    c.connect(port)
    try:
        assert [x.value for x in c.subscribe(c.topic(leaf="cmd"))] == [1]
        policy.disable_device(c.id)
        assert c.dropped.wait(2.0), "the denied device's connection was not dropped"
        # Mosquitto 2.0 authenticates nobody with use_identity_as_username: the connection
        # opens, and its first request is refused and gets it dropped at the next tick.
        c.close()
        c.connect(port)
        assert [x.value for x in c.subscribe(c.topic(leaf="cmd"))] == [REFUSED]
        assert c.dropped.wait(2.0), "the reconnected denied device was not dropped"
        c.close()
        policy.enable_device(c.id)  # allow restores its rights
        c.connect(port)
        assert [x.value for x in c.subscribe(c.topic(leaf="cmd"))] == [1]
        assert not c.dropped.is_set()
    finally:
        c.close()
        policy.enable_device(c.id)


def test_many_devices_are_denied_in_one_request_and_all_dropped(env: dict, tmp_path: Path) -> None:
    policy, broker = env["policy"], env["broker"]
    fleet = [Device(env["ca"], tmp_path) for _ in range(20)]
    for d in fleet:
        d.connect(broker.port)
    mark = broker.log_path.stat().st_size
    try:
        policy.deny_devices([d.id for d in fleet])
        deadline = time.monotonic() + 5
        for d in fleet:
            assert d.dropped.wait(max(0.0, deadline - time.monotonic())), d.id
        log = broker.log_path.read_bytes()[mark:].decode()
        assert log.count("qlink_acl: deny:") == 1, log
        assert "qlink_acl: deny: 20 changed" in log
    finally:
        for d in fleet:
            d.close()
        policy.plugin("allow", [d.id for d in fleet])


def test_revoked_certificate_fails_tls_after_crl_reload(env: dict, tmp_path: Path) -> None:
    ca, broker, policy = env["ca"], env["broker"], env["policy"]
    c = Device(ca, tmp_path)
    policy.register_device(TENANT, c.id)
    try:
        c.connect(broker.port)
        c.close()
        serial = x509.load_pem_x509_certificates(c.cert.read_bytes())[0].serial_number
        ca.publish_crl([(serial, 1.8e9)])
        mark = broker.log_path.stat().st_size
        assert broker.reload()
        deadline = time.monotonic() + 5
        while b"Reloading config" not in broker.log_path.read_bytes()[mark:]:
            assert time.monotonic() < deadline, broker.log_tail()
            time.sleep(0.05)
        with pytest.raises(AssertionError, match="no CONNACK"):
            c.connect(broker.port)
        assert "certificate verify failed" in broker.log_tail(5)
    finally:
        c.close()
        ca.publish_crl([])
        broker.reload()


def test_denials_are_applied_again_from_the_store(env: dict, tmp_path: Path) -> None:
    # The denied set lives in broker memory: the server applies the store's denials at start.
    policy, listener, a = env["policy"], env["listener"], env["a"]
    port = env["broker"].port
    c, d = Device(env["ca"], tmp_path), Device(env["ca"], tmp_path)
    reg = Store(tmp_path / "registry.sqlite")
    try:
        reg.tenants.create(TENANT)
        reg.batches.create("b1", TENANT)
        reg.batches.import_devices("b1", [f"{x.id},{x.pub.hex()}" for x in (c, d)])
        dev = reg.devices.get(c.id)
        assert dev is not None
        reg.devices.set_disabled(dev, True, LOCAL)
        assert reaches_broker(c, port, listener, a)  # the store says disabled, the broker not
        policies = Policies({"mosquitto": policy}, reg.devices)
        assert policies.reapply_denials("mosquitto") == 1
        assert not reaches_broker(c, port, listener, a)
        assert reaches_broker(d, port, listener, a)  # an enabled device keeps its rights
    finally:
        reg.close()
        c.close()
        d.close()
        policy.enable_device(c.id)


def test_a_started_broker_serves_no_device_until_the_denials_are_restored(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    broker = ManagedBroker(tmp_path / "broker", ca)
    broker.start()
    c = Device(ca, tmp_path)
    policy = MosquittoDynsec(ca, "127.0.0.1", broker.admin_port)
    try:
        c.connect(broker.port)
        assert [x.value for x in c.subscribe(c.topic(leaf="cmd"))] == [REFUSED]
        assert c.dropped.wait(2.0)
        c.close()
        policy.restore_denials([c.id])
        c.connect(broker.port)
        assert [x.value for x in c.subscribe(c.topic(leaf="cmd"))] == [REFUSED]  # denied
        c.close()
        policy.enable_device(c.id)
        c.connect(broker.port)
        assert [x.value for x in c.subscribe(c.topic(leaf="cmd"))] == [1]
    finally:
        c.close()
        policy.close()
        broker.stop()


def test_an_older_dynamic_security_file_is_upgraded_at_start(tmp_path: Path) -> None:
    # A file of the per-device deny scheme: a client with the deny role per denied device, and
    # an admin role without the qlink plugin's control topic or the command channel.
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    broker = ManagedBroker(tmp_path / "broker", ca)
    old = initial_dynsec()
    old_admin = [
        acl for acl in admin_acls() if acl["topic"] not in ("$CONTROL/qlink/v1", "qlink/+/+/cmd")
    ]
    old["roles"] = [
        {"rolename": ADMIN_ROLE, "acls": old_admin},
        {"rolename": "qlink-deny", "acls": [{"acltype": "publishClientSend", "topic": "#"}]},
    ]
    denied = "ab" * 32
    old["clients"] = [
        *old["clients"],  # type: ignore[misc]
        {"username": denied, "roles": [{"rolename": "qlink-deny"}], "disabled": True},
    ]
    atomic_write(broker.dynsec_path, json.dumps(old).encode(), 0o600)
    broker.start()
    try:
        doc = json.loads(broker.dynsec_path.read_text())
        assert [c["username"] for c in doc["clients"]] == [ADMIN_CN]
        assert [r["rolename"] for r in doc["roles"]] == [ADMIN_ROLE]
        policy = MosquittoDynsec(ca, "127.0.0.1", broker.admin_port)
        try:
            role = policy.request("getRole", rolename=ADMIN_ROLE)["data"]["role"]
            have = {(x["acltype"], x["topic"]) for x in role["acls"]}
            assert have == {(x["acltype"], x["topic"]) for x in admin_acls()}
            MosquittoDynsec(ca, "127.0.0.1", broker.admin_port).close()  # again: no error
        finally:
            policy.close()
    finally:
        broker.stop()
