"""Over-the-air updates (docs/ota.md): the server serving a release's payload to many devices at
once, and the device's cost of checking, decrypting and swapping it in. In one run:

- Server: a release of 256 KiB (the project's firmware for the unix board and a padding file)
  is published to the real server (hil.serverproc, one process). CLIENTS clients at once (asyncio
  and ssl in this process, TLS 1.3, one connection each, as devices fetch it) each GET
  `/v1/ota/<release>/payload` whole. The floor: the same clients fetching the same bytes from a
  server that does only TLS and HTTP framing, the payload in memory (bench/_floor.py, one
  process, the server's own certificate). Per round: aggregate MiB/s (payload bytes over the
  wall time from the first connect to the last byte) and the server process's CPU seconds per
  MiB (/proc/<pid>/stat utime + stime, the broker it starts not counted). MiB/s is the median
  of ROUNDS alternated rounds of each (after one warm-up round each), CPU per MiB is over all
  of them. Two ratios: of the rates measured, and of the rates each server reaches on a core
  of its own (the inverse ratio of CPU per MiB): the clients have one core of two, and when
  they are the bound (their CPU per MiB near a server's) only the second compares servers.
- Device: the apply of that release on the MicroPython Unix port, the firmware's own code as
  .mpy, counted in x86-64 instructions by valgrind's callgrind (deterministic, unlike time on a
  shared machine): the agent's step 4 (firmware/agent/otacrypto.py: the payload tag,
  HMAC-SHA256 streamed; firmware/agent/ota.py: AES-256-CBC decryption into `ota/new/<path>`
  with each file's SHA-256; one 1 KiB buffer) and firmware/boot.py from `staged` to the first
  trial boot (the running files listed with their hashes and moved to `ota/old/` by rename, the
  staged set renamed into place, every file checked). Each count less the same script's start
  (interpreter, imports, buffers) without the work, measured in the same run; per KiB of
  plaintext. The file operations both announce to the board's cut hook (board.file_op, here a
  recording stub) give the files each writes.

Projection to an RP2040 (125 MHz): cycles = x86-64 instructions x K, K_RP2040 for interpreter
work (bench/device_identity.py documents it) and K_C_RP2040 for the compiled C of the
primitives (mbedtls' SHA-256 and AES, which the rp2 port links too):
  K_C_RP2040 = 2.0, an estimate: per 64-byte SHA-256 block mbedtls runs ~4,500 x86-64
  instructions (the count below); Thumb-1 with 8 low registers spills the working variables and
  needs a separate load for each message word, about as many instructions at ~1.3 cycles each.
  AES-256 decryption is table lookups: x86-64 folds each load into the XOR, Thumb-1 needs
  shift, mask, load (2 cycles) and XOR, against fewer x86-64 instructions per lookup; the
  tables (4 KiB) stay in the 16 KiB XIP cache. Uncertain by 1.5x either way until the rig
  times the same code on a board.
Flash: the RP2040's program flash is external QSPI NOR; a Raspberry Pi Pico carries a Winbond
W25Q16JV, whose datasheet (section 9.6, AC electrical characteristics) gives 45 ms per 4 KiB
sector erase and 0.4 ms per 256-byte page program, typical (400 ms and 3 ms maximum); the CPU
waits meanwhile (code runs from that flash). littlefs on the rp2 port has 4 KiB blocks and
gives each file whole blocks, erased before they are written: a file written costs its blocks'
erases and its pages' programs, a rename, removal or folder change one page (a metadata
commit: a rename rewrites no file data, littlefs commits the entry in the destination's
directory). Small files that littlefs keeps inline in their directory (a few hundred bytes) are
counted as a block, a small overestimate; reads from the XIP flash and metadata compaction are
left out. The download's own writes (ota/payload.bin) are the network's part and not counted.

Environment: QLINK_BENCH_OTA_CLIENTS (default 100), QLINK_BENCH_OTA_ROUNDS (9).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _callgrind
from bench._floor import FloorServer
from bench.device_identity import F_RP2040, K_RP2040
from hil import unixport
from hil.serverproc import ServerProcess

BOARD = "unix"
VERSION = "0.2.0"
RELEASE = f"{BOARD}-{VERSION}"
RELEASE_BYTES = 256 * 1024  # plaintext of the release: firmware + padding
PAD_PATH = "pad.bin"

K_C_RP2040 = 2.0  # RP2040 cycles per x86-64 instruction of compiled C crypto (docstring)
FLASH_ERASE_S = 0.045  # W25Q16JV tSE, 4 KiB sector erase, typical (datasheet 9.6)
FLASH_PROGRAM_S = 0.0004  # W25Q16JV tPP, 256-byte page program, typical
FLASH_SECTOR = 4096
FLASH_PAGE = 256
GOAL_RATIO_PCT = 50.0  # of the floor's throughput ("half")
GOAL_APPLY_S = 10.0  # RP2040, 256 KiB, network excluded ("ten seconds")

_MIB = 1024 * 1024
_CONTENT_INFO = b"qlink-ota-content-v1"


# ---------------------------------------------------------------- the release


def _release_tree(out: Path) -> dict[str, Path]:
    """The project's firmware for the board as `qlink ota build -` makes it (host/server/
    releases.py), and a padding file that brings the plaintext to RELEASE_BYTES."""
    from host.server.releases import build_tree

    files = build_tree(BOARD, VERSION, out)
    used = sum(p.stat().st_size for p in files.values())
    pad = out / PAD_PATH
    pad.write_bytes(os.urandom(RELEASE_BYTES - used))
    files[PAD_PATH] = pad
    return dict(sorted(files.items()))


def _hkdf_content(ck: bytes) -> tuple[bytes, bytes]:
    """k_enc, k_mac of a content key (docs/ota.md "Release")."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    keys = HKDF(hashes.SHA256(), 64, salt=None, info=_CONTENT_INFO).derive(ck)
    return keys[:32], keys[32:]


