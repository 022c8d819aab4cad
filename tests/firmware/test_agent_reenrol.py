# agent.main with re-enrolment (docs/protocol.md "Successor identities"), over real identity boots
# on the unix board's silicon model (an ageing die): the command recorded, the next cold boot's
# successor request (reason reenrol, signed by the current key over the next set's epoch-0 key),
# then the new helper swapped in, owner epoch 0, onboarding as the next identity. A warm boot
# keeps the step pending; a refusal gives it up and erases the next helper; a power cut before
# any flash change of that boot ends in the same identity the server registered.
# The heap: the RP2040 budget (hil.unixport.HEAP_RP2040) for the agent and the identity's boot
# with both reconstructions and the enrolment, plus 32 KiB for this test's support modules
# (agentenv, ownerenv, certs, fakesock: 35 KB once imported), which a board does not hold. Inside
# 192k with them, the boot's extractor tables failed to fit about once in 50 runs.
# tests/e2e/test_board_ownership.py re-enrols an emulated board at the RP2040 budget alone.
# heapsize: 224k
# timeout: 900
from ownerenv import OwnerEnv, PowerCut, UnixBoard, command, enrolled, events, exists, hexid
from ownerenv import owner_doc
from agentenv import D
import json
import binascii
from agent import main, store

DIE = "/tmp/qlink-reenrol-die.json"


def _die(**params):
    p = {"seed": "8899aabbccddeeff0011223344556677"}
    p.update(params)
    with open(DIE, "w") as f:
        f.write(json.dumps(p))


def _read(name):
    try:
        with open(D + "/" + name, "rb") as f:
            return f.read()
    except OSError:
        return None


def Unix():
    return UnixBoard(DIE)


def enrolled_with_reenrol_pending(extra):
    # A device enrolled on a new die and onboarded, which then took a reenrol command (seq 1)
    # while running. -> (config path, its env (the server), current ID and public key).
    _die()
    p, cid, cpub = enrolled(DIE, extra)
    env = OwnerEnv({cid: cpub}, [1], {1: [command(cid, 1, "reenrol")]})
    with env:
        main.run(Unix(), p, D)
    assert owner_doc() == {"v": 1, "epoch": 0, "pending": "reenrol", "seq": 1}
    assert _read("helper.new") is None  # written at the cold boot that runs the step
    return p, env, cid, cpub


def _power_cycle(p, env, board_=None):
    # The next power-on with the same server (OwnerEnv.server_of): the caller lets the last
    # run's env go first (env = _next(env)), since each session's bytes stay in it and the
    # heap is the board's: a board's power cycle frees all of it.
    with env:
        st = main.run(board_ or Unix(), p, D)
    return env, st


def _next(before, refusals=()):
    env = OwnerEnv({}).server_of(before)
    env.refusals = list(refusals)
    return env


def test_reenrolment_runs_at_the_next_cold_boot_of_an_ageing_die():
    p, env, cid, cpub = enrolled_with_reenrol_pending({"max_messages": 2})
    old_helper = _read("helper.bin")
    _die(age_years=8, temperature_c=60)  # the die has aged since its enrolment
    env = _next(env)
    env, st = _power_cycle(p, env)
    (body,) = env.requests
    assert sorted(body) == ["device_id", "public_key", "reason", "seq", "signature"]
    assert (body["device_id"], body["reason"], body["seq"]) == (cid, "reenrol", 1)
    nxt = hexid(binascii.unhexlify(body["public_key"]))
    assert env.moves == {(cid, "reenrol", 1): nxt}  # the server verified it with the old key
    # The new helper is in place, the old one gone; epoch 0 of the new set; onboarded as it.
    new_helper = _read("helper.bin")
    assert new_helper != old_helper and new_helper[0] == 5 and _read("helper.new") is None
    assert owner_doc() == {"v": 1, "epoch": 0} and store.cmd_seq(D) == 0
    assert [s[0] for s in env.sessions] == [nxt]
    assert env.posts == ["/v1/onboard/successor", "/v1/onboard/hello", "/v1/onboard/proof"]
    online = events(env.sessions[0][1])[0][1]
    assert online["cmd_seq"] == 0 and online["puf"]["corrected_bits"] == 0  # the new helper's
    assert "I agent: re-enrolled: owner epoch 0 of new helper data (seq=1)" in env.lines
    assert "I agent: device " + nxt in env.lines
    assert st.sent == 2
    # Later power-ups, older still: the new identity.
    _die(age_years=10, temperature_c=60)
    env = _next(env)
    env, st = _power_cycle(p, env)
    assert env.requests == [body] and [s[0] for s in env.sessions] == [nxt]


