# agent.main with `decommission` (docs/protocol.md "Successor identities"): accepted, the helper
# data overwritten and removed with everything that reaches the service, done while the session
# stands, then safe mode; the next boot cannot rebuild the key and the agent does not onboard.
# The heap: the RP2040 budget (hil.unixport.HEAP_RP2040) for the agent and a real identity boot
# over the unix board's silicon model, plus 32 KiB for this test's support modules (agentenv,
# ownerenv, certs, fakesock: 35 KB once imported), which a board does not hold: inside 192k with
# them the boot had no room to spare. tests/e2e/test_board_ownership.py decommissions an
# emulated board at the RP2040 budget alone.
# heapsize: 224k
# timeout: 300
from ownerenv import (
    OwnerEnv,
    UnixBoard,
    env_for,
    fixed_boot,
    start,
    command,
    enrolled,
    events,
    exists,
)
from agentenv import packets, published, D
import json
from agent import main, store
from qdid import identity

DIE = "/tmp/qlink-decommission-die.json"
ERASED = ("helper.bin", "helper.new", "owner.json", "cert.der", "onboard.json")


def _put(name, data):
    with open(D + "/" + name, "wb") as f:
        f.write(data)


def test_decommission_erases_reports_done_and_stops_in_safe_mode():
    p, cur = start({"max_messages": 5}, epoch=2)
    helper = bytes(range(256)) + bytes(212)
    _put("helper.bin", helper)
    _put("helper.new", helper)
    store.set_cmd_seq(D, 3)
    env = env_for(cur, (), {1: [command(cur.device_id, 4, "decommission")]})
    with env:
        st = main.run(None, p, D, fixed_boot)
    ((dev, sock),) = env.sessions
    assert [m for _, m in events(sock)] == [
        {"event": "online", "fw": "0.1.0", "cmd_seq": 3},
        {"event": "command", "seq": 4, "status": "accepted"},
        {"event": "command", "seq": 4, "status": "done"},
    ]
    assert packets(sock.out)[-1] == (0xE0, b"") and sock.closed
    sent = [m for t, m, _ in published(sock.out) if t.endswith("/telemetry")]
    assert [m["seq"] for m in sent] == [1]  # nothing more after the erase
    assert st.safe == "decommissioned" and st.stop
    for name in ERASED:
        assert not exists(D + "/" + name), name
    assert not exists(p)  # config.json: no server to call any more
    assert env.removed[D + "/helper.bin"] == bytes(468)  # overwritten before it went
    assert env.removed[D + "/helper.new"] == bytes(468)
    assert store.cmd_seq(D) == 0
    assert env.posts == [] and env.onboards == 0
    assert env.lines[-1] == (
        "E agent: safe mode: decommissioned (helper data, certificate, onboarding data, "
        "owner.json and config.json erased); REPL available"
    )
    for name in ("agent.decommission", "qdid.owner"):
        assert name not in __import__("sys").modules
    # The next boot: no configuration, so safe mode before any identity or network step.
    again = env_for(cur)
    with again:
        st = main.run(None, p, D, fixed_boot)
    assert st.safe == "config" and again.sessions == [] and again.posts == []


def test_commands_behind_a_decommission_do_not_run():
    p, cur = start({"max_messages": 3})
    env = OwnerEnv(
        {cur.device_id: cur.public_key},
        (),
        {1: [command(cur.device_id, 1, "decommission"), command(cur.device_id, 2, "ping")]},
    )
    with env:
        main.run(None, p, D, fixed_boot)
    acks = [m for _, m in events(env.sessions[0][1]) if m["event"] == "command"]
    assert [(a["seq"], a["status"]) for a in acks] == [(1, "accepted"), (1, "done")]
    assert store.cmd_seq(D) == 0 and not exists(D + "/cmd_seq.bin.tmp")


def test_a_helper_that_cannot_be_erased_is_reported_failed_and_the_agent_still_stops():
    p, cur = start({"max_messages": 3})
    _put("helper.bin", b"h" * 468)
    env = env_for(cur, (), {1: [command(cur.device_id, 1, "decommission")]})
    env.stuck = ("helper.bin",)
    with env:
        st = main.run(None, p, D, fixed_boot)
    acks = [m for _, m in events(env.sessions[0][1]) if m["event"] == "command"]
    assert acks[-1] == {"event": "command", "seq": 1, "status": "failed", "reason": "erase_failed"}
    assert st.safe == "decommissioned"
    assert "E agent: decommission: erase failed: errno 5" in env.lines


def test_after_a_decommission_the_board_cannot_rebuild_its_key():
    with open(DIE, "w") as f:
        f.write(json.dumps({"seed": "0f1e2d3c4b5a69788796a5b4c3d2e1f0"}))
    p, cid, cpub = enrolled(DIE, {"max_messages": 3}, epoch=1)  # a transferred device
    env = OwnerEnv({cid: cpub}, (), {1: [command(cid, 1, "decommission")]})
    with env:
        st = main.run(UnixBoard(DIE), p, D)  # the real identity boot over the die
    assert st.safe == "decommissioned" and env.sessions[0][0] == cid
    assert not exists(D + "/helper.bin") and not exists(D + "/owner.json")
    # A warm boot cannot enrol, and a cold one enrols a new identity: never the old key.
    try:
        identity.boot(UnixBoard(DIE, cold=False), D)
    except identity.EnrolmentRefused:
        pass
    else:
        raise AssertionError("a warm boot enrolled")
    fresh = identity.boot(UnixBoard(DIE), D)
    assert fresh.device_id != cid
    assert cpub not in [fresh.public_key_of(e) for e in range(8)]  # no epoch of the new set
    # And the agent, with no configuration left, stops before any network step.
    again = OwnerEnv({cid: cpub})
    with again:
        st = main.run(UnixBoard(DIE), p, D)
    assert st.safe == "config" and again.posts == [] and again.sessions == []
