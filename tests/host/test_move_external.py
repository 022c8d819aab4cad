"""Moving a batch from the managed broker to an external Mosquitto (docs/protocol.md "Moving a
device to another broker"), end to end: a real `qlink server`, a second, real Mosquitto run as
an operator would run it (tests/host/extbroker.py), simulated devices with real keys, TLS and
MQTT, and the `qlink` CLI in-process.

A device's progress reaches the store through the server's event intake of each target: the
test cannot await that write, so `until` polls the store (as `qlink device command --wait`
does) with a deadline.
"""

from __future__ import annotations

import base64
import json
import queue
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cliutil import run_qlink
from extbroker import ADMIN_USER, ExternalBroker, Watcher

from hil.serverproc import ServerProcess
from hil.simdevice import ApiResponse, SimDevice, publish
from host.server.application import Application
from host.server.ca import CertificateAuthority
from host.server.settings import Settings
from host.server.targets import TargetSpec

TENANT = "acme"
REFUSED = 0x80  # SUBACK return code "Failure" (MQTT 3.1.1, 3.9.3)


@dataclass
class World:
    data: Path
    server: ServerProcess
    ext: ExternalBroker
    app: Application  # the test's own view of the server's store

    def batch(self, name: str, n: int) -> list[tuple[SimDevice, ApiResponse]]:
        """A batch of `n` devices on the managed broker, each onboarded."""
        self.app.create_batch(name, TENANT)
        devices = [SimDevice(self.server.api_url, self.server.root_der()) for _ in range(n)]
        self.app.import_devices(name, [d.csv_line() for d in devices])
        out = []
        for d in devices:
            answer = d.onboard()
            assert answer.status == 200, answer.body
            out.append((d, answer))
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("move")
    settings = Settings(data_dir=root / "data")
    # The qlink CA first: the external broker trusts it for device certificates.
    ca = CertificateAuthority.load_or_create(settings.ca_dir, settings.public_host)
    ext = ExternalBroker(root / "ext", ca).start()
    app = Application.for_operator(settings)
    app.add_target(
        TargetSpec(
            "ext",
            "mosquitto",
            "127.0.0.1",
            ext.port,
            ext.ca_pem_path.read_bytes(),
            ADMIN_USER,
            ext.password,
            ext.admin_port,
        )
    )
    app.create_tenant(TENANT)
    server = ServerProcess(settings.data_dir).start()  # reads the target's events from start
    try:
        yield World(settings.data_dir, server, ext, app)
    finally:
        app.close()
        server.stop()
        ext.stop()


