# The agent's life: config -> identity -> onboard (when no usable certificate is stored, or it
# has expired) -> MQTT over mutual TLS -> subscribe to the command topic, announce the session
# ("online", with the last command seq) -> telemetry every interval, QoS 1, and commands served
# as they arrive in between -> renewal (hello + proof again) at a share of the certificate's life
# or on command, then a new session with the new certificate.
# One retry loop at the top (STYLE.md Firmware 6): every failure below arrives as LinkError or
# OnboardingError; the loop counts consecutive failures and sleeps a capped, jittered backoff.
# A refusal by the server (e.g. not_registered) backs off long: an unregistered device must not
# hammer the service. A renewal that fails while the certificate is still valid is no session
# failure: the device keeps its certificate and tries again after a bounded back-off.
# Always loaded: main, log, errors, store, tlslink, mqtt, telemetry, version, clock, qdid.entropy
# with the DRBG, qdid.p256 and qdid.der (the identity loads them for its key at boot and the TLS
# key of every session), qdid.x509 (store reads certificate validity with it): 61 KiB of heap once
# imported on the Unix port (x86-64). Loaded for a step and dropped after: config (boot), https
# and onboard (onboarding and renewal), renew (1 KiB, a renewal), command (3 KiB, while received
# commands are checked), successor and qdid.owner (a transfer or re-enrolment: recorded by its
# command, run as a step where a session starts, before any TLS session of the current identity;
# after the move the new identity onboards), decommission (erases, then safe mode), relocate (4 KiB,
# a move to another broker: a `broker` command or a renewal that names another broker, at each
# step of it: recorded, proved, tried, landed), ota (12 KiB, an update, docs/ota.md: the command
# writes the job; the step, with otacrypto and https, runs where sessions start with no broker
# session open, then the board resets for boot.py; at start, when ota/ exists, it reads what
# boot.py left; a trial version commits once a telemetry message of its first session is
# acknowledged).
# Telemetry is sampled every interval whether or not the link is up: samples wait in a bounded
# queue (oldest dropped when full, counted) and go out in order, each removed only after its
# PUBACK. After a reconnect the device reports its retry state on its event topic. Command
# acknowledgements wait in a small queue of their own (RAM, like the samples: a renewal keeps
# both) and go out once there is a session.
# A corrupt config or unusable identity data puts the agent in safe mode: it logs why and
# returns, so main.py ends and the REPL stays reachable (no boot loop); corrupt onboarding data
# (certificate, onboard.json) is detected by store.load and the device onboards again.
# So does a noise source that fails its health tests, at boot or at any time after: the agent
# checks it before each session, each telemetry interval and each renewal (qdid.entropy.check),
# and every random byte it draws reads it too; the failure closes the session and stops the
# agent (no onboarding, no telemetry, no retry) with one log line saying why.
import gc
import json
import sys
import time
import random
from micropython import const
import qdid
from qdid import entropy
from agent import store, tlslink, telemetry, clock
from agent.errors import LinkError, OnboardingError, BrokerRefusedError, ConfigError
from agent.log import log, set_level, enabled as log_enabled
from agent.mqtt import MQTTClient
from agent.version import VERSION

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    from collections.abc import Callable
    from hal import Board
    from qdid.identity import Identity

_BACKOFF_MIN_MS = const(1000)  # ms, first retry
_BACKOFF_MAX_MS = const(60000)  # ms, cap for link failures
_REFUSED_MS = const(300000)  # ms, after the server refused us (operator action needed)
_TIMEOUT_MS = const(10000)  # ms, per socket operation
_KEEPALIVE_S = const(60)  # s, MQTT Keep Alive (3.1.2.10)
_SLICE_MS = const(1000)  # ms, longest single sleep between keep-alive checks
QUEUE_LEN = const(32)  # telemetry samples kept during an outage (~70 bytes each)
_ERR_LEN = const(80)  # chars of the last error reported in the event message
_INBOX_LEN = const(4)  # commands received and not yet checked (at most 384 bytes each)
_EVENTS_LEN = const(16)  # event messages waiting for a session (~60 bytes each)
_RENEW_PCT = const(67)  # % of the certificate's life, when the policy names no valid share
_TRIAL_FAILS = const(5)  # failed sessions in a row after which a trial version resets the board

