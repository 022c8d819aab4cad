"""The broker's qlink plugin: its build (cached by what it is made of, a clear error for each
missing tool), the control messages as the server writes them, and the control channel of a
running broker, which refuses every malformed or foreign request and then changes nothing."""

from __future__ import annotations

import datetime as dt
import queue
import stat
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokerutil import REFUSED, Device, Listener
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.simdevice import stop_client
from host.server.broker import ManagedBroker
from host.server.brokerplugin import SOURCE, PluginBuildError, plugin_path
from host.server.brokerplugin.control import (
    CONTROL,
    MAX_IDS,
    RESPONSE,
    Answer,
    chunks,
    parse_answer,
    request,
)
from host.server.ca import CertificateAuthority
from host.server.mqtt import connect_admin
from host.server.policy.mosquitto import MosquittoDynsec

ID = "0123456789abcdef" * 4

# -- the build ----------------------------------------------------------------------------------


def test_the_plugin_is_built_once_per_source_and_reused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = plugin_path(cache=cache)
    built_at = first.stat().st_mtime_ns
    assert plugin_path(cache=cache) == first
    assert first.stat().st_mtime_ns == built_at  # not built again
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert sorted(p.name for p in cache.iterdir()) == [first.name]  # no temporary file left
    changed = tmp_path / "qlink_acl.c"
    changed.write_text(SOURCE.read_text() + "/* another build */\n")
    other = plugin_path(cache=cache, source=changed)
    assert other != first and other.exists()


def test_missing_headers_are_named_with_the_packages_to_install(tmp_path: Path) -> None:
    with pytest.raises(PluginBuildError) as e:
        plugin_path(cache=tmp_path / "cache", include=tmp_path / "no-include")
    message = str(e.value)
    assert "mosquitto_broker.h" in message
    assert "run: make setup" in message
    assert "apt-get install libmosquitto-dev libssl-dev mosquitto-dev" in message
    assert not (tmp_path / "cache").exists()  # nothing made


def test_only_the_missing_headers_are_named(tmp_path: Path) -> None:
    include = tmp_path / "include"
    (include / "openssl").mkdir(parents=True)
    for header in ("mosquitto.h", "mosquitto_plugin.h", "openssl/x509.h"):
        (include / header).write_text("")
    with pytest.raises(PluginBuildError, match=r"apt-get install mosquitto-dev\)$"):
        plugin_path(cache=tmp_path / "cache", include=include)


def test_a_missing_compiler_is_named(tmp_path: Path) -> None:
    with pytest.raises(PluginBuildError, match=r"no working C compiler .*apt-get install gcc"):
        plugin_path(cache=tmp_path / "cache", cc=str(tmp_path / "no-cc"))
    assert not (tmp_path / "cache").exists()


def test_a_compile_error_is_shown_and_leaves_no_file(tmp_path: Path) -> None:
    broken = tmp_path / "qlink_acl.c"
    broken.write_text(SOURCE.read_text() + "\nint broken(void) { return undeclared; }\n")
    with pytest.raises(PluginBuildError, match=r"(?s)failed .*undeclared"):
        plugin_path(cache=tmp_path / "cache", source=broken)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_cache_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(PluginBuildError, match=r"this user's alone.*chmod 700"):
        plugin_path(cache=cache)
    assert list(cache.iterdir()) == []


def test_the_default_cache_follows_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert plugin_path().parent == tmp_path / "qlink" / "brokerplugin"


# -- the messages ----------------------------------------------------------------------------


def test_a_request_is_a_head_line_and_one_line_per_device() -> None:
    assert request("deny", "c1", [ID, "f" * 64]) == f"deny c1\n{ID}\n{'f' * 64}\n".encode()
    assert request("open", "x_Y-9") == b"open x_Y-9\n"


@pytest.mark.parametrize(
    ("verb", "corr", "ids", "rule"),
    [
        ("drop", "c1", [], "verb must be one of"),
        ("deny", "", [], "correlation must be"),
        ("deny", "c" * 33, [], "correlation must be"),
        ("deny", "c 1", [], "correlation must be"),
        ("deny", "c1", [ID.upper()], "not a device ID"),
        ("deny", "c1", [ID[:63]], "not a device ID"),
        ("deny", "c1", [ID + "\n" + ID], "not a device ID"),
        ("open", "c1", [ID], "none with open"),
        ("deny", "c1", [ID] * (MAX_IDS + 1), f"at most {MAX_IDS}"),
    ],
)
def test_a_request_the_plugin_would_refuse_is_not_written(
    verb: str, corr: str, ids: list[str], rule: str
) -> None:
    with pytest.raises(ValueError, match=rule):
        request(verb, corr, ids)


