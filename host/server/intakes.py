"""The event intakes of the external Mosquitto targets, in the server's main process beside the
managed broker's (host/server/app.py): one `EventIntake` per target, so devices' `online`
events and command acknowledgements there reach the store and the move progress
(store/moves.py), and commands a device missed are sent again on the broker it is on.

Targets are added while the server runs (by the CLI or the operator API, in other processes):
`refresh` starts an intake for each one that has none, and runs at start and then every few
seconds. A target that cannot be reached now is tried again at the next refresh; one that is
reached once keeps its intake, which paho reconnects when the broker comes back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from host.server import ServerError
from host.server.ca import CertificateAuthority
from host.server.events import EventIntake, RolloutEvents
from host.server.store import Store
from host.server.store.targets import KIND_MOSQUITTO
from host.server.targets import TargetService

log = logging.getLogger("qlink.intakes")
REFRESH_S = 5.0


class TargetIntakes:
    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        targets: TargetService,
        *,
        drift_pct: int = 50,
        on_drift: Callable[[str], None] | None = None,
        rollouts: RolloutEvents | None = None,
    ) -> None:
        self._store = store
        self._rollouts = rollouts
        self._ca = ca
        self._targets = targets
        self._drift_pct = drift_pct
        self._on_drift = on_drift
        self._lock = threading.Lock()
        self.intakes: dict[str, EventIntake] = {}

    def refresh(self) -> list[str]:
        """Start the intake of every external Mosquitto target without one; their names."""
        started = []
        for rec in self._targets.list():
            if rec.kind != KIND_MOSQUITTO or rec.name in self.intakes:
                continue
            try:
                # The driver first: it gives the admin user the rights to read the events.
                self._targets.driver(rec.name).close()
                intake = EventIntake(
                    self._store,
                    self._ca,
                    "",
                    0,
                    drift_pct=self._drift_pct,
                    on_drift=self._on_drift,
                    target=rec.name,
                    login=self._targets.login(rec),
                    rollouts=self._rollouts,
                )
            except ServerError as e:
                log.warning("event=target_intake_failed target=%s why=%s", rec.name, e)
                continue
            with self._lock:
                self.intakes[rec.name] = intake
            started.append(rec.name)
            log.info("event=target_intake_started target=%s", rec.name)
        return started

    def run(self, stop: threading.Event, every_s: float = REFRESH_S) -> None:
        """Refresh until `stop` is set (a thread of the main process)."""
        while not stop.wait(every_s):
            try:
                self.refresh()
            except Exception:  # the store may hiccup; the next round tries again
                log.exception("event=target_intakes_refresh_failed")

    def close(self) -> None:
        with self._lock:
            intakes, self.intakes = list(self.intakes.values()), {}
        for intake in intakes:
            intake.close()
