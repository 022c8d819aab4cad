"""The rig: drives qlink from outside, as a user would (boards, emulated boards, scenarios)."""