def _publish(proc: ServerProcess, tree: Path, work: Path) -> str:
    """Build the tree's bundle and publish it on the running server: `qlink ota build` and
    `qlink ota publish` when the CLI has them, else the same use cases in this process."""
    bundle = work / f"qlink-{RELEASE}.qota"
    if proc.cli("ota", "list", "--json", check=False).returncode == 0:
        for args in (
            ("build", str(tree), "--version", VERSION, "--board", BOARD, "--out", str(bundle)),
            ("publish", str(bundle)),
        ):
            done = proc.cli("ota", *args, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"qlink ota {args[0]} failed: {done.stderr.strip()}")
        return "qlink ota build + qlink ota publish"
    from host.server.application import Application
    from host.server.releases import ReleaseSigner, build_release
    from host.server.settings import Settings
    from host.server.store import LOCAL

    app = Application.for_operator(Settings(data_dir=proc.data_dir))
    try:
        signer = ReleaseSigner.load_or_create(app.ca)
        build_release(tree, VERSION, BOARD, "0.0.0", signer, bundle)
        app.releases.publish(bundle, LOCAL)
    finally:
        app.close()
    return "releases.build_release + ReleaseService.publish (no qlink ota command yet)"


# ---------------------------------------------------------------- server: driver and floor


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _fetch_one(
    ctx: ssl.SSLContext, port: int, request: bytes, want: bytes | None
) -> tuple[int, int]:
    """One device's download: connect, GET, read the whole body; (status, body bytes). The
    body is compared with `want` when given (one client per round), else only counted."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        length = int(m[1]) if m else 0
        got = 0
        kept = bytearray() if want is not None else None
        while got < length:
            chunk = await reader.read(256 * 1024)
            if not chunk:
                break
            got += len(chunk)
            if kept is not None:
                kept += chunk
        if kept is not None and bytes(kept) != want:
            raise RuntimeError("a client received other bytes than the release's payload")
        return status, got
    finally:
        writer.transport.abort()


async def _fetch_all(
    ctx: ssl.SSLContext, port: int, path: str, clients: int, want: bytes
) -> tuple[float, int, list[str]]:
    request = f"GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n".encode()
    t0 = time.perf_counter()
    done = await asyncio.gather(
        *(_fetch_one(ctx, port, request, want if i == 0 else None) for i in range(clients)),
        return_exceptions=True,
    )
    wall = time.perf_counter() - t0
    total, errors = 0, []
    for r in done:
        if isinstance(r, BaseException):
            errors.append(repr(r)[:200])
        elif r[0] != 200 or r[1] != len(want):
            errors.append(f"status {r[0]}, {r[1]} of {len(want)} bytes")
        else:
            total += r[1]
    return wall, total, errors


def _client_context(root_pem: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(root_pem))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # as devices connect
    return ctx


def _round(
    ctx: ssl.SSLContext, port: int, path: str, pids: list[int], clients: int, want: bytes
) -> dict[str, float]:
    cpu0, mine0 = sum(map(_cpu_s, pids)), time.process_time()
    wall, total, errors = asyncio.run(_fetch_all(ctx, port, path, clients, want))
    cpu, mine = sum(map(_cpu_s, pids)) - cpu0, time.process_time() - mine0
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} downloads failed: {errors[:3]}")
    return {"mib_s": total / _MIB / wall, "cpu_s": cpu, "clients_cpu_s": mine, "mib": total / _MIB}


def _floor_server(proc: ServerProcess, path: str, payload: bytes) -> FloorServer:
    """One process answering GET `path` with the payload, over TLS with the server's
    certificate, as uvicorn builds its context: the transport's work and nothing else."""
    from host.server.ca import CertificateAuthority

    ca = CertificateAuthority.load(proc.data_dir / "ca")

    def context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.cert_path("server"), ca.key_path("server"))
        return ctx

    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload)
    answers = {path.encode(): head + payload}
    return FloorServer(context, answers, lambda: lambda _path, _body: None, workers=1).start()


