# The agent's life: config -> identity -> onboard (when no usable certificate is stored) ->
# MQTT over mutual TLS -> telemetry every interval, QoS 1.
# One retry loop at the top (STYLE.md Firmware 6): every failure below arrives as LinkError or
# OnboardingError; the loop counts consecutive failures and sleeps a capped, jittered backoff.
# A refusal by the server (e.g. not_registered) backs off long: an unregistered device must not
# hammer the service. Always loaded: main, log, errors, store, tlslink, mqtt, telemetry, version
# (~23 KiB as .mpy on the Unix port); config, https and onboard are loaded and dropped.
import gc
import sys
import time
import random
from micropython import const
from agent import store, tlslink, telemetry
from agent.errors import LinkError, OnboardingError, BrokerRefusedError
from agent.log import log, set_level, enabled as log_enabled
from agent.mqtt import MQTTClient

_BACKOFF_MIN_MS = const(1000)  # ms, first retry
_BACKOFF_MAX_MS = const(60000)  # ms, cap for link failures
_REFUSED_MS = const(300000)  # ms, after the server refused us (operator action needed)
_TIMEOUT_MS = const(10000)  # ms, per socket operation
_KEEPALIVE_S = const(60)  # s, MQTT Keep Alive (3.1.2.10)
_SLICE_MS = const(1000)  # ms, longest single sleep between keep-alive checks

# Code the server uses when a fresh hello can succeed at once (the challenge went stale).
_STALE = ("unknown_challenge", "challenge_used", "challenge_expired")

# Injected by tests; the device uses the real clock.
_sleep_ms = time.sleep_ms


class _State:
    def __init__(self):
        self.sent = 0  # telemetry messages acknowledged (seq of the last one)
        self.failures = 0  # consecutive failed sessions
        self.stop = False


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
    config = None
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


def _session(cfg, ident, st, data_dir):
    stored = store.load(data_dir, ident.device_id, ident.public_key)
    if stored is None:
        _heap("before onboarding")
        stored = _onboard(cfg, ident, data_dir)
        _heap("after onboarding")
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
        st.failures = 0
        topic = stored.topics["telemetry"]
        interval = stored.policy.get("telemetry_interval_ms", cfg.telemetry_interval_ms)
        if not isinstance(interval, int) or interval < 100:
            interval = cfg.telemetry_interval_ms
        while True:
            seq = st.sent + 1
            client.publish(topic, telemetry.sample(seq), 1)
            # Counted after PUBACK: a message lost with the link is sent again with its seq.
            st.sent = seq
            log("I", "telemetry", "published seq=%d", seq)
            if cfg.max_messages and seq >= cfg.max_messages:
                st.stop = True
                client.disconnect()
                return
            _wait(client, interval)
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


def run(board, config_path="config.json", data_dir="data", boot=None):
    # boot: identity factory, qdid.identity.boot unless a test passes another.
    cfg = _load_config(config_path)
    set_level(cfg.log_level)
    if boot is None:
        from qdid import identity

        boot = identity.boot
    ident = boot(board, data_dir)
    log("I", "agent", "device %s", ident.device_id)
    _heap("identity ready")
    st = _State()
    while not st.stop:
        wait = 0
        try:
            _session(cfg, ident, st, data_dir)
        except OnboardingError as e:
            st.failures += 1
            if e.code in _STALE:
                wait = backoff_ms(st.failures)
            else:
                wait = _REFUSED_MS
                log("W", "agent", "onboarding refused; next try in %d s", wait // 1000)
        except BrokerRefusedError as e:
            # Not authorized by the broker: the stored certificate may have been replaced or
            # revoked; onboard again, where the server says which.
            st.failures += 1
            log("E", "agent", "%s; onboarding again", e)
            store.clear(data_dir)
            wait = backoff_ms(st.failures)
        except LinkError as e:
            st.failures += 1
            wait = backoff_ms(st.failures)
            log("W", "agent", "link failed (%d in a row): %s; retry in %d ms", st.failures, e, wait)
        if st.stop:
            break
        if cfg.max_failures and st.failures >= cfg.max_failures:
            log("E", "agent", "giving up after %d failures", st.failures)
            return st
        gc.collect()
        _sleep_ms(wait)
    log("I", "agent", "stopped after %d messages", st.sent)
    return st
