# agent.main with `broker` (docs/protocol.md "Moving a device to another broker"): two fake brokers,
# the old one the stored settings name and the new one the proof's answer names. The move lands
# (done on the new broker, telemetry and its queue carried over), falls back (the new broker
# unreachable for 3 attempts or 60 s: failed `unreachable` on the old one), survives a power cut
# before every flash change and reboots during its trial (attempts count across boots), and a
# refused proof changes nothing. Every flash change is counted (qdid.files.write, os.remove), and
# the chosen one raises PowerCut before it happens, as in ownerenv.
# The RP2040 budget (hil.unixport.HEAP_RP2040): the agent with qdid.p256, and this test's
# support modules.
# heapsize: 192k
# agentenv (source, compiled here) first, while the heap is still empty.
from agentenv import (
    Broker,
    Env,
    setup,
    packets,
    events,
    telemetry_seqs,
    boot,
    cmd,
    CERT,
    CERT2,
    CA,
    ALL_TOPICS,
    D,
)
import os
import sys
import json
import binascii
from agent import main, store
from agent.errors import LinkError
from qdid import files
import certs

OLD = "localhost"  # as agentenv.setup stores it, port 8883, CA
NEW = "broker.new"
CA2 = b"\x30\x03\x02\x01\x08"
NEW_BROKER = {"host": NEW, "port": 8884, "ca_b64": binascii.b2a_base64(CA2).decode().strip()}
POLICY = {"telemetry_interval_ms": 250}
REFUSED = LinkError("tls broker.new:8884: errno 111")
_REAL_OS = os
_REAL_WRITE = files.write


class PowerCut(Exception):
    pass


class _Flash:
    # os as the firmware's flash changes see it: each counted, a power cut at the chosen one.
    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        return getattr(_REAL_OS, name)

    def remove(self, path):
        self._env.change("remove", path)
        _REAL_OS.remove(path)


class MoveEnv(Env):
    # old, new: the sessions each broker answers, in order (a Broker, an exception the TLS
    # connect raises, or an int: seconds an attempt hangs before it fails). cut_at: the flash
    # change (1..) a power cut comes before; 0: none. oom_at: the one the heap fails at.
    def __init__(self, old, new, cut_at=0):
        super().__init__([])
        self.brokers = {OLD: list(old), NEW: list(new)}
        self.broker = NEW_BROKER
        self.topics = ALL_TOPICS
        self.policy = POLICY
        self.cut_at = cut_at
        self.oom_at = 0
        self.changes = []

    def __enter__(self):
        super().__enter__()
        sys.modules["os"] = _Flash(self)  # agent.relocate is imported (again) under it
        store.os = sys.modules["os"]
        files.write = self.write
        return self

    def __exit__(self, *a):
        sys.modules["os"] = _REAL_OS
        store.os = _REAL_OS
        files.write = _REAL_WRITE
        m = sys.modules.get("agent.relocate")
        if m is not None:
            m.os = _REAL_OS
        super().__exit__(*a)

    def change(self, what, path):
        self.changes.append(what + " " + path[path.rfind("/") + 1 :])
        if len(self.changes) == self.cut_at:
            raise PowerCut(self.changes[-1])
        if len(self.changes) == self.oom_at:
            raise MemoryError("memory allocation failed, allocating 1024 bytes")

    def write(self, path, data):
        self.change("write", path)
        _REAL_WRITE(path, data)

    def connect(self, host, port, ca, timeout, cert=None, key=None):
        s = self.brokers[host][0]
        if isinstance(s, int):
            self.brokers[host].pop(0)
            self.opened.append((host, port, ca, cert, key))
            self.ms += s * 1000
            raise LinkError("tls %s:%d: timed out" % (host, port))
        return super().connect(host, port, ca, timeout, cert, key)

    def attempts(self, host=NEW):
        return [o for o in self.opened if o[0] == host]


def on_telemetry(seq, *payloads):
    # A broker hook: pushes the commands once the device has published sample `seq`.
    def hook(broker, topic, payload):
        if topic.endswith("/telemetry") and json.loads(payload)["seq"] == seq:
            for p in payloads:
                broker.push(p)

    return hook


def commanding(seq=1):
    # The old broker's first session: the `broker` command after the first sample.
    return Broker(on_publish=on_telemetry(1, cmd(seq, "broker")))


def ack(seq, status, reason=None):
    doc = {"event": "command", "seq": seq, "status": status}
    if reason:
        doc["reason"] = reason
    return doc


