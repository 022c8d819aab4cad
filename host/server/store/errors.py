"""The store's exceptions: each str() is a sentence an operator can act on, and the HTTP faces
map each class to one status (admin.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from host.server import ServerError

if TYPE_CHECKING:
    from host.server.identities import RowError


class StoreError(ServerError):
    """The database failed; the message says what to check."""


class ConstraintViolation(StoreError):
    """A statement broke a constraint of the schema (the DBAPI's IntegrityError)."""


class DuplicateKey(ConstraintViolation):
    """An INSERT or UPDATE met a unique constraint (a primary key, a unique name)."""


class DatabaseUnavailable(StoreError):
    """The connection to the database is gone, or it stayed locked; retry."""


class Invalid(StoreError):
    """A name, role or value the store does not accept (the request's fault)."""


class NotFound(StoreError):
    """No such batch, device or token for this tenant (it may exist for another: never say so)."""


class Conflict(StoreError):
    """The change contradicts what is stored (a name taken, a revoked device enabled)."""


class ImportRejected(StoreError):
    """At least one row is bad; nothing was imported."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(errors)
        self.errors = errors

    def __str__(self) -> str:
        rows = "; ".join(str(e) for e in self.errors[:20])
        more = f"; and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        return f"{len(self.errors)} bad row(s), nothing imported: {rows}{more}"
