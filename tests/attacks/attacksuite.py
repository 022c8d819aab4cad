"""One case of the attack suite: what it tries, what must happen, what it saw."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

# The user_properties key under which a case's record travels to the controller.
RECORD = "qlink_attack"


@dataclass
class Attack:
    """What one case tries and what it saw; recorded on its test item."""

    item: pytest.Item
    name: str = ""
    expected: str = ""
    observed: list[str] = field(default_factory=list)

    def expect(self, name: str, expected: str) -> None:
        self.name, self.expected = name, expected

    def observe(self, what: str) -> None:
        self.observed.append(what)

    def record(self) -> dict[str, str]:
        return {"name": self.name, "expected": self.expected, "observed": "; ".join(self.observed)}
