# agent.main.run end to end over fakes: stored certificate -> MQTT publishes with exact payload
# shapes; onboarding when nothing is stored; refusals back off long; link failures back off
# with a capped, jittered, counted delay; a noise source that fails at boot or after is safe
# mode, not a traceback.
# 144 KiB: the agent (61 KiB loaded, qdid.p256 included, which the real onboarding now loads to
# check the command signer) plus this test's support modules, agentenv and certs (about 24 KiB,
# compiled from source here), within the RP2040's ~190 KiB.
# heapsize: 144k
# agentenv (source, compiled here) first, while the heap is still empty.
from agentenv import (
    Broker,
    Env,
    setup,
    published,
    packets,
    boot,
    FakeIdentity,
    PUB,
    DEVICE_ID,
    CERT,
    CA,
    KEY,
    TOPIC,
    EVENT,
    CMD,
    ALL_TOPICS,
    D,
)
import os
import json
from qdid import entropy
from agent import main, store, telemetry
from agent.errors import OnboardingError, LinkError


def test_publishes_max_messages_with_qos1_and_stops():
    p = setup({"max_messages": 3})
    sock = Broker(answers=4)  # CONNACK and three PUBACKs, then the link would drop
    with Env([sock]) as env:
        st = main.run(None, p, D, boot)
    assert st.sent == 3 and st.failures == 0
    # mTLS with the stored certificate and the identity's key, to the stored broker.
    assert env.opened == [("localhost", 8883, CA, CERT, KEY)]
    assert bytes(sock.out[:4]) == b"\x10\x4c\x00\x04"  # CONNECT, client id = device ID
    assert bytes(sock.out[14:78]) == DEVICE_ID.encode()
    msgs = published(sock.out)
    assert [m[0] for m in msgs] == [TOPIC] * 3
    assert [m[1]["seq"] for m in msgs] == [1, 2, 3]
    assert [m[2] for m in msgs] == [b"\x00\x01", b"\x00\x02", b"\x00\x03"]
    assert sorted(msgs[0][1].keys()) == ["fw", "mem_free", "seq", "uptime_ms"]
    assert msgs[0][1]["fw"] == "0.1.0"
    assert bytes(sock.out[-2:]) == b"\xe0\x00"  # DISCONNECT
    assert sock.closed
    assert "I telemetry: published seq=1" in env.lines
    assert "I telemetry: published seq=3" in env.lines
    # Two intervals slept between three messages, in keep-alive slices of at most 1 s.
    assert sum(env.sleeps) == 4000


def test_onboards_when_nothing_stored_and_uses_the_policy_interval():
    p = setup({"max_messages": 2}, stored=False)
    with Env([Broker()]) as env:
        main.run(None, p, D, boot)
    assert env.onboards == 1 and env.posts == ["/v1/onboard/hello", "/v1/onboard/proof"]
    assert env.opened[0][0:2] == ("broker.local", 8883)
    assert env.sleeps == [250]


def test_refusal_backs_off_long_and_gives_up_at_max_failures():
    p = setup({"max_failures": 2}, stored=False)
    with Env([]) as env:
        env.onboard_result = OnboardingError("not_registered", "register it", 403)
        st = main.run(None, p, D, boot)
    assert st.failures == 2 and env.onboards == 2
    # One long wait between the two refusals (in 1 s slices: telemetry is sampled meanwhile),
    # none after the last.
    assert sum(env.sleeps) == 300000 and max(env.sleeps) == 1000
    assert env.lines[-1] == "E agent: giving up after 2 failures"


def test_rate_limited_waits_what_retry_after_says():
    p = setup({"max_failures": 2}, stored=False)
    with Env([]) as env:
        env.onboard_result = OnboardingError("rate_limited", "retry in 7 s", 429, 7)
        main.run(None, p, D, boot)
    # 7 s and up to 1 s of jitter, in 1 s slices; not the 300 s of a refusal.
    assert 7500 <= sum(env.sleeps) <= 8000
    assert "W agent: rate limited; next try in 7 s" in env.lines