def test_answers_are_read_and_anything_else_is_not() -> None:
    assert parse_answer(b"c1 ok 3 10\n") == Answer("c1", None, 3, 10)
    assert parse_answer(b"- error malformed-head\n") == Answer("-", "malformed-head")
    for bad in (b"c1 ok 3 10", b"c1 ok -3 10\n", b"c1 fine\n", b"c 1 ok 1 1\n", b"\n", b""):
        assert parse_answer(bad) is None


def test_requests_are_cut_at_the_plugins_limit() -> None:
    ids = [f"{i:064x}" for i in range(2 * MAX_IDS + 1)]
    assert [len(c) for c in chunks(ids)] == [MAX_IDS, MAX_IDS, 1]
    assert list(chunks([])) == []


# -- the control channel of a running broker -----------------------------------------------------


class Control:
    """A raw admin connection to the plugin's control topic; the plugin answers it alone."""

    def __init__(self, ca: CertificateAuthority, port: int) -> None:
        self.answers: queue.Queue[bytes] = queue.Queue()

        def configure(c: mqtt.Client) -> None:
            c.on_message = lambda _c, _u, m: (
                self.answers.put(m.payload) if m.topic == RESPONSE else None
            )

        self.client = connect_admin(ca, "127.0.0.1", port, "test-control", None, configure)

    def send(self, payload: bytes) -> bytes:
        info = self.client.publish(CONTROL, payload, qos=1)
        info.wait_for_publish(5)
        return self.answers.get(timeout=5)

    def denied(self) -> int:
        """How many devices the set holds (a deny of none answers with the count)."""
        answer = parse_answer(self.send(b"deny size\n"))
        assert answer is not None and answer.error is None
        return answer.denied

    def close(self) -> None:
        stop_client(self.client)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("plugin")
    ca = CertificateAuthority.load_or_create(root / "ca")
    managed = ManagedBroker(root / "broker", ca)
    managed.start()
    policy = MosquittoDynsec(ca, "127.0.0.1", managed.admin_port)
    policy.restore_denials(["ab" * 32])
    control = Control(ca, managed.admin_port)
    yield {"ca": ca, "broker": managed, "policy": policy, "control": control, "root": root}
    control.close()
    policy.close()
    managed.stop()


@pytest.mark.parametrize(
    ("payload", "answer"),
    [
        (b"", b"- error malformed-head\n"),
        (b"deny\n", b"- error malformed-head\n"),
        (b"deny c1", b"- error malformed-head\n"),
        (b"deny " + b"c" * 60 + b"\n", b"- error malformed-head\n"),  # no newline in reach
        (b"deny \n", b"- error malformed-correlation\n"),
        (b"deny " + b"c" * 33 + b"\n", b"- error malformed-correlation\n"),
        (b"deny c 1\n", b"- error malformed-correlation\n"),
        (b"deny c.1\n", b"- error malformed-correlation\n"),
        (b"deny c\x001\n", b"- error malformed-correlation\n"),
        (b"deny c\xff\n", b"- error malformed-correlation\n"),
        (b"DENY c1\n", b"c1 error unknown-verb\n"),
        (b"denyall c1\n", b"c1 error unknown-verb\n"),
        (b"deny c1\n\n", b"c1 error malformed-id\n"),
        (b"deny c1\n" + ID.upper().encode() + b"\n", b"c1 error malformed-id\n"),
        (b"deny c1\n" + ID.encode(), b"c1 error malformed-id\n"),  # no final newline
        (b"deny c1\n" + ID.encode() + b"\r\n", b"c1 error malformed-id\n"),
        (b"deny c1\n" + ID[:63].encode() + b"g\n", b"c1 error malformed-id\n"),
        # A valid ID before a bad one: checked whole, so the valid one is not denied either.
        (b"deny c1\n" + ID.encode() + b"\n" + b"x" * 64 + b"\n", b"c1 error malformed-id\n"),
        (b"allow c1\n" + ID.encode() + b"\nzz\n", b"c1 error malformed-id\n"),
        (b"open c1\n" + ID.encode() + b"\n", b"c1 error too-many-ids\n"),
        (b"deny c1\n" + (ID.encode() + b"\n") * (MAX_IDS + 1), b"- error too-large\n"),
        (b"deny c1\n" + b"a" * (80 + MAX_IDS * 65), b"- error too-large\n"),
    ],
)
def test_a_malformed_control_request_is_refused_and_changes_nothing(
    broker: dict, payload: bytes, answer: bytes
) -> None:
    control = broker["control"]
    before = control.denied()
    assert control.send(payload) == answer
    assert control.denied() == before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=200) | st.text(alphabet="deny alow0af\n-_", max_size=200))
def test_no_control_payload_changes_the_set_unless_well_formed(
    broker: dict, payload: bytes | str
) -> None:
    control = broker["control"]
    data = payload.encode() if isinstance(payload, str) else payload
    before = control.denied()
    answer = parse_answer(control.send(data))
    assert answer is not None  # every request is answered, in the answer's form
    if answer.error is not None:
        assert control.denied() == before
    else:
        assert data.startswith((b"deny ", b"allow ", b"open "))


