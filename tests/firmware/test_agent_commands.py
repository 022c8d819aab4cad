# agent.main with the command channel and certificate renewal (docs/protocol.md "Command
# channel", "Onboarding API" renew_at_pct), over a broker that answers packet by packet and an
# onboarding server behind the real agent.onboard: the exact events, what runs and what does not,
# the seq persisted before a command runs, renewal by command and by the clock, an expired
# certificate at start. Commands are signed with the test signer key (certs.py).
# The RP2040 budget (hil.unixport.HEAP_RP2040): the agent with qdid.p256, and this test's
# support modules (agentenv, certs, a fake broker that keeps every byte both ways to check).
# heapsize: 192k
# agentenv (source, compiled here) first, while the heap is still empty.
from agentenv import (
    Broker,
    Env,
    setup,
    packets,
    published,
    events,
    telemetry_seqs,
    boot,
    sign,
    cmd,
    CERT,
    CERT2,
    NOT_BEFORE,
    NOT_AFTER,
    TOPIC,
    EVENT,
    ALL_TOPICS,
    T0,
    D,
)
import sys
import json
from agent import main, store
from agent.errors import OnboardingError, LinkError
import certs

RENEW_AT = NOT_BEFORE + (NOT_AFTER - NOT_BEFORE) * 67 // 100  # 2026-09-01T16:32:00Z
ONLINE0 = {"event": "online", "fw": "0.1.0", "cmd_seq": 0}


def on_telemetry(seq, *payloads):
    # A broker hook: pushes the commands once the device has published sample `seq`.
    def hook(broker, topic, payload):
        if topic == TOPIC and json.loads(payload)["seq"] == seq:
            for p in payloads:
                broker.push(p)

    return hook


def ack(seq, status, reason=None):
    # {"event": "command", ...} as the device reports it
    doc = {"event": "command", "seq": seq, "status": status}
    if reason:
        doc["reason"] = reason
    return doc


def rejected(seq, reason):
    return {"event": "command_rejected", "seq": seq, "reason": reason}


def run(socks, extra, configure=None, **stored):
    p = setup(extra, topics=stored.pop("topics", ALL_TOPICS), **stored)
    with Env(socks) as env:
        if configure:
            configure(env)
        st = main.run(None, p, D, boot)
    return env, st


# -- ping, unknown kinds ------------------------------------------------------------------------


def test_ping_is_acknowledged_accepted_then_done_between_two_samples():
    sock = Broker(on_publish=on_telemetry(1, cmd(1, "ping")))
    env, st = run([sock], {"max_messages": 2})
    assert events(sock) == [ONLINE0, ack(1, "accepted"), ack(1, "done")]
    # Served while waiting for the next sample: both answers go out before seq 2.
    kinds = [m[0] for m in published(sock.out)]
    assert kinds == [EVENT, TOPIC, EVENT, EVENT, TOPIC]
    assert len(sock.acked) == 1  # the command's PUBLISH was acknowledged (QoS 1)
    assert store.cmd_seq(D) == 1
    assert "agent.command" not in sys.modules  # loaded for the command, dropped after
    assert "I command: seq=1 kind=ping accepted" in env.lines
    assert "I command: seq=1 done" in env.lines
    # The exact bytes of the acknowledgements (docs/protocol.md "Command channel").
    raw = [b for f, b in packets(sock.out) if f == 0x32 and EVENT.encode() in b]
    assert raw[1].endswith(b'{"event": "command", "seq": 1, "status": "accepted"}')
    assert raw[2].endswith(b'{"event": "command", "seq": 1, "status": "done"}')


def test_command_signed_by_the_server_side_implementation_runs():
    # certs.CMD_PING: signed by pyca/cryptography, compact JSON as the server writes it.
    sock = Broker(on_publish=on_telemetry(1, certs.CMD_PING))
    run([sock], {"max_messages": 2})
    assert events(sock)[1:] == [ack(1, "accepted"), ack(1, "done")]


def test_unknown_kind_is_accepted_then_failed_with_unknown_kind():
    sock = Broker(on_publish=on_telemetry(1, cmd(3, "reboot")))
    env, st = run([sock], {"max_messages": 2})
    assert events(sock)[1:] == [ack(3, "accepted"), ack(3, "failed", "unknown_kind")]
    assert store.cmd_seq(D) == 3
    assert "W command: seq=3 failed: unknown_kind" in env.lines
    raw = [b for f, b in packets(sock.out) if f == 0x32 and EVENT.encode() in b][-1]
    assert raw.endswith(
        b'{"event": "command", "seq": 3, "status": "failed", "reason": "unknown_kind"}'
    )


# -- refusals: reported, nothing run, nothing persisted -------------------------------------------