def test_stale_challenge_retries_soon():
    p = setup({"max_failures": 2}, stored=False)
    with Env([]) as env:
        env.onboard_result = OnboardingError("challenge_expired", "", 403)
        main.run(None, p, D, boot)
    assert len(env.sleeps) == 1 and env.sleeps[0] <= 1000


def test_link_failures_back_off_then_recover_and_seq_continues():
    p = setup({"max_messages": 2})
    # First session: CONNACK, then the link drops before PUBACK of seq 1.
    first = Broker(answers=1)
    with Env([LinkError("tls: refused"), first, Broker()]) as env:
        st = main.run(None, p, D, boot)
    assert st.sent == 2
    assert len(env.opened) == 3
    assert [m[1]["seq"] for m in published(first.out)] == [1]  # lost, sent again below
    assert env.lines.count("I telemetry: published seq=1") == 1
    # A session that reached CONNACK resets the failure count: both waits are first-step waits.
    assert 500 <= env.sleeps[0] <= 1000 and 500 <= env.sleeps[1] <= 1000
    assert env.sleeps[2:] == [1000, 1000]


def test_broker_refusal_clears_the_certificate_to_onboard_again():
    p = setup({"max_messages": 1})
    with Env([Broker(connack=b"\x20\x02\x00\x05"), Broker()]) as env:
        main.run(None, p, D, boot)
    assert env.onboards == 1
    want = "E agent: mqtt: connection refused: not authorized (5); onboarding again"
    assert want in env.lines


def test_backoff_is_capped_and_jittered():
    seen = set()
    for f in range(1, 40):
        w = main.backoff_ms(f)
        assert 0 < w <= 60000
        seen.add(w)
    assert main.backoff_ms(1) <= 1000
    assert 30000 <= main.backoff_ms(30) <= 60000
    assert len(seen) > 10  # jitter: not one fixed schedule


def test_telemetry_payload_exact():
    assert telemetry.payload(1, 2, 3) == b'{"seq": 1, "uptime_ms": 2, "mem_free": 3, "fw": "0.1.0"}'


def test_telemetry_carries_puf_health_once_known():
    telemetry.set_puf({"margin": 41, "corrected_bits": 77, "health_failures": 0, "other": "x"})
    try:
        assert telemetry.payload(1, 2, 3) == (
            b'{"seq": 1, "uptime_ms": 2, "mem_free": 3, "fw": "0.1.0", '
            b'"puf": {"margin": 41, "corrected_bits": 77, "health_failures": 0}}'
        )
        assert json.loads(telemetry.payload(1, 2, 3))["puf"]["margin"] == 41
    finally:
        telemetry.set_puf(None)
    assert b"puf" not in telemetry.payload(1, 2, 3)


def _payload_seqs(sock):
    return [m[1]["seq"] for m in published(sock.out) if m[0] == TOPIC]


def test_outage_samples_are_queued_and_delivered_in_order_after_reconnect():
    p = setup({"max_messages": 6})
    first = Broker(answers=2)  # seq 1 acknowledged, then the link drops
    # Three refused connects: the waits between them (>= 500 ms each, interval 2000) add samples.
    socks = [first, LinkError("a"), LinkError("b"), LinkError("c"), Broker()]
    with Env(socks) as env:
        st = main.run(None, p, D, boot)
    assert st.sent == 6 and st.dropped == 0
    seqs = _payload_seqs(socks[-1])
    assert seqs == list(range(2, 7))  # in order, none lost, none twice
    assert env.lines.count("I telemetry: published seq=2") == 1


def test_outage_sampling_keeps_an_interval_shorter_than_a_sleep_slice():
    st = main._State(300)
    st.sent = 1  # the link was up once: samples are due every interval from now on
    with Env([]) as env:
        main._sleep_sampling(st, 3100)
    assert st.seq == 10 and st.count == 10  # one per 300 ms, not one per 1 s slice
    assert env.sleeps == [300] * 10 + [100]
    assert st.since_ms == 100


