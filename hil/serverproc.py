"""`qlink server` as a subprocess: start it in a data directory with ephemeral ports, wait for
its `server.json`, expose where it listens, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.hostname = hostname
        self.challenge_ttl = challenge_ttl
        self.api_port_arg = api_port
        self.broker_port_arg = broker_port
        self.extra_args = extra_args or []
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
        """Run `qlink ARGS --data-dir <this server's dir>` and return the finished process."""
        return subprocess.run(
            [sys.executable, "-m", "host.cli", *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.server_json.unlink()
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
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                args + self.extra_args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while not self.server_json.exists():
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
        self.info = json.loads(self.server_json.read_text())
        return self

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
