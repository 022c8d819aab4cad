"""The broker's qlink plugin (`qlink_acl.c`): built from its source when first needed, cached.

Mosquitto loads plugins only as native shared objects, so the package ships the C source and
builds it here with the machine's compiler against Debian's Mosquitto headers (mosquitto-dev,
libmosquitto-dev) and libcrypto (libssl-dev); `make setup` installs them.

The result is cached per user (`$XDG_CACHE_HOME/qlink/brokerplugin`, default `~/.cache/...`)
under the SHA-256 of what it is made of: the source, the compiler's version and the Mosquitto
headers (which carry the broker's version: Debian ties mosquitto-dev to its mosquitto). A
different source, compiler or broker makes another file; an unchanged one costs a hash at start.
The broker runs what it loads, so the cache directory must be this user's alone (0700). A build
writes a temporary file in that directory and renames it into place: a broker never loads a
half-written plugin, and two servers building at once both end with the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import tempfile
from pathlib import Path

from host.server import ServerError

SOURCE = Path(__file__).with_name("qlink_acl.c")
INCLUDE = Path("/usr/include")
# The headers the plugin includes, with the Debian package that holds each.
HEADERS = {
    "mosquitto_broker.h": "mosquitto-dev",
    "mosquitto_plugin.h": "mosquitto-dev",
    "mosquitto.h": "libmosquitto-dev",
    "openssl/x509.h": "libssl-dev",
}
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror")
LIBS = ("-lcrypto",)


class PluginBuildError(ServerError):
    """The plugin cannot be built here; the message says what to install or fix."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qlink" / "brokerplugin"


def plugin_path(
    *, cache: Path | None = None, include: Path = INCLUDE, cc: str = "cc", source: Path = SOURCE
) -> Path:
    """The built plugin for this source, compiler and broker: from the cache, or built now."""
    missing = [(h, pkg) for h, pkg in HEADERS.items() if not (include / h).is_file()]
    if missing:
        names = ", ".join(str(include / h) for h, _ in missing)
        packages = " ".join(sorted({pkg for _, pkg in missing}))
        raise PluginBuildError(
            f"the headers to build the broker's qlink plugin are missing ({names}); "
            f"run: make setup (on Debian: apt-get install {packages})"
        )
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        raise PluginBuildError(
            f"no working C compiler ({cc}) to build the broker's qlink plugin; "
            "run: make setup (on Debian: apt-get install gcc)"
        ) from None
    digest = hashlib.sha256()
    for part in (source.read_bytes(), version, *((include / h).read_bytes() for h in HEADERS)):
        digest.update(len(part).to_bytes(8, "big") + part)
    directory = _private_dir(cache or cache_dir())
    target = directory / f"qlink_acl-{digest.hexdigest()[:32]}.so"
    if not target.exists():
        _build(cc, source, include, target)
    return target


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise PluginBuildError(
            f"{path} holds code the broker runs, so it must be a directory of this user's "
            f"alone (mode 0700); fix it: chmod 700 {path}"
        )
    return path


def _build(cc: str, source: Path, include: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".qlink_acl-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, *CFLAGS, f"-I{include}", "-o", tmp, str(source), *LIBS]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise PluginBuildError(
                f"building the broker's qlink plugin failed ({cc} exited {proc.returncode}):"
                f"\n{tail}"
            )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
