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
    return payload(seq, uptime_ms(), gc.mem_free())
