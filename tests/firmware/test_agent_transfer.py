# agent.main with ownership transfer (docs/protocol.md "Successor identities"): the command
# recorded in data/owner.json, the broker session closed, POST /v1/onboard/successor with the
# exact body and the page's signed message (checked by the fake server, which spells the message
# out itself), then the move to the next epoch's key and onboarding as that identity. Every
# refusal, every server answer, and a power cut before every flash change.
# The RP2040 budget (hil.unixport.HEAP_RP2040): the agent with qdid.p256 and the identity, this
# test's support modules (agentenv, ownerenv, certs) and a broker that keeps every byte.
# heapsize: 192k
# timeout: 600
from ownerenv import (
    OwnerEnv,
    env_for,
    PowerCut,
    fixed_boot,
    start,
    command,
    hexid,
    topics,
    owner_doc,
    events,
    exists,
    PRK,
)
from agentenv import published, packets, D
import sys
import binascii
from agent import main, store
from qdid import identity

EPOCH1 = identity.Identity(PRK, {}, 1)  # what the host-side test checks against cryptography
NEXT_ID = EPOCH1.device_id


def ack(seq, status, reason=None):
    doc = {"event": "command", "seq": seq, "status": status}
    if reason:
        doc["reason"] = reason
    return doc


def transfer_env(cur, seq=1, args=None, open_seqs=None):
    payload = command(cur.device_id, seq, "transfer", {"epoch": 1} if args is None else args)
    return env_for(cur, [seq] if open_seqs is None else open_seqs, {1: [payload]})


def run(env, p):
    with env:
        return main.run(None, p, D, fixed_boot)


def test_transfer_moves_to_the_next_epoch_and_onboards_as_that_identity():
    p, cur = start({"max_messages": 3})
    env = transfer_env(cur)
    st = run(env, p)
    first, second = env.sessions
    # Session 1, the current identity: online, accepted, then a clean close; no done anywhere
    # (the server marks the command done with its 200; the next identity's seqs are its own).
    assert first[0] == cur.device_id
    assert [m for _, m in events(first[1])] == [
        {"event": "online", "fw": "0.1.0", "cmd_seq": 0},
        ack(1, "accepted"),
    ]
    assert packets(first[1].out)[-1] == (0xE0, b"") and first[1].closed
    # The request: exactly the page's members; the fake server verified the signature over the
    # page's message with the registered (epoch 0) key before it answered 200.
    assert env.posts == ["/v1/onboard/successor", "/v1/onboard/hello", "/v1/onboard/proof"]
    (body,) = env.requests
    assert sorted(body) == ["device_id", "public_key", "reason", "seq", "signature"]
    assert body["device_id"] == cur.device_id
    assert body["public_key"] == binascii.hexlify(EPOCH1.public_key).decode()
    assert (body["reason"], body["seq"]) == ("transfer", 1)
    assert len(body["signature"]) == 128 and body["signature"] == body["signature"].lower()
    assert env.moves == {(cur.device_id, "transfer", 1): NEXT_ID}
    # Session 2, the next identity: its own certificate, topics and command seq, from 1.
    assert second[0] == NEXT_ID and env.opened[1][3].find(EPOCH1.public_key) > 0
    assert env.opened[1][4] == EPOCH1.private_key_der()
    got = published(second[1].out)
    assert got[0][:2] == (
        topics(NEXT_ID, "beta")["event"],
        {"event": "online", "fw": "0.1.0", "cmd_seq": 0},
    )
    assert [m["seq"] for t, m, _ in got[1:]] == [1, 2, 3]
    assert all(t.startswith("qlink/beta/%s/" % NEXT_ID) for t, _, _ in got)
    assert st.sent == 3
    # On flash: the next epoch, nothing pending, its onboarding data, the seq back to 0.
    assert owner_doc() == {"v": 1, "epoch": 1}
    assert store.cmd_seq(D) == 0
    assert store.load(D, NEXT_ID, EPOCH1.public_key) is not None
    assert store.load(D, cur.device_id, cur.public_key) is None
    for line in (
        "I command: seq=1 kind=transfer accepted",
        "I agent: transfer to epoch 1 recorded (seq=1); moving now",
        "I agent: transfer (seq=1): asking localhost for the next identity",
        "I agent: moved to owner epoch 1 (transfer seq=1)",
        "I agent: device " + NEXT_ID,
    ):
        assert line in env.lines, line
    for name in ("agent.successor", "agent.onboard", "agent.https", "qdid.owner"):
        assert name not in sys.modules, name


