"""The web console at fleet scale (docs/console.md "Measured"), on the real server over HTTPS:

- the device list (`/console/devices`) at 100,000 devices: the server's own time per request
  (its `Server-Timing: app;dur=` header: the request's start to the answer's start) for a mix of
  filters and deep keyset pages, next to a bare console answer of the same server in the same
  rounds (the static file nearest the page's size, and the login page: no database);
- the live feed's fan-out (`/console/live`): a device changed in the store, the time until the
  last of 50 open consoles has its `device` event, and the server's CPU per change, next to the
  same with one console.

The fleet is imported through the application (real P-256 public keys, made cheaply by adding
the generator to a random point), then made varied (states, firmware, presence, last seen,
tenants) with direct SQL on the store's database.

Environment: QLINK_BENCH_CONSOLE_DEVICES (default 100000), QLINK_BENCH_CONSOLE_ROUNDS (requests
per variant, default 30), QLINK_BENCH_CONSOLE_CHANGES (changes per fan-out phase, default 20),
QLINK_BENCH_CONSOLE_LISTENERS (default 50).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import sqlite3
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench._fleet import quantile
from bench.onboarding import _broker_pid, _server_cpu_s
from hil.serverproc import ServerProcess

TENANT = "default"  # the console user's tenant
OTHER = "acme"
# (batch, tenant, share of the fleet)
BATCHES = (
    ("line-a", TENANT, 0.25),
    ("line-b", TENANT, 0.2),
    ("line-c", TENANT, 0.15),
    ("acme-1", OTHER, 0.25),
    ("acme-2", OTHER, 0.15),
)
USER = "bench-viewer"
PASSWORD = "bench-password-not-secret"  # noqa: S105 (a throw-away server's user)
_P = 2**256 - 2**224 + 2**192 + 2**96 - 1  # P-256's field prime
_WAIT_S = 10.0  # a change not at every console by then counts as missed
# The idle CPU's window: the CPU clock counts 10 ms ticks, so 10 s resolve 1 ms of CPU a second.
_IDLE_S = 10.0


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def public_keys(n: int) -> list[bytes]:
    """`n` distinct P-256 public keys (uncompressed points): a random point, then G added
    again and again (one affine addition each, no scalar multiplication). Their private keys
    are unknown, which the device list does not need."""
    from cryptography.hazmat.primitives.asymmetric import ec

    g = ec.derive_private_key(1, ec.SECP256R1()).public_key().public_numbers()
    start = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    x, y = start.x, start.y
    out = []
    for _ in range(n):
        out.append(b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big"))
        lam = (g.y - y) * pow(g.x - x, -1, _P) % _P
        nx = (lam * lam - x - g.x) % _P
        x, y = nx, (lam * (x - nx) - y) % _P
    return out


def build_fleet(app: Any, db_path: Path, n: int) -> dict[str, Any]:
    """Import `n` devices in BATCHES through the application, then vary them in SQL."""
    import hashlib

    app.create_tenant(OTHER)
    keys = public_keys(n)
    t = time.perf_counter()
    at = 0
    for name, tenant, share in BATCHES:
        size = round(n * share) if name != BATCHES[-1][0] else n - at
        app.create_batch(name, tenant=tenant)
        lines = [f"{hashlib.sha256(k).hexdigest()},{k.hex()}" for k in keys[at : at + size]]
        app.import_devices(name, lines, tenant=tenant)
        at += size
    import_s = time.perf_counter() - t
    now = time.time()
    # Pseudo-random per row from its rowid (insertion order, unrelated to the ID's order).
    # changed_at an hour back: the live feed's first read (the last seconds) finds none of them.
    with sqlite3.connect(db_path, timeout=30) as conn:
        conn.execute(
            """UPDATE devices SET
            state = CASE WHEN ((rowid * 2654435761) % 1000) < 750 THEN 'onboarded'
                    WHEN ((rowid * 2654435761) % 1000) < 920 THEN 'registered'
                    ELSE 'revoked' END,
            changed_at = :old""",
            {"old": now - 3600},
        )
        conn.execute(
            """UPDATE devices SET
            onboarded_at = :now - (rowid % 8640) * 100,
            not_after = :now + 86400 * (3 + rowid % 700),
            serial = printf('%040x', rowid),
            fw = CASE WHEN batch_id IN (SELECT id FROM batches WHERE tenant = :other)
                      AND ((rowid * 2654435761) % 1000) % 5 = 0 THEN '2.0.0'
                 ELSE '1.' || (rowid % 4) || '.0' END,
            last_seen = :now - (rowid % 7200),
            last_telemetry = '{"fw":"1.0.0","mem_free":81234,"seq":1,"uptime_ms":5000}',
            online = CASE WHEN state = 'onboarded' AND rowid % 3 = 0 THEN 1 ELSE 0 END,
            disabled = CASE WHEN rowid % 101 = 0 THEN 1 ELSE 0 END,
            revoked_at = CASE WHEN state = 'revoked' THEN :now - rowid % 1000 END
            WHERE state != 'registered'""",
            {"now": now, "other": OTHER},
        )
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT d.device_id FROM devices d JOIN batches b ON b.id = d.batch_id"
                " WHERE b.tenant = ? ORDER BY d.device_id",
                (TENANT,),
            )
        ]
        onboarded = [
            r[0]
            for r in conn.execute(
                "SELECT d.device_id FROM devices d JOIN batches b ON b.id = d.batch_id"
                " WHERE b.tenant = ? AND d.state = 'onboarded' AND d.disabled = 0 LIMIT 200",
                (TENANT,),
            )
        ]
    return {"import_s": import_s, "tenant_ids": ids, "onboarded": onboarded, "now": now}


# -- HTTPS --------------------------------------------------------------------------------------
class Console:
    """One keep-alive HTTPS connection to the console, with a session cookie once signed in."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        self.conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
        self.cookies: dict[str, str] = {}

    def get(self, path: str, *, session: bool = True) -> tuple[int, bytes, float]:
        """(status, body, server ms from Server-Timing)."""
        return self._do("GET", path, None, session)

    def _do(
        self, method: str, path: str, body: bytes | None, session: bool
    ) -> tuple[int, bytes, float]:
        cookies = self.cookies if session else {}
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        for value in r.headers.get_all("set-cookie") or []:
            name, _, rest = value.partition("=")
            cookie = rest.split(";", 1)[0]
            if cookie and "max-age=0" not in value.lower():
                self.cookies[name.strip()] = cookie
            else:
                self.cookies.pop(name.strip(), None)
        timing = r.getheader("server-timing") or ""
        dur = float("nan")
        for part in timing.split(";"):
            if part.strip().startswith("dur="):
                dur = float(part.strip()[4:])
        return r.status, data, dur

    def login(self, name: str, password: str) -> None:
        """The login form as a browser sends it: its CSRF cookie and field, then the POST."""
        status, _body, _ = self._do("GET", "/console/login", None, True)
        token = self.cookies.get("qlink_login_csrf")
        if status != 200 or not token:
            raise RuntimeError(f"/console/login answered {status} without its CSRF cookie")
        form = urlencode({"csrf": token, "name": name, "password": password, "next": "/console/"})
        status, body, _ = self._do("POST", "/console/login", form.encode(), True)
        if status != 303 or "qlink_session" not in self.cookies:
            raise RuntimeError(f"login refused ({status}): {body[:300]!r}")

    def close(self) -> None:
        self.conn.close()


def _page_variants(fleet: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    ids: list[str] = fleet["tenant_ids"]
    deep = [ids[int(len(ids) * f)] for f in (0.5, 0.75, 0.9, 0.99)]
    return {
        "none": lambda: "",
        "state": lambda: "state=revoked",
        "batch": lambda: "batch=line-b",
        "fw": lambda: "fw=1.2.0",
        "prefix": lambda: "q=" + "".join(rng.choice("0123456789abcdef") for _ in range(2)),
        "deep_after": lambda: "after=" + rng.choice(deep),
        "state_deep_after": lambda: "state=onboarded&after=" + rng.choice(deep),
        # A version only the other tenant runs: the page walks its rows and shows none.
        "fw_other_tenant": lambda: "fw=2.0.0",
    }


def measure_pages(
    c: Console, anonymous: Console, fleet: dict[str, Any], rounds: int
) -> dict[str, Any]:
    """Each filter `rounds` times (shuffled), the peers beside them; the server's times."""
    rng = random.Random(7)
    variants = _page_variants(fleet, rng)
    status, page, _ = c.get("/console/devices")
    if status != 200:
        raise RuntimeError(f"/console/devices answered {status}: {page[:300]!r}")
    rows = page.count(b"/console/devices/")
    statics = {}
    for name in ("console.css", "console.js", "devices.js", "import.js", "rollout.js"):
        st, body, _ = c.get(f"/console/static/{name}")
        if st == 200:
            statics[name] = len(body)
    peer_static = min(statics, key=lambda s: abs(statics[s] - len(page)))
    times: dict[str, list[float]] = {v: [] for v in variants}
    sizes: dict[str, list[int]] = {v: [] for v in variants}
    peers: dict[str, list[float]] = {"static": [], "login": []}
    bad: list[str] = []
    for _ in range(3):  # warm: templates compiled, database pages cached
        for query in variants.values():
            c.get("/console/devices?" + query())
    for _ in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for v in order:
            q = variants[v]()
            st, body, dur = c.get("/console/devices?" + q)
            if st != 200:
                bad.append(f"{q}: {st}")
                continue
            times[v].append(dur)
            sizes[v].append(len(body))
            st, _b, dur = c.get(f"/console/static/{peer_static}", session=False)
            peers["static"].append(dur)
        st, body, dur = anonymous.get("/console/login", session=False)
        peers["login"].append(dur)
    return {
        "times": times,
        "sizes": sizes,
        "peers": peers,
        "peer_static": (peer_static, statics[peer_static]),
        "login_bytes": len(body),
        "rows_first_page": rows,
        "bad": bad,
    }


# -- the live feed ------------------------------------------------------------------------------
class _Stream:
    """One console's `/console/live`: HTTP/1.1 chunked, server-sent events parsed as they come;
    the monotonic time each device ID first arrived."""

    def __init__(self, arrivals: dict[str, list[float]]) -> None:
        self.arrivals = arrivals
        self.summaries = 0
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, host: str, port: int, ctx: ssl.SSLContext, cookie: str) -> None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname="localhost"
        )
        self.writer = writer
        writer.write(
            (
                f"GET /console/live HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Cookie: qlink_session={cookie}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/console/live answered {head[:200]!r}")
        if b"chunked" not in head.lower():
            raise RuntimeError("/console/live is not chunked; the benchmark reads chunks")
        self.task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buf = b""
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size + 2)
            now = time.monotonic()
            buf += data[:-2]
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                event, body = "message", b""
                for line in frame.split(b"\n"):
                    if line.startswith(b"event: "):
                        event = line[7:].decode()
                    elif line.startswith(b"data: "):
                        body = line[6:]
                if event == "device":
                    self.arrivals.setdefault(json.loads(body)["id"], []).append(now)
                elif event == "summary":
                    self.summaries += 1

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()


async def _fan_out(
    url: str,
    ctx: ssl.SSLContext,
    cookies: list[str],
    store: Any,
    devices: list[str],
    cpu: Any,
) -> dict[str, Any]:
    """Open one stream per cookie, then change each of `devices` in turn (telemetry through the
    store), spaced at random within the poll interval: each change's latency to the last
    console, the spread between its first and last console, the server's CPU."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 443
    arrivals: dict[str, list[float]] = {}
    streams = [_Stream(arrivals) for _ in cookies]
    loop = asyncio.get_running_loop()
    rng = random.Random(len(cookies))
    try:
        await asyncio.gather(
            *(s.open(host, port, ctx, c) for s, c in zip(streams, cookies, strict=True))
        )
        await asyncio.sleep(1.5)  # every stream subscribed, the first summaries sent
        idle0, t_idle = cpu(), time.monotonic()
        await asyncio.sleep(_IDLE_S)
        idle_cpu_per_s = (cpu() - idle0) / (time.monotonic() - t_idle)
        latency, spread, missed = [], [], 0
        cpu0, t0_all = cpu(), time.monotonic()
        for i, dev in enumerate(devices):
            await asyncio.sleep(rng.uniform(0.05, 1.0))
            payload = {"seq": i + 1, "fw": "1.3.0", "mem_free": 80000 + i, "uptime_ms": 1000 * i}
            await loop.run_in_executor(
                None, store.devices.record_telemetry, dev, payload, time.time(), TENANT
            )
            committed = time.monotonic()
            deadline = committed + _WAIT_S
            while len(arrivals.get(dev, ())) < len(streams) and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            got = arrivals.get(dev, [])
            if len(got) < len(streams):
                missed += 1
                continue
            latency.append(max(got) - committed)
            spread.append(max(got) - min(got))
        wall = time.monotonic() - t0_all
        spent = cpu() - cpu0
        summaries = sum(s.summaries for s in streams)
    finally:
        await asyncio.gather(*(s.close() for s in streams), return_exceptions=True)
    done = max(len(latency), 1)
    return {
        "latency": latency,
        "spread": spread,
        "missed": missed,
        "cpu_per_change_s": spent / done,
        "net_cpu_per_change_s": (spent - idle_cpu_per_s * wall) / done,
        "idle_cpu_per_s": idle_cpu_per_s,
        "summaries": summaries,
    }


def _q(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(quantile(values, 50), 2),
        "p95_ms": round(quantile(values, 95), 2),
        "p99_ms": round(quantile(values, 99), 2),
        "n": len(values),
    }


def run() -> dict[str, Any]:
    n = int(os.environ.get("QLINK_BENCH_CONSOLE_DEVICES", "100000"))
    rounds = int(os.environ.get("QLINK_BENCH_CONSOLE_ROUNDS", "30"))
    changes = int(os.environ.get("QLINK_BENCH_CONSOLE_CHANGES", "20"))
    listeners = int(os.environ.get("QLINK_BENCH_CONSOLE_LISTENERS", "50"))
    from host.server.application import Application
    from host.server.console.auth import hash_password
    from host.server.settings import Settings
    from host.server.store import Actor

    with tempfile.TemporaryDirectory(prefix="qlink-bench-") as tmp:
        data = Path(tmp) / "server"
        proc = ServerProcess(data).start()
        app: Application | None = None
        c: Console | None = None
        try:
            app = Application.for_operator(Settings(data_dir=data))
            t = time.perf_counter()
            fleet = build_fleet(app, data / "registry.sqlite", n)
            prepare_s = time.perf_counter() - t
            app.store.users.create(USER, TENANT, "viewer", hash_password(PASSWORD))
            ctx = ssl.create_default_context(cafile=str(proc.root_pem_path))
            parts = urlsplit(proc.api_url)
            c = Console(parts.hostname or "localhost", parts.port or 443, ctx)
            c.login(USER, PASSWORD)
            anonymous = Console(parts.hostname or "localhost", parts.port or 443, ctx)
            pages = measure_pages(c, anonymous, fleet, rounds)
            anonymous.close()
            # The other consoles' sessions are begun in the store (what a login does after its
            # password check): 50 argon2 checks would cost seconds and measure nothing here.
            actor = Actor(f"user:{USER}", "bench")
            cookies = [c.cookies["qlink_session"]] + [
                app.store.users.login_succeeded(USER, actor)[0] for _ in range(listeners - 1)
            ]
            pid, bpid = int(proc.info["pid"]), _broker_pid(data)

            def cpu() -> float:
                return _server_cpu_s(pid, bpid)

            devs: list[str] = fleet["onboarded"]
            one = asyncio.run(
                _fan_out(proc.api_url, ctx, cookies[:1], app.store, devs[:changes], cpu)
            )
            many = asyncio.run(
                _fan_out(proc.api_url, ctx, cookies, app.store, devs[changes : 2 * changes], cpu)
            )
        finally:
            if c is not None:
                c.close()
            if app is not None:
                app.close()
            proc.stop()
    everything = [x for v in pages["times"].values() for x in v]
    static_p95 = quantile(pages["peers"]["static"], 95)
    figures: dict[str, dict[str, float]] = {}
    figures["devices_page"] = {
        **_q(everything),
        "goal_p95_ms": 100,
        "ratio_p95_static": round(quantile(everything, 95) / static_p95, 1),
        "bytes_p50": statistics.median(x for v in pages["sizes"].values() for x in v),
    }
    for v, times in pages["times"].items():
        figures[f"devices_page {v}"] = {
            **_q(times),
            "bytes_p50": statistics.median(pages["sizes"][v]) if pages["sizes"][v] else 0,
        }
    name, size = pages["peer_static"]
    figures["peer static"] = {**_q(pages["peers"]["static"]), "bytes_p50": size}
    figures["peer login"] = {**_q(pages["peers"]["login"]), "bytes_p50": pages["login_bytes"]}
    for label, r, k in (("live 50", many, listeners), ("live 1", one, 1)):
        figures[label] = {
            "p50_ms": _ms(quantile(r["latency"], 50)),
            "p95_ms": _ms(quantile(r["latency"], 95)),
            "spread_p50_ms": _ms(quantile(r["spread"], 50)),
            "spread_p95_ms": _ms(quantile(r["spread"], 95)),
            "cpu_ms_per_change": _ms(r["cpu_per_change_s"]),
            "net_cpu_ms_per_change": _ms(r["net_cpu_per_change_s"]),
            "idle_cpu_ms_per_s": _ms(r["idle_cpu_per_s"]),
            "consoles": k,
            "changes": len(r["latency"]),
            "missed": r["missed"],
        }
    figures["live 50"]["ratio_p95_to_1"] = round(
        figures["live 50"]["p95_ms"] / figures["live 1"]["p95_ms"], 2
    )
    figures["fleet"] = {
        "devices": n,
        "tenant_devices": len(fleet["tenant_ids"]),
        "import_s": round(fleet["import_s"], 2),
        "prepare_s": round(prepare_s, 2),
        "rows_first_page": pages["rows_first_page"],
        "bad_answers": len(pages["bad"]),
    }
    return {
        "figures": figures,
        "notes": [
            f"{n} devices in {len(BATCHES)} batches of two tenants, imported through "
            "Application.import_devices (real P-256 public keys: a random point plus G, again "
            "and again), then states (75 % onboarded, 17 % registered, 8 % revoked), firmware, "
            "presence, last seen, certificate times and 1 % disabled set by direct SQL on the "
            "store's SQLite database, changed_at an hour back",
            "devices_page: server time from the console's Server-Timing header (the request's "
            "start to its answer's start, in the server; TLS and the network not included), "
            f"{rounds} requests per filter, shuffled, signed in as a viewer of "
            f"{TENANT!r} ({len(fleet['tenant_ids'])} devices); deep_after: keyset pages at 50 "
            "to 99 % of the tenant's IDs; fw_other_tenant: a version only the other tenant "
            "runs (an empty page)",
            f"peer static: /console/static/{name} ({size} bytes, the static file nearest the "
            "page's size) after each page request; peer login: the login page without a "
            "session (a template, no database), once a round",
            f"live N: N consoles on /console/live of one session user ({listeners - 1} of the "
            "sessions begun in the store, one through the login form); each of "
            f"{changes} changes is one telemetry message written by Store.devices."
            "record_telemetry from this process, spaced 0.05 to 1 s; latency from its commit "
            "to the last console's event",
            "the feed reads the store once a second, so a change waits up to a second for the "
            "next read: that wait is the floor of the latency (uniform 0 to 1 s, about 500 ms "
            "at p50 with any number of consoles); spread: the last console's arrival minus "
            "the first's, the fan-out's own cost",
            "cpu_ms_per_change: the server's CPU (main process and workers, not the broker) "
            "over the changes / changes; net_: less the CPU the same streams cost with nothing "
            f"changing (idle_cpu_ms_per_s, measured for {_IDLE_S:.0f} s before), which "
            "includes the counts the changes make the feed read (one grouped count of every "
            "tenant's devices, at most every 2 s, shared by every console)",
            *pages["bad"][:3],
        ],
    }
