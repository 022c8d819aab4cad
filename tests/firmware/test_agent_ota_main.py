# agent.main with an update (docs/ota.md "On the device"): the `ota` command writes the job and
# closes the session, the step runs where sessions start (a refusal by the server, a server out
# of reach 5 times, a staged release reported and then the board reset), a second release while
# one is open is refused busy, and at start what boot.py left: a trial reported when the first
# session stands and committed after a telemetry PUBACK, a trial that cannot reach its broker
# resets the board after 5 sessions, rolled_back and committed reported and cleared. The step's
# own checks against real releases: tests/host/test_agent_ota.py.
# The RP2040 budget (hil.unixport.HEAP_RP2040): the agent with qdid.p256, and this test's
# support modules.
# heapsize: 192k
# agentenv (source, compiled here) first, while the heap is still empty.
from agentenv import Broker, Env, setup, events, boot, cmd, ALL_TOPICS, D
import os
import sys
import json
from agent import main
from agent.errors import LinkError
from qdid import files

POLICY = {"telemetry_interval_ms": 250}
REL = "unix-0.2.0"
OFFER = {"release": REL, "size": 5000}
MANIFEST = '{"v":1,"version":"0.2.0","min_version":"0.1.0","board":"unix","files":[]}'
REFUSED = LinkError("tls localhost:8883: errno 111")


class Board:
    name = "unix"

    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1  # a board does not return; the agent stops after the call


class Server:
    # The device API as agent.ota sees it (agent.https.Client's get and download).
    def __init__(self, head=None, error=None):
        self.head = head
        self.error = error
        self.gets = []

    def get(self, path, limit):
        # Only the short error answer of a head is read whole (agent.ota._fetch_head).
        if self.error is not None:
            raise self.error
        return self.head

    def download(self, path, offset, f, buf, limit):
        # The head answer streams into ota/head.tmp; payloads are not in this test.
        if "/head?" not in path:
            raise LinkError("not in this test")
        self.gets.append(path)
        if self.error is not None:
            raise self.error
        status, doc = self.head
        if status != 200 or doc is None:
            return status, 0
        raw = json.dumps(doc)
        f.write(raw)
        return status, len(raw)


def rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        return
    for name in names:
        rmtree(path + "/" + name)
    os.rmdir(path)


def fresh():
    # A board root of its own: ota/ is relative to it, as on a device.
    try:
        os.mkdir(D)
    except OSError:
        pass
    os.chdir(D)
    for name in ("ota", D + "/fw_min", D + "/cmd_seq.bin"):
        rmtree(name)


def write(path, doc):
    files.write(path, json.dumps(doc).encode() if not isinstance(doc, str) else doc.encode())


def read(path):
    raw = files.read(path)
    return None if raw is None else json.loads(raw)


def ota_dir():
    try:
        return sorted(os.listdir("ota"))
    except OSError:
        return None


def agent(env, extra=None, board=None, server=None):
    p = setup(extra or {"max_messages": 3}, topics=ALL_TOPICS, policy=POLICY)
    saved = main._server
    if server is not None:
        main._server = lambda cfg: server
    try:
        with env:
            return main.run(board or Board(), p, D, boot)
    finally:
        main._server = saved


def on_first_sample(*payloads):
    def hook(broker, topic, payload):
        if topic.endswith("/telemetry") and json.loads(payload)["seq"] == 1:
            for p in payloads:
                broker.push(p)

    return hook


def ack(seq, status, reason=None):
    doc = {"event": "command", "seq": seq, "status": status}
    if reason:
        doc["reason"] = reason
    return doc


def ota_event(state, reason=None, fw="0.1.0", release=REL):
    doc = {"event": "ota", "release": release, "state": state, "fw": fw}
    if reason:
        doc["reason"] = reason
    return doc


def no_module():
    return "agent.ota" not in sys.modules and "agent.https" not in sys.modules


# -- the offer --------------------------------------------------------------------------------


def test_offer_writes_the_job_leaves_the_session_and_a_server_refusal_ends_it():
    fresh()
    first = Broker(on_publish=on_first_sample(cmd(1, "ota", args=OFFER)))
    second = Broker()
    srv = Server(head=(404, {"error": "not_offered", "detail": "rollout aborted"}))
    env = Env([first, second])
    st = agent(env, server=srv)
    assert st.sent == 3
    # The job was written before the session closed; the step asked for the head once.
    assert events(first)[1:] == [ack(1, "accepted")]
    assert first.closed
    assert len(srv.gets) == 1
    assert srv.gets[0].startswith("/v1/ota/unix-0.2.0/head?device=")
    # The server's word: the command fails with its code; no device refusal is counted.
    assert events(second)[1:] == [ack(1, "failed", "not_offered")]
    assert ota_dir() == []
    assert no_module()