def test_outage_sampling_waits_for_a_first_session():
    st = main._State(300)  # nothing sent yet: no interval to keep, no samples
    with Env([]) as env:
        main._sleep_sampling(st, 2500)
    assert st.count == 0 and env.sleeps == [1000, 1000, 500]


def test_queue_is_bounded_and_drops_the_oldest():
    st = main._State(100)
    for _ in range(main.QUEUE_LEN + 5):
        st.sample()
    assert st.count == main.QUEUE_LEN and st.dropped == 5
    assert main._seq_of(st.queue[st.head]) == 6
    before = st.count
    st.pop()
    assert st.count == before - 1 and main._seq_of(st.queue[st.head]) == 7


def test_reconnect_reports_retry_state_on_the_event_topic():
    p = setup({"max_messages": 2}, topics={"telemetry": TOPIC, "event": EVENT})
    sock = Broker()
    with Env([LinkError("tls localhost:8883: errno 111"), LinkError('x "q"\n\\'), sock]) as env:
        main.run(None, p, D, boot)
    msgs = published(sock.out)
    assert [m[0] for m in msgs[:2]] == [EVENT, EVENT]
    assert msgs[0][1]["event"] == "online"  # every session starts with it
    assert msgs[1][1] == {
        "event": "reconnected",
        "failures": 2,
        "last_error": 'x "q"\n\\',  # quotes, a control character, a backslash: all kept
        "queued": 0,
        "dropped": 0,
    }
    assert [m[1]["seq"] for m in msgs[2:]] == [1, 2]
    assert "I agent: reconnected after 2 failures" in env.lines


def test_session_subscribes_to_its_cmd_topic_then_announces_online():
    # docs/protocol.md "Broker": SUBSCRIBE to cmd with QoS 1 (MQTT 3.8), then on the event topic
    # {"event": "online", "fw", "cmd_seq", "puf"}, before any telemetry.
    p = setup({"max_messages": 1}, topics=ALL_TOPICS)
    store.set_cmd_seq(D, 7)

    class Healthy(FakeIdentity):
        health = {"margin": 41, "corrected_bits": 77, "health_failures": 0}

    sock = Broker()
    try:
        with Env([sock]):
            main.run(None, p, D, lambda board, d: Healthy())
    finally:
        telemetry.set_puf(None)
    pk = packets(sock.out)
    assert [first for first, _ in pk] == [0x10, 0x82, 0x32, 0x32, 0xE0]
    t = CMD.encode()
    assert pk[1][1] == b"\x00\x01" + bytes([0, len(t)]) + t + b"\x01"  # packet id 1, QoS 1
    e = EVENT.encode()
    assert pk[2][1] == bytes([0, len(e)]) + e + b"\x00\x02" + (
        b'{"event": "online", "fw": "0.1.0", "cmd_seq": 7, '
        b'"puf": {"margin": 41, "corrected_bits": 77, "health_failures": 0}}'
    )
    assert published(sock.out)[1][0] == TOPIC


def test_a_refused_command_subscription_is_a_link_failure():
    p = setup({"max_messages": 1, "max_failures": 1}, topics=ALL_TOPICS)
    sock = Broker(granted=0x80)  # MQTT 3.9.3: Failure
    with Env([sock]) as env:
        st = main.run(None, p, D, boot)
    assert st.sent == 0 and st.failures == 1
    assert (
        "W agent: link failed (1 in a row): mqtt: subscription refused; retry in"
        in (env.lines[-2][:71])
    )


def test_corrupt_config_is_safe_mode_not_a_crash():
    setup({})
    with open(D + "/config.json", "w") as f:
        f.write('{"server": "https://local')
    with Env([]) as env:
        st = main.run(None, D + "/config.json", D, boot)
    assert st.safe == "config" and st.sent == 0 and env.opened == []
    assert env.lines[-1].startswith("E agent: safe mode: config unusable (ConfigError: config ")


