"""The rule for operator-chosen names (batches, tenants, operators)."""

from __future__ import annotations

from host.server.store.errors import Invalid


def check_name(kind: str, name: object, limit: int) -> None:
    """Names are 1..limit printable characters without commas, slashes or spaces: they appear
    in CSV exports, audit targets (`batch:NAME`) and MQTT topics (a tenant)."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= limit
        or not name.isprintable()
        or any(c in name for c in ",/ +#")
    ):
        raise Invalid(
            f"{kind} must be 1..{limit} printable characters without commas, slashes, "
            "spaces, + or #"
        )
