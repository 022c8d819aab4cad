# One place that opens a TLS connection, shared by the HTTPS and MQTT clients.
# The peer must present a chain to the pinned root (CERT_REQUIRED) for the expected host name
# (server_hostname: mbedTLS checks SAN/CN, RFC 6125); there is no code path without TLS.
# Every failure (DNS, connect, handshake, verification) becomes LinkError here, after mqtt_as.
import gc
import socket
import tls
from agent.errors import LinkError


def connect(host, port, root_der, timeout_ms, cert_der=None, key_der=None):
    # Returns (tls_socket, raw_socket): the raw one is kept to change the time-out later
    # (MicroPython's TLS socket has no settimeout of its own).
    raw = None
    # The context and the handshake need a few KiB in one piece (and, on rp2/esp32, mbedTLS's
    # record buffers come from the same heap): collect first so they find it. Negligible next
    # to a handshake.
    gc.collect()
    try:
        raw = _tcp(host, port, timeout_ms)
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED
        ctx.load_verify_locations(root_der)
        if cert_der is not None:
            ctx.load_cert_chain(cert_der, key_der)
        s = ctx.wrap_socket(raw, server_hostname=host)
        return s, raw
    except (OSError, ValueError) as e:
        # mbedTLS reports verification failures as ValueError with a sentence, socket errors as
        # OSError with an errno; both are public facts about the link, safe to log.
        if raw is not None:
            try:
                raw.close()
            except OSError:
                pass
        raise LinkError("tls %s:%d: %s" % (host, port, reason(e)))


def _tcp(host, port, timeout_ms):
    # Tries each address of the name in turn ("localhost" may be ::1 first, the server on
    # 127.0.0.1 only); the last error is the one reported.
    err = None
    for ai in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        s = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
        try:
            s.settimeout(timeout_ms / 1000)
            s.connect(ai[-1])
            return s
        except OSError as e:
            err = e
            s.close()
    raise err if err is not None else OSError(-2)  # no address (EAI_NONAME)


def reason(e):
    # A short public description of a socket or TLS exception, for LinkError messages.
    a = e.args
    if a and isinstance(a[0], int):
        return "errno %d" % a[0]
    if a and isinstance(a[0], str):
        return a[0].strip() or type(e).__name__
    return type(e).__name__


def close(s):
    if s is not None:
        try:
            s.close()
        except OSError:
            pass