def _renew_body(**over):
    doc = {"v": 1, "device_id": certs.DEVICE_ID, "seq": 9, "exp": T0 + 3600, "kind": "renew"}
    doc["args"] = {}
    for k in over:
        doc[k] = over[k]
    return json.dumps(doc).encode()


def test_refused_commands_are_reported_with_their_reason_and_never_run():
    # Each one a renew, so that running it would show (a proof sent, a second TLS session).
    signed_renew = sign(_renew_body())
    bad = (
        (bytes([signed_renew[0] ^ 1]) + signed_renew[1:], rejected(None, "altered")),
        (sign(_renew_body(device_id="cd" * 32)), rejected(9, "foreign")),
        (sign(_renew_body(exp=T0)), rejected(9, "expired")),
        (sign(_renew_body(seq=5)), rejected(5, "replayed")),
        (sign(_renew_body(kind=None)), rejected(9, "malformed")),
    )
    hooks = [on_telemetry(i + 1, payload) for i, (payload, _) in enumerate(bad)]
    sock = Broker(on_publish=lambda b, t, p: [h(b, t, p) for h in hooks])
    p = setup({"max_messages": len(bad) + 1}, topics=ALL_TOPICS)
    store.set_cmd_seq(D, 5)
    with Env([sock]) as env:
        main.run(None, p, D, boot)
    assert events(sock) == [{"event": "online", "fw": "0.1.0", "cmd_seq": 5}] + [
        want for _, want in bad
    ]
    assert store.cmd_seq(D) == 5  # nothing persisted
    assert env.onboards == 0 and env.posts == [] and len(env.opened) == 1  # nothing ran
    assert "W command: seq=null rejected: altered" in env.lines
    assert "W command: seq=9 rejected: foreign" in env.lines
    raw = [b for f, b in packets(sock.out) if f == 0x32 and EVENT.encode() in b][1]
    assert raw.endswith(b'{"event": "command_rejected", "seq": null, "reason": "altered"}')


def test_without_a_stored_signer_commands_are_rejected_no_signer():
    # An onboard.json written before the command channel: the device runs, commands do not.
    sock = Broker(on_publish=on_telemetry(1, cmd(1, "renew")))
    env, st = run([sock], {"max_messages": 2}, signer=None)
    assert events(sock) == [ONLINE0, rejected(None, "no_signer")]
    assert store.cmd_seq(D) == 0 and env.onboards == 0


def test_a_command_too_long_for_the_receive_buffer_is_rejected_malformed():
    sock = Broker(on_publish=on_telemetry(1, bytes(64) + b"x" * 500))
    run([sock], {"max_messages": 2})
    assert events(sock)[1:] == [rejected(None, "malformed")]
    assert len(sock.acked) == 1  # still acknowledged: the broker must not send it again


# -- the seq is persisted before the command runs ---------------------------------------------


def test_seq_is_persisted_before_the_command_runs_so_a_power_cut_never_runs_it_twice():
    # Boot 1: a renew arrives, its seq is written, the link (and then the power) goes while
    # "accepted" is on its way: the renewal has not run.
    renew = cmd(1, "renew")
    # CONNACK, SUBACK, PUBACK(online), PUBACK(seq 1): then nothing more is answered.
    first = Broker(answers=4, on_publish=on_telemetry(1, renew))
    p = setup({"max_messages": 3, "max_failures": 1}, topics=ALL_TOPICS)
    with Env([first]) as env:
        st = main.run(None, p, D, boot)
    assert st.failures == 1 and st.renew_seq == 1  # RAM only: lost with the power
    assert store.cmd_seq(D) == 1
    assert env.onboards == 0
    assert published(first.out)[-1][1] == ack(1, "accepted")  # written, never acknowledged
    # Boot 2: the same command comes again (a broker replaying it): refused, not run.
    second = Broker(on_publish=on_telemetry(1, renew))
    with Env([second]) as env:
        main.run(None, p, D, boot)
    assert events(second) == [
        {"event": "online", "fw": "0.1.0", "cmd_seq": 1},
        rejected(1, "replayed"),
    ]
    assert env.onboards == 0 and len(env.opened) == 1


# -- renew on command ---------------------------------------------------------------------------


