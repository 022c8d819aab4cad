"""The one rule for operator-chosen names: tenants, batches, operators, Azure DPS enrollment
groups. Every place that takes a new name checks it here: the store before it writes one, the
CLI before it opens the data directory, the operator API's request bodies.

A name is 1 to 64 characters of `A-Z a-z 0-9 . _ -`, starting and ending with a letter or digit.
Names reach places with rules of their own: a directory of files (the Azure DPS export:
`azure/<tenant>/`), AWS IoT policy names (`qlink-<tenant>`) and topic resources, MQTT topics
(`qlink/<tenant>/...`, where `+` and `#` are wildcards), audit targets (`batch:NAME`), CSV
exports, DPS enrollment group IDs, and a shell command line (a leading `-` reads as an option).
This alphabet means the same in every one of them: no path separator, no `.` or `..`, no
wildcard, no policy variable (`${...}`), no space or control character, no look-alike letter.

Records made before this rule may hold other names; reads take any string, so they stay
readable. Only a new name is refused.
"""

from __future__ import annotations

import re

from host.server.store.errors import Invalid

NAME_MAX = 64
# One character, or a letter/digit, up to 62 of the alphabet, a letter/digit.
NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$"
NAME_RULE = (
    f"1 to {NAME_MAX} characters: letters, digits, '.', '_' and '-' (ASCII), starting and "
    "ending with a letter or digit"
)
_NAME = re.compile(NAME_PATTERN)


def is_name(value: object) -> bool:
    """Whether `value` is a name by the rule."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def name_problem(kind: str, value: object) -> str | None:
    """The sentence that refuses `value` as a `kind` (e.g. "tenant"), or None if it is a name."""
    if is_name(value):
        return None
    if isinstance(value, str):  # repr escapes control characters; a long value is cut
        shown = repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    else:
        shown = f"a {type(value).__name__}"
    return f"{kind} must be {NAME_RULE}; {shown} is not"


def check_name(kind: str, name: object, limit: int = NAME_MAX) -> None:
    """Raise Invalid unless `name` is a name by the rule. `limit` may only lower the bound."""
    problem = name_problem(kind, name)
    if problem is None and isinstance(name, str) and len(name) > limit:
        problem = f"{kind} must be at most {limit} characters"
    if problem is not None:
        raise Invalid(problem)
