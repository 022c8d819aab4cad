"""Coalesce a costly call that many requests ask for: at most one run per interval, and none
lost (a request inside the interval is served by one run at its end).

The CRL after renewals is the case: each renewal revokes the serial it replaced, and
re-signing the whole CRL and making Mosquitto re-read its configuration (SIGHUP: certificates,
plugins, CRL) per renewal made a renewal cost three onboardings (bench/results/fleet_online.json).
A replaced certificate's device holds a newer one already, so a second's delay before the old
one fails the TLS handshake opens nothing: the operator's own revocations stay immediate
(they also reach the broker's denied set at once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("qlink.coalesce")


class Coalesced:
    def __init__(self, fn: Callable[[], None], interval_s: float, name: str) -> None:
        self._fn = fn
        self._interval = interval_s
        self._name = name
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._timer: threading.Timer | None = None
        self.runs = 0

    def __call__(self) -> None:
        with self._lock:
            if self._timer is not None:
                return  # the run already scheduled will cover this request
            wait = self._last + self._interval - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self._scheduled)
                self._timer.name = f"coalesce-{self._name}"
                self._timer.daemon = True
                self._timer.start()
                return
            self._last = time.monotonic()
        self._run()

    def _scheduled(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self._run()

    def _run(self) -> None:
        self.runs += 1
        try:
            self._fn()
        except Exception:  # a timer thread has nobody to raise to
            log.exception("event=coalesced_call_failed name=%s", self._name)

    def flush(self) -> None:
        """Run now what is scheduled (at shutdown: nothing asked for is dropped)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            self._run()
