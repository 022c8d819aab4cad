"""The store: the server's state split by concept, over one database.

- `audit`: the audit log (every change writes its event in its own transaction)
- `tenants`: tenants, which every batch and operator token belongs to
- `tokens`: operator API tokens
- `batches`: batches and the import of device identities into them
- `devices`: devices, their state changes, telemetry, revoked certificates
- `challenges`: onboarding challenges and the onboarding record
- `commands`: commands signed for devices and their state
- `puf`: PUF health reports, bounded per device
- `transfers`: ownership transfer codes and their claims
- `targets`: the brokers that serve batches (the managed one, external Mosquitto, AWS IoT)
- `moves`: each device's progress when its batch moves to another target
- `rollouts`: OTA rollouts and each device's progress in one
- `successors`: the one transaction that moves a device to its next identity
- `releases`: published firmware releases (docs/ota.md)
- `views`: what the web console reads (the device list, the dashboard, the live feed)
- `users`: the web console's users and their sessions (docs/console.md)

Each concept's SQL lives in its module and runs on the DBAPI (store/database.py says why).
Use cases that span concepts or reach outside the database (the broker, the CA) are the
application layer's (host/server/application.py), not the store's.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from host.server.store.audit import LOCAL, Actor, AuditLog
from host.server.store.batches import Batches
from host.server.store.challenges import Challenges
from host.server.store.commands import Commands
from host.server.store.database import Database
from host.server.store.devices import Devices, RevokedCert
from host.server.store.errors import (
    Conflict,
    ConstraintViolation,
    DatabaseUnavailable,
    DuplicateKey,
    ImportRejected,
    Invalid,
    NotFound,
    StoreError,
)
from host.server.store.moves import Moves
from host.server.store.puf import PufHealthLog
from host.server.store.successors import Successors
from host.server.store.targets import Targets
from host.server.store.tenants import DEFAULT_TENANT, Tenants
from host.server.store.tokens import TOKEN_PREFIX, Tokens
from host.server.store.transfers import Transfers

if TYPE_CHECKING:
    from host.server.store.releases import Releases
    from host.server.store.rollouts import Rollouts
    from host.server.store.users import Users
    from host.server.store.views import Views

__all__ = [
    "DEFAULT_TENANT",
    "LOCAL",
    "TOKEN_PREFIX",
    "Actor",
    "Conflict",
    "ConstraintViolation",
    "DatabaseUnavailable",
    "DuplicateKey",
    "ImportRejected",
    "Invalid",
    "NotFound",
    "RevokedCert",
    "Store",
    "StoreError",
]


class Store:
    """Every concept's store over one database (opened and migrated here)."""

    def __init__(self, target: Path | str, *, migrate: bool = True) -> None:
        self.db = Database(target, migrate=migrate)
        self.audit = AuditLog(self.db)
        self.tenants = Tenants(self.db)
        self.tokens = Tokens(self.db)
        self.batches = Batches(self.db)
        self.devices = Devices(self.db)
        self.challenges = Challenges(self.db)
        self.commands = Commands(self.db)
        self.puf = PufHealthLog(self.db)
        self.transfers = Transfers(self.db)
        self.successors = Successors(self.db)
        self.targets = Targets(self.db)
        self.moves = Moves(self.db)

    # OTA's stores are made when first used: the CLI's read commands, which must start fast,
    # never touch them.
    @functools.cached_property
    def releases(self) -> Releases:
        from host.server.store.releases import Releases

        return Releases(self.db)

    @functools.cached_property
    def rollouts(self) -> Rollouts:
        from host.server.store.rollouts import Rollouts

        return Rollouts(self.db)

    @functools.cached_property
    def views(self) -> Views:
        """The web console's read-only queries (made on first use, like the OTA stores)."""
        from host.server.store.views import Views

        return Views(self.db)

    # The console's users: only the console and `qlink user` need them.
    @functools.cached_property
    def users(self) -> Users:
        from host.server.store.users import Users

        return Users(self.db)

    @property
    def path(self) -> Path | None:
        """The SQLite file, None for PostgreSQL."""
        return self.db.path

    def close(self) -> None:
        self.db.close()