def test_renew_command_closes_the_session_renews_and_reports_done_from_the_new_one():
    first = Broker(on_publish=on_telemetry(1, cmd(1, "renew")))
    second = Broker()

    def configure(env):
        env.issue = [CERT2]
        env.topics = ALL_TOPICS
        env.policy = {"telemetry_interval_ms": 1000}

    # The first reconnect fails: samples queue up meanwhile and must all arrive, in order.
    env, st = run(
        [first, LinkError("tls: refused"), LinkError("tls: refused"), second],
        {"max_messages": 5},
        configure,
        policy={"telemetry_interval_ms": 1000},
    )
    assert st.sent == 5
    # Session 1: accepted, then a clean close (DISCONNECT) before the proof.
    assert events(first) == [ONLINE0, ack(1, "accepted")]
    assert packets(first.out)[-1] == (0xE0, b"") and first.closed
    # A fresh proof by the onboarding path, then TLS with the new certificate.
    assert env.posts == ["/v1/onboard/hello", "/v1/onboard/proof"]
    assert [o[3] for o in env.opened] == [CERT, CERT2, CERT2, CERT2]
    assert store.load(D, certs.DEVICE_ID, certs.DEVICE_PUB).cert_der == CERT2
    assert "I agent: renewed certificate; valid until 1819756800" in env.lines
    for name in ("agent.renew", "agent.command"):
        assert name not in sys.modules  # loaded for the step, dropped after
    # Session 2: online, the retry state, then done; queued telemetry kept, in order, once each.
    got = events(second)
    assert got[0] == {"event": "online", "fw": "0.1.0", "cmd_seq": 1}
    assert got[1]["event"] == "reconnected" and got[1]["queued"] >= 1
    assert got[2] == ack(1, "done")
    assert telemetry_seqs(first) == [1]
    assert telemetry_seqs(second) == [2, 3, 4, 5]


def test_renew_command_refused_by_the_server_fails_and_the_device_keeps_its_certificate():
    first = Broker(on_publish=on_telemetry(1, cmd(1, "renew")))
    second = Broker()

    def configure(env):
        env.onboard_result = OnboardingError("rate_limited", "retry in 30 s", 429, 30)

    env, st = run([first, second], {"max_messages": 3}, configure)
    assert [o[3] for o in env.opened] == [CERT, CERT]
    assert events(second) == [
        {"event": "online", "fw": "0.1.0", "cmd_seq": 1},
        ack(1, "failed", "rate_limited"),
    ]
    assert (
        "W agent: renewal failed (rate_limited: retry in 30 s); next try in"
        in ([ln for ln in env.lines if ln.startswith("W agent: renewal failed")][0][:66])
    )
    assert telemetry_seqs(first) + telemetry_seqs(second) == [1, 2, 3]


# -- renewal by the clock ------------------------------------------------------------------------


def _stored(policy):
    setup({}, policy=policy)
    return store.load(D, certs.DEVICE_ID, certs.DEVICE_PUB)


def test_renewal_is_due_at_renew_at_pct_of_the_certificate_life():
    life = NOT_AFTER - NOT_BEFORE
    assert main._renew_at(_stored({"renew_at_pct": 67})) == RENEW_AT
    assert main._renew_at(_stored({"renew_at_pct": 50})) == NOT_BEFORE + life // 2
    assert main._renew_at(_stored({"renew_at_pct": 1})) == NOT_BEFORE + life // 100
    assert main._renew_at(_stored({"renew_at_pct": 99})) == NOT_BEFORE + life * 99 // 100
    for bad in (0, 100, -5, "50", True, None):
        assert main._renew_at(_stored({"renew_at_pct": bad})) == RENEW_AT, bad
    assert main._renew_at(_stored({})) == RENEW_AT  # absent: 67 %


def test_renewal_runs_when_the_clock_passes_the_renewal_point_between_samples():
    first = Broker()
    second = Broker()

    def configure(env):
        env.start = RENEW_AT - 3  # not due at the session's start
        env.issue = [CERT2]
        env.topics = ALL_TOPICS
        env.policy = {"telemetry_interval_ms": 1000, "renew_at_pct": 67}

    env, st = run(
        [first, second],
        {"max_messages": 6},
        configure,
        policy={"telemetry_interval_ms": 1000, "renew_at_pct": 67},
    )
    assert env.onboard_times == [RENEW_AT]  # not a second earlier, and at once
    assert [o[3] for o in env.opened] == [CERT, CERT2]
    assert packets(first.out)[-1] == (0xE0, b"")  # closed cleanly first
    assert telemetry_seqs(first) + telemetry_seqs(second) == [1, 2, 3, 4, 5, 6]
    assert "I agent: renewed certificate; valid until 1819756800" in env.lines


