# Telemetry payload (docs/protocol.md "Broker"):
#   {"seq": <int from 1>, "uptime_ms": <int>, "mem_free": <int>, "fw": "<version>"}
# Formatted directly rather than through json.dumps: fixed key order (exact bytes in tests) and
# no dict allocated per message.
import gc
import time
from agent.version import VERSION

_T0 = time.ticks_ms()


def uptime_ms():
    return time.ticks_diff(time.ticks_ms(), _T0)


def payload(seq, uptime, mem_free):
    s = '{"seq": %d, "uptime_ms": %d, "mem_free": %d, "fw": "%s"}' % (
        seq,
        uptime,
        mem_free,
        VERSION,
    )
    return s.encode()


def sample(seq):
    # mem_free after a collection: the live heap, comparable from one sample to the next (without
    # it the figure swings with garbage not yet collected and shows neither leaks nor the floor).
    # A collection on a 190 KiB RP2040 heap takes a few ms; one per interval is negligible.
    gc.collect()
    return payload(seq, uptime_ms(), gc.mem_free())