# Sent again after a power cut that came after the seq was written: refused, never run twice.
REPLAYED = {"event": "command_rejected", "seq": 1, "reason": "replayed"}


def logged(env, *lines):
    for line in lines:
        assert line in env.lines, line


def online(cmd_seq):
    return {"event": "online", "fw": "0.1.0", "cmd_seq": cmd_seq}


def start(extra, policy=POLICY):
    try:
        os.remove(D + "/relocate.json")  # a test that failed halfway may have left one
    except OSError:
        pass
    return setup(extra, topics=ALL_TOPICS, policy=policy)


def boot_with(env, p):
    with env:
        return main.run(None, p, D, boot)


def stored():
    return store.load(D, certs.DEVICE_ID, certs.DEVICE_PUB)


def relocate_doc():
    raw = files.read(D + "/relocate.json")
    return None if raw is None else json.loads(raw)


def read(name):
    return files.read(D + "/" + name)


def no_module():
    return "agent.relocate" not in sys.modules


# -- the move lands --------------------------------------------------------------------------


def test_the_move_lands_done_on_the_new_broker_with_the_telemetry_queue_carried_over():
    old = commanding()
    new = Broker()
    env = MoveEnv([old], [REFUSED, new])  # the first attempt fails: samples queue meanwhile
    st = boot_with(env, start({"max_messages": 8}))
    assert st.sent == 8 and st.failures == 0
    # Old broker: accepted, then a clean close (DISCONNECT) before the proof.
    assert events(old) == [online(0), ack(1, "accepted")]
    assert packets(old.out)[-1] == (0xE0, b"") and old.closed
    assert env.posts == ["/v1/onboard/hello", "/v1/onboard/proof"]
    # The new broker with its own CA, the same certificate (not a failure here).
    assert [(o[0], o[1], o[2], o[3]) for o in env.opened] == [
        (OLD, 8883, CA, CERT),
        (NEW, 8884, CA2, CERT),
        (NEW, 8884, CA2, CERT),
    ]
    got = events(new)
    assert got[0] == online(1)
    assert got[1]["event"] == "reconnected" and got[1]["queued"] >= 1
    assert got[2] == ack(1, "done")
    # Telemetry goes on there, the queue first, in order, each sample once.
    assert telemetry_seqs(old) == [1]
    assert telemetry_seqs(new) == list(range(2, 9))
    # The new settings stay; the previous ones are forgotten.
    s = stored()
    assert (s.broker_host, s.broker_port, s.broker_ca, s.cert_der) == (NEW, 8884, CA2, CERT)
    assert relocate_doc() is None and no_module()
    assert env.changes == [
        "write cmd_seq.bin",
        "write relocate.json",
        "write cert.der",
        "write onboard.json",
        "write relocate.json",
        "write relocate.json",
        "remove relocate.json",
    ]
    logged(
        env,
        "I command: seq=1 kind=broker accepted",
        "I agent: moving to broker broker.new:8884 (seq=1)",
        "I agent: trying broker broker.new:8884 (attempt 1 of 3)",
        "I agent: trying broker broker.new:8884 (attempt 2 of 3)",
        "I agent: moved to broker broker.new:8884 (seq=1)",
        "I command: seq=1 done",
    )


def test_a_new_certificate_with_the_move_is_used_at_the_new_broker():
    new = Broker()
    env = MoveEnv([commanding()], [new])
    env.issue = [CERT2]  # due for renewal as well: the proof's answer carries a new one
    boot_with(env, start({"max_messages": 3}))
    assert [o[3] for o in env.opened] == [CERT, CERT2]
    assert events(new)[:2] == [online(1), ack(1, "done")]
    assert stored().cert_der == CERT2 and stored().broker_host == NEW


def test_an_answer_naming_the_broker_in_use_is_done_without_a_trial():
    old = commanding()
    again = Broker()
    env = MoveEnv([old, again], [])
    env.broker = {"host": OLD, "port": 8883, "ca_b64": binascii.b2a_base64(CA).decode().strip()}
    boot_with(env, start({"max_messages": 3}))
    assert events(again)[:2] == [online(1), ack(1, "done")]
    assert relocate_doc() is None and env.attempts() == []
    assert "I agent: broker localhost:8883 unchanged (seq=1)" in env.lines


# -- the new broker cannot be reached --------------------------------------------------------