def test_unusable_identity_data_is_safe_mode():
    import qdid

    p = setup({})

    def bad_boot(board, data_dir):
        raise qdid.QdidError("helper data corrupt")

    with Env([]) as env:
        st = main.run(None, p, D, bad_boot)
    assert st.safe == "identity" and env.opened == []
    assert env.lines[-1] == (
        "E agent: safe mode: identity unusable (QdidError: helper data corrupt); REPL available"
    )


def test_corrupt_certificate_means_onboarding_again():
    p = setup({"max_messages": 1})
    with open(D + "/cert.der", "wb") as f:
        f.write(b"\x30\x03\x02\x01\xff")
    with Env([Broker()]) as env:
        main.run(None, p, D, boot)
    assert env.onboards == 1
    assert any(ln.startswith("W store: stored onboarding data unusable") for ln in env.lines)


# -- the noise source fails: safe mode with one log line, never a traceback -----------------------

_ENTROPY_LINE = (
    "E agent: safe mode: entropy unusable (EntropyError: noise source failed its health test "
    "(stuck or biased); check the board's noise input, then reset); REPL available"
)


class NoiseBoard:
    # A board whose noise input works until `stuck` is set, then reads one code.
    def __init__(self):
        self.stuck = False

    def noise(self, n):
        return bytes(n) if self.stuck else os.urandom(n)

    def unique_id(self):
        return b"\x01\x02\x03\x04"


class SigningIdentity(FakeIdentity):
    def sign_digest(self, digest32):
        # As qdid.identity.Identity does: RFC 6979 nonces hedged with DRBG output.
        return bytes(32) + entropy.random_bytes(32)


def _entropy_boot(board, data_dir):
    entropy.init(board)
    return SigningIdentity()


def _forget_entropy():
    # The tests after these ones run without entropy, as the other fakes expect.
    entropy._source = None
    entropy._drbg = None


def test_noise_source_failing_at_boot_is_safe_mode_entropy():
    p = setup({})
    board = NoiseBoard()
    board.stuck = True
    try:
        with Env([]) as env:
            st = main.run(board, p, D, _entropy_boot)
    finally:
        _forget_entropy()
    assert st.safe == "entropy" and st.sent == 0 and env.opened == []
    assert env.lines[-1] == _ENTROPY_LINE


def test_noise_source_failing_while_connected_stops_telemetry_in_safe_mode():
    p = setup({"max_messages": 5})
    board = NoiseBoard()
    sock = Broker()
    try:
        with Env([sock, Broker()]) as env:

            def sleep(ms):
                env.sleeps.append(ms)
                env.ms += ms
                if sum(env.sleeps) >= 4000:  # two intervals: seq 1 and 2 are out
                    board.stuck = True

            env.sleep = sleep
            st = main.run(board, p, D, _entropy_boot)
    finally:
        _forget_entropy()
    assert st.safe == "entropy" and st.stop
    # Checked before the third sample: nothing more is published, no reconnect is tried.
    assert [m[1]["seq"] for m in published(sock.out)] == [1, 2]
    assert st.sent == 2 and len(env.opened) == 1 and sock.closed
    assert env.lines[-1] == _ENTROPY_LINE
    assert "I telemetry: published seq=3" not in env.lines


def test_noise_source_failing_before_the_onboarding_proof_is_safe_mode():
    p = setup({"max_failures": 3}, stored=False)
    board = NoiseBoard()
    tried = []

    def onboard(cfg, ident, data_dir):
        # The source fails after the session's check, before the proof's signature draws.
        board.stuck = True
        tried.append(1)
        ident.sign_digest(bytes(32))
        raise AssertionError("signed without entropy")

    try:
        with Env([]) as env:
            main._onboard = onboard
            st = main.run(board, p, D, _entropy_boot)
    finally:
        _forget_entropy()
    assert st.safe == "entropy" and tried == [1]  # no second try
    assert env.opened == [] and env.sleeps == []
    assert env.lines[-1] == _ENTROPY_LINE
    assert not store.load(D, DEVICE_ID, PUB)