# Event messages (docs/protocol.md "Broker" and "Command channel").
_EVENT_FMT = (
    '{"event": "reconnected", "failures": %d, "last_error": %s, "queued": %d, "dropped": %d}'
)
_ONLINE_FMT = '{"event": "online", "fw": "%s", "cmd_seq": %d%s}'
_ACK_FMT = '{"event": "command", "seq": %d, "status": "%s"%s}'

# Code the server uses when a fresh hello can succeed at once (the challenge went stale).
_STALE = ("unknown_challenge", "challenge_used", "challenge_expired")

# Injected by tests; the device uses the real clock.
_sleep_ms = time.sleep_ms


def _serve(client, ms):
    # Waits up to ms for an inbound packet and serves it (agent.mqtt); replaced by tests.
    return client.serve(ms)


class _State:
    def __init__(self, interval):
        self.sent = 0  # telemetry messages acknowledged (seq of the last one)
        self.seq = 0  # seq of the last sample taken
        self.failures = 0  # consecutive failed sessions
        self.total_failures = 0
        self.last_error = ""
        self.stop = False
        self.safe = None  # reason, when the agent stopped in safe mode
        self.interval = interval
        self.since_ms = 0  # time since the last sample
        # Ring buffer of samples, allocated once (STYLE.md Firmware 2).
        self.queue = [None] * QUEUE_LEN
        self.head = 0
        self.count = 0
        self.dropped = 0
        self.inbox = []  # command payloads received, not yet checked (None: too long)
        self.resync = False  # a command did not fit the inbox: announce cmd_seq again
        self.events = []  # event messages (bytes) waiting for the broker, oldest first
        self.renew_seq = 0  # seq of an accepted renew command not yet run
        self.renew_retry = 0  # unix s before which a due renewal is not tried again
        self.move = False  # an identity step (agent.successor) is due: data/owner.json says which
        self.config_path = "config.json"  # erased by a decommission
        self.relocate = False  # a broker move is open (data/relocate.json): steps at session start
        self.trial = False  # this session is an attempt at the new broker of a move
        self.landing = None  # (seq, status, reason) of a move, reported once a session stands
        self.board = None  # the HAL object: its name (OTA board check) and reset()
        self.ota = False  # an update job is open (ota/job.json): the step runs at session start
        self.ota_tries = 0  # failed runs of that step in a row (link failures)
        self.ota_reset = False  # staged: reset for boot.py once the events went out
        self.ota_trial = None  # (release, version) while this version is on trial

    def event(self, msg):
        if len(self.events) == _EVENTS_LEN:
            self.events.pop(0)  # the oldest goes, as with samples
        self.events.append(msg.encode())

    def ack(self, seq, status, reason=None):
        # {"event": "command", ...}; a reason is short text, quoted and escaped by json.dumps.
        if reason:
            log("W", "command", "seq=%d %s: %s", seq, status, reason)
            self.event(_ACK_FMT % (seq, status, ', "reason": ' + json.dumps(reason)))
        else:
            if status != "accepted":  # agent.command logs the acceptance itself
                log("I", "command", "seq=%d %s", seq, status)
            self.event(_ACK_FMT % (seq, status, ""))

    def on_message(self, cmd_topic):
        # The MQTT client's callback: a command is only kept here; it is checked and run between
        # packets (main loop), since the client may be waiting for a PUBACK when it arrives.
        want = cmd_topic.encode() if cmd_topic else None

        def received(topic, payload):
            if topic != want:
                return  # subscribed to nothing else; ignore what a broker sends anyway
            if len(self.inbox) == _INBOX_LEN:
                # The server sends it again after the next "online" (its seq is above ours).
                self.resync = True
                log("W", "command", "inbox full; one command left for later")
                return
            self.inbox.append(payload)

        return received

    def sample(self):
        self.seq += 1
        self.since_ms = 0
        if self.count == QUEUE_LEN:
            self.queue[self.head] = None  # the oldest goes: newest data matters most
            self.head = (self.head + 1) % QUEUE_LEN
            self.count -= 1
            self.dropped += 1
        self.queue[(self.head + self.count) % QUEUE_LEN] = telemetry.sample(self.seq)
        self.count += 1

    def pop(self):
        self.queue[self.head] = None
        self.head = (self.head + 1) % QUEUE_LEN
        self.count -= 1


