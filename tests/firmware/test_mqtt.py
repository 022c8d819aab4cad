# agent.mqtt against exact MQTT 3.1.1 bytes (OASIS section numbers in the names), over a fake
# socket made of byte buffers. Malformed or truncated input must end in LinkError, nothing else.
# heapsize: 64k
from agent import mqtt
from agent.mqtt import MQTTClient
from agent.errors import LinkError, BrokerRefusedError
from fakesock import FakeSock
from fwtest import raises


CONNACK_OK = b"\x20\x02\x00\x00"
CONNECT_DEV1 = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04dev1"


def connected(incoming=b"", chunk=0, on_message=None, prefixed=False):
    # prefixed: incoming already starts with CONNACK (saves a copy of large inputs)
    if prefixed:
        data = incoming
    else:
        data = bytearray(CONNACK_OK)
        data.extend(incoming)
    s = FakeSock(data, chunk)
    c = MQTTClient("dev1", 60, 5000, on_message)
    c.connect(s)
    s.out = bytearray()
    s.writes = 0
    return c, s


def enc(n):
    buf = bytearray(8)
    i = mqtt.encode_length(n, buf, 8)
    return bytes(buf[i:])


# --- 2.2.3 remaining length -----------------------------------------------------------------
def test_remaining_length_boundaries_2_2_3():
    assert enc(0) == b"\x00"
    assert enc(127) == b"\x7f"
    assert enc(128) == b"\x80\x01"
    assert enc(16383) == b"\xff\x7f"
    assert enc(16384) == b"\x80\x80\x01"
    assert enc(2097151) == b"\xff\xff\x7f"
    assert enc(2097152) == b"\x80\x80\x80\x01"
    assert enc(268435455) == b"\xff\xff\xff\x7f"


def test_remaining_length_over_four_bytes_is_refused_2_2_3():
    raises(ValueError, enc, 268435456)
    raises(ValueError, enc, -1)


def _inbound_publish_len(body_len, into=None):
    # PUBLISH QoS 0, topic "t", payload filling the rest: exercises the length decoder.
    out = bytearray() if into is None else into
    out.extend(b"\x30")
    out.extend(enc(body_len))
    out.extend(b"\x00\x01t")
    for _ in range(body_len - 3):
        out.append(0x78)
    return out


def test_remaining_length_decoded_at_boundaries_2_2_3():
    got = []
    for n in (3, 127, 128, 255):
        c, s = connected(_inbound_publish_len(n), on_message=lambda t, p: got.append(len(p)))
        c.wait_msg()
    assert got == [0, 124, 125, 252]


def test_long_inbound_publish_is_drained_and_dropped():
    # 16384 (3-byte length) is longer than the receive buffer: the packet is consumed, the
    # message dropped and counted (the callback hears of it with payload None), and the next
    # packet still parses.
    got = []
    data = bytearray(CONNACK_OK)
    _inbound_publish_len(16384, data)
    _inbound_publish_len(5, data)
    c, s = connected(data, on_message=lambda t, p: got.append((t, p)), prefixed=True)
    c.wait_msg()
    c.wait_msg()
    assert c.dropped == 1
    assert got == [(b"t", None), (b"t", b"xx")]
    assert s.pos == len(s.inp)


def _command_publish(topic_len, body_len, pid=7):
    # A QoS 1 PUBLISH the size of a command: topic, packet id, 64-byte signature, body.
    topic = b"q" * topic_len
    payload = b"s" * 64 + b"b" * body_len
    body = bytes([topic_len >> 8, topic_len & 0xFF]) + topic + bytes([0, pid]) + payload
    return b"\x32" + enc(len(body)) + body, topic, payload


def test_receive_buffer_holds_a_whole_command():
    # docs/protocol.md "Command channel": a body of up to 320 bytes after the signature, on a
    # topic of about 100 bytes (qlink/<tenant>/<64 hex>/cmd) - 488 bytes of packet.
    # The largest packet kept whole has 512 bytes after the fixed header; one byte more is
    # dropped (the callback hears of it with None), and acknowledged all the same.
    for topic_len, kept in ((100, True), (124, True), (125, False)):
        pkt, topic, payload = _command_publish(topic_len, 320)
        got = []
        c, s = connected(pkt, on_message=lambda t, p: got.append((t, p)))
        c.wait_msg()
        assert got == [(topic, payload if kept else None)], topic_len
        assert c.dropped == (0 if kept else 1)
        assert bytes(s.out) == b"\x40\x02\x00\x07"
    assert _command_publish(124, 320)[0][1:3] == b"\x80\x04"  # remaining length 512