def _median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def _per_mib(rounds: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rounds) / sum(r["mib"] for r in rounds)


def _bytes_served(proc: ServerProcess) -> int:
    """The payload bytes the server counted for the release (`qlink ota list --json`)."""
    from host.server.application import Application
    from host.server.settings import Settings

    app = Application.for_operator(Settings(data_dir=proc.data_dir))
    try:
        return app.releases.release(RELEASE).bytes_served
    finally:
        app.close()


def _server_part(
    proc: ServerProcess, clients: int, rounds: int
) -> tuple[dict[str, Any], list[str]]:
    path = f"/v1/ota/{RELEASE}/payload"
    payload = (proc.data_dir / "releases" / RELEASE / "payload.bin").read_bytes()
    ctx = _client_context(proc.root_pem_path)
    port = int(proc.api_url.rsplit(":", 1)[1])
    pid = int(proc.info["pid"])
    floor = _floor_server(proc, path, payload)
    targets = {"server": (port, [pid]), "floor": (floor.port, floor.pids())}
    done: dict[str, list[dict[str, float]]] = {"server": [], "floor": []}
    try:
        for i in range(rounds + 1):  # the first: warm-up, both have seen every client once
            for name, (at, pids) in targets.items():
                r = _round(ctx, at, path, pids, clients, payload)
                if i:
                    done[name].append(r)
    finally:
        floor.stop()
    served = _bytes_served(proc)
    qlink, flo = done["server"], done["floor"]
    q_mib, f_mib = _median(qlink, "mib_s"), _median(flo, "mib_s")
    # CPU over all rounds: /proc counts in clock ticks (10 ms), a round takes a few tenths of
    # a second.
    q_cpu, f_cpu = _per_mib(qlink, "cpu_s"), _per_mib(flo, "cpu_s")
    figures = {
        "payload": {"bytes": len(payload), "clients": clients, "rounds": rounds},
        "server": {
            "mib_s": round(q_mib, 2),
            "cpu_s_per_mib": round(q_cpu, 5),
            "clients_cpu_s_per_mib": round(_per_mib(qlink, "clients_cpu_s"), 5),
        },
        "floor": {
            "mib_s": round(f_mib, 2),
            "cpu_s_per_mib": round(f_cpu, 5),
            "clients_cpu_s_per_mib": round(_per_mib(flo, "clients_cpu_s"), 5),
        },
        # pct: the throughputs measured; cpu_pct: the rates each server reaches on a core of
        # its own (1 / CPU per MiB), the comparison the clients' own core cannot bound.
        "ratio": {"pct": round(100 * q_mib / f_mib, 1), "cpu_pct": round(100 * f_cpu / q_cpu, 1)},
    }
    spread = ", ".join(
        f"{name} {min(r['mib_s'] for r in rs):.0f}-{max(r['mib_s'] for r in rs):.0f} MiB/s"
        for name, rs in (("server", qlink), ("floor", flo))
    )
    notes = [
        f"server: {clients} clients at once (asyncio + ssl, TLS 1.3, one connection each) GET "
        f"{path} ({len(payload)} bytes) from the qlink server (one process); floor: the same "
        "clients, the same bytes from memory, TLS + HTTP framing only (bench/_floor.py, one "
        f"process); medians of {rounds} alternated rounds after one warm-up round each "
        f"(rounds: {spread}); CPU per MiB over all rounds",
        f"ratio: goal {GOAL_RATIO_PCT:.0f} % of the floor; the clients share the machine (one "
        "process, TLS handshakes most of their CPU): when their CPU per MiB nears a server's, "
        "they bound that server's MiB/s, and cpu_pct is the comparison that holds",
    ]
    sent = (rounds + 1) * clients * len(payload)
    notes.append(f"bytes_served: the server counted {served} payload bytes; the clients got {sent}")
    return figures, notes


# ---------------------------------------------------------------- device


# The bench's board HAL on the device: it records the file operations the OTA code announces
# (board.file_op, docs/ota.md "The emulated board's cut hook"), which give the flash writes.
_BOARD = """ops = []


def file_op(tag):
    ops.append(tag)
"""

# The agent's apply: the firmware's own step 4 on ota/payload.bin (firmware/agent/otacrypto.py:
# the payload tag, streamed; firmware/agent/ota.py: decryption into ota/new/<path> with each
# file hashed; one 1 KiB buffer). ota.json in the working directory gives the keys (k_enc, k_mac
# as hex, as the unwrap gives them), the release ID and the manifest's files; "work": 0 runs the
# same start without the work (the baseline subtracted).
_APPLY = """
import json
import board
from agent import ota, otacrypto
p = json.load(open("ota.json"))
k_enc = bytes.fromhex(p["k_enc"])
k_mac = bytes.fromhex(p["k_mac"])
files = p["files"]
want, total = ota.payload_size({"files": files})
buf = bytearray(1024)
if p["work"]:
    if not otacrypto.tag_ok("ota/payload.bin", k_mac, p["release"], want - 32, buf):
        raise SystemExit("altered")
    bad = ota._stage(k_enc, files, total, want - 48, buf)
    if bad is not None:
        raise SystemExit("bad_file " + bad)
print("OPS " + json.dumps(board.ops))
print("OK")
"""

# boot.py's part, the firmware's own (firmware/boot.py runs at its import): ota/state.json says
# staged, so it lists the running files and moves them to ota/old, puts the staged set in place,
# checks every file and counts the first trial boot.
_BOOT = """
import json
import board
p = json.load(open("ota.json"))
if p["work"]:
    import boot
print("OPS " + json.dumps(board.ops))
print("OK")
"""


def _micropython(
    code: str, cwd: Path, out: Path | None
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a device script (under callgrind when `out` is given); (the process, the file
    operations it announced)."""
    env = dict(os.environ, MICROPYPATH=str(unixport.compiled_firmware()), PYTHONHASHSEED="0")
    cmd = [unixport.micropython(), "-X", f"heapsize={unixport.HEAP_RP2040}"]
    if out is not None:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd]
    proc = subprocess.run(
        cmd, input=code, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0 or "\nOK" not in proc.stdout:
        raise RuntimeError(f"the device script failed:\n{proc.stdout}{proc.stderr[-2000:]}")
    ops = json.loads(proc.stdout.split("OPS ", 1)[1].split("\n", 1)[0])
    return proc, ops


_CRYPTO = re.compile(r"/mbedtls/library/(?:sha256|aes)\.c:")


def _counts(out: Path) -> tuple[int, int]:
    """(all instructions, instructions in mbedtls' SHA-256 and AES code)."""
    total, rows = _callgrind.counts(out)
    return total, sum(n for n, line in rows if _CRYPTO.search(line))


def _flash(ops: list[str], root: Path) -> tuple[float, int, int]:
    """RP2040 flash time of the announced operations (the files as they are now): a file
    written takes whole 4 KiB littlefs blocks, each erased, and its pages programmed; a rename,
    removal or folder change is one metadata commit (a page). -> (seconds, bytes, files)."""
    seconds, written, files = 0.0, 0, 0
    for tag in ops:
        kind, _, path = tag.partition(" ")
        if kind in ("write", "append"):
            size = (root / path).stat().st_size
            written += size
            files += 1
            seconds += max(1, -(-size // FLASH_SECTOR)) * FLASH_ERASE_S
            seconds += max(1, -(-size // FLASH_PAGE)) * FLASH_PROGRAM_S
        else:
            seconds += FLASH_PROGRAM_S
    return seconds, written, files


def _running_version(dev: Path, files: list[dict[str, Any]]) -> None:
    """The version the update replaces, in place: the release's paths and sizes with other
    bytes (the bench's board.py, padded, as its board.py), listed in ota/current.json in the
    compact form the agent writes there (the manifest's bytes), so boot.py's old set is every
    file of the release, not only those under the factory image's release roots."""
    entries = []
    for e in files:
        dst = dev / e["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        data = b"\xa5" * e["size"]
        if e["path"] == "board.py":
            data = (_BOARD + "#" * e["size"])[: max(e["size"], len(_BOARD))].encode()
        dst.write_bytes(data)
        entries.append({"path": e["path"], "size": len(data), "sha256": _sha(data)})
    current = {"v": 1, "version": "0.1.0", "min_version": "0.0.0", "board": BOARD}
    doc = {**current, "files": entries}
    (dev / "ota" / "current.json").write_text(json.dumps(doc, separators=(",", ":")))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _device_part(release_dir: Path, work: Path) -> tuple[dict[str, Any], list[str]]:
    manifest_raw = (release_dir / "manifest.json").read_bytes()
    manifest = json.loads(manifest_raw)
    files = manifest["files"]
    plain = sum(e["size"] for e in files)
    k_enc, k_mac = _hkdf_content((release_dir / "content.key").read_bytes())
    dev = work / "device"
    (dev / "ota").mkdir(parents=True)
    shutil.copy(release_dir / "payload.bin", dev / "ota" / "payload.bin")
    (dev / "board.py").write_text(_BOARD)
    params = {"k_enc": k_enc.hex(), "k_mac": k_mac.hex(), "release": RELEASE, "files": files}
    have_valgrind = shutil.which("valgrind") is not None
    counts: dict[str, tuple[int, int]] = {}
    flash: dict[str, tuple[float, int, int]] = {}
    for name, code in (("apply", _APPLY), ("boot", _BOOT)):
        if name == "boot":
            # What the agent leaves for boot.py (docs/ota.md step 4), and the running version.
            # Not before the apply: its firmware import would find the running files first
            # (the working directory leads the Unix port's path).
            head = {"release": RELEASE, "manifest": manifest_raw.decode()}
            (dev / "ota" / "head.json").write_text(json.dumps(head))
            state = {"state": "staged", "release": RELEASE, "version": VERSION}
            (dev / "ota" / "state.json").write_text(json.dumps(state))
            (dev / "ota" / "payload.bin").unlink()
            _running_version(dev, files)
        for work_flag in (0, 1):
            (dev / "ota.json").write_text(json.dumps({**params, "work": work_flag}))
            out = work / f"cg.{name}.{work_flag}" if have_valgrind else None
            proc, ops = _micropython(code, dev, out)
            if out is not None:
                counts[f"{name}.{work_flag}"] = _counts(out)
            if work_flag:
                flash[name] = _flash(ops, dev)
    if "boot: trial 1 of 2" not in proc.stdout:
        raise RuntimeError(f"boot.py did not swap the release in:\n{proc.stdout}")
    for e in files:
        if _sha((dev / e["path"]).read_bytes()) != e["sha256"]:
            raise RuntimeError(f"boot.py left {e['path']} different from the manifest")
    figures: dict[str, Any] = {}
    kib = plain / 1024
    notes = [
        f"device: {len(files)} files, {plain} bytes of plaintext, payload "
        f"{(release_dir / 'payload.bin').stat().st_size} bytes; MicroPython unix port, "
        f"-X heapsize={unixport.HEAP_RP2040}, firmware as .mpy on the path"
    ]
    if not have_valgrind:
        notes.append("valgrind not installed: no instruction counts, no RP2040 projection")
        return figures, notes
    cpu_total = 0.0
    for name in ("apply", "boot"):
        (all1, c1), (all0, c0) = counts[f"{name}.1"], counts[f"{name}.0"]
        crypto = c1 - c0
        interp = all1 - all0 - crypto
        cpu_s = (interp * K_RP2040 + crypto * K_C_RP2040) / F_RP2040
        cpu_total += cpu_s
        flash_s, written, nfiles = flash[name]
        figures[f"device {name}"] = {
            "minstr_per_kib": round((all1 - all0) / kib / 1e6, 4),
            "crypto_minstr_per_kib": round(crypto / kib / 1e6, 4),
            "cpu_s": round(cpu_s, 3),
            "flash_s": round(flash_s, 3),
            "written_kib": round(written / 1024, 1),
        }
        notes.append(f"device {name}: {nfiles} files written, {len(files)} in the release")
    figures["device start"] = {"minstr": round(counts["apply.0"][0] / 1e6, 2)}
    flash_total = flash["apply"][0] + flash["boot"][0]
    figures["rp2040 apply"] = {
        "cpu_s": round(cpu_total, 2),
        "flash_s": round(flash_total, 2),
        "total_s": round(cpu_total + flash_total, 2),
    }
    notes.append(
        "device apply: the agent's step 4 (agent.otacrypto.tag_ok: the payload tag; "
        "agent.ota._stage: AES-256-CBC decryption into ota/new with each file's SHA-256); "
        "device boot: firmware/boot.py from "
        "staged to the first trial boot (running files listed and moved to ota/old by rename, the "
        "staged set put in place, every file checked); each less the same script without the "
        "work (device start: that script's whole count, the interpreter's start included)"
    )
    notes.append(
        f"cpu_s: RP2040 cycles = interpreter x {K_RP2040} + mbedtls SHA-256/AES x {K_C_RP2040} "
        f"per x86-64 instruction, {F_RP2040 / 1e6:.0f} MHz; flash_s: the files the step wrote "
        f"(board.file_op), whole 4 KiB blocks erased ({FLASH_ERASE_S * 1000:.0f} ms) and 256 B "
        f"pages programmed ({FLASH_PROGRAM_S * 1000:.1f} ms), W25Q16JV typical; see bench/ota.py"
    )
    return figures, notes


# ---------------------------------------------------------------- run


def run() -> dict[str, Any]:
    clients = int(os.environ.get("QLINK_BENCH_OTA_CLIENTS", "100"))
    rounds = int(os.environ.get("QLINK_BENCH_OTA_ROUNDS", "9"))
    with tempfile.TemporaryDirectory(prefix="qlink-bench-ota-") as tmp:
        work = Path(tmp)
        proc = ServerProcess(work / "server").start()
        try:
            tree = work / "tree"
            _release_tree(tree)
            how = _publish(proc, tree, work)
            server_figures, server_notes = _server_part(proc, clients, rounds)
        finally:
            proc.stop()
        device_figures, device_notes = _device_part(proc.data_dir / "releases" / RELEASE, work)
    return {
        "figures": {**server_figures, **device_figures},
        "notes": [f"release {RELEASE}: {how}", *server_notes, *device_notes],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
