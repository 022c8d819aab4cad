"""A small SNTP server (RFC 4330) on loopback UDP for clock scenarios: it answers with the host's
time plus an optional offset, or, while `synchronised` is False, with the "alarm" answer a server
gives before it has time (LI = 3, stratum 0), which a client must not use."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

NTP_DELTA = 2208988800  # s from 1900-01-01 (NTP era 0) to 1970-01-01, RFC 4330 section 3
_LEN = 48  # RFC 4330 section 4, without authenticator


class SntpServer:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, synchronised: bool = True
    ) -> None:
        self.synchronised = synchronised
        self.offset_s = 0.0
        self.requests = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        """host:port, as config.json's `time_server` wants it."""
        return f"{self.host}:{self.port}"

    def start(self) -> SntpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> SntpServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def answer(self, request: bytes, now: float | None = None) -> bytes | None:
        """The reply to one request, or None when it is not an SNTP client request."""
        if len(request) < _LEN or request[0] & 7 != 3:  # mode 3: client
            return None
        t = (time.time() if now is None else now) + self.offset_s
        version = (request[0] >> 3) & 7 or 4
        if self.synchronised:
            first, stratum = (0 << 6) | (version << 3) | 4, 1
        else:
            first, stratum = (3 << 6) | (version << 3) | 4, 0
        secs = int(t) + NTP_DELTA
        frac = int((t % 1) * 2**32)
        ts = struct.pack("!II", secs & 0xFFFFFFFF, frac)
        return (
            struct.pack("!BBbb", first, stratum, 4, -20)
            + bytes(8)  # root delay, root dispersion
            + b"LOCL"  # reference identifier of a stratum-1 server (RFC 4330 section 4)
            + ts  # reference timestamp
            + request[40:48]  # originate: the client's transmit timestamp
            + ts  # receive
            + ts  # transmit
        )

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(data)
            if reply is not None:
                self.requests += 1
                with contextlib.suppress(OSError):
                    self._sock.sendto(reply, peer)


__all__ = ["NTP_DELTA", "SntpServer"]