def test_after_3_failed_attempts_the_device_goes_back_and_reports_failed_unreachable():
    first = commanding()
    back = Broker()
    spare = Broker()  # a fourth attempt would reach it: there must be none
    env = MoveEnv([first, back], [REFUSED, REFUSED, REFUSED, spare])
    p = start({"max_messages": 6})
    before = read("onboard.json")
    st = boot_with(env, p)
    assert st.sent == 6
    hosts = [(o[0], o[2]) for o in env.opened]
    assert hosts == [(OLD, CA), (NEW, CA2), (NEW, CA2), (NEW, CA2), (OLD, CA)]
    assert env.brokers[NEW] == [spare] and spare.out == bytearray()
    got = events(back)
    assert got[0] == online(1)
    assert got[1]["event"] == "reconnected" and got[1]["failures"] == 3
    assert got[2] == ack(1, "failed", "unreachable")
    assert telemetry_seqs(first) + telemetry_seqs(back) == list(range(1, 7))
    # The previous settings are back, byte for byte in what they say; nothing is left over.
    s = stored()
    assert (s.broker_host, s.broker_port, s.broker_ca, s.cert_der) == (OLD, 8883, CA, CERT)
    assert json.loads(read("onboard.json"))["broker"] == json.loads(before)["broker"]
    assert relocate_doc() is None and no_module()
    logged(
        env,
        "W agent: broker broker.new:8884 unreachable; back to localhost:8883 (seq=1)",
        "W agent: back on broker localhost:8883 (seq=1)",
        "W command: seq=1 failed: unreachable",
    )


def test_after_60_s_no_further_attempt_starts_even_with_attempts_left():
    back = Broker()
    env = MoveEnv([commanding(), back], [40, 40, Broker()])  # each attempt hangs 40 s
    boot_with(env, start({"max_messages": 4}))
    assert len(env.attempts()) == 2  # the second started before 60 s, a third would not
    assert events(back)[2] == ack(1, "failed", "unreachable")
    assert stored().broker_host == OLD


def test_a_new_broker_refusing_the_connection_is_a_failed_attempt_not_a_reason_to_onboard():
    back = Broker()
    no = b"\x20\x02\x00\x05"  # CONNACK "not authorized" (MQTT 3.1.1, 3.2.2.3)
    env = MoveEnv([commanding(), back], [Broker(connack=no) for _ in range(3)])
    boot_with(env, start({"max_messages": 4}))
    assert len(env.attempts()) == 3 and env.onboards == 1  # the move's proof only
    refused = [ln for ln in env.lines if ln.startswith("W agent: link failed")]
    assert len(refused) == 3 and refused[0].startswith(
        "W agent: link failed (1 in a row): mqtt: connection refused: "
    )
    assert not [ln for ln in env.lines if ln.endswith("onboarding again")]
    assert events(back)[2] == ack(1, "failed", "unreachable")
    assert stored().broker_host == OLD and stored().cert_der == CERT


# -- reboots and power cuts -------------------------------------------------------------------


def test_attempts_count_across_reboots_so_the_device_is_never_stranded():
    # Each boot makes one attempt and then stops (max_failures 1), as a board reset in the
    # trial would: the fourth boot goes straight back to the previous broker.
    p = start({"max_messages": 2, "max_failures": 1})
    env = MoveEnv([commanding()], [REFUSED])
    boot_with(env, p)
    assert relocate_doc()["phase"] == "trial" and relocate_doc()["tries"] == 1
    assert stored().broker_host == NEW
    for tries in (2, 3):
        env = MoveEnv([], [REFUSED, Broker()])
        boot_with(env, p)
        assert env.posts == [] and len(env.attempts()) == 1  # no proof again: the trial goes on
        assert relocate_doc()["tries"] == tries
    back = Broker()
    env = MoveEnv([back], [Broker()])
    boot_with(env, p)
    assert env.attempts() == [] and [o[0] for o in env.opened] == [OLD]
    assert events(back)[:2] == [online(1), ack(1, "failed", "unreachable")]
    assert relocate_doc() is None and stored().broker_host == OLD


def test_a_reboot_during_the_trial_can_still_land_on_the_new_broker():
    p = start({"max_messages": 2, "max_failures": 1})
    boot_with(MoveEnv([commanding()], [REFUSED]), p)
    new = Broker()
    env = MoveEnv([], [new])
    boot_with(env, p)
    assert events(new)[:2] == [online(1), ack(1, "done")]
    assert relocate_doc() is None and stored().broker_host == NEW


LANDS = [
    "write cmd_seq.bin",
    "write relocate.json",
    "write cert.der",
    "write onboard.json",
    "write relocate.json",
    "remove relocate.json",
]
FALLS_BACK = [
    "write cmd_seq.bin",
    "write relocate.json",
    "write cert.der",
    "write onboard.json",
    "write relocate.json",
    "write relocate.json",
    "write relocate.json",
    "write relocate.json",
    "write onboard.json",
    "remove relocate.json",
]


