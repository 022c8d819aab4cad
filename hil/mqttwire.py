"""MQTT 3.1.1 packets as a simulated device writes and reads them (OASIS Standard, 29 October
2014; section numbers below are that document's): the part of hil/mqttfleet.py's client that is
bytes only, so it is tested on its own against the standard's rules."""

from __future__ import annotations

from collections.abc import Iterator

# Packet types in the high nibble of byte 1 (2.2.1); low nibble = flags (2.2.2).
_CONNECT = 0x10
_CONNACK = 0x20
_PUBLISH = 0x30
_PUBACK = 0x40
_SUBSCRIBE = 0x82  # 3.8.1: flags must be 0010
_SUBACK = 0x90
_PINGRESP = 0xD0
PINGREQ = b"\xc0\x00"  # 3.12
DISCONNECT = b"\xe0\x00"  # 3.14
_MAX_REMAINING = 268_435_455  # 2.2.3: the largest value four length bytes can carry
_SUBACK_FAILURE = 0x80  # 3.9.3
_TLS_READ = 16 * 1024  # bytes; one TLS record's plaintext at most (RFC 8446 5.1)


class MqttProtocolError(Exception):
    """The broker sent bytes that are not MQTT 3.1.1."""


def encode_length(n: int) -> bytes:
    """2.2.3: seven bits per byte, least significant first, high bit = more bytes follow."""
    if not 0 <= n <= _MAX_REMAINING:
        raise ValueError(f"remaining length {n} is out of range (0 to {_MAX_REMAINING})")
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _utf8(s: str | bytes) -> bytes:
    """1.5.3: a two-byte big-endian length, then the bytes."""
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise ValueError("an MQTT string is at most 65535 bytes")
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_length(len(body)) + body


def connect_packet(client_id: str, keepalive_s: int, clean_session: bool = True) -> bytes:
    """3.1: protocol name "MQTT", level 4, flags (clean session only: the broker takes the user
    name from the certificate), keep-alive, then the client identifier."""
    flags = 0x02 if clean_session else 0x00
    head = _utf8("MQTT") + bytes([4, flags]) + keepalive_s.to_bytes(2, "big")
    return _packet(_CONNECT, head + _utf8(client_id))


def subscribe_packet(packet_id: int, topic: str, qos: int) -> bytes:
    """3.8: packet identifier, one topic filter with its requested QoS."""
    return _packet(_SUBSCRIBE, packet_id.to_bytes(2, "big") + _utf8(topic) + bytes([qos]))


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    """3.3: topic name, a packet identifier only at QoS 1 or 2, then the payload."""
    if qos not in (0, 1):
        raise ValueError("this client publishes at QoS 0 or 1")
    pid = packet_id.to_bytes(2, "big") if qos else b""
    return _packet(_PUBLISH | qos << 1, _utf8(topic) + pid + payload)


def puback_packet(packet_id: int) -> bytes:
    return _packet(_PUBACK, packet_id.to_bytes(2, "big"))  # 3.4


class PacketReader:
    """Splits a byte stream into (first byte, body) packets; keeps a partial one for later."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buf += data
        buf = self._buf
        while len(buf) >= 2:
            n, shift, i = 0, 0, 1
            while True:
                if i >= len(buf):
                    return  # the length itself is not complete yet
                digit = buf[i]
                n |= (digit & 0x7F) << shift
                i += 1
                if not digit & 0x80:
                    break
                shift += 7
                if shift > 21:  # 2.2.3: at most four length bytes
                    raise MqttProtocolError("remaining length longer than four bytes")
            if len(buf) < i + n:
                return
            first, body = buf[0], bytes(buf[i : i + n])
            del buf[: i + n]
            yield first, body


def parse_publish(first: int, body: bytes) -> tuple[str, int, int, bytes]:
    """(topic, QoS, packet id or 0, payload) of a PUBLISH body (3.3)."""
    qos = (first >> 1) & 0x03
    if qos == 3 or len(body) < 2:
        raise MqttProtocolError("malformed PUBLISH")
    n = int.from_bytes(body[:2], "big")
    at = 2 + n
    try:
        topic = body[2:at].decode()
    except UnicodeDecodeError:  # 1.5.3: a topic name is UTF-8
        raise MqttProtocolError("PUBLISH topic is not UTF-8") from None
    packet_id = 0
    if qos:
        packet_id = int.from_bytes(body[at : at + 2], "big")
        at += 2
    return topic, qos, packet_id, body[at:]
