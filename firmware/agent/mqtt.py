# MQTT 3.1.1 client (OASIS Standard, 29 October 2014; section numbers below are that document's).
# Blocking, one packet in flight, over any stream with write(), readinto() and poll support (a
# TLS socket from agent.tlslink on the device, a byte-buffer fake in tests). Every socket error and
# every malformed packet becomes LinkError; the caller reconnects. Between its own requests the
# caller serves inbound packets with serve(ms), which waits at most ms for one (select.poll).
# RAM: one transmit and one receive buffer, allocated in the constructor (_TX + _RX = 832 bytes),
# reused for every packet, and two poll objects per connection.
import time
import select
from micropython import const
from agent.errors import LinkError, BrokerRefusedError

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    from tls import SSLSocket
    from select import Poll

_TX = const(320)  # bytes; fixed header + topic + packet id + a telemetry payload fit in one write
# Longest inbound packet kept whole (longer PUBLISH payloads are dropped): a command is topic
# length (2) + topic (qlink/<tenant>/<64 hex>/cmd, ~100) + packet id (2) + signature (64) + body
# (at most 320, docs/protocol.md "Command channel") = 488 bytes.
_RX = const(512)  # bytes
_HDR = const(5)  # bytes; fixed header = 1 type byte + at most 4 remaining-length bytes (2.2.3)
_MAX_REMAINING = const(268435455)  # 2.2.3: largest value four length bytes can carry

# Packet types in the high nibble of byte 1 (2.2.1); low nibble = flags (2.2.2).
_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)  # 3.8.1: flags must be 0010
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