def test_the_next_boot_uses_the_epoch_recorded_after_the_move():
    p, cur = start({"max_messages": 1}, epoch=1)
    env = OwnerEnv({EPOCH1.device_id: EPOCH1.public_key})
    run(env, p)
    assert env.requests == [] and env.sessions[0][0] == NEXT_ID
    assert "I agent: device " + NEXT_ID in env.lines


def test_transfer_arguments_are_checked_and_a_refused_one_changes_nothing():
    cases = (
        (0, {}, "bad_args"),
        (0, {"epoch": "1"}, "bad_args"),
        (0, {"epoch": True}, "bad_args"),
        (0, {"epoch": 0}, "bad_epoch"),
        (0, {"epoch": 2}, "bad_epoch"),
        (3, {"epoch": 3}, "bad_epoch"),
        (3, {"epoch": 2}, "bad_epoch"),
        (0, {"epoch": 8}, "seeds_spent"),
        (7, {"epoch": 8}, "seeds_spent"),
        (7, {"epoch": 9}, "seeds_spent"),
    )
    for epoch, args, reason in cases:
        p, cur = start({"max_messages": 2}, epoch=epoch)
        before = owner_doc()
        env = transfer_env(cur, args=args)
        st = run(env, p)
        assert [m for _, m in events(env.sessions[0][1])][1:] == [
            ack(1, "accepted"),
            ack(1, "failed", reason),
        ], (epoch, args)
        assert env.requests == [] and len(env.sessions) == 1 and st.sent == 2
        assert owner_doc() == before and store.cmd_seq(D) == 1
        assert "W command: seq=1 failed: " + reason in env.lines
    assert "W agent: transfer to epoch 9 refused: seeds 0..7 are spent" in env.lines


def test_a_wrong_epoch_is_logged_with_the_device_epoch():
    p, cur = start({"max_messages": 2}, epoch=2)
    env = transfer_env(cur, args={"epoch": 5})
    run(env, p)
    assert "W agent: transfer to epoch 5 refused: this device is at epoch 2" in env.lines


def test_a_refused_request_gives_the_transfer_up_and_the_device_stays_who_it_is():
    for status, code in (
        (409, "no_successor_expected"),
        (409, "successor_taken"),
        (403, "bad_signature"),
        (403, "not_registered"),
        (400, "bad_request"),
    ):
        p, cur = start({"max_messages": 3})
        env = transfer_env(cur)
        env.refusals = [(status, code)]
        run(env, p)
        assert len(env.requests) == 1
        assert [s[0] for s in env.sessions] == [cur.device_id, cur.device_id]
        # The failure goes out on the current identity's next session.
        assert [m for _, m in events(env.sessions[1][1])] == [
            {"event": "online", "fw": "0.1.0", "cmd_seq": 1},
            ack(1, "failed", code),
        ]
        assert owner_doc() == {"v": 1, "epoch": 0}  # nothing pending any more
        assert store.load(D, cur.device_id, cur.public_key) is not None
        assert "/v1/onboard/hello" not in env.posts
        assert "E onboard: server refused: %s: refused by the test" % code in env.lines
        assert "W agent: transfer (seq=1) given up: the server refused it" in env.lines


def test_rate_limited_keeps_the_step_and_asks_again_with_the_same_request():
    p, cur = start({"max_messages": 2})
    env = transfer_env(cur)
    env.refusals = [(429, "rate_limited")]
    run(env, p)
    first, second = env.requests
    assert first == second  # RFC 6979 without DRBG here: even the signature is the same
    assert "W agent: rate limited; next try in 30 s" in env.lines
    # No session in between: the step comes before any TLS session of the current identity.
    assert [s[0] for s in env.sessions] == [cur.device_id, NEXT_ID]
    assert owner_doc() == {"v": 1, "epoch": 1}


def test_an_answer_lost_on_the_way_back_is_asked_for_again_and_given_again():
    p, cur = start({"max_messages": 2})
    env = transfer_env(cur)
    env.lose = 1  # the server registered the next identity; the device saw a reset
    run(env, p)
    assert len(env.requests) == 2 and env.requests[0] == env.requests[1]
    assert len(env.moves) == 1
    assert [s[0] for s in env.sessions] == [cur.device_id, NEXT_ID]
    assert any(ln.startswith("W agent: link failed (1 in a row): https") for ln in env.lines)