def test_deny_and_allow_count_what_they_changed(broker: dict) -> None:
    control = broker["control"]
    before = control.denied()
    other = "cd" * 32
    assert control.send(f"deny d1\n{ID}\n{ID}\n{other}\n".encode()) == (
        f"d1 ok 2 {before + 2}\n".encode()
    )
    assert control.send(f"deny d2\n{ID}\n".encode()) == f"d2 ok 0 {before + 2}\n".encode()
    assert control.send(f"allow d3\n{ID}\n{other}\n".encode()) == f"d3 ok 2 {before}\n".encode()
    assert control.send(f"allow d4\n{ID}\n".encode()) == f"d4 ok 0 {before}\n".encode()
    assert control.send(b"open d5\n") == f"d5 ok 0 {before}\n".encode()  # open already


def test_the_set_holds_many_devices_and_forgets_each_one_allowed(broker: dict) -> None:
    # Enough entries to grow the table several times and to exercise deletion inside runs.
    policy, control = broker["policy"], broker["control"]
    before = control.denied()
    ids = [f"{i:064x}" for i in range(1, 20001)]
    answers = policy.plugin("deny", ids)
    assert sum(a.changed for a in answers) == len(ids)
    assert answers[-1].denied == before + len(ids)
    assert sum(a.changed for a in policy.plugin("allow", ids[::2])) == len(ids) // 2
    assert sum(a.changed for a in policy.plugin("deny", ids)) == len(ids) // 2  # the allowed
    assert sum(a.changed for a in policy.plugin("allow", ids)) == len(ids)
    assert control.denied() == before


def _device_publishes_control(broker: dict, device: Device) -> None:
    control, policy = broker["control"], broker["policy"]
    victim = Device(broker["ca"], broker["root"])
    victim.connect(broker["broker"].port)
    listener = Listener(broker["ca"], broker["broker"].admin_port)
    try:
        before = control.denied()
        device.connect(broker["broker"].port)
        device.publish(CONTROL, f"deny forged\n{victim.id}\n".encode())
        device.publish("$CONTROL/dynamic-security/v1", b'{"commands":[]}')
        # Handled in order: once the device's own message arrives, the requests were handled.
        device.publish(device.topic(), b"after")
        listener.until(device.topic(), b"after")
        assert control.denied() == before
        assert device.messages.empty()  # no answer either
        victim.publish(victim.topic(), b"still-here")
        assert listener.until(victim.topic(), b"still-here")[-1] == (victim.topic(), b"still-here")
        assert not victim.dropped.is_set()
    finally:
        device.close()
        victim.close()
        listener.close()
        policy.enable_device(victim.id)


def test_a_device_cannot_use_the_control_channel(broker: dict) -> None:
    _device_publishes_control(broker, Device(broker["ca"], broker["root"]))


def test_a_device_without_a_tenant_cannot_use_the_control_channel(broker: dict) -> None:
    _device_publishes_control(broker, Device(broker["ca"], broker["root"], tenant=None))


def _odd_certificate(ca: CertificateAuthority, workdir: Path, ous: list[str]) -> Device:
    """A Device whose certificate (from the issuing CA) has these OUs after its CN; its
    topics stay those of tenant acme, which a first OU `acme` would name."""
    device = Device(ca, workdir, tenant=None)
    key = serialization.load_pem_private_key(device.key.read_bytes(), None)
    issuing_key = serialization.load_pem_private_key((ca.dir / "issuing.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(issuing_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    name = [x509.NameAttribute(NameOID.COMMON_NAME, device.id)]
    name += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in ous]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(name))
        .issuer_name(ca.issuing_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(issuing_key, hashes.SHA256())
    )
    device.cert.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + ca.issuing_cert.public_bytes(serialization.Encoding.PEM)
    )
    return device


@pytest.mark.parametrize(
    "ous",
    [["acme", "other"], ["a/b"], ["a+b"], ["#"], ["x" * 65], ["acme space"]],
    ids=["two", "slash", "plus", "hash", "too-long", "space"],
)
def test_a_certificate_whose_ou_is_no_tenant_name_gets_nothing(
    broker: dict, ous: list[str]
) -> None:
    device = _odd_certificate(broker["ca"], broker["root"], ous)
    listener = Listener(broker["ca"], broker["broker"].admin_port)
    sentinel = Device(broker["ca"], broker["root"])
    try:
        device.connect(broker["broker"].port)
        device.publish(device.topic(), b"odd")
        assert [c.value for c in device.subscribe(device.topic(leaf="cmd"))] == [REFUSED]
        sentinel.connect(broker["broker"].port)
        sentinel.publish(sentinel.topic(), b"sentinel")
        assert listener.until(sentinel.topic(), b"sentinel") == [(sentinel.topic(), b"sentinel")]
    finally:
        device.close()
        sentinel.close()
        listener.close()
