"""The data directory: one running server at a time (a second one stops with a sentence and
touches nothing; a killed one leaves no stale lock), a port in use is a sentence, and whether a
directory holds qlink data."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.serverproc import ServerProcess
from host.server import ServerError
from host.server.app import _listen
from host.server.datadir import (
    LOCK_NAME,
    DataDirBusy,
    DataDirError,
    NoQlinkData,
    data_dir_has_qlink_data,
    lock_data_dir,
)
from host.server.settings import ENV_DATABASE_URL

_HOLD = """
import sys
from pathlib import Path
from host.server.datadir import lock_data_dir
lock = lock_data_dir(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
"""


def _busy(data_dir: Path, pid: int) -> str:
    return (
        f"the data directory {data_dir} is in use by a running qlink server (pid {pid}); "
        "stop it first or use another --data-dir"
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _qlink_server(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "host.cli", "server", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _healthz(data_dir: Path, port: int) -> int:
    ctx = ssl.create_default_context(cafile=str(data_dir / "ca" / "bundle.pem"))
    ctx.check_hostname = False
    url = f"https://127.0.0.1:{port}/healthz"
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return int(r.status)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# -- the lock --------------------------------------------------------------------------------
def test_a_locked_data_directory_refuses_a_second_lock_naming_the_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with lock_data_dir(data) as lock:
        assert lock.held
        with pytest.raises(DataDirBusy) as e:
            lock_data_dir(data)
        assert str(e.value) == _busy(data, os.getpid())
        assert isinstance(e.value, ServerError)
        assert sorted(p.name for p in data.iterdir()) == [LOCK_NAME]
    assert not lock.held
    with lock_data_dir(data):  # released: the next server may start
        pass


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(DataDirBusy, match=f"pid {holder.pid}"):
            lock_data_dir(tmp_path)
        holder.send_signal(signal.SIGKILL)  # no chance to release anything
        holder.wait(timeout=10)
    finally:
        holder.kill()
        holder.communicate()
    with lock_data_dir(tmp_path) as lock:
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert lock.path.read_text() == ""  # no pid of a server that has stopped


def test_a_child_process_does_not_keep_the_lock(tmp_path: Path) -> None:
    """The broker and the API workers outlive a lock only if they inherit its descriptor."""
    lock = lock_data_dir(tmp_path)
    child = subprocess.Popen(["sleep", "30"], close_fds=False)
    try:
        lock.release()
        with lock_data_dir(tmp_path):
            pass
    finally:
        child.kill()
        child.wait()


def test_a_data_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("not a directory")
    with pytest.raises(DataDirError, match=f"^cannot use {path} as the data directory"):
        lock_data_dir(path)
    assert path.read_text() == "not a directory"


# -- whether a directory holds qlink data ----------------------------------------------------
def test_a_directory_without_a_registry_or_ca_has_no_qlink_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_DATABASE_URL, raising=False)
    assert not data_dir_has_qlink_data(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "server.lock").write_text("")
    assert not data_dir_has_qlink_data(tmp_path)
    missing = tmp_path / "missing"
    assert not data_dir_has_qlink_data(missing)
    assert not missing.exists()  # asking creates nothing


@pytest.mark.parametrize("made", ["registry", "ca"])
def test_a_directory_with_a_registry_or_ca_has_qlink_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, made: str
) -> None:
    monkeypatch.delenv(ENV_DATABASE_URL, raising=False)
    if made == "registry":
        (tmp_path / "registry.sqlite").write_bytes(b"")
    else:
        (tmp_path / "ca").mkdir()
    assert data_dir_has_qlink_data(tmp_path)


def test_a_configured_database_url_is_qlink_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_DATABASE_URL, raising=False)
    assert data_dir_has_qlink_data(tmp_path, "postgresql://db/qlink")
    assert not data_dir_has_qlink_data(tmp_path, "")
    monkeypatch.setenv(ENV_DATABASE_URL, "postgresql://db/qlink")
    assert data_dir_has_qlink_data(tmp_path)
    assert not data_dir_has_qlink_data(tmp_path, "")  # an explicit URL wins over the env


def test_no_qlink_data_says_where_to_find_or_start_it(tmp_path: Path) -> None:
    assert str(NoQlinkData(tmp_path)) == (
        f"there is no qlink data in {tmp_path}; give --data-dir of a server's data directory, "
        f"or start one with: qlink server --data-dir {tmp_path}"
    )


# -- ports -----------------------------------------------------------------------------------
def test_an_api_port_in_use_is_a_sentence(busy_port: int) -> None:
    with pytest.raises(ServerError) as e:
        _listen("127.0.0.1", busy_port)
    assert str(e.value) == (
        f"port {busy_port} on 127.0.0.1 is in use by another program; choose another with --port"
    )
    _listen("127.0.0.1", 0).close()  # a free port listens


def test_a_port_needing_privileges_is_a_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_self: socket.socket, _address: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    with pytest.raises(ServerError, match=r"^port 443 on 0\.0\.0\.0 needs privileges"):
        _listen("0.0.0.0", 443)


def test_an_address_not_of_this_machine_is_a_sentence() -> None:
    with pytest.raises(ServerError) as e:
        _listen("192.0.2.1", 0)  # TEST-NET-1 (RFC 5737): never a local address
    assert str(e.value) == (
        "192.0.2.1 is not an address of this machine; choose another with --bind"
    )


@pytest.mark.parametrize(
    ("option", "other"), [("--port", "--broker-port"), ("--broker-port", "--port")]
)
def test_a_server_on_a_port_in_use_stops_with_a_sentence(
    tmp_path: Path, busy_port: int, option: str, other: str
) -> None:
    proc = _qlink_server(tmp_path / "data", option, str(busy_port), other, "0")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"error: port {busy_port} on 127.0.0.1 is in use by another program; "
        f"choose another with {option}"
    )


# -- a second server -------------------------------------------------------------------------
def test_a_second_server_on_a_running_servers_data_directory_stops_and_touches_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = ServerProcess(data).start()
    try:
        pid = first.info["pid"]
        announced = first.server_json.read_bytes()
        stamp = first.server_json.stat().st_mtime_ns

        second = _qlink_server(data, "--port", "0", "--broker-port", "0")

        assert second.returncode == 1, second.stderr
        assert "Traceback" not in second.stdout + second.stderr
        assert second.stderr.splitlines()[-1] == f"error: {_busy(data, pid)}"
        assert first.server_json.read_bytes() == announced
        assert first.server_json.stat().st_mtime_ns == stamp
        assert _healthz(data, first.info["api_port"]) == 200
        assert _accepts(first.broker_port)  # its broker was not taken for a stale one

        os.kill(pid, signal.SIGKILL)
        assert first._proc is not None
        assert first._proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        first.stop()
    # A server killed outright leaves a stale server.json but no lock: the next one starts.
    assert json.loads(first.server_json.read_text())["pid"] == pid
    with ServerProcess(data) as again:
        assert again.info["pid"] != pid
        assert _healthz(data, again.info["api_port"]) == 200