def _seq_of(payload):
    # Samples start with b'{"seq": N,' (agent.telemetry.payload).
    return int(payload[8 : payload.find(b",")])


def backoff_ms(failures, cap=_BACKOFF_MAX_MS):
    # Exponential backoff with "equal jitter": half fixed, half random, so a fleet that lost the
    # server together does not come back in lock step.
    n = failures - 1 if failures > 1 else 0
    base = _BACKOFF_MIN_MS << (n if n < 16 else 16)
    if base > cap:
        base = cap
    half = base // 2
    return half + random.getrandbits(16) * half // 65536


def _heap(stage):
    # Debug aid for the heap budget (docs: RP2040 leaves ~190 KiB): live bytes after a collect.
    if log_enabled("D"):
        gc.collect()
        log("D", "agent", "heap %s: used=%d free=%d", stage, gc.mem_alloc(), gc.mem_free())


def _drop(name, pkg="agent"):
    # Unloads <pkg>.<name> (STYLE.md Firmware 5): both sys.modules and the package hold it.
    sys.modules.pop(pkg + "." + name, None)
    try:
        delattr(sys.modules[pkg], name)
    except (AttributeError, KeyError):
        pass


def _load_config(path):
    # In a function of its own so that no frame keeps the module alive after the drop.
    from agent import config

    cfg = config.load(path)
    del config
    _drop("config")
    return cfg


def _onboard(cfg, ident, data_dir):
    # Onboarding and the HTTPS client are needed once per device life and once per renewal:
    # load, use, drop.
    from agent import https, onboard

    client = https.Client(cfg.host, cfg.port, cfg.root_der, cfg.prefix, _TIMEOUT_MS)
    try:
        return onboard.run(client, ident, data_dir, cfg.root_der)
    finally:
        del client
        _drop("onboard")
        _drop("https")
        gc.collect()


def _renew_at(stored):
    # Unix s at which renewal is due: renew_at_pct of the life from notBefore to notAfter
    # (docs/protocol.md "Onboarding API"), 67 % when the policy names no share in 1..99.
    pct = stored.policy.get("renew_at_pct")
    if not isinstance(pct, int) or isinstance(pct, bool) or not 0 < pct < 100:
        pct = _RENEW_PCT
    return stored.not_before + (stored.not_after - stored.not_before) * pct // 100


def _renewal_due(stored, st, now):
    return st.renew_seq or (now >= _renew_at(stored) and now >= st.renew_retry)


def _leave(stored, st, now):
    # The broker session ends for a renewal, an identity step, a broker move or a decommission.
    if st.ota or (st.ota_reset and not st.events):
        return True  # an update to fetch, or one staged and reported: reset for boot.py
    return st.move or st.safe or st.relocate or _renewal_due(stored, st, now)


def _server(cfg):
    # The HTTPS client of the onboarding API for an identity step; replaced by tests.
    from agent import https

    return https.Client(cfg.host, cfg.port, cfg.root_der, cfg.prefix, _TIMEOUT_MS)


