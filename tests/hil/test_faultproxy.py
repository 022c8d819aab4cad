"""hil.faultproxy on loopback against an echo server: exact pass-through, cuts (reset + refuse),
restore on the same port, flapping on schedule, bad arguments."""

from __future__ import annotations

import contextlib
import itertools
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from hil.faultproxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # the proxy resets it on a cut
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address  # type: ignore[misc]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(echo) as p:
        yield p


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def test_bytes_pass_through_unchanged_both_ways(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB, every byte value, larger than one chunk
    with _connect(proxy.port) as s:
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        got = _recv_exact(s, len(payload))
        sender.join()
    assert got == payload
    assert proxy.stats.accepted == 1
    assert proxy.stats.bytes_up == len(payload)
    assert proxy.stats.bytes_down == len(payload)


def test_a_cut_resets_open_connections_and_refuses_new_ones_until_it_ends(
    proxy: FaultProxy,
) -> None:
    port = proxy.port
    s = _connect(port)
    s.sendall(b"ping")
    assert _recv_exact(s, 4) == b"ping"
    proxy.cut(1.0)
    assert not proxy.up
    with pytest.raises(ConnectionResetError):
        s.sendall(b"x")
        s.recv(1)  # the RST arrives: no orderly EOF
    s.close()
    with pytest.raises(ConnectionRefusedError):
        _connect(port)
    time.sleep(1.3)
    assert proxy.up and proxy.port == port  # back on the same port
    with _connect(port) as s2:
        s2.sendall(b"pong")
        assert _recv_exact(s2, 4) == b"pong"
    assert proxy.stats.cuts == 1
    assert proxy.stats.reset == 2  # both ends of the one open connection
    assert [e for _, e in proxy.events()][1:] == ["cut for 1.0 s", "restored"]


def test_a_cut_without_duration_lasts_until_restore(proxy: FaultProxy) -> None:
    proxy.cut()
    time.sleep(0.3)
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy.port)
    proxy.restore()
    with _connect(proxy.port) as s:
        s.sendall(b"ok")
        assert _recv_exact(s, 2) == b"ok"


def test_flapping_cuts_and_restores_on_its_schedule(proxy: FaultProxy) -> None:
    proxy.flap(down_s=0.3, up_s=0.3, cycles=3)
    proxy.wait_flapping(timeout=10)
    events = proxy.events()[1:]
    assert [e for _, e in events] == ["cut", "restored"] * 3
    times = [t for t, _ in events]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.25 <= g <= 1.5 for g in gaps), gaps  # 0.3 s each, plus scheduling under load
    assert proxy.up


def test_upstream_down_resets_the_client_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()  # bound, never listening: connections are refused
        with FaultProxy(dead) as p:
            # Reset at once, nothing forwarded. Under load the reset can land before connect()
            # has read back its own result, so it may surface there rather than at recv().
            with pytest.raises(ConnectionResetError), _connect(p.port) as s:
                s.recv(1)
            deadline = time.monotonic() + 5
            while p.stats.upstream_failed != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert p.stats.upstream_failed == 1


@pytest.mark.parametrize(("down", "up", "cycles"), [(0, 1, 1), (1, -1, 1), (1, 1, 0)])
def test_flap_rejects_a_schedule_that_is_not_one(
    proxy: FaultProxy, down: float, up: float, cycles: int
) -> None:
    with pytest.raises(ValueError, match="flap needs"):
        proxy.flap(down, up, cycles)