def test_long_inbound_qos1_publish_is_still_acknowledged_4_3_2():
    body = b"\x00\x01t\x12\x34" + b"y" * 1000
    c, s = connected(b"\x32" + enc(len(body)) + body)
    c.wait_msg()
    assert c.dropped == 1
    assert bytes(s.out) == b"\x40\x02\x12\x34"


def test_remaining_length_of_five_bytes_is_link_error_2_2_3():
    c, s = connected(b"\x30\x80\x80\x80\x80\x01")
    raises(LinkError, c.wait_msg)


# --- 3.1 / 3.2 CONNECT and CONNACK -----------------------------------------------------------
def test_connect_bytes_3_1():
    s = FakeSock(CONNACK_OK)
    c = MQTTClient("dev1", 60)
    assert c.connect(s) is False
    assert bytes(s.out) == CONNECT_DEV1
    assert s.writes == 1  # one write = one TLS record


def test_connect_long_client_id_and_keepalive_3_1():
    cid = "a" * 64  # a device ID: longer than the 23 bytes a server must accept (3.1.3.1)
    s = FakeSock(CONNACK_OK)
    c = MQTTClient(cid, 300)
    c.connect(s)
    assert bytes(s.out) == b"\x10\x4c\x00\x04MQTT\x04\x02\x01\x2c\x00\x40" + cid.encode()


def test_connack_refusals_raise_with_code_3_2_2_3():
    for rc in range(1, 6):
        c = MQTTClient("dev1")
        e = raises(BrokerRefusedError, c.connect, FakeSock(b"\x20\x02\x00" + bytes([rc])))
        assert e.code == rc
        assert isinstance(e, LinkError)
    e = raises(BrokerRefusedError, MQTTClient("d").connect, FakeSock(b"\x20\x02\x00\x05"))
    assert "not authorized" in str(e)


def test_connack_unknown_code_is_malformed_3_2_2_3():
    e = raises(LinkError, MQTTClient("d").connect, FakeSock(b"\x20\x02\x00\x06"))
    assert not isinstance(e, BrokerRefusedError)


def test_connack_reserved_flags_are_malformed_3_2_2_1():
    raises(LinkError, MQTTClient("d").connect, FakeSock(b"\x20\x02\x02\x00"))


def test_session_present_after_clean_session_is_refused_3_2_2_2():
    raises(LinkError, MQTTClient("d").connect, FakeSock(b"\x20\x02\x01\x00"))


def test_first_packet_must_be_connack_3_2():
    raises(LinkError, MQTTClient("d").connect, FakeSock(b"\xd0\x00"))
    raises(LinkError, MQTTClient("d").connect, FakeSock(b"\x20\x03\x00\x00\x00"))
    raises(LinkError, MQTTClient("d").connect, FakeSock(b"\x21\x02\x00\x00"))


def test_truncated_connack_is_link_error():
    for cut in range(0, 4):
        raises(LinkError, MQTTClient("d").connect, FakeSock(CONNACK_OK[:cut]))


def test_connack_in_one_byte_reads():
    c = MQTTClient("dev1")
    assert c.connect(FakeSock(CONNACK_OK, chunk=1)) is False


# --- 3.3 / 3.4 PUBLISH and PUBACK ------------------------------------------------------------
def test_publish_qos0_bytes_3_3():
    c, s = connected()
    assert c.publish("a/b", b"hi") == 0
    assert bytes(s.out) == b"\x30\x07\x00\x03a/b" + b"hi"
    assert s.writes == 1


def test_publish_qos0_retain_bytes_3_3_1_3():
    c, s = connected()
    c.publish("a/b", b"", 0, True)
    assert bytes(s.out) == b"\x31\x05\x00\x03a/b"