def _move(cfg, ident, st, data_dir):
    # The pending identity step (agent.successor, which reads the answer with agent.onboard):
    # loaded for it and dropped after, with the HTTPS client and qdid.owner.
    _check_entropy()  # the request's signature draws random bytes (hedged)
    from agent import successor

    client = _server(cfg)
    try:
        successor.run(client, ident, st, data_dir)
    finally:
        del client
        del successor
        for name in ("successor", "onboard", "https"):
            _drop(name)
        _drop("owner", "qdid")
        gc.collect()


def _renew(cfg, ident, st, data_dir, stored):
    # agent.renew, loaded for it and dropped after, with the onboarding path of _onboard.
    _check_entropy()  # the proof draws random bytes (hedged signature)
    from agent import renew

    def onboard():
        return _onboard(cfg, ident, data_dir)

    def proof():
        # The settings in use are kept first: an answer naming another broker is a move.
        return _relocating("renewal", st, data_dir, ident.device_id, onboard)

    try:
        return renew.run(st, stored, proof)
    finally:
        del renew
        _drop("renew")
        gc.collect()


def _relocating(step, *args):
    # agent.relocate for one step of a broker move, dropped after (STYLE.md Firmware 5).
    from agent import relocate

    try:
        return getattr(relocate, step)(*args)
    finally:
        del relocate
        _drop("relocate")


def _ota(cfg, ident, st, data_dir):
    # The update step (agent.ota.step), loaded for it and dropped after with its HTTPS client,
    # the crypto and the OTA key (STYLE.md Firmware 5): none of it stays resident.
    try:
        _ota_call("step", _server(cfg), ident, st, data_dir, cfg.root_der)
    finally:
        for name in ("otacrypto", "https"):
            _drop(name)
        _drop("otakey", "qdid")
        gc.collect()


def _ota_call(step, *args):
    # agent.ota for one call (start, commit), dropped after (STYLE.md Firmware 5).
    from agent import ota

    try:
        return getattr(ota, step)(*args)
    finally:
        del ota
        _drop("ota")


def _ota_open():
    # Whether ota/ exists (agent.ota's folder at the board's root): only then is the module
    # loaded at start (12 KiB while loaded); a device with no update pays a stat.
    import os

    try:
        os.stat("ota")
        return True
    except OSError:
        return False


def _reset(st):
    # For boot.py: after staging, or a trial version that cannot reach its broker (boot.py counts
    # the boot and rolls back). board.reset() does not return on a board; a test's board may.
    log("W" if st.ota_trial else "I", "agent", "resetting the board for boot.py")
    if st.board is not None:
        st.board.reset()
    st.stop = True


def _flush(client, topic, st, cfg):
    # Sends queued samples oldest first; one leaves the queue only after its PUBACK, so one lost
    # with the link is sent again, with its seq, on the next session.
    while st.count:
        payload = st.queue[st.head]
        client.publish(topic, payload, 1)
        seq = _seq_of(payload)
        st.pop()
        st.sent = seq
        log("I", "telemetry", "published seq=%d", seq)
        if cfg.max_messages and seq >= cfg.max_messages:
            st.stop = True
            return


def _report(client, stored, st):
    # Sends waiting event messages; each leaves the queue after its PUBACK. Without an event
    # topic (onboarded before there was one) there is no one to tell.
    topic = stored.topics.get("event")
    while st.events:
        if topic:
            client.publish(topic, st.events[0], 1)
        st.events.pop(0)


def _report_retries(client, stored, st):
    # The server sees the retry state: failures in a row, the last error, samples dropped.
    topic = stored.topics.get("event")
    if not topic:
        return
    # json.dumps quotes and escapes the error text (it may hold quotes or control characters).
    err = json.dumps(st.last_error[:_ERR_LEN])
    msg = _EVENT_FMT % (st.failures, err, st.count, st.dropped)
    client.publish(topic, msg.encode(), 1)
    log("I", "agent", "reconnected after %d failures", st.failures)


