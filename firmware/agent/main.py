# The agent's life: config -> identity -> onboard (when no usable certificate is stored) ->
# MQTT over mutual TLS -> telemetry every interval, QoS 1.
# One retry loop at the top (STYLE.md Firmware 6): every failure below arrives as LinkError or
# OnboardingError; the loop counts consecutive failures and sleeps a capped, jittered backoff.
# A refusal by the server (e.g. not_registered) backs off long: an unregistered device must not
# hammer the service. Always loaded: main, log, errors, store, tlslink, mqtt, telemetry, version,
# clock (~25 KiB as .mpy on the Unix port), and qdid.entropy with the DRBG, which the identity
# loads at boot anyway; config, https and onboard are loaded and dropped.
# Telemetry is sampled every interval whether or not the link is up: samples wait in a bounded
# queue (oldest dropped when full, counted) and go out in order, each removed only after its
# PUBACK. After a reconnect the device reports its retry state on its event topic.
# A corrupt config or unusable identity data puts the agent in safe mode: it logs why and
# returns, so main.py ends and the REPL stays reachable (no boot loop); corrupt onboarding data
# (certificate, onboard.json) is detected by store.load and the device onboards again.
# So does a noise source that fails its health tests, at boot or at any time after: the agent
# checks it before each session and each telemetry interval (qdid.entropy.check), and every
# random byte it draws reads it too; the failure closes the session and stops the agent (no
# onboarding, no telemetry, no retry) with one log line saying why.
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

# The event message after a reconnect (docs/protocol.md "Broker").
_EVENT_FMT = (
    '{"event": "reconnected", "failures": %d, "last_error": %s, "queued": %d, "dropped": %d}'
)

# Code the server uses when a fresh hello can succeed at once (the challenge went stale).
_STALE = ("unknown_challenge", "challenge_used", "challenge_expired")

# Injected by tests; the device uses the real clock.
_sleep_ms = time.sleep_ms


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


def _drop(name):
    # Unloads agent.<name> (STYLE.md Firmware 5): both sys.modules and the package hold it.
    sys.modules.pop("agent." + name, None)
    try:
        delattr(sys.modules["agent"], name)
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
    # Onboarding and the HTTPS client are needed once per device life: load, use, drop.
    from agent import https, onboard

    client = https.Client(cfg.host, cfg.port, cfg.root_der, cfg.prefix, _TIMEOUT_MS)
    try:
        return onboard.run(client, ident, data_dir)
    finally:
        del client
        _drop("onboard")
        _drop("https")
        gc.collect()


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


def _check_entropy():
    # SP 800-90B 4.4 tests on fresh samples between random requests: a connected device can go
    # hours without one, and must stop before its next handshake, proof or renewal once its noise
    # source has failed. An identity without entropy (tests' boots) has nothing to check.
    if entropy.ready():
        entropy.check()


def _session(cfg, ident, st, data_dir):
    _check_entropy()
    stored = store.load(data_dir, ident.device_id, ident.public_key)
    if stored is None:
        _heap("before onboarding")
        clock.ensure(cfg.time_server, _TIMEOUT_MS)
        stored = _onboard(cfg, ident, data_dir)
        _heap("after onboarding")
    interval = stored.policy.get("telemetry_interval_ms", cfg.telemetry_interval_ms)
    if not isinstance(interval, int) or interval < 100:
        interval = cfg.telemetry_interval_ms
    st.interval = interval
    # Time before TLS: certificate validity is judged against it (agent.clock).
    clock.ensure(cfg.time_server, _TIMEOUT_MS)
    key = ident.private_key_der()
    try:
        sock, _ = tlslink.connect(
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
    client = MQTTClient(ident.device_id, _KEEPALIVE_S, _TIMEOUT_MS)
    try:
        client.connect(sock)
        log("I", "mqtt", "connected to %s:%d", stored.broker_host, stored.broker_port)
        _heap("connected")
        if st.failures:
            _report_retries(client, stored, st)
        st.failures = 0
        topic = stored.topics["telemetry"]
        if not st.count:
            st.sample()
        while True:
            _flush(client, topic, st, cfg)
            if st.stop:
                client.disconnect()
                return
            _wait(client, interval)
            _check_entropy()
            st.sample()
    finally:
        client.close()


def _wait(client, interval):
    # Sleep in slices so that the keep-alive ping goes out on time even with long intervals.
    left = interval
    while left > 0:
        step = left if left < _SLICE_MS else _SLICE_MS
        _sleep_ms(step)
        left -= step
        if client.keepalive_due():
            client.ping()


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
    # for the board with a boot of their own).
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
    try:
        ident = boot(board, data_dir)
        telemetry.set_puf(getattr(ident, "health", None))
    except qdid.QdidError as e:
        return _safe_mode(st, "entropy" if isinstance(e, entropy.EntropyError) else "identity", e)
    log("I", "agent", "device %s", ident.device_id)
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
            log("E", "agent", "%s; onboarding again", e)
            store.clear(data_dir)
            wait = backoff_ms(st.failures)
        except LinkError as e:
            st.failures += 1
            st.last_error = str(e)
            wait = backoff_ms(st.failures)
            log("W", "agent", "link failed (%d in a row): %s; retry in %d ms", st.failures, e, wait)
        except entropy.EntropyError as e:
            # The noise source failed after boot: no retry can mend it, only a reset.
            return _safe_mode(st, "entropy", e)
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