@pytest.fixture
def qlink(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.setenv("COLUMNS", "200")
    return lambda *args: run_qlink(monkeypatch, capsys, *args, "--data-dir", str(world.data))


class Session:
    """A device's MQTT session on the broker its proof answer names, subscribed to its `cmd`."""

    def __init__(self, device: SimDevice, answer: ApiResponse, tmp: Path) -> None:
        self.device = device
        self.topics: dict[str, str] = answer.body["topics"]
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.dropped = False
        self.client = device.mqtt_connect(answer, tmp)
        self.client.on_message = lambda _c, _u, m: self.inbox.put((m.topic, m.payload))
        self.client.on_disconnect = lambda *_a: setattr(self, "dropped", True)
        assert self.subscribe(self.topics["cmd"]) == [1]

    def subscribe(self, topic: str) -> list[int]:
        got: queue.Queue[list[int]] = queue.Queue()
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: got.put([c.value for c in codes])
        self.client.subscribe(topic, qos=1)
        return got.get(timeout=5)

    def command(self) -> dict[str, Any]:
        """The next command's signed body (the signature is test_commands.py's subject)."""
        topic, payload = self.inbox.get(timeout=10)
        assert topic == self.topics["cmd"]
        doc: dict[str, Any] = json.loads(payload[64:])
        return doc

    def event(self, doc: dict[str, Any]) -> None:
        publish(self.client, self.topics["event"], doc)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def until(what: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "the server did not record it in time"
        time.sleep(0.05)


def states(world: World, batch: str) -> dict[str, str]:
    return {m.device_id: m.state for m in world.app.move_status(batch).progress}


def ext_block(world: World) -> dict[str, Any]:
    ca_der = CertificateAuthority.load_or_create(world.ext.root / "own-ca").root_der()
    return {
        "host": "127.0.0.1",
        "port": world.ext.port,
        "ca_b64": base64.b64encode(ca_der).decode(),
    }


def test_a_batch_moves_and_its_devices_report_moved_or_fell_back(
    world: World, qlink: Any, tmp_path: Path
) -> None:
    (a, a_answer), (b, b_answer) = world.batch("fleet", 2)
    waiting = SimDevice(world.server.api_url, world.server.root_der())  # never onboarded
    world.app.import_devices("fleet", [waiting.csv_line()])
    sa, sb = Session(a, a_answer, tmp_path), Session(b, b_answer, tmp_path)
    try:
        code, out, err = qlink("batch", "policy", "fleet", "--to", "ext", "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert (doc["target"], doc["devices"], doc["commanded"]) == ("ext", 2, 2)
        assert {m["device_id"]: m["from_target"] for m in doc["progress"]} == {
            a.device_id: "managed",
            b.device_id: "managed",
        }
        assert world.app.batch("fleet").policy == "external"
        # Each device gets `broker` on the managed broker, where it is.
        cmd_a, cmd_b = sa.command(), sb.command()
        assert (cmd_a["kind"], cmd_a["device_id"]) == ("broker", a.device_id)
        assert (cmd_b["kind"], cmd_b["device_id"]) == ("broker", b.device_id)

        # a: hello + proof name the external broker, same certificate; online there is moved.
        again = a.onboard()
        assert again.status == 200
        assert again.body["broker"] == ext_block(world)
        assert again.body["certificate_b64"] == a_answer.body["certificate_b64"]
        sa.close()
        sa = Session(a, again, tmp_path)
        sa.event({"event": "online", "fw": "1", "cmd_seq": cmd_a["seq"]})
        sa.event({"event": "command", "seq": cmd_a["seq"], "status": "done"})
        until(lambda: states(world, "fleet")[a.device_id] == "moved")
        until(lambda: world.app.commands(a.device_id)[0].state == "done")
        # b: cannot reach it, back on the old broker, says so there: fell back.
        sb.event(
            {"event": "command", "seq": cmd_b["seq"], "status": "failed", "reason": "unreachable"}
        )
        until(lambda: states(world, "fleet")[b.device_id] == "fell_back")
        [cmd] = [c for c in world.app.commands(b.device_id) if c.seq == cmd_b["seq"]]
        assert (cmd.state, cmd.detail) == ("failed", "unreachable")

        code, out, _ = qlink("batch", "policy", "fleet", "--status")
        assert code == 0
        assert "1 moved, 0 commanded, 1 fell back" in out and "fell_back" in out
        actions = {e.action for e in world.app.audit(action="device.moved")}
        assert actions == {"device.moved"}

        # Again: only b, which fell back, is commanded again, from where it is.
        code, out, err = qlink("batch", "policy", "fleet", "--to", "ext", "--json")
        assert code == 0, err
        assert states(world, "fleet") == {a.device_id: "moved", b.device_id: "commanded"}
        assert sb.command()["kind"] == "broker"
        assert sa.inbox.empty()
        [event] = world.app.audit(action="batch.move", target="batch:fleet")  # the first only
        assert (event.detail["from_target"], event.detail["to_target"]) == ("managed", "ext")
    finally:
        sa.close()
        sb.close()


def test_on_the_external_broker_a_device_may_publish_its_own_topics_and_nothing_else(
    world: World, qlink: Any, tmp_path: Path
) -> None:
    (a, _), (b, _) = world.batch("rights", 2)
    [(stranger, stranger_answer)] = world.batch("stays", 1)  # never moved: unknown there
    assert qlink("batch", "policy", "rights", "--to", "ext")[0] == 0
    answer = a.onboard()
    sa = Session(a, answer, tmp_path)
    watcher = Watcher(world.ext)
    try:
        own = sa.topics["telemetry"]
        publish(sa.client, own, b"own")
        assert watcher.until(own, b"own") == [(own, b"own")]
        for topic in (
            own.replace(a.device_id, b.device_id),
            own.replace(f"/{TENANT}/", "/globex/"),
            sa.topics["cmd"],
            own + "/x",
            "qlink/x",
            "$CONTROL/dynamic-security/v1",
        ):
            publish(sa.client, topic, b"forbidden")
        publish(sa.client, own, b"sentinel")
        assert watcher.until(own, b"sentinel") == [(own, b"sentinel")]
        for topic in (sa.topics["cmd"].replace(a.device_id, b.device_id), "qlink/#", "#"):
            assert sa.subscribe(topic) == [REFUSED]
        # A device the target was never told of has no rights there.
        other = dict(stranger_answer.body, broker=ext_block(world))
        ss = Session.__new__(Session)
        ss.client = stranger.mqtt_connect(ApiResponse(200, other), tmp_path)
        try:
            mine = other["topics"]["telemetry"]
            publish(ss.client, mine, b"not-registered")
            publish(sa.client, own, b"sentinel-2")
            assert watcher.until(own, b"sentinel-2") == [(own, b"sentinel-2")]
        finally:
            ss.client.loop_stop()
            ss.client.disconnect()

        # Disabled: denied there and dropped; enabled: its rights back.
        assert qlink("device", "disable", a.device_id)[0] == 0
        until(lambda: sa.dropped)
        sa.close()
        sa = Session.__new__(Session)
        sa.client = a.mqtt_connect(answer, tmp_path)
        publish(sa.client, own, b"while-disabled")
        sa.close()
        assert qlink("device", "enable", a.device_id)[0] == 0
        sa = Session(a, answer, tmp_path)
        publish(sa.client, own, b"enabled")
        assert watcher.until(own, b"enabled") == [(own, b"enabled")]
    finally:
        sa.close()
        watcher.close()


def test_commands_to_a_device_of_a_moved_batch_go_through_its_target_and_back(
    world: World, qlink: Any, tmp_path: Path
) -> None:
    [(a, first)] = world.batch("remote", 1)
    assert qlink("batch", "policy", "remote", "--to", "ext")[0] == 0
    sa = Session(a, a.onboard(), tmp_path)
    try:
        code, out, err = qlink("device", "command", a.device_id, "ping", "--json")
        assert code == 0, err
        seq = json.loads(out)["seq"]
        got = sa.command()
        assert (got["kind"], got["seq"]) == ("ping", seq)
        sa.event({"event": "command", "seq": seq, "status": "done"})
        until(lambda: world.app.commands(a.device_id)[0].state == "done")
        # Back to the managed broker: `broker` comes on the external one, where it is.
        code, out, err = qlink("batch", "policy", "remote", "--to", "managed", "--json")
        assert code == 0, err
        [row] = json.loads(out)["progress"]
        assert (row["from_target"], row["to_target"], row["state"]) == (
            "ext",
            "managed",
            "commanded",
        )
        assert sa.command()["kind"] == "broker"
        back = a.onboard()
        assert back.body["broker"] == first.body["broker"]
        sa.close()
        sa = Session(a, back, tmp_path)
        sa.event({"event": "online", "fw": "1", "cmd_seq": row["seq"]})
        until(lambda: states(world, "remote") == {a.device_id: "moved"})
    finally:
        sa.close()


def _snapshot(world: World) -> dict[str, Any]:
    app = world.app
    return {
        "batches": [(b.name, b.target, b.policy) for b in app.batches()],
        "moves": {b.name: app.move_status(b.name).progress for b in app.batches()},
        "commands": {d.device_id: app.commands(d.device_id) for d in app.devices()},
        "audit": len(app.audit()),
        "targets": [t.name for t in app.list_targets()],
        "secrets": sorted(p.name for p in (world.data / "targets").iterdir()),
    }


def test_bad_moves_say_what_is_wrong_and_change_nothing(world: World, qlink: Any) -> None:
    world.batch("stay", 1)
    # Recorded without a check: one nothing listens on, one with a wrong password.
    ca_pem = world.ext.ca_pem_path.read_bytes()
    for name, password, admin_port in (
        ("gone", world.ext.password, 1),
        ("wrongpw", "not-the-password", world.ext.admin_port),
    ):
        spec = TargetSpec(
            name, "mosquitto", "127.0.0.1", world.ext.port, ca_pem, ADMIN_USER, password, admin_port
        )
        world.app.add_target(spec, check=False)
    before = _snapshot(world)
    for args, message in (
        (("--to", "nowhere"), "target 'nowhere' does not exist; see: qlink target list"),
        (("--to", "gone"), "cannot connect to the broker at 127.0.0.1:1"),
        (("--to", "wrongpw"), "refused the admin connection: Not authorized; check the admin"),
    ):
        code, out, err = qlink("batch", "policy", "stay", *args)
        assert (code, out) == (1, ""), err
        assert message in " ".join(err.split())
        assert _snapshot(world) == before
    code, _, err = qlink("batch", "policy", "nosuch", "--to", "ext")
    assert code == 1 and "batch 'nosuch' does not exist; see: qlink batch list" in err
    code, _, err = qlink("batch", "policy", "stay")
    assert code == 1 and "give --to TARGET to move the batch, or --status" in err
    code, _, err = qlink("batch", "policy", "stay", "--to", "ext", "--status")
    assert code == 1 and "give --to TARGET or --status, not both" in err
    assert _snapshot(world) == before


def test_target_add_checks_the_login_and_keeps_the_password_to_itself(
    world: World, qlink: Any, tmp_path: Path
) -> None:
    ext = world.ext
    wrong = tmp_path / "wrong.password"
    wrong.write_text("guess\n")

    def add(name: str, ca: Path, password: Path, *more: str) -> tuple[int, str, str]:
        return qlink(
            *("target", "add", name, "--kind", "mosquitto", "--host", "127.0.0.1"),
            *("--port", str(ext.port), "--admin-port", str(ext.admin_port), "--ca", str(ca)),
            *("--admin-user", ADMIN_USER, "--admin-password-file", str(password), *more),
        )

    before = _snapshot(world)
    code, out, err = add("ext2", ext.ca_pem_path, wrong)
    assert (code, out) == (1, "")
    assert "refused the admin connection: Not authorized" in err and "nothing was recorded" in err
    code, out, err = add("ext2", world.server.root_pem_path, ext.password_file)  # not its CA
    assert code == 1 and "certificate verify failed" in err and "check the CA" in err
    assert _snapshot(world) == before

    code, out, err = add("ext2", ext.ca_pem_path, ext.password_file, "--json")
    assert code == 0, err
    added = json.loads(out)
    assert (added["kind"], added["admin_user"], added["admin_port"]) == (
        "mosquitto",
        ADMIN_USER,
        ext.admin_port,
    )
    code, out, _ = qlink("target", "list", "--json")
    listed = {t["name"]: t for t in json.loads(out)}
    assert listed["ext2"] == added and listed["managed"]["kind"] == "managed"
    assert all(set(t) == set(added) for t in listed.values())  # no password, no file name
    code, table, _ = qlink("target", "list")
    secret_dir = world.data / "targets"
    assert stat.S_IMODE(secret_dir.stat().st_mode) == 0o700
    files = list(secret_dir.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    password = world.ext.password
    db = b"".join(p.read_bytes() for p in world.data.glob("registry.sqlite*"))
    for text in (
        out,
        table,
        json.dumps([a.detail for a in world.app.audit()]),
        world.server.log_path.read_text(),
    ):
        assert password not in text
    assert password.encode() not in db
    code, _, err = add("ext2", ext.ca_pem_path, ext.password_file)
    assert code == 1 and "target 'ext2' already exists; pick another name" in err


def test_a_board_moves_to_the_external_broker_and_another_falls_back(
    world: World, tmp_path: Path
) -> None:
    """The real firmware on emulated boards: one lands on the external broker; the other is sent
    to a target nobody listens on and comes back to the managed broker by itself."""
    from hil.emulated import EmulatedBoard
    from host.server.broker import free_port

    ext_port = world.ext.port
    for name, port in (("ext-named", ext_port), ("nowhere", free_port("127.0.0.1"))):
        world.app.add_target(
            TargetSpec(
                name,
                "mosquitto",
                "localhost",  # the name the broker certificate's SAN holds
                port,
                world.ext.ca_pem_path.read_bytes(),
                ADMIN_USER,
                world.ext.password,
                world.ext.admin_port,
            ),
            check=name == "ext-named",
        )
    boards = []
    ids = []
    try:
        for batch, target in (("boards-ext", "ext-named"), ("boards-dead", "nowhere")):
            world.app.create_batch(batch, TENANT)
            board = EmulatedBoard(tmp_path, batch)
            boards.append(board)
            board.flash(
                {"server": world.server.api_url, "root_ca": "ca.der", "telemetry_interval_ms": 300},
                world.server.root_der(),
            )
            ident = board.enrol()
            ids.append(ident["device_id"])
            world.app.import_devices(batch, [f"{ident['device_id']},{ident['public_key']}"])
            board.power_on()
            board.wait_for(r"published seq=2\b", timeout=120)
            world.app.move_batch(batch, target)
        landed, dead = boards
        landed.wait_for(rf"I agent: moved to broker localhost:{ext_port} \(seq=\d+\)", timeout=60)
        until(lambda: set(states(world, "boards-ext").values()) == {"moved"}, timeout_s=30)
        # Its telemetry now flows through the external broker, and the server still records it.
        seq = int(max(_published(landed), key=int))

        def seq_seen() -> int:
            dev = world.app.device(ids[0])
            return int(((dev.last_telemetry if dev else None) or {}).get("seq", 0))

        until(lambda: seq_seen() > seq, timeout_s=30)
        # 3 attempts or 60 s, whichever first; then back where it was, and it says so there.
        dead.wait_for(r"W agent: back on broker localhost:\d+ \(seq=\d+\)", timeout=120)
        until(lambda: set(states(world, "boards-dead").values()) == {"fell_back"}, timeout_s=30)
        seq = max(int(m) for m in _published(dead))
        dead.wait_for(rf"published seq={seq + 2}\b", timeout=30)  # telemetry goes on
    finally:
        for b in boards:
            b.power_off()


def _published(board: Any) -> list[str]:
    import re

    return [m.group(1) for ln in board.lines() if (m := re.search(r"published seq=(\d+)", ln))]