def _online(data_dir):
    # The session's first event: the server sends again the commands it holds above cmd_seq.
    return _ONLINE_FMT % (VERSION, store.cmd_seq(data_dir), telemetry.puf_member())


def _commands(st, stored, device_id, data_dir):
    # Checks and runs the commands received since the last call (agent.command, loaded for it
    # and dropped after). A renew only sets st.renew_seq: the session must close first.
    if st.safe:
        st.inbox = []  # decommissioned: what arrives while the session closes never runs
        return
    from agent import command

    try:
        command.run_all(st, stored.signer, device_id, data_dir, clock.now())
    finally:
        del command
        for name in ("command", "successor", "decommission", "relocate", "ota"):
            _drop(name)
        _drop("owner", "qdid")
    if st.resync:
        st.resync = False
        st.event(_online(data_dir))


def _check_entropy():
    # SP 800-90B 4.4 tests on fresh samples between random requests: a connected device can go
    # hours without one, and must stop before its next handshake, proof or renewal once its noise
    # source has failed. An identity without entropy (tests' boots) has nothing to check.
    if entropy.ready():
        entropy.check()


def _interval(stored, cfg):
    interval = stored.policy.get("telemetry_interval_ms", cfg.telemetry_interval_ms)
    if not isinstance(interval, int) or interval < 100:
        interval = cfg.telemetry_interval_ms
    return interval


def _session(cfg, ident, st, data_dir):
    _check_entropy()
    # Time first: certificate validity is judged against it, here and in TLS (agent.clock).
    now = clock.ensure(cfg.time_server, _TIMEOUT_MS)
    if st.move:
        # Before any TLS session as the current identity, which the step's 200 revokes.
        _move(cfg, ident, st, data_dir)
    if st.ota:
        # The update's HTTPS exchanges, with no broker session open (docs/ota.md step 1).
        _ota(cfg, ident, st, data_dir)
    stored = store.load(data_dir, ident.device_id, ident.public_key)
    if stored is not None and now >= stored.not_after:
        # The device was off past its certificate's end: no broker takes it any more, and the
        # server issues an expired device a new one (docs/protocol.md "Onboarding API").
        log("W", "agent", "certificate expired at %d; onboarding again", stored.not_after)
        stored = None
    fresh = stored is None
    if fresh:
        _heap("before onboarding")
        stored = _onboard(cfg, ident, data_dir)
        _heap("after onboarding")
        if st.renew_seq:
            st.ack(st.renew_seq, "done")  # a fresh certificate is what the command asked for
            st.renew_seq = 0
    elif _renewal_due(stored, st, now) and not st.relocate:
        stored = _renew(cfg, ident, st, data_dir, stored)
    if st.relocate:
        # A broker move: its proof (unless onboarding just ran: that was it), an attempt at the
        # new broker, or the way back (agent.relocate).
        proof = None if fresh else (lambda: _onboard(cfg, ident, data_dir))
        stored = _relocating("step", st, data_dir, stored, proof)
    while _broker_session(cfg, ident, st, data_dir, stored):
        if st.safe:
            return
        if st.ota_reset:
            return  # staged and reported: run() resets the board
        if st.ota:
            # Back to run(), which starts the next session at once: the update's step runs
            # there with this session's frames and objects gone (its head and its TLS session
            # need the largest free blocks a long-running device's heap still has).
            return
        if not (st.move or st.relocate):
            stored = _renew(cfg, ident, st, data_dir, stored)
        if st.move or st.relocate:
            return _session(cfg, ident, st, data_dir)  # these steps run where sessions start