def on_online(*payloads):
    # The commands reach the device as soon as it announced itself (before any telemetry).
    def hook(broker, topic, payload):
        if topic.endswith("/event") and json.loads(payload)["event"] == "online":
            for p in payloads:
                broker.push(p)

    return hook


def test_offer_while_another_release_is_open_is_refused_busy_and_changes_nothing():
    fresh()
    # Staged, and boot.py has not run yet: the update is open until it ends.
    write("ota/state.json", {"state": "staged", "release": REL, "version": "0.2.0"})
    before = files.read("ota/state.json")
    other = {"release": "unix-0.3.0", "size": 100}
    b = Broker(on_publish=on_first_sample(cmd(1, "ota", args=other), cmd(2, "ota", args=OFFER)))
    agent(Env([b]))
    assert events(b)[1:] == [
        ack(1, "accepted"),
        ack(1, "failed", "busy"),
        ota_event("refused", "busy", release="unix-0.3.0"),
        ack(2, "accepted"),
        ack(2, "done"),  # the staged release, offered again: nothing to do
    ]
    assert ota_dir() == ["state.json"]
    assert files.read("ota/state.json") == before


def test_offer_with_bad_args_fails_and_writes_nothing():
    for args in (
        {"release": "Unix-0.2.0", "size": 5000},
        {"release": "unix/0.2.0", "size": 5000},
        {"release": "u" * 49, "size": 5000},
        {"release": REL, "size": 0},
        {"release": REL, "size": 1153434},
        {"release": REL, "size": True},
        {"release": REL, "size": "5000"},
        {"size": 5000},
    ):
        fresh()
        b = Broker(on_publish=on_first_sample(cmd(1, "ota", args=args)))
        agent(Env([b]))
        assert events(b)[1:] == [ack(1, "accepted"), ack(1, "failed", "bad_args")], args
        assert ota_dir() is None
    # The boundary: 48 characters and 1.1 MiB are taken.
    fresh()
    b = Broker(
        on_publish=on_first_sample(cmd(1, "ota", args={"release": "u" * 48, "size": 1153433}))
    )
    main_ota = main._ota
    main._ota = lambda cfg, ident, st, data_dir: setattr(st, "ota", False)
    try:
        agent(Env([b, Broker()]))
    finally:
        main._ota = main_ota
    assert read("ota/job.json") == {"release": "u" * 48, "size": 1153433, "seq": 1}


def test_server_out_of_reach_five_times_refuses_unreachable():
    fresh()
    first = Broker(on_publish=on_first_sample(cmd(1, "ota", args=OFFER)))
    second = Broker()
    srv = Server(error=LinkError("tls localhost:8443: errno 111"))
    env = Env([first, second])
    st = agent(env, server=srv)
    assert len(srv.gets) == 5
    got = events(second)
    assert st.failures == 0  # the job given up, the sessions go on
    assert got[1]["event"] == "reconnected" and got[1]["failures"] == 4
    assert got[2:] == [ota_event("refused", "unreachable"), ack(1, "failed", "unreachable")]
    assert ota_dir() == []
    assert no_module()


def test_staged_release_is_reported_then_the_board_resets():
    fresh()
    first = Broker(on_publish=on_first_sample(cmd(1, "ota", args=OFFER)))
    second = Broker()
    ran = []

    def step(cfg, ident, st, data_dir):
        # What agent.ota.run leaves once staged (the step itself: tests/host/test_agent_ota.py).
        ran.append(st.ota)
        write("ota/state.json", {"state": "staged", "release": REL, "version": "0.2.0"})
        st.event(json.dumps(ota_event("staged")))
        st.ack(1, "done")
        st.ota = False
        st.ota_reset = True

    board = Board()
    saved = main._ota
    main._ota = step
    try:
        st = agent(Env([first, second]), {"max_messages": 0}, board=board)
    finally:
        main._ota = saved
    assert ran == [True]
    assert board.resets == 1 and st.stop
    assert events(second)[1:] == [ota_event("staged"), ack(1, "done")]
    assert second.closed


def test_staged_release_resets_even_when_the_broker_is_out_of_reach():
    fresh()
    first = Broker(on_publish=on_first_sample(cmd(1, "ota", args=OFFER)))

    def step(cfg, ident, st, data_dir):
        st.ota = False
        st.ota_reset = True

    board = Board()
    saved = main._ota
    main._ota = step
    try:
        agent(Env([first, REFUSED]), {"max_messages": 0}, board=board)
    finally:
        main._ota = saved
    assert board.resets == 1


