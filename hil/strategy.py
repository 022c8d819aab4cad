"""The strategy: moves a target through off -> base_flashed -> app_deployed -> agent_running.

Tests ask for a state, not for the steps: on a USB board "base_flashed" means MicroPython
answers on the REPL (flash a base image first, docs/rig.md); on an emulated board it means an
empty filesystem and the Unix port.
"""

from __future__ import annotations

from typing import Any

from hil import steps
from hil.targets import EmulatedTarget, SerialTarget, TargetError

STATES = ("off", "base_flashed", "app_deployed", "agent_running")


class Strategy:
    def __init__(
        self, target: EmulatedTarget | SerialTarget, config: dict[str, Any], root_ca_der: bytes
    ) -> None:
        self.target = target
        self.config = config
        self.root_ca_der = root_ca_der
        self.state = "off"

    def transition(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        with steps.step("transition", frm=self.state, to=state):
            want = STATES.index(state)
            if want == 0:
                if isinstance(self.target, EmulatedTarget):
                    self.target.power_off()
                self.state = "off"
                return
            if STATES.index(self.state) < 1:
                self._base()
            if want >= 2 and STATES.index(self.state) < 2:
                self.target.deploy(self.config, self.root_ca_der)
                self.state = "app_deployed"
            if want >= 3:
                self._run_agent()

    def _base(self) -> None:
        if isinstance(self.target, EmulatedTarget):
            self.target.power_on()
        out = self.target.exec("import sys\nprint('MP', sys.implementation.name)")
        if "MP micropython" not in out:
            raise TargetError(
                "no MicroPython REPL on the board; flash a base image first (docs/rig.md)"
            )
        self.state = "base_flashed"

    def _run_agent(self) -> None:
        if isinstance(self.target, EmulatedTarget):
            self.target.power_cycle()
        else:
            self.target.hard_reset()
        self.target.wait_for(r"I agent: device [0-9a-f]{64}", timeout=120)
        self.state = "agent_running"
