# Wall-clock time for TLS: certificate validity (RFC 5280 4.1.2.5) is checked against it, so the
# agent refuses to open a TLS session while the clock is implausible, and sets it first from a
# time server (SNTP, RFC 4330) when config.json names one.
# The clock is read through an injectable source: board.rtc() when the board HAL has one, else
# time.time() (the port's RTC); tests and the rig pass their own.
import time
from micropython import const
from agent.errors import LinkError
from agent.log import log

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    from collections.abc import Callable

_MIN_UNIX = const(1767225600)  # s, 2026-01-01T00:00:00Z: no true time is older than this firmware
_MAX_AHEAD = const(252288000)  # s, 8 years: the support window of one firmware build
_NTP_DELTA = const(2208988800)  # s, 1900-01-01 (NTP era 0) to 1970-01-01 (RFC 4330 section 3)
_SNTP_LEN = const(48)  # bytes, RFC 4330 section 4 message without authenticator

# Seconds between the port's epoch and 1970 (ports with a 2000 epoch report gmtime(0) in 2000).
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0


class ClockError(LinkError):
    # The time is implausible and could not be set: TLS would judge certificates on a wrong date.
    pass


def _port_time():
    return time.time() + _EPOCH


_source = _port_time  # () -> UNIX seconds
_setter = None  # (UNIX seconds) -> None; None keeps an offset in RAM
_offset = 0


def use(source: Callable[[], float], setter: Callable[[int], None] | None = None) -> None:
    global _source, _setter, _offset
    _source = source
    _setter = setter
    _offset = 0


def now():
    return _source() + _offset


def plausible(t):
    return _MIN_UNIX <= t <= _MIN_UNIX + _MAX_AHEAD


def set_time(t):
    global _offset
    if _setter is not None:
        _setter(t)
        _offset = 0
    else:
        _offset = t - _source()


def sntp_request():
    # RFC 4330 section 5: LI 0, VN 4, Mode 3 (client); everything else zero.
    b = bytearray(_SNTP_LEN)
    b[0] = 0x23
    return b


def sntp_seconds(msg):
    # RFC 4330 section 5: a usable answer is Mode 4 (server), stratum 1..15, LI != 3 (alarm), and
    # a non-zero Transmit Timestamp (bytes 40..43, seconds since 1900). Returns UNIX seconds.
    if len(msg) < _SNTP_LEN:
        raise ClockError("sntp: short answer")
    mode = msg[0] & 7
    li = msg[0] >> 6
    if mode != 4 or li == 3 or not 0 < msg[1] < 16:
        raise ClockError("sntp: server not synchronised")
    secs = (msg[40] << 24) | (msg[41] << 16) | (msg[42] << 8) | msg[43]
    if secs == 0:
        raise ClockError("sntp: no transmit timestamp")
    return secs - _NTP_DELTA


def _query(host, port, timeout_ms):
    import socket

    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
    s = socket.socket(ai[0], socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout_ms / 1000)
        s.sendto(sntp_request(), ai[-1])
        return s.recv(_SNTP_LEN)
    except OSError as e:
        raise ClockError("sntp %s:%d: errno %s" % (host, port, e.args[0] if e.args else "?"))
    finally:
        s.close()


def ensure(server, timeout_ms, query=None):
    # Called before every TLS session. server: (host, port) or None. Returns the time in use.
    # A time server that cannot be reached (or is not synchronised) is no reason to stay off
    # line while the clock is plausible: the RTC kept time. It is while the clock is not.
    t = now()
    why = ""
    if server is not None:
        try:
            got = sntp_seconds((query or _query)(server[0], server[1], timeout_ms))
        except ClockError as e:
            got = None
            why = " (%s)" % e.args[0]
            if plausible(t):
                log("W", "clock", "time server unusable%s; keeping the clock", why)
        if got is not None:
            if not plausible(got):
                raise ClockError("clock: time server says %d, outside this firmware's window" % got)
            if got - t > 2 or t - got > 2:
                set_time(got)
                log("I", "clock", "time set from %s:%d: %d (was %d)", server[0], server[1], got, t)
            t = now()
    if not plausible(t):
        raise ClockError("clock: time %d implausible; not opening TLS until it is set%s" % (t, why))
    return t