def test_renewal_due_at_the_start_of_a_session_runs_before_tls():
    def configure(env):
        env.start = NOT_BEFORE + (NOT_AFTER - NOT_BEFORE) // 2
        env.issue = [CERT2]

    env, st = run([Broker()], {"max_messages": 1}, configure, policy={"renew_at_pct": 50})
    assert env.onboard_times == [NOT_BEFORE + (NOT_AFTER - NOT_BEFORE) // 2]
    assert [o[3] for o in env.opened] == [CERT2]


def test_a_renewal_answered_with_the_same_certificate_waits_a_tenth_of_the_life_left():
    def configure(env):
        env.start = RENEW_AT

    env, st = run([Broker()], {"max_messages": 5}, configure)
    wait = (NOT_AFTER - RENEW_AT) // 10
    assert env.onboards == 1 and st.renew_retry == RENEW_AT + wait
    assert "W agent: renewal gave the same certificate; next try in %d s" % wait in env.lines
    assert [o[3] for o in env.opened] == [CERT]  # the session goes on with the one it has


def test_a_renewal_answered_with_the_same_certificate_near_the_end_waits_a_minute():
    # 100 s before the end: a tenth is 10 s, the wait is a minute; the second try comes then,
    # during the session, which closes and reconnects for it.
    def configure(env):
        env.start = NOT_AFTER - 100
        env.policy = {"telemetry_interval_ms": 10000}  # what the renewal's answer says

    socks = [Broker(), Broker()]
    env, st = run(socks, {"max_messages": 8}, configure, policy={"telemetry_interval_ms": 10000})
    assert env.onboard_times == [NOT_AFTER - 100, NOT_AFTER - 40]
    assert "W agent: renewal gave the same certificate; next try in 60 s" in env.lines
    assert telemetry_seqs(socks[0]) + telemetry_seqs(socks[1]) == list(range(1, 9))


def test_a_new_certificate_due_at_once_is_not_renewed_again_within_a_minute():
    # The answer's policy makes every new certificate due at once (1 % of its life, long past):
    # each renewal would get yet another one from a server that agrees. One a minute at most.
    def configure(env):
        env.start = NOT_AFTER - 86400
        env.issue = [CERT2, CERT, CERT2, CERT, CERT2, CERT]
        env.policy = {"telemetry_interval_ms": 10000, "renew_at_pct": 1}

    socks = [Broker() for _ in range(4)]
    env, st = run(socks, {"max_messages": 14}, configure)
    start = NOT_AFTER - 86400
    assert env.onboard_times == [start, start + 60, start + 120]
    assert sum(len(telemetry_seqs(s)) for s in socks) == 14


def test_a_failed_renewal_keeps_the_certificate_and_the_session():
    def configure(env):
        env.start = RENEW_AT
        env.onboard_result = LinkError("https localhost:8443: errno 111")

    env, st = run([Broker()], {"max_messages": 3}, configure)
    assert env.onboards == 1 and st.failures == 0 and st.sent == 3
    wait = (NOT_AFTER - RENEW_AT) // 10
    assert (
        "W agent: renewal failed (https localhost:8443: errno 111); next try in %d s" % wait
    ) in env.lines


# -- an expired certificate at start --------------------------------------------------------------


def test_an_expired_certificate_at_start_means_onboarding_not_a_tls_attempt():
    def configure(env):
        env.start = NOT_AFTER + 86400  # the device was off for a day past the end
        env.issue = [CERT2]

    env, st = run([Broker()], {"max_messages": 1}, configure)
    assert "W agent: certificate expired at %d; onboarding again" % NOT_AFTER in env.lines
    assert env.onboard_times == [NOT_AFTER + 86400]
    assert [o[3] for o in env.opened] == [CERT2]  # the first TLS session has the new one


def test_an_expired_certificate_that_cannot_be_replaced_is_never_offered_to_the_broker():
    def configure(env):
        env.start = NOT_AFTER
        env.onboard_result = LinkError("https localhost:8443: errno 111")

    env, st = run([], {"max_failures": 3}, configure)
    assert env.onboards == 3 and env.opened == []


# -- more commands than the inbox holds ---------------------------------------------------------


def test_commands_beyond_the_inbox_come_again_after_online_is_announced_again():
    pings = [cmd(i, "ping") for i in range(1, 6)]

    def hook(broker, topic, payload):
        if topic != EVENT:
            return
        doc = json.loads(payload)
        if doc.get("event") == "online":
            # The server sends what it holds above cmd_seq: all five, then the one left over.
            for p in pings[doc["cmd_seq"] :]:
                broker.push(p)

    sock = Broker(on_publish=hook)
    env, st = run([sock], {"max_messages": 3})
    acks = [e for e in events(sock) if e["event"] == "command"]
    assert acks == [ack(s, x) for s in range(1, 6) for x in ("accepted", "done")]
    onlines = [e["cmd_seq"] for e in events(sock) if e["event"] == "online"]
    assert onlines == [0, 4]
    assert "W command: inbox full; one command left for later" in env.lines
    assert store.cmd_seq(D) == 5
