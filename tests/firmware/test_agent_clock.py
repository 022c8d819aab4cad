# agent.clock: the time is set before TLS and TLS is refused while it is implausible (RTC at
# 2000-01-01 after a dead battery, or years ahead); SNTP answers parsed per RFC 4330.
# heapsize: 64k
from agent import clock
from agent.errors import LinkError
from agent import log as logmod
from fwtest import raises

JAN_2000 = 946684800
NOW = 1795000000  # 2026-11-18
PLUS_10Y = NOW + 10 * 365 * 86400
NTP_DELTA = 2208988800


def sntp_answer(unix, mode=4, stratum=2, li=0):
    b = bytearray(48)
    b[0] = (li << 6) | (4 << 3) | mode
    b[1] = stratum
    t = unix + NTP_DELTA
    b[40:44] = bytes([(t >> 24) & 255, (t >> 16) & 255, (t >> 8) & 255, t & 255])
    return bytes(b)


class Rtc:
    def __init__(self, t):
        self.t = t

    def read(self):
        return self.t

    def write(self, t):
        self.t = t


def test_request_is_sntp_v4_client():
    r = clock.sntp_request()
    assert bytes(r) == b"\x23" + bytes(47)


def test_answer_seconds_and_bad_answers():
    assert clock.sntp_seconds(sntp_answer(NOW)) == NOW
    for bad in (
        sntp_answer(NOW)[:47],
        sntp_answer(NOW, mode=3),
        sntp_answer(NOW, stratum=0),
        sntp_answer(NOW, li=3),
        bytes([0x24, 2]) + bytes(46),
    ):
        raises(clock.ClockError, clock.sntp_seconds, bad)


def test_plausibility_window():
    assert not clock.plausible(JAN_2000)
    assert clock.plausible(NOW)
    assert not clock.plausible(PLUS_10Y)


def test_rtc_at_2000_refuses_tls_without_a_time_server():
    rtc = Rtc(JAN_2000)
    clock.use(rtc.read, rtc.write)
    try:
        raises(clock.ClockError, clock.ensure, None, 1000)
        assert issubclass(clock.ClockError, LinkError)  # the retry loop backs off and retries
    finally:
        clock.use(clock._port_time)


def test_time_is_set_from_the_server_then_plausible():
    for start in (JAN_2000, PLUS_10Y):
        rtc = Rtc(start)
        clock.use(rtc.read, rtc.write)
        asked = []

        def q(host, port, timeout):
            asked.append((host, port))
            return sntp_answer(NOW)

        try:
            assert clock.ensure(("127.0.0.1", 1230), 1000, q) == NOW
            assert rtc.t == NOW and asked == [("127.0.0.1", 1230)]
        finally:
            clock.use(clock._port_time)


def test_time_server_with_an_implausible_answer_is_refused():
    rtc = Rtc(NOW)
    clock.use(rtc.read, rtc.write)
    try:
        raises(
            clock.ClockError, clock.ensure, ("h", 1), 1000, lambda h, p, t: sntp_answer(PLUS_10Y)
        )
        assert rtc.t == NOW  # not set from a bad answer
    finally:
        clock.use(clock._port_time)


def test_without_a_setter_an_offset_is_kept():
    t = [JAN_2000]
    clock.use(lambda: t[0])
    try:
        clock.set_time(NOW)
        assert clock.now() == NOW
        t[0] += 5
        assert clock.now() == NOW + 5
    finally:
        clock.use(clock._port_time)


def _no_answer(host, port, timeout):
    raise clock.ClockError("sntp %s:%d: errno 110" % (host, port))


def test_unreachable_time_server_with_a_plausible_clock_keeps_the_clock():
    rtc = Rtc(NOW)
    clock.use(rtc.read, rtc.write)
    lines = []
    logmod._sink = lines.append
    try:
        assert clock.ensure(("10.0.0.1", 123), 1000, _no_answer) == NOW
        assert rtc.t == NOW
        assert lines == [
            "W clock: time server unusable (sntp 10.0.0.1:123: errno 110); keeping the clock"
        ]
    finally:
        logmod._sink = None
        clock.use(clock._port_time)


def test_unusable_time_server_with_an_implausible_clock_refuses_and_says_why():
    for start, answer in (
        (JAN_2000, _no_answer),
        (PLUS_10Y, lambda h, p, t: sntp_answer(NOW, stratum=0)),
    ):
        rtc = Rtc(start)
        clock.use(rtc.read, rtc.write)
        try:
            try:
                clock.ensure(("10.0.0.1", 123), 1000, answer)
                raise AssertionError("no ClockError")
            except clock.ClockError as e:
                msg = e.args[0]
            assert msg.startswith(
                "clock: time %d implausible; not opening TLS until it is set (" % start
            )
            assert "sntp" in msg
            assert rtc.t == start  # nothing set from no answer
        finally:
            clock.use(clock._port_time)


def test_setting_the_time_is_logged_with_the_old_and_new_time():
    rtc = Rtc(JAN_2000)
    clock.use(rtc.read, rtc.write)
    lines = []
    logmod._sink = lines.append
    try:
        clock.ensure(("127.0.0.1", 1230), 1000, lambda h, p, t: sntp_answer(NOW))
        assert lines == ["I clock: time set from 127.0.0.1:1230: %d (was %d)" % (NOW, JAN_2000)]
    finally:
        logmod._sink = None
        clock.use(clock._port_time)