def test_an_answer_for_another_identity_keeps_the_step_pending():
    p, cur = start({"max_messages": 2, "max_failures": 1})
    env = transfer_env(cur)

    def wrong(obj):
        env.requests.append(obj)
        return 200, {"device_id": "00" * 32}

    env._successor = wrong
    st = run(env, p)
    assert st.failures == 1 and len(env.sessions) == 1
    assert owner_doc() == {"v": 1, "epoch": 0, "pending": "transfer", "seq": 1}
    assert store.load(D, cur.device_id, cur.public_key) is not None  # nothing dropped
    assert "E agent: successor answer unusable: device_id is not the next identity's" in env.lines


def test_a_power_cut_before_any_flash_change_resumes_to_the_same_move():
    # The flash changes of the whole run, in order: owner.json pending, the command's seq, the
    # current onboarding data dropped (two files), the seq reset, owner.json committed, then the
    # next identity's certificate and onboarding data. A cut comes before each in turn; the
    # next boot (a fresh agent, the same server) must end where the uncut run ends.
    p, cur = start({"max_messages": 2})
    env = transfer_env(cur)
    run(env, p)
    whole = env.changes
    assert [c.split(" ")[0] + " " + c[c.rfind("/") + 1 :] for c in whole] == [
        "write owner.json",
        "write cmd_seq.bin",
        "remove onboard.json",
        "remove cert.der",
        "write cmd_seq.bin",
        "write owner.json",
        "write cert.der",
        "write onboard.json",
    ]
    for k in range(1, len(whole) + 1):
        p, cur = start({"max_messages": 2})
        env = transfer_env(cur)
        env.cut_at = k
        try:
            run(env, p)
        except PowerCut:
            pass
        else:
            raise AssertionError("no power cut at change %d" % k)
        # The server sends the command again after "online" while it is above cmd_seq.
        again = OwnerEnv({}, (), {1: [command(cur.device_id, 1, "transfer", {"epoch": 1})]})
        again.server_of(env)
        run(again, p)
        if k == 1:
            # Nothing recorded: the command sent again is taken as if for the first time.
            assert "I command: seq=1 kind=transfer accepted" in again.lines
        assert owner_doc() == {"v": 1, "epoch": 1}, k
        assert env.moves == {(cur.device_id, "transfer", 1): NEXT_ID}, k
        assert all(r == env.requests[0] for r in env.requests), k
        assert store.load(D, NEXT_ID, EPOCH1.public_key) is not None and store.cmd_seq(D) == 0
        if k >= 2:
            # The step recorded: no TLS session as the current identity before the move.
            assert [s[0] for s in again.sessions] == [NEXT_ID], k
        if k >= 7:
            assert len(env.requests) == 1  # committed before the cut: booted as epoch 1


def test_reenrol_is_recorded_for_the_next_power_on_and_the_session_goes_on():
    p, cur = start({"max_messages": 3})
    env = env_for(cur, [1], {1: [command(cur.device_id, 1, "reenrol")]})
    st = run(env, p)
    assert [m for _, m in events(env.sessions[0][1])][1:] == [ack(1, "accepted")]
    assert owner_doc() == {"v": 1, "epoch": 0, "pending": "reenrol", "seq": 1}
    assert env.requests == [] and len(env.sessions) == 1 and st.sent == 3
    assert "I agent: re-enrolment recorded (seq=1); it runs at the next power-on" in env.lines
    # A boot without a power-up read (this test's boot; a warm reset on a board) keeps it.
    env = env_for(cur, [1])
    run(env, p)
    assert env.requests == [] and env.sessions[0][0] == cur.device_id
    assert owner_doc() == {"v": 1, "epoch": 0, "pending": "reenrol", "seq": 1}
    assert "W agent: re-enrolment (seq=1) waits: no power-up read in this test" in env.lines


def test_a_step_the_heap_could_not_record_is_recorded_from_the_servers_resend():
    # A heap too fragmented to record the step (main.py takes the MemoryError as a failed
    # link): the seq is not recorded either, so the next session's `online` says cmd_seq 0 and
    # the command the server sends again (script: session 2) is taken, not `replayed`.
    p, cur = start({"max_messages": 3})
    payload = command(cur.device_id, 1, "reenrol")
    env = env_for(cur, [1], {1: [payload], 2: [payload]})
    env.oom_at = 1  # the step's write to owner.json
    run(env, p)
    assert env.changes[0].startswith("write ") and env.changes[0].endswith("/owner.json")
    assert len(env.sessions) == 2
    second = [m for _, m in events(env.sessions[1][1])]
    assert second[0]["event"] == "online" and second[0]["cmd_seq"] == 0
    assert second[1]["event"] == "reconnected" and second[1]["last_error"] == "out of memory"
    assert second[2:] == [ack(1, "accepted")] * 2  # session 1's (queued), then the resend's
    assert owner_doc() == {"v": 1, "epoch": 0, "pending": "reenrol", "seq": 1}
    assert store.cmd_seq(D) == 1