def test_a_warm_boot_keeps_the_reenrolment_pending():
    p, env, cid, cpub = enrolled_with_reenrol_pending({"max_messages": 2})
    env = _next(env)
    env, st = _power_cycle(p, env, UnixBoard(DIE, cold=False))
    assert env.requests == [] and [s[0] for s in env.sessions] == [cid]
    assert owner_doc() == {"v": 1, "epoch": 0, "pending": "reenrol", "seq": 1}
    assert _read("helper.new") is None
    assert (
        "W agent: re-enrolment (seq=1) waits: a re-enrolment reads a power-on SRAM state and "
        "this was a warm reset"
    ) in env.lines


def test_a_refused_reenrolment_erases_the_next_helper_and_keeps_the_identity():
    p, env, cid, cpub = enrolled_with_reenrol_pending({"max_messages": 2})
    old_helper = _read("helper.bin")
    env = _next(env, [(409, "no_successor_expected")])
    env, st = _power_cycle(p, env)
    assert len(env.requests) == 1 and [s[0] for s in env.sessions] == [cid]
    acks = [m for _, m in events(env.sessions[0][1]) if m["event"] == "command"]
    assert acks == [
        {"event": "command", "seq": 1, "status": "failed", "reason": "no_successor_expected"}
    ]
    assert _read("helper.new") is None and _read("helper.bin") == old_helper
    assert owner_doc() == {"v": 1, "epoch": 0}
    env = _next(env)
    env, st = _power_cycle(p, env)
    assert len(env.requests) == 1 and [s[0] for s in env.sessions] == [cid]


def test_a_power_cut_before_any_flash_change_of_the_step_ends_in_the_registered_identity():
    # The cold boot's flash changes: helper.new written (the boot), the current onboarding data
    # dropped, the seq reset, owner.json committed, helper.new renamed over helper.bin, then the
    # next identity's certificate and onboarding data. A cut before each in turn, then another
    # power-on: the identity the server registered, the one named in every request.
    p, env, cid, cpub = enrolled_with_reenrol_pending({"max_messages": 2})
    base = _next(env)
    env = None
    with base:
        main.run(Unix(), p, D)
    names = [c.split(" ")[0] + " " + c[c.rfind("/") + 1 :] for c in base.changes]
    env = base = None  # each session's bytes: the heap is the board's
    assert names == [
        "write helper.new",
        "remove onboard.json",
        "remove cert.der",
        "write cmd_seq.bin",
        "write owner.json",
        "rename helper.new",
        "write cert.der",
        "write onboard.json",
    ]
    for k in range(1, len(names) + 1):
        p, env, cid, cpub = enrolled_with_reenrol_pending({"max_messages": 2})
        cut = _next(env)
        env = None
        cut.cut_at = k
        try:
            with cut:
                main.run(Unix(), p, D)
        except PowerCut:
            pass
        else:
            raise AssertionError("no power cut at change %d" % k)
        after = _next(cut)
        env = cut = None
        after, st = _power_cycle(p, after)
        keys = [r["public_key"] for r in after.requests]
        assert len(keys) >= 1 and all(x == keys[0] for x in keys), k
        nxt = hexid(binascii.unhexlify(keys[0]))
        assert after.moves == {(cid, "reenrol", 1): nxt}, k
        assert [s[0] for s in after.sessions] == [nxt], k
        assert owner_doc() == {"v": 1, "epoch": 0} and _read("helper.new") is None, k
        assert exists(D + "/onboard.json") and store.cmd_seq(D) == 0, k
        if k == 1:
            assert len(keys) == 1  # cut before helper.new: the next boot enrolled its own
        if 2 <= k <= 5:
            assert len(keys) == 2  # the same request again: the same answer
        if k >= 6:
            assert len(keys) == 1  # committed before the cut: no second request
        env = cut = after = None