def test_job_found_at_start_runs_before_the_first_session():
    fresh()
    write("ota/job.json", {"release": REL, "size": 5000, "seq": 4})
    srv = Server(head=(409, {"error": "no_ota_key", "detail": ""}))
    b = Broker()
    agent(Env([b]), server=srv)
    assert len(srv.gets) == 1
    assert events(b)[1:] == [ack(4, "failed", "no_ota_key")]
    assert ota_dir() == []


# -- what boot.py left --------------------------------------------------------------------------


def trial_files(boots=1):
    write("ota/state.json", {"state": "trial", "release": REL, "version": "0.2.0", "boots": boots})
    write("ota/head.json", {"release": REL, "manifest": MANIFEST})
    write("ota/job.json", {"release": REL, "size": 5000, "seq": 4})
    files.write("ota/current.json", b'{"v":1,"version":"0.1.0"}')
    os.mkdir("ota/new")
    files.write("ota/new/x.py", b"x")


def test_trial_is_reported_when_the_session_stands_and_committed_after_a_telemetry_puback():
    fresh()
    trial_files()
    commits = []
    b = Broker()

    def hook(broker, topic, payload):
        # What the broker had seen when each telemetry message arrived.
        if topic.endswith("/telemetry"):
            commits.append(read("ota/state.json"))

    b.on_publish = hook
    st = agent(Env([b]))
    assert st.ota_trial is None
    assert events(b) == [
        {"event": "online", "fw": "0.1.0", "cmd_seq": 0},
        ota_event("trial"),
        ota_event("committed"),
    ]
    # Not committed before the first telemetry message was acknowledged.
    assert commits[0]["state"] == "trial"
    assert files.read(D + "/fw_min") == b"0.2.0"
    assert files.read("ota/current.json") == MANIFEST.encode()
    assert ota_dir() == ["current.json"]
    assert no_module()


def test_trial_that_cannot_reach_its_broker_resets_after_five_sessions():
    fresh()
    trial_files()
    board = Board()
    st = agent(Env([REFUSED] * 6), board=board)
    assert board.resets == 1
    assert st.failures == 5
    assert read("ota/state.json")["state"] == "trial"  # boot.py counts the boot, rolls back
    assert files.read(D + "/fw_min") is None


def test_four_failed_sessions_then_the_broker_commits_the_trial():
    fresh()
    trial_files()
    board = Board()
    b = Broker()
    agent(Env([REFUSED] * 4 + [b]), board=board)
    assert board.resets == 0
    assert ota_event("committed") in events(b)


def test_rolled_back_is_reported_with_trial_failed_and_ota_cleared():
    fresh()
    write("ota/state.json", {"state": "rolled_back", "release": REL, "version": "0.2.0"})
    files.write("ota/current.json", b'{"v":1,"version":"0.1.0"}')
    os.mkdir("ota/old")
    b = Broker()
    agent(Env([b]))
    assert events(b)[1:] == [ota_event("rolled_back", "trial_failed")]
    assert ota_dir() == ["current.json"]
    assert files.read(D + "/fw_min") is None


def test_committed_found_at_start_finishes_the_cleanup_and_reports_again():
    fresh()
    trial_files()
    write("ota/state.json", {"state": "committed", "release": REL, "version": "0.2.0"})
    b = Broker()
    agent(Env([b]))
    assert events(b)[1:] == [ota_event("committed")]
    assert ota_dir() == ["current.json"]


def test_staged_found_at_start_is_left_for_boot_py():
    fresh()
    write("ota/state.json", {"state": "staged", "release": REL, "version": "0.2.0"})
    b = Broker()
    board = Board()
    agent(Env([b]), board=board)
    assert events(b)[1:] == []
    assert board.resets == 0
    assert read("ota/state.json")["state"] == "staged"


def test_flash_error_during_the_step_refuses_too_large():
    fresh()
    write("ota/job.json", {"release": REL, "size": 5000, "seq": 4})
    srv = Server(error=OSError(28))  # ENOSPC, where a write of the step would raise it
    b = Broker()
    st = agent(Env([b]), server=srv)
    assert st.failures == 0
    assert events(b)[1:] == [ota_event("refused", "too_large"), ack(4, "failed", "too_large")]
    assert ota_dir() == []
    assert no_module()


def test_rolled_back_reports_the_reason_boot_py_gave():
    # boot.py names why it rolled back; a reason that is not one word of the page's kind is
    # reported as trial_failed (the state file is the device's own, but never trusted blindly).
    for given, said in (("swap_failed", "swap_failed"), ("bad state!", "trial_failed")):
        fresh()
        write("ota/state.json", {"state": "rolled_back", "release": REL, "reason": given})
        b = Broker()
        agent(Env([b]))
        assert events(b)[1:] == [ota_event("rolled_back", said)]
        assert ota_dir() == []