def test_a_newer_command_supersedes_a_pending_reenrolment():
    p, cur = start({"max_messages": 2}, pending="reenrol", seq=1)
    with open(D + "/helper.new", "wb") as f:
        f.write(b"\x05" + bytes(467))  # the next helper an earlier power-on wrote
    env = transfer_env(cur, seq=2, open_seqs=[2])
    run(env, p)
    assert [m for _, m in events(env.sessions[0][1])][1:] == [
        ack(2, "accepted"),
        ack(1, "failed", "superseded"),
    ]
    assert not exists(D + "/helper.new")
    assert env.requests[0]["seq"] == 2 and owner_doc() == {"v": 1, "epoch": 1}
    # A second re-enrolment replaces the first one's seq and keeps its helper.
    p, cur = start({"max_messages": 2}, pending="reenrol", seq=1)
    with open(D + "/helper.new", "wb") as f:
        f.write(b"\x05" + bytes(467))
    env = env_for(cur, [2], {1: [command(cur.device_id, 2, "reenrol")]})
    run(env, p)
    assert owner_doc() == {"v": 1, "epoch": 0, "pending": "reenrol", "seq": 2}
    assert exists(D + "/helper.new")


def test_a_reenrolment_behind_a_transfer_supersedes_it_and_the_session_goes_on():
    p, cur = start({"max_messages": 3})
    payloads = [
        command(cur.device_id, 1, "transfer", {"epoch": 1}),
        command(cur.device_id, 2, "reenrol"),
    ]
    env = env_for(cur, [1, 2], {1: payloads})
    st = run(env, p)
    assert [m for _, m in events(env.sessions[0][1])][1:] == [
        ack(1, "accepted"),
        ack(2, "accepted"),
        ack(1, "failed", "superseded"),
    ]
    assert env.requests == [] and len(env.sessions) == 1 and st.sent == 3
    assert owner_doc() == {"v": 1, "epoch": 0, "pending": "reenrol", "seq": 2}


def test_an_owner_file_corrupted_after_boot_fails_the_command_and_changes_nothing():
    p, cur = start({"max_messages": 2})
    bad = '{"v": 1, "epoch": 12}'

    def boot_then_corrupt(board, data_dir):
        ident = fixed_boot(board, data_dir)
        with open(data_dir + "/owner.json", "w") as f:
            f.write(bad)
        return ident

    env = transfer_env(cur)
    with env:
        main.run(None, p, D, boot_then_corrupt)
    assert [m for _, m in events(env.sessions[0][1])][1:] == [
        ack(1, "accepted"),
        ack(1, "failed", "owner_unreadable"),
    ]
    with open(D + "/owner.json") as f:
        assert f.read() == bad
    assert env.requests == []
    assert any(ln.startswith("E agent: data/owner.json is corrupt") for ln in env.lines)


def test_an_owner_file_corrupt_at_boot_is_safe_mode_not_the_enrolment_key():
    # Epoch 0's key is a former owner's: a device that cannot tell its epoch must not guess.
    for bad in (
        "{",
        "[]",
        '{"v": 2, "epoch": 1}',
        '{"v": 1, "epoch": 8}',
        '{"v": 1, "epoch": -1}',
        '{"v": 1, "epoch": true}',
        '{"v": 1, "epoch": 1, "pending": "move", "seq": 3}',
        '{"v": 1, "epoch": 1, "pending": "transfer", "seq": 0}',
        '{"v": 1, "epoch": 1, "pending": "transfer"}',
        '{"v": 1, "epoch": 7, "pending": "transfer", "seq": 3}',
    ):
        p, cur = start({"max_messages": 1})
        with open(D + "/owner.json", "w") as f:
            f.write(bad)
        env = env_for(cur)
        st = run(env, p)
        assert st.safe == "identity" and env.sessions == [] and env.posts == [], bad
        assert env.lines[-1].startswith(
            "E agent: safe mode: identity unusable (OwnerError: data/owner.json "
        ), env.lines[-1]
        assert env.lines[-1].endswith("; REPL available")


def test_ids_are_sha256_of_each_epochs_key():
    assert NEXT_ID == hexid(EPOCH1.public_key)