def test_publish_qos1_bytes_and_puback_3_3_and_3_4():
    c, s = connected(b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02")
    assert c.publish("a/b", b"hi", 1) == 1
    assert c.publish("a/b", b"ho", 1) == 2
    assert bytes(s.out) == (b"\x32\x09\x00\x03a/b\x00\x01hi" + b"\x32\x09\x00\x03a/b\x00\x02ho")
    assert s.pos == len(s.inp)


def test_publish_large_payload_goes_in_two_writes():
    payload = bytes(range(256)) * 4
    c, s = connected()
    c.publish("t/x", payload)
    assert bytes(s.out) == b"\x30\x85\x08\x00\x03t/x" + payload
    assert s.writes == 2


def test_packet_id_skips_zero_2_3_1():
    c, s = connected(b"\x40\x02\x00\x01")
    c._pid = 0xFFFF
    assert c.publish("a", b"", 1) == 1


def test_puback_for_other_packet_is_link_error_4_3_2():
    c, s = connected(b"\x40\x02\x00\x07")
    raises(LinkError, c.publish, "a/b", b"hi", 1)


def test_puback_with_wrong_length_is_link_error_3_4_1():
    c, s = connected(b"\x40\x03\x00\x01\x00")
    raises(LinkError, c.publish, "a/b", b"hi", 1)


def test_missing_puback_is_link_error():
    c, s = connected(b"")
    raises(LinkError, c.publish, "a/b", b"hi", 1)
    c, s = connected(b"\x40\x02\x00")
    raises(LinkError, c.publish, "a/b", b"hi", 1)


def test_inbound_publish_while_waiting_for_puback_is_served_4_3_2():
    got = []
    inbound = b"\x32\x0a\x00\x03c/d\x00\x09abc"  # QoS 1, id 9
    c, s = connected(inbound + b"\x40\x02\x00\x01", on_message=lambda t, p: got.append((t, p)))
    c.publish("a/b", b"hi", 1)
    assert got == [(b"c/d", b"abc")]
    assert bytes(s.out) == b"\x32\x09\x00\x03a/b\x00\x01hi" + b"\x40\x02\x00\x09"


def test_topic_with_wildcards_is_refused_3_3_2_1():
    c, s = connected()
    raises(ValueError, c.publish, "a/#", b"")
    raises(ValueError, c.publish, "a/+/b", b"")
    raises(ValueError, c.publish, "", b"")
    raises(ValueError, c.publish, "a", b"", 2)
    assert bytes(s.out) == b""


def test_inbound_publish_malformed_is_link_error_3_3():
    for pkt in (
        b"\x30\x01\x00",  # shorter than its topic length field
        b"\x30\x04\x00\x09ab",  # topic length beyond the packet
        b"\x32\x04\x00\x02ab",  # QoS 1 without packet id
        b"\x32\x06\x00\x02ab\x00\x00",  # packet id 0 (2.3.1)
        b"\x36\x05\x00\x01a\x00\x01",  # QoS 3
        b"\x34\x05\x00\x01a\x00\x01",  # QoS 2, never subscribed for
    ):
        c, s = connected(pkt)
        raises(LinkError, c.wait_msg)


def test_unexpected_packet_type_is_link_error():
    c, s = connected(b"\x10\x00")
    raises(LinkError, c.wait_msg)


# --- 3.8 / 3.9 SUBSCRIBE and SUBACK ----------------------------------------------------------
def test_subscribe_bytes_and_suback_3_8_and_3_9():
    c, s = connected(b"\x90\x03\x00\x01\x01")
    assert c.subscribe("a/#", 1) == 1
    assert bytes(s.out) == b"\x82\x08\x00\x01\x00\x03a/#\x01"


def test_suback_failure_is_link_error_3_9_3():
    c, s = connected(b"\x90\x03\x00\x01\x80")
    raises(LinkError, c.subscribe, "a/#", 1)


def test_suback_malformed_is_link_error_3_9():
    for pkt in (
        b"\x90\x03\x00\x02\x00",  # other packet id
        b"\x90\x02\x00\x01",  # no return code
        b"\x90\x03\x00\x01\x01",  # granted more than requested (QoS 0 asked)
    ):
        c, s = connected(pkt)
        raises(LinkError, c.subscribe, "a", 0)


# --- 3.12 - 3.14 PINGREQ, PINGRESP, DISCONNECT -----------------------------------------------
def test_ping_bytes_3_12_and_3_13():
    c, s = connected(b"\xd0\x00")
    c.ping()
    assert bytes(s.out) == b"\xc0\x00"


def test_pingresp_malformed_is_link_error_3_13():
    c, s = connected(b"\xd0\x01\x00")
    raises(LinkError, c.ping)
    c, s = connected(b"")
    raises(LinkError, c.ping)


def test_disconnect_bytes_and_close_3_14():
    c, s = connected()
    c.disconnect()
    assert bytes(s.out) == b"\xe0\x00"
    assert s.closed
    assert c.sock is None
    c.disconnect()  # twice is harmless


def test_keepalive_due_at_half_period_3_1_2_10():
    import time

    c, s = connected()
    assert not c.keepalive_due()
    c._last_tx = time.ticks_add(time.ticks_ms(), -30001)
    assert c.keepalive_due()
    c.keepalive_s = 0
    assert not c.keepalive_due()


# --- serving inbound packets while idle ------------------------------------------------------
def test_serve_waits_the_time_given_when_nothing_arrives():
    import time

    c, s = connected()
    t0 = time.ticks_ms()
    assert c.serve(40) is False
    waited = time.ticks_diff(time.ticks_ms(), t0)
    assert 40 <= waited < 1000, waited
    assert bytes(s.out) == b""
    assert c.serve(0) is False  # a zero wait only looks


def test_serve_delivers_a_publish_at_once_and_acknowledges_it_4_3_2():
    import time

    got = []
    inbound = b"\x32\x0a\x00\x03c/d\x00\x09abc"
    c, s = connected(inbound + b"\x30\x05\x00\x01tok", on_message=lambda t, p: got.append(p))
    t0 = time.ticks_ms()
    assert c.serve(5000) is True
    assert time.ticks_diff(time.ticks_ms(), t0) < 1000  # not the whole wait
    assert got == [b"abc"] and bytes(s.out) == b"\x40\x02\x00\x09"
    assert c.serve(5000) is True  # the next packet waits in the buffer: served too
    assert got == [b"abc", b"ok"]
    assert c.serve(0) is False


def test_serve_takes_a_late_pingresp_3_13():
    c, s = connected(b"\xd0\x00")
    assert c.serve(100) is True
    assert s.pos == len(s.inp)


def test_serve_on_a_closed_link_is_link_error():
    c, s = connected()
    s.eof = True
    raises(LinkError, c.serve, 1000)
    c, s = connected()
    s.read_error = OSError(104)
    raises(LinkError, c.serve, 1000)


def test_serve_refuses_a_packet_the_server_may_not_send_unasked():
    for pkt in (b"\x40\x02\x00\x01", b"\x90\x03\x00\x01\x00", b"\x20\x02\x00\x00"):
        c, s = connected(pkt)
        raises(LinkError, c.serve, 100)


def test_a_new_connection_polls_its_own_socket():
    c, s = connected()
    assert c.serve(0) is False
    s2 = FakeSock(CONNACK_OK + b"\xd0\x00")
    c.connect(s2)
    assert c.serve(100) is True and s2.pos == len(s2.inp)


# --- socket errors collapse into LinkError ---------------------------------------------------
def test_socket_errors_become_link_error():
    s = FakeSock(write_error=OSError(104))
    raises(LinkError, MQTTClient("d").connect, s)
    s = FakeSock(read_error=OSError(110))
    raises(LinkError, MQTTClient("d").connect, s)
    c, s = connected()
    s.write_error = OSError(32)
    raises(LinkError, c.publish, "a", b"x")


def test_malformed_input_never_leaks_index_error():
    # Every prefix of a valid exchange, and random-looking garbage, ends in LinkError.
    stream = b"\x32\x0a\x00\x03c/d\x00\x09abc\x40\x02\x00\x01"
    for cut in range(len(stream)):
        c, s = connected(stream[:cut])
        raises(LinkError, c.publish, "a/b", b"hi", 1)
    for junk in (b"\xff" * 8, b"\x00\x00", b"\x40\x00", b"\x90\x00", b"\x30\x00"):
        c, s = connected(junk)
        try:
            c.publish("a/b", b"hi", 1)
        except LinkError:
            pass
        else:
            raise AssertionError("junk accepted: %r" % junk)
