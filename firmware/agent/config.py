# config.json, written at flash time (docs/protocol.md "Device filesystem"):
#   {"server": "https://localhost:8443", "root_ca": "ca.der", "telemetry_interval_ms": 2000}
# Optional keys: "log_level" ("D" "I" "W" "E"), "max_messages" (stop after N telemetry messages,
# 0 = never; for tests and bench), "max_failures" (give up after N consecutive failures, 0 = never),
# "time_server" ("host:port" of an SNTP server; the clock is set from it before each TLS session).
# A missing or corrupt file is a flashing mistake: ConfigError says which file and what to fix.
# Needed once per boot: main.py loads it lazily and drops it after reading the file.
import json
from micropython import const
from agent.errors import ConfigError
from agent.store import der_certificate_ok

_HTTPS_PORT = const(443)
_MIN_INTERVAL_MS = const(100)  # ms; below this telemetry would starve the link
_MAX_CA = const(4096)  # bytes; a P-256 root is ~500, an RSA-4096 root ~1400


class Config:
    # Plain attributes only, set by load(): without methods the instance keeps no reference to
    # this module, which main.py unloads after reading the file. (The declarations below are for
    # the type checker: they compile to nothing.)
    server: str | None  # a str once load() returns: parse_https_url refuses anything else
    host: str
    port: int
    prefix: str
    root_der: bytes
    telemetry_interval_ms: int
    max_messages: int
    max_failures: int
    log_level: str
    time_server: tuple[str, int] | None


def parse_https_url(url):
    # Only https: the device never talks to the server in plaintext, so an http:// URL is a
    # configuration error rather than something to fall back to.
    if not isinstance(url, str) or not url.startswith("https://"):
        raise ConfigError("server must be an https:// URL")
    rest = url[8:]
    slash = rest.find("/")
    hostport = rest if slash < 0 else rest[:slash]
    prefix = "" if slash < 0 else rest[slash:].rstrip("/")
    port = _HTTPS_PORT
    colon = hostport.rfind(":")
    if colon >= 0:
        try:
            port = int(hostport[colon + 1 :])
        except ValueError:
            raise ConfigError("server port is not a number")
        hostport = hostport[:colon]
    if not hostport or not 0 < port < 65536 or "@" in hostport:
        raise ConfigError("server URL must be https://<host>[:<port>]")
    return hostport, port, prefix


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        raise ConfigError("%s %s is missing; flash it with the firmware" % (what, path))


def load(path="config.json", root_dir=""):
    raw = _read(path, "config")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ConfigError("config %s is not valid JSON; re-flash it" % path)
    if not isinstance(doc, dict):
        raise ConfigError("config %s must be a JSON object" % path)
    cfg = Config()
    cfg.server = doc.get("server")
    cfg.host, cfg.port, cfg.prefix = parse_https_url(cfg.server)
    ca = doc.get("root_ca", "ca.der")
    if not isinstance(ca, str) or not ca:
        raise ConfigError("root_ca must name the pinned root CA file")
    if root_dir and not ca.startswith("/"):
        ca = root_dir + "/" + ca
    der = _read(ca, "root CA")
    if len(der) > _MAX_CA or not der_certificate_ok(der):
        raise ConfigError("root CA %s is not one DER certificate; flash the platform CA" % ca)
    cfg.root_der = der
    cfg.telemetry_interval_ms = _int(doc, "telemetry_interval_ms", 2000, _MIN_INTERVAL_MS)
    cfg.max_messages = _int(doc, "max_messages", 0, 0)
    cfg.max_failures = _int(doc, "max_failures", 0, 0)
    lvl = doc.get("log_level", "I")
    if lvl not in ("D", "I", "W", "E"):
        raise ConfigError("log_level must be one of D I W E")
    cfg.log_level = lvl
    cfg.time_server = None
    ts = doc.get("time_server")
    if ts is not None:
        if not isinstance(ts, str) or ts.rfind(":") <= 0:
            raise ConfigError("time_server must be host:port")
        try:
            tport = int(ts[ts.rfind(":") + 1 :])
        except ValueError:
            raise ConfigError("time_server port is not a number")
        if not 0 < tport < 65536:
            raise ConfigError("time_server port out of range")
        cfg.time_server = (ts[: ts.rfind(":")], tport)
    return cfg


def _int(doc, key, default, minimum):
    v = doc.get(key, default)
    # bool is an int subclass in CPython; reject it explicitly so `true` is not read as 1.
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ConfigError("%s must be an integer >= %d" % (key, minimum))
    return v