def _cut_and_reboot(k, reachable):
    # One run with a power cut before flash change k, then a boot with the same server and
    # brokers: the old broker sends the command again after `online` (the server still holds
    # it), the new one answers (reachable) or never does.
    # -> (first env, second env, the second boot's sessions at the new broker, at the old one).
    p = start({"max_messages": 2})
    env = MoveEnv([commanding(), Broker()], [Broker()] if reachable else [REFUSED] * 3, cut_at=k)
    try:
        boot_with(env, p)
    except PowerCut:
        pass
    else:
        raise AssertionError("no power cut at change %d" % k)
    new = [Broker()] if reachable else [REFUSED] * 3
    old = [commanding(), Broker()]
    again = MoveEnv(old, new)
    boot_with(again, p)
    return env, again, new, old


def test_a_power_cut_before_or_after_each_flash_change_of_a_landing_move_still_lands():
    env = MoveEnv([commanding()], [Broker()])
    boot_with(env, start({"max_messages": 2}))
    assert env.changes == LANDS
    for k in range(1, len(LANDS) + 1):  # before change k, i.e. after change k - 1
        first, again, new, old = _cut_and_reboot(k, True)
        s = stored()
        assert relocate_doc() is None, k
        if k == 2:
            # Taken (seq written) but not recorded: sent again, it is replayed, never run twice;
            # the device stays where it is (the server's command expires).
            assert s.broker_host == OLD and again.posts == []
            assert events(old[0])[1] == REPLAYED
            continue
        assert s.broker_host == NEW and s.broker_ca == CA2 and s.cert_der == CERT, k
        assert events(new[0])[:2] == [online(1), ack(1, "done")], k
        # One attempt at the (reachable) new broker per boot at most.
        assert len(first.attempts()) <= 1 and len(again.attempts()) == 1, k


def test_a_power_cut_before_or_after_each_flash_change_of_a_fallback_still_falls_back():
    env = MoveEnv([commanding(), Broker()], [REFUSED] * 3)
    boot_with(env, start({"max_messages": 2}))
    assert env.changes == FALLS_BACK
    for k in range(1, len(FALLS_BACK) + 1):
        first, again, new, old = _cut_and_reboot(k, False)
        s = stored()
        assert relocate_doc() is None, k
        assert (s.broker_host, s.broker_port, s.broker_ca, s.cert_der) == (OLD, 8883, CA, CERT), k
        if k == 2:
            assert events(old[0])[1] == REPLAYED
            continue
        got = [m for b in old for m in events(b)]
        assert ack(1, "failed", "unreachable") in got, k
        # Attempts are counted before they are made: 3 in all, whatever boot made them.
        assert len(first.attempts()) + len(again.attempts()) == 3, k


# -- the proof refused, a corrupt record ----------------------------------------------------------


def test_a_refused_proof_fails_with_the_servers_code_and_changes_nothing():
    p = start({"max_messages": 3})
    meta, cert = read("onboard.json"), read("cert.der")
    old = commanding()
    again = Broker()
    env = MoveEnv([old, again], [Broker()])
    env.proof_answer = (403, {"error": "bad_signature", "detail": "the proof does not verify"})
    boot_with(env, p)
    assert env.posts == ["/v1/onboard/hello", "/v1/onboard/proof"]
    assert events(again)[:2] == [online(1), ack(1, "failed", "bad_signature")]
    assert [o[0] for o in env.opened] == [OLD, OLD]
    assert read("onboard.json") == meta and read("cert.der") == cert
    assert relocate_doc() is None and no_module()
    assert env.changes == ["write cmd_seq.bin", "write relocate.json", "remove relocate.json"]
    assert "E onboard: server refused: bad_signature: the proof does not verify" in env.lines
    assert "W command: seq=1 failed: bad_signature" in env.lines


def test_a_server_out_of_reach_for_the_proof_fails_unreachable_and_changes_nothing():
    p = start({"max_messages": 3})
    meta = read("onboard.json")
    again = Broker()
    env = MoveEnv([commanding(), again], [])
    env.onboard_result = LinkError("https localhost:8443: errno 111")
    boot_with(env, p)
    assert events(again)[:2] == [online(1), ack(1, "failed", "unreachable")]
    assert read("onboard.json") == meta and relocate_doc() is None


