# Telemetry payload (docs/protocol.md "Broker"):
#   {"seq": <int from 1>, "uptime_ms": <int>, "mem_free": <int>, "fw": "<version>"
#    [, "puf": {"margin": <int>, "corrected_bits": <int>, "health_failures": <int>,
#               "corrected_limit": <int>}]}
# Formatted directly rather than through json.dumps: fixed key order (exact bytes in tests) and
# no dict allocated per message.
import gc
import time
from agent.version import VERSION

_T0 = time.ticks_ms()
_PUF_KEYS = ("margin", "corrected_bits", "health_failures", "corrected_limit")
_puf = ""  # the "puf" member, formatted once per boot: PUF health does not change until reboot


def set_puf(health):
    # PUF health of this boot (qdid Identity.health: public numbers, no secret). The operator
    # sees the decoder margin shrink as the silicon ages, long before a boot fails.
    global _puf
    parts = []
    for key in _PUF_KEYS:
        value = (health or {}).get(key)
        if isinstance(value, int):
            parts.append('"%s": %d' % (key, value))
    _puf = (', "puf": {' + ", ".join(parts) + "}") if parts else ""


def puf_member():
    # ', "puf": {...}' as in telemetry (or ""): the online event carries the same member.
    return _puf


def uptime_ms():
    return time.ticks_diff(time.ticks_ms(), _T0)


def payload(seq, uptime, mem_free):
    s = '{"seq": %d, "uptime_ms": %d, "mem_free": %d, "fw": "%s"%s}' % (
        seq,
        uptime,
        mem_free,
        VERSION,
        _puf,
    )
    return s.encode()


def sample(seq):
    # mem_free after a collection: the live heap, comparable from one sample to the next (without
    # it the figure swings with garbage not yet collected and shows neither leaks nor the floor).
    # A collection on a 190 KiB RP2040 heap takes a few ms; one per interval is negligible.
    gc.collect()
    return payload(seq, uptime_ms(), gc.mem_free())
