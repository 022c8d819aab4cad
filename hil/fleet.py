"""Simulated devices registered in one batch of a running `qlink server`, through its CLI."""

from __future__ import annotations

from typing import Any

from hil.serverproc import ServerProcess
from hil.simdevice import SimDevice


class Fleet:
    """Devices registered in one batch; `take()` hands out one no other caller was given."""

    def __init__(
        self, server: ServerProcess, *, batch: str = "e2e", tenant: str = "acme", size: int = 12
    ) -> None:
        self.server = server
        self.batch = batch
        self.tenant = tenant
        root = server.root_der()
        self._free = [SimDevice(server.api_url, root) for _ in range(size)]
        csv = server.data_dir / f"{batch}-devices.csv"
        csv.write_text("\n".join(d.csv_line() for d in self._free) + "\n")
        server.ensure_tenant(tenant)
        server.cli("batch", "create", batch, "--tenant", tenant)
        server.cli("batch", "import", batch, str(csv))

    def take(self) -> SimDevice:
        return self._free.pop()

    def stranger(self) -> SimDevice:
        """A device with a fresh key that no batch knows."""
        return SimDevice(self.server.api_url, self.server.root_der())

    def dump(self, *, leave_out: tuple[str, ...] = ()) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of devices and batches, straight from the database; without the columns
        named in `leave_out`."""
        out = {}
        for table in ("devices", "batches"):
            columns = ", ".join(c for c in self.server.columns(table) if c not in leave_out)
            out[table] = self.server.query(f"SELECT {columns} FROM {table} ORDER BY 1")  # noqa: S608
        return out