def test_settings_that_cannot_be_read_to_keep_fail_no_broker_and_nothing_is_asked():
    def hook(broker, topic, payload):
        if topic.endswith("/telemetry") and json.loads(payload)["seq"] == 1:
            os.remove(D + "/onboard.json")  # gone under the running session
            broker.push(cmd(1, "broker"))

    sock = Broker(on_publish=hook)
    env = MoveEnv([sock], [])
    boot_with(env, start({"max_messages": 3}))
    assert events(sock) == [online(0), ack(1, "accepted"), ack(1, "failed", "no_broker")]
    assert env.posts == [] and relocate_doc() is None and len(env.opened) == 1


def test_a_move_the_heap_cannot_record_fails_out_of_memory_and_the_session_goes_on():
    # The seq is written before the move's record (a power cut never runs a move twice), so a
    # heap that fails at the record is reported, not left "accepted" with nothing to follow.
    sock = commanding()
    env = MoveEnv([sock], [])
    env.oom_at = 2  # write cmd_seq.bin, then the heap fails at write relocate.json
    p = start({"max_messages": 3})
    meta = read("onboard.json")
    boot_with(env, p)
    assert env.changes == ["write cmd_seq.bin", "write relocate.json"]
    assert events(sock) == [online(0), ack(1, "accepted"), ack(1, "failed", "out_of_memory")]
    assert len(env.opened) == 1 and env.posts == [] and store.cmd_seq(D) == 1
    assert relocate_doc() is None and read("onboard.json") == meta
    logged(
        env,
        "E command: seq=1 kind=broker failed: out of memory",
        "I agent: stopped after 3 messages",
    )


def _record(**over):
    doc = {"v": 1, "device_id": certs.DEVICE_ID, "seq": 1, "phase": "back", "tries": 3}
    doc["until"] = 0
    doc["prev"] = NEW_BROKER
    for k in over:
        doc[k] = over[k]
    return json.dumps(doc).encode()


def test_an_unreadable_record_is_reported_dropped_and_the_stored_broker_used():
    # Each would send the device to broker.new if it were read: none can come from a power cut.
    for raw in (
        b'{"v": 1, "phase": "back"',
        _record(v=2),
        _record(phase="moving"),
        _record(tries="3"),
        _record(prev={"host": NEW, "port": "8884", "ca_b64": NEW_BROKER["ca_b64"]}),
        _record(prev=None),
    ):
        p = start({"max_messages": 2})
        with open(D + "/relocate.json", "wb") as f:
            f.write(raw)
        meta = read("onboard.json")
        sock = Broker()
        env = MoveEnv([sock], [])
        boot_with(env, p)
        assert [o[0] for o in env.opened] == [OLD] and relocate_doc() is None, raw
        assert read("onboard.json") == meta and events(sock) == [online(0)], raw
        assert "W agent: relocate.json unreadable; staying with the stored broker" in env.lines
    # The control: the same record, well formed, is read (and "back" to prev sends it there).
    p = start({"max_messages": 2})
    with open(D + "/relocate.json", "wb") as f:
        f.write(_record())
    there = Broker()
    env = MoveEnv([], [there])
    boot_with(env, p)
    assert [o[0] for o in env.opened] == [NEW]
    assert events(there)[:2] == [online(0), ack(1, "failed", "unreachable")]


def test_a_record_of_another_identity_is_dropped_and_its_command_not_answered():
    # A transfer ran between the command and this boot: the seq is another device's.
    p = start({"max_messages": 2})
    with open(D + "/relocate.json", "wb") as f:
        f.write(_record(device_id="cd" * 32))
    sock = Broker()
    env = MoveEnv([sock], [])
    boot_with(env, p)
    assert [o[0] for o in env.opened] == [OLD] and relocate_doc() is None
    assert events(sock) == [online(0)]


# -- a renewal that names another broker ---------------------------------------------------------


def test_a_renewal_naming_another_broker_is_tried_and_falls_back_without_an_ack():
    back = Broker()
    env = MoveEnv([back], [REFUSED] * 3)
    env.issue = [CERT2]
    p = start({"max_messages": 2}, {"telemetry_interval_ms": 250, "renew_at_pct": 1})
    boot_with(env, p)
    assert len(env.attempts()) == 3 and env.opened[-1][0] == OLD
    assert [m["event"] for m in events(back)] == ["online", "reconnected"]  # no command to answer
    s = stored()
    assert (s.broker_host, s.cert_der) == (OLD, CERT2)  # the new certificate, the old broker
    assert "I agent: moving to broker broker.new:8884 (renewal)" in env.lines
    assert "W agent: back on broker localhost:8883 (renewal)" in env.lines
