# agent.mqtt serve() over a real TLS socket of the Unix port (agent.tlslink to a TLS server in
# this process): select.poll on MicroPython's TLS socket waits the time given when nothing comes,
# wakes when a record arrives, sees packets mbedTLS already decrypted but the client has not read
# yet (several MQTT packets in one record), and reports a closed link; each as the agent runs it
# (waiting on the TCP socket under the TLS one when nothing is buffered) and on the TLS socket
# alone. The server side runs its handshake in a thread (the client's handshake blocks);
# everything after it runs here.
# heapsize: 128k
import os
import time
import socket
import tls
import _thread
from agent import tlslink
from agent.mqtt import MQTTClient
from agent.errors import LinkError
from fwtest import raises
import certs

CONNACK_OK = b"\x20\x02\x00\x00"


class Server:
    # A TLS server on 127.0.0.1 for one client (the certificate names localhost, signed by
    # certs.ROOT, which the client pins).
    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        while True:  # the port has no getsockname(): pick a free port
            self.port = 20000 + int.from_bytes(os.urandom(2), "big") % 30000
            try:
                self.listener.bind(socket.getaddrinfo("127.0.0.1", self.port)[0][-1])
                break
            except OSError:
                pass
        self.listener.listen(1)
        self.ready = _thread.allocate_lock()
        self.ready.acquire()
        self.conn = None
        self.error = None
        _thread.start_new_thread(self._accept, ())

    def _accept(self):
        try:
            raw, _ = self.listener.accept()
            ctx = tls.SSLContext(tls.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certs.TLS_CERT, certs.TLS_KEY)
            self.conn = ctx.wrap_socket(raw, server_side=True)
        except Exception as e:  # reported by the test that waits for the handshake
            self.error = e
        self.ready.release()

    def handshake(self):
        self.ready.acquire()  # the thread's handshake has ended
        if self.error is not None:
            raise self.error
        return self.conn

    def read(self, n):
        buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        while got < n:
            k = self.conn.readinto(mv[got:])
            assert k, "client closed the connection"
            got += k
        return bytes(buf)

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


def session(timeout_ms=5000, on_message=None, wake=True):
    srv = Server()
    sock, raw = tlslink.connect("localhost", srv.port, certs.ROOT, timeout_ms)
    conn = srv.handshake()
    conn.write(CONNACK_OK)  # waits in the client's buffers until it asks
    c = MQTTClient("dev1", 60, timeout_ms, on_message)
    c.connect(sock, True, raw if wake else None)
    assert srv.read(18) == b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04dev1"
    return srv, c


def test_serve_over_tls_waits_the_time_given_when_nothing_arrives():
    for wake in (True, False):
        srv, c = session(wake=wake)
        try:
            t0 = time.ticks_ms()
            assert c.serve(150) is False
            waited = time.ticks_diff(time.ticks_ms(), t0)
            assert 150 <= waited < 2000, waited
        finally:
            c.close()
            srv.close()


def test_serve_over_tls_sees_packets_already_decrypted_in_one_record():
    for wake in (True, False):
        _one_record(wake)


def _one_record(wake):
    got = []
    srv, c = session(on_message=lambda t, p: got.append((t, p)), wake=wake)
    try:
        # One write = one TLS record carrying two PUBLISH packets. After the first is read,
        # the second sits in mbedTLS's buffer, not on the TCP socket: poll must still see it.
        srv.conn.write(b"\x32\x0a\x00\x03c/d\x00\x09abc" + b"\x32\x0a\x00\x03c/d\x00\x0adef")
        t0 = time.ticks_ms()
        assert c.serve(5000) is True
        assert c.serve(0) is True
        assert time.ticks_diff(time.ticks_ms(), t0) < 2000
        assert got == [(b"c/d", b"abc"), (b"c/d", b"def")]
        assert srv.read(8) == b"\x40\x02\x00\x09\x40\x02\x00\x0a"  # both acknowledged
        assert c.serve(0) is False
        # A late PINGRESP arrives while idle: serve takes it.
        srv.conn.write(b"\xd0\x00")
        assert c.serve(5000) is True
    finally:
        c.close()
        srv.close()


def test_serve_over_tls_reports_a_closed_link():
    for wake in (True, False):
        srv, c = session(wake=wake)
        try:
            srv.conn.close()  # close_notify, then the TCP close
            srv.conn = None
            t0 = time.ticks_ms()
            raises(LinkError, c.serve, 5000)
            assert time.ticks_diff(time.ticks_ms(), t0) < 2000
        finally:
            c.close()
            srv.close()


def test_serve_over_tls_bounds_a_packet_cut_short_by_the_socket_time_out():
    srv, c = session(timeout_ms=300)
    try:
        srv.conn.write(b"\x32\x0a\x00\x03c/d")  # the rest never comes
        t0 = time.ticks_ms()
        raises(LinkError, c.serve, 5000)
        waited = time.ticks_diff(time.ticks_ms(), t0)
        assert 250 <= waited < 2000, waited
    finally:
        c.close()
        srv.close()