# 3.2.2.3 Connect Return code values 1..5
_REFUSALS = (
    "unacceptable protocol version",
    "identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)


def encode_length(n, buf, end):
    # 2.2.3: seven bits per byte, least significant first, high bit = more bytes follow.
    # Written right-aligned so that it ends at buf[end]; returns the start index.
    if n < 0 or n > _MAX_REMAINING:
        raise ValueError("remaining length out of range")
    k = 1
    v = n >> 7
    while v:
        k += 1
        v >>= 7
    i = end - k
    for j in range(i, end):
        b = n & 0x7F
        n >>= 7
        buf[j] = b | 0x80 if n else b
    return i


def _put_str(buf, i, s):
    # 1.5.3: UTF-8 string = 2-byte big-endian length + bytes
    n = len(s)
    buf[i] = n >> 8
    buf[i + 1] = n & 0xFF
    buf[i + 2 : i + 2 + n] = s
    return i + 2 + n


def _why(e):
    # errno from the socket, or mbedTLS's negative error code; %s accepts either type.
    return e.args[0] if e.args else "?"


def _ready(poll, timeout_ms):
    # ipoll yields (object, events) without allocating a list; any event means "read now".
    for _ in poll.ipoll(timeout_ms):
        return True
    return False


def _encoded(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    if len(b) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return b


class MQTTClient:
    def __init__(self, client_id, keepalive_s=60, timeout_ms=10000, on_message=None):
        self.client_id = _encoded(client_id)
        self.keepalive_s = keepalive_s
        self.timeout_ms = timeout_ms
        # Called as on_message(topic_bytes, payload_bytes), payload None when it was too long
        # for _RX and dropped (the caller may still say so).
        self.on_message = on_message
        self.sock: SSLSocket | None = None
        self._wake: object | None = None
        self._poll: Poll | None = None
        self._idle: Poll | None = None
        self._pid = 0
        self._tx = bytearray(_TX)
        self._txv = memoryview(self._tx)
        self._rx = bytearray(_RX)
        self._rxv = memoryview(self._rx)
        self._one = bytearray(1)
        self._onev = memoryview(self._one)  # readinto needs a view: a bytearray slice is a copy
        self._last_tx = time.ticks_ms()
        self.dropped = 0  # inbound messages too long for _RX

    # --- sending -------------------------------------------------------------------------
    def _write(self, mv):
        if _TYPE_CHECKING:
            assert self.sock is not None  # packets are sent only after connect()
        try:
            while len(mv):
                n = self.sock.write(mv)
                if not n:
                    raise LinkError("mqtt: write made no progress")
                mv = mv[n:]
        except OSError as e:
            raise LinkError("mqtt: write failed: %s" % _why(e))
        self._last_tx = time.ticks_ms()

    def _send(self, first, body_end, payload=None):
        # The variable header and payload sit in _tx[_HDR:body_end]; the fixed header is written
        # right in front of them so the whole packet leaves in one write (one TLS record).
        plen = len(payload) if payload is not None else 0
        i = encode_length(body_end - _HDR + plen, self._tx, _HDR)
        i -= 1
        self._tx[i] = first
        if payload is not None and body_end + plen <= _TX:
            self._tx[body_end : body_end + plen] = payload
            body_end += plen
            payload = None
        self._write(self._txv[i:body_end])
        if payload is not None:
            self._write(memoryview(payload))

    def _next_pid(self):
        # 2.3.1: packet identifiers are non-zero 16-bit integers.
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    # --- receiving -----------------------------------------------------------------------
    def _read_into(self, mv):
        if _TYPE_CHECKING:
            assert self.sock is not None  # packets are read only after connect()
        got = 0
        n = len(mv)
        try:
            while got < n:
                k = self.sock.readinto(mv[got:])
                if not k:
                    # 0 = peer closed, None = no data on a non-blocking socket; both end the link.
                    raise LinkError("mqtt: connection closed")
                got += k
        except OSError as e:
            raise LinkError("mqtt: read failed: %s" % _why(e))

    def _recv(self):
        # Reads one packet. Returns (first byte, remaining length, complete): the body is in
        # _rx[:min(length, _RX)]; complete is False when it was longer and the rest was dropped.
        one = self._one
        self._read_into(self._onev)
        first = one[0]
        n = 0
        shift = 0
        while True:
            self._read_into(self._onev)
            n |= (one[0] & 0x7F) << shift
            if not one[0] & 0x80:
                break
            shift += 7
            if shift > 21:
                raise LinkError("mqtt: malformed remaining length")  # 2.2.3: at most 4 bytes
        keep = n if n <= _RX else _RX
        self._read_into(self._rxv[:keep])
        left = n - keep
        while left:
            # Only a long PUBLISH gets here (_wait refuses others); its topic and packet id are in
            # the kept prefix. Nothing is sent while a packet is read, so _tx drains the rest.
            k = left if left < _TX else _TX
            self._read_into(self._txv[:k])
            left -= k
        return first, n, keep == n

    def _handle(self, first, n, complete):
        # Packets the server may send at any time while we wait for something else.
        kind = first & 0xF0
        if kind == _PUBLISH:
            self._inbound(first, n, complete)
            return True
        if first == _PINGRESP:
            if n != 0:
                raise LinkError("mqtt: malformed PINGRESP")
            return True
        return False

    def _inbound(self, first, n, complete):
        # 3.3.1: QoS in bits 2-1; 3 is malformed. We subscribe with QoS <= 1, so the server never
        # sends QoS 2 to us (3.8.4); if it does, the session is broken.
        qos = (first >> 1) & 3
        if qos > 1:
            raise LinkError("mqtt: unexpected QoS %d PUBLISH" % qos)
        rx = self._rx
        if n < 2:
            raise LinkError("mqtt: malformed PUBLISH")
        tl = (rx[0] << 8) | rx[1]
        pos = 2 + tl
        if qos:
            pos += 2
        if pos > n or pos > _RX:
            raise LinkError("mqtt: malformed PUBLISH")
        if qos:
            pid = (rx[pos - 2] << 8) | rx[pos - 1]
            if pid == 0:
                raise LinkError("mqtt: PUBLISH with packet id 0")  # 2.3.1
        if not complete:
            self.dropped += 1
        if self.on_message is not None:
            self.on_message(bytes(rx[2 : 2 + tl]), bytes(rx[pos:n]) if complete else None)
        if qos:
            # 4.3.2: the receiver of a QoS 1 PUBLISH answers PUBACK with the same packet id.
            tx = self._tx
            tx[_HDR] = pid >> 8
            tx[_HDR + 1] = pid & 0xFF
            self._send(_PUBACK, _HDR + 2)

    def _wait(self, want):
        # Reads until a packet whose first byte is `want`, serving PUBLISH/PINGRESP in between;
        # returns its remaining length (body in _rx). Bounded by timeout_ms overall, and by the
        # socket time-out for each read.
        t0 = time.ticks_ms()
        while True:
            first, n, complete = self._recv()
            if first == want:
                if not complete:
                    raise LinkError("mqtt: packet too long")
                return n
            if not self._handle(first, n, complete):
                raise LinkError("mqtt: unexpected packet 0x%02x" % first)
            if time.ticks_diff(time.ticks_ms(), t0) > self.timeout_ms:
                raise LinkError("mqtt: no answer in time")

    # --- operations ----------------------------------------------------------------------
    def connect(self, sock, clean_session=True, wake=None):
        # 3.1: CONNECT with protocol name "MQTT", level 4, Clean Session flag, Keep Alive and
        # the client identifier; no will, user name or password (the TLS client certificate is
        # the credential: the broker takes its CN as the user name). Returns Session Present.
        # wake: the TCP socket under a TLS sock, which serve() waits on (see there).
        self.sock = sock
        self._wake = wake
        self._poll = self._idle = None
        if len(self.client_id) + 14 > _TX:
            raise ValueError("client id too long")
        tx = self._tx
        i = _put_str(tx, _HDR, b"MQTT")  # 3.1.2.1
        tx[i] = 4  # 3.1.2.2 protocol level for 3.1.1
        tx[i + 1] = 0x02 if clean_session else 0  # 3.1.2.4
        tx[i + 2] = self.keepalive_s >> 8  # 3.1.2.10, seconds
        tx[i + 3] = self.keepalive_s & 0xFF
        i = _put_str(tx, i + 4, self.client_id)  # 3.1.3.1
        self._send(_CONNECT, i)
        # 3.2: the first packet from the server must be CONNACK.
        first, n, complete = self._recv()
        if first != _CONNACK or n != 2:
            raise LinkError("mqtt: expected CONNACK")
        flags = self._rx[0]
        rc = self._rx[1]
        if flags & 0xFE:
            raise LinkError("mqtt: malformed CONNACK")  # 3.2.2.1: bits 7-1 reserved
        if rc:
            if rc > len(_REFUSALS):
                raise LinkError("mqtt: malformed CONNACK")
            raise BrokerRefusedError(rc, _REFUSALS[rc - 1])
        # 3.2.2.2: with Clean Session the server must answer Session Present = 0.
        if clean_session and flags:
            raise LinkError("mqtt: session present after clean session")
        return bool(flags)

    def publish(self, topic, payload, qos=0, retain=False):
        # 3.3: returns the packet id (0 for QoS 0). QoS 1 waits for the matching PUBACK (4.3.2).
        if qos not in (0, 1):
            raise ValueError("QoS must be 0 or 1")
        t = _encoded(topic)
        # 3.3.2.1: the Topic Name must not contain wildcard characters.
        if not t or b"#" in t or b"+" in t:
            raise ValueError("bad topic name")
        if len(t) + _HDR + 4 > _TX:
            raise ValueError("topic too long")
        tx = self._tx
        i = _put_str(tx, _HDR, t)
        pid = 0
        if qos:
            pid = self._next_pid()
            tx[i] = pid >> 8
            tx[i + 1] = pid & 0xFF
            i += 2
        self._send(_PUBLISH | qos << 1 | (1 if retain else 0), i, payload)
        if qos:
            n = self._wait(_PUBACK)
            rx = self._rx
            if n != 2 or ((rx[0] << 8) | rx[1]) != pid:
                raise LinkError("mqtt: PUBACK for another packet")
        return pid

    def subscribe(self, topic, qos=0):
        # 3.8: one topic filter per SUBSCRIBE; returns the granted QoS from SUBACK (3.9.3).
        if qos not in (0, 1):
            raise ValueError("QoS must be 0 or 1")
        t = _encoded(topic)
        if not t or len(t) + _HDR + 5 > _TX:
            raise ValueError("bad topic filter")
        tx = self._tx
        pid = self._next_pid()
        tx[_HDR] = pid >> 8
        tx[_HDR + 1] = pid & 0xFF
        i = _put_str(tx, _HDR + 2, t)
        tx[i] = qos
        self._send(_SUBSCRIBE, i + 1)
        n = self._wait(_SUBACK)
        rx = self._rx
        if n != 3 or ((rx[0] << 8) | rx[1]) != pid:
            raise LinkError("mqtt: malformed SUBACK")
        rc = rx[2]
        if rc == 0x80:
            raise LinkError("mqtt: subscription refused")
        if rc > qos:  # 3.9.3: granted QoS is at most the requested one
            raise LinkError("mqtt: malformed SUBACK")
        return rc

    def ping(self):
        # 3.12 / 3.13: PINGREQ, answered by PINGRESP.
        self._send(_PINGREQ, _HDR)
        if self._wait(_PINGRESP):
            raise LinkError("mqtt: malformed PINGRESP")

    def keepalive_due(self):
        # 3.1.2.10: the client must send something within each Keep Alive period; we ping at half
        # of it so a slow link still makes the deadline.
        if not self.keepalive_s:
            return False
        return time.ticks_diff(time.ticks_ms(), self._last_tx) >= self.keepalive_s * 500

    def wait_msg(self):
        # Reads and serves one inbound packet (blocking up to the socket time-out).
        first, n, complete = self._recv()
        if not self._handle(first, n, complete):
            raise LinkError("mqtt: unexpected packet 0x%02x" % first)

    def serve(self, timeout_ms):
        # Waits up to timeout_ms for an inbound packet (a PUBLISH to us, a late PINGRESP) and
        # serves it: True when one was served, False when the time passed without one, so an
        # idle caller keeps its own schedule (keep-alive, samples). The wait is select.poll:
        # MicroPython's TLS socket answers it from mbedTLS's buffer first (one record may carry
        # several packets, the rest already decrypted) and from the TCP socket after. A TLS
        # socket has no file descriptor, so the port polls it in a loop (every millisecond on the
        # Unix port); when nothing is buffered, the wait is on the TCP socket (`wake`) instead,
        # which the Unix port hands to poll(2), so an emulated board idles without spinning. A
        # closed or failed link also polls as ready, and the read then raises LinkError. Once a
        # packet has begun, its rest is read like any other, bounded by the socket time-out.
        if _TYPE_CHECKING:
            assert self.sock is not None  # served only after connect()
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.sock, select.POLLIN)
            if self._wake is not None:
                self._idle = select.poll()
                self._idle.register(self._wake, select.POLLIN)
        if self._idle is None:
            ready = _ready(self._poll, timeout_ms)
        else:
            ready = _ready(self._poll, 0) or _ready(self._idle, timeout_ms)
        if not ready:
            return False
        self.wait_msg()
        return True

    def disconnect(self):
        # 3.14: DISCONNECT, then close; errors on the way out do not matter any more.
        if self.sock is None:
            return
        try:
            self._send(_DISCONNECT, _HDR)
        except LinkError:
            pass
        self.close()

    def close(self):
        s = self.sock
        self.sock = None
        self._wake = None
        self._poll = self._idle = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass
