"""`qlink server` as a subprocess: start it in a data directory with ephemeral ports, wait for
its `server.json`, expose where it listens, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


class ServerStartError(RuntimeError):
    pass


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        hostname: str = "localhost",
        challenge_ttl: int | None = None,
        api_port: int = 0,
        broker_port: int = 0,
        extra_args: list[str] | None = None,
        database_url: str | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.hostname = hostname
        self.challenge_ttl = challenge_ttl
        self.api_port_arg = api_port
        self.broker_port_arg = broker_port
        self.extra_args = extra_args or []
        self.database_url = database_url
        self.workers = workers
        self.env = env or {}  # added to the server's environment
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def server_json(self) -> Path:
        return self.data_dir / "server.json"

    @property
    def api_url(self) -> str:
        return str(self.info["api_url"])

    @property
    def broker_port(self) -> int:
        return int(self.info["broker_port"])

    @property
    def root_der_path(self) -> Path:
        return self.data_dir / "ca" / "root.der"

    @property
    def root_pem_path(self) -> Path:
        return self.data_dir / "ca" / "root.pem"

    def root_der(self) -> bytes:
        return self.root_der_path.read_bytes()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `qlink ARGS --data-dir <this server's dir>` (and its database) and return the
        finished process."""
        env = dict(os.environ)
        if self.database_url:
            env["QLINK_DATABASE_URL"] = self.database_url
        return subprocess.run(
            [sys.executable, "-m", "host.cli", *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
            env=env,
        )

    def ensure_tenant(self, name: str) -> None:
        """Create tenant `name` unless it exists: batches and tokens are made only in a tenant
        that exists, and several fixtures of one server may want the same one."""
        made = self.cli("tenant", "create", name, check=False)
        if made.returncode != 0 and "already exists" not in made.stderr:
            made.check_returncode()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of one SQL query on the server's database (SQLite file or PostgreSQL)."""
        from sqlalchemy import text

        engine = self._engine()
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql))]
        finally:
            engine.dispose()

    def columns(self, table: str) -> list[str]:
        """The names of a table's columns in the server's database, in order."""
        from sqlalchemy import inspect

        engine = self._engine()
        try:
            return [c["name"] for c in inspect(engine).get_columns(table)]
        finally:
            engine.dispose()

    def _engine(self) -> Engine:
        from sqlalchemy import create_engine

        url = self.database_url or f"sqlite:///{self.data_dir / 'registry.sqlite'}"
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return create_engine(url)

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "host.cli",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.api_port_arg),
            "--broker-port",
            str(self.broker_port_arg),
            "--hostname",
            self.hostname,
        ]
        if self.challenge_ttl is not None:
            args += ["--challenge-ttl", str(self.challenge_ttl)]
        if self.database_url:
            args += ["--database-url", self.database_url, "--workers", str(self.workers)]
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                args + self.extra_args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        # Ready when server.json names this process: a file left by an earlier server (or
        # one still running on the directory, which this one will refuse) is not its answer.
        while self._announced() is None:
            if self._proc.poll() is not None:
                raise ServerStartError(
                    f"qlink server exited with status {self._proc.returncode}; log tail:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"qlink server did not write {self.server_json} within {timeout_s:.0f} s; "
                    "log tail:\n" + self.log_tail()
                )
            time.sleep(0.05)
        info = self._announced()
        assert info is not None
        self.info = info
        return self

    def _announced(self) -> dict[str, Any] | None:
        assert self._proc is not None
        try:
            info: dict[str, Any] = json.loads(self.server_json.read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == self._proc.pid else None

    def worker_pids(self) -> list[int]:
        """The server's uvicorn worker processes (with `--workers` above 1): its children that
        multiprocessing started, not the broker."""
        found = []
        for task in Path(f"/proc/{self.info['pid']}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"multiprocessing.spawn" in cmdline:  # not its resource tracker
                    found.append(int(child))
        return found

    def kill(self) -> int:
        """`kill -9` of the server's processes (main and workers); the broker follows by its
        parent-death signal. Returns the main process's status."""
        proc, self._proc = self._proc, None
        assert proc is not None, "the server is not running"
        workers = self.worker_pids()
        os.kill(proc.pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class PostgresUnavailable(RuntimeError):
    pass


class PrivatePostgres:
    """A throw-away PostgreSQL server from the Debian binaries: initdb into a temporary
    directory, listening only on a Unix socket in it and on 127.0.0.1 at a free port.

    PostgreSQL refuses to run as root; then the cluster belongs to the `postgres` system user
    and the commands run through `runuser`.
    """

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.data = self.base / "pgdata"
        self.sock = self.base / "pgsock"
        self.port = 0
        self._as: list[str] = []

    @staticmethod
    def bindir() -> Path:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise PostgresUnavailable(
                "PostgreSQL binaries not found; install them: apt-get install postgresql"
            )
        return found[-1].parent

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise PostgresUnavailable(f"{args[0]} failed: {proc.stderr.strip()[-500:]}")

    def start(self) -> PrivatePostgres:
        import socket

        bindir = self.bindir()
        self.base.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.base, "postgres")
            shutil.chown(self.sock, "postgres")
            self.base.chmod(0o755)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._run(
            str(bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "qlink",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        opts = (
            f"-k {self.sock} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200 -c synchronous_commit=off"
        )
        self._run(
            str(bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-w",
            "-t",
            "30",
            "-l",
            str(self.base / "postgres.log"),
            "start",
        )
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://qlink@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(
            "postgresql+psycopg://" + self.url().removeprefix("postgresql://"),
            isolation_level="AUTOCOMMIT",
        )
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(PostgresUnavailable, FileNotFoundError):
            self._run(
                str(self.bindir() / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
            )


@contextlib.contextmanager
def temporary_postgres() -> Iterator[PrivatePostgres]:
    """A PrivatePostgres in a new temporary directory, stopped and its directory (the cluster,
    tens of MB) removed on exit, also when it fails to start."""
    base = Path(tempfile.mkdtemp(prefix="qlink-pg-"))
    try:
        pg = PrivatePostgres(base).start()
        try:
            yield pg
        finally:
            pg.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