def _broker_session(cfg, ident, st, data_dir, stored):
    # One broker session with the stored certificate. Returns True when it was closed for a
    # renewal, False when the agent stops; link failures raise.
    st.interval = _interval(stored, cfg)
    key = ident.private_key_der()
    try:
        sock, raw = tlslink.connect(
            stored.broker_host,
            stored.broker_port,
            stored.broker_ca,
            _TIMEOUT_MS,
            stored.cert_der,
            key,
        )
    finally:
        # The key is re-derived each session; drop our reference as soon as mbedTLS has it.
        key = None
        gc.collect()
    cmd = stored.topics.get("cmd")
    client = MQTTClient(ident.device_id, _KEEPALIVE_S, _TIMEOUT_MS, st.on_message(cmd))
    try:
        client.connect(sock, True, raw)
        log("I", "mqtt", "connected to %s:%d", stored.broker_host, stored.broker_port)
        _heap("connected")
        if cmd:
            client.subscribe(cmd, 1)
        event = stored.topics.get("event")
        if event:
            client.publish(event, _online(data_dir).encode(), 1)
        if st.landing:
            # A broker move's outcome, queued here: it goes out from where the device now is.
            _relocating("landed", st, data_dir, stored)
        if st.failures:
            _report_retries(client, stored, st)
        st.failures = 0
        sent = st.sent  # a trial version commits after a telemetry PUBACK of this session
        topic = stored.topics["telemetry"]
        if not st.count:
            st.sample()
        while True:
            if st.inbox:
                _commands(st, stored, ident.device_id, data_dir)
            if st.events:
                _report(client, stored, st)
            if _leave(stored, st, clock.now()):
                client.disconnect()
                return True
            _flush(client, topic, st, cfg)
            if st.ota_trial and st.sent != sent:
                _ota_call("commit", st, data_dir)
                continue  # the committed event goes out at the loop's top
            if st.stop:
                client.disconnect()
                return False
            if _wait(client, st, stored, ident.device_id, data_dir):
                continue  # a command or the clock asks for a renewal: the loop's top runs it
            _check_entropy()
            st.sample()
    finally:
        client.close()


def _wait(client, st, stored, device_id, data_dir):
    # The time between two samples, in slices so that the keep-alive ping goes out on time even
    # with long intervals. Inbound packets are served as they arrive, commands checked and run
    # at once. Returns True, early, when a renewal is due.
    left = st.interval
    while left > 0:
        step = left if left < _SLICE_MS else _SLICE_MS
        t0 = time.ticks_ms()
        if _serve(client, step):
            left -= time.ticks_diff(time.ticks_ms(), t0)
        else:
            left -= step
        if st.inbox:
            _commands(st, stored, device_id, data_dir)
        if st.events:
            _report(client, stored, st)
        if _leave(stored, st, clock.now()):
            return True
        if client.keepalive_due():
            client.ping()
    return False


def _sleep_sampling(st, wait):
    # The retry wait: telemetry keeps being sampled into the queue while the link is down.
    # Slices end when a sample is due, so an interval shorter than a slice keeps its rate.
    left = wait
    while left > 0:
        step = left if left < _SLICE_MS else _SLICE_MS
        due = st.interval - st.since_ms
        if st.sent and 0 < due < step:
            step = due
        _sleep_ms(step)
        left -= step
        st.since_ms += step
        if st.sent and st.since_ms >= st.interval:
            st.sample()


def run(
    board: Board,
    config_path: str = "config.json",
    data_dir: str = "data",
    boot: Callable[[Board, str], Identity] | None = None,
) -> _State:
    # boot: identity factory, qdid.identity.boot unless a test passes another (tests pass None
    # for the board with a boot of their own). The state returned holds no board: a caller that
    # keeps it (a test's next power cycle) must not keep the board's SRAM model alive too.
    st = _run(board, config_path, data_dir, boot)
    st.board = None
    return st


def _run(board, config_path, data_dir, boot):
    try:
        cfg = _load_config(config_path)
    except ConfigError as e:
        return _safe_mode(_State(0), "config", e)
    set_level(cfg.log_level)
    if board is not None and hasattr(board, "rtc"):
        # A board with a battery-backed RTC: the clock lives there (docs/protocol.md Board HAL).
        clock.use(board.rtc, getattr(board, "set_rtc", None))
    if boot is None:
        from qdid import identity

        boot = identity.boot
    st = _State(cfg.telemetry_interval_ms)
    st.config_path = config_path
    st.board = board
    try:
        ident = boot(board, data_dir)
        telemetry.set_puf(getattr(ident, "health", None))
    except qdid.QdidError as e:
        return _safe_mode(st, "entropy" if isinstance(e, entropy.EntropyError) else "identity", e)
    log("I", "agent", "device %s", ident.device_id)
    # data/owner.json recorded a transfer or re-enrolment: agent.successor sees to it first.
    st.move = bool(getattr(ident, "pending", None))
    st.relocate = _relocating("pending", data_dir)  # a broker move open when the power went
    if _ota_open():
        _ota_call("start", st)  # an update job to resume, a trial to run, or boot.py's outcome
    _heap("identity ready")
    while not st.stop:
        wait = 0
        try:
            _session(cfg, ident, st, data_dir)
        except OnboardingError as e:
            st.failures += 1
            st.last_error = str(e)
            if e.retry_after:
                # 429: the server said when; a little jitter so a fleet does not return at once.
                wait = e.retry_after * 1000 + backoff_ms(1)
                log("W", "agent", "rate limited; next try in %d s", wait // 1000)
            elif e.code in _STALE:
                wait = backoff_ms(st.failures)
            else:
                wait = _REFUSED_MS
                log("W", "agent", "onboarding refused; next try in %d s", wait // 1000)
        except BrokerRefusedError as e:
            # Not authorized by the broker: the stored certificate may have been replaced or
            # revoked; onboard again, where the server says which.
            st.failures += 1
            st.last_error = str(e)
            wait = backoff_ms(st.failures)
            if st.trial:
                # The new broker of a move refuses: one failed attempt (agent.relocate); the
                # certificate is good where the device came from.
                log(
                    "W",
                    "agent",
                    "link failed (%d in a row): %s; retry in %d ms",
                    st.failures,
                    e,
                    wait,
                )
            else:
                log("E", "agent", "%s; onboarding again", e)
                store.clear(data_dir)
        except (LinkError, MemoryError) as e:
            # MemoryError: a heap too fragmented for this session's buffers; the retry starts
            # from a collected heap, with this session's objects gone.
            st.failures += 1
            st.last_error = str(e) if isinstance(e, LinkError) else "out of memory"
            wait = backoff_ms(st.failures)
            log(
                "W",
                "agent",
                "link failed (%d in a row): %s; retry in %d ms",
                st.failures,
                st.last_error,
                wait,
            )
        except entropy.EntropyError as e:
            # The noise source failed after boot: no retry can mend it, only a reset.
            return _safe_mode(st, "entropy", e)
        if st.safe:
            # Decommissioned: the key is not needed again (nor derivable from this flash).
            wipe = getattr(ident, "wipe", None)
            if wipe:
                wipe()
            return st
        if st.ota_reset or (st.ota_trial and st.failures >= _TRIAL_FAILS):
            # Staged (reported or not: the trial event tells the server), or a trial version
            # that cannot reach its broker.
            _reset(st)
            return st
        if st.stop:
            break
        if cfg.max_failures and st.failures >= cfg.max_failures:
            log("E", "agent", "giving up after %d failures", st.failures)
            return st
        st.total_failures += 1
        gc.collect()
        _sleep_sampling(st, wait)
    log("I", "agent", "stopped after %d messages", st.sent)
    return st


def _safe_mode(st, what, e):
    # No retry loop and no reset: main.py returns and the REPL stays reachable for the operator
    # (or the rig) to re-flash config.json / the CA, or to re-enrol.
    st.safe = what
    st.stop = True
    log("E", "agent", "safe mode: %s unusable (%s: %s); REPL available", what, type(e).__name__, e)
    return st
