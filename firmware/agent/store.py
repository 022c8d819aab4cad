# Persistent onboarding result under data/ (docs/protocol.md "Device filesystem"):
#   data/cert.der       the device certificate (public)
#   data/onboard.json   device id, certificate digest, broker {host, port, ca_b64}, topics, policy
# Each file is written to a temporary name and renamed over the old one, so a power cut leaves
# either the old or the new file, never half of one. onboard.json names the SHA-256 of cert.der,
# so a cut between the two renames shows up as a mismatch and the pair is treated as absent.
# Nothing secret is stored here: the private key is re-derived from the PUF on every boot.
import os
import json
import hashlib
import binascii
from agent.log import log
from qdid import files

_CERT = "cert.der"
_META = "onboard.json"
_FORMAT = 1  # onboard.json layout version


def der_certificate_ok(der):
    # A certificate is one DER SEQUENCE (X.690 8.9) whose length covers the whole buffer; this
    # catches truncated or PEM files before mbedTLS sees them.
    n = len(der)
    if n < 4 or der[0] != 0x30:
        return False
    b = der[1]
    if b < 0x80:
        return 2 + b == n
    k = b & 0x7F
    if k == 0 or k > 3 or n < 2 + k:
        return False
    ln = 0
    for i in range(k):
        ln = (ln << 8) | der[2 + i]
    return 2 + k + ln == n


class Stored:
    def __init__(self, cert_der, meta):
        self.cert_der = cert_der
        self.device_id = meta["device_id"]
        b = meta["broker"]
        self.broker_host = b["host"]
        self.broker_port = b["port"]
        self.broker_ca = binascii.a2b_base64(b["ca_b64"])
        self.topics = meta["topics"]
        self.policy = meta.get("policy") or {}


def _hex(b):
    return binascii.hexlify(b).decode()


def check_answer(device_id, public_key, cert_der, broker, topics, policy):
    # Returns None when the onboarding result is usable, else a reason (for the log).
    if not der_certificate_ok(cert_der):
        return "certificate is not DER"
    # The certificate must carry this device's key: the 65-byte uncompressed point appears
    # verbatim in its SubjectPublicKeyInfo (RFC 5480 2.2), so a byte search is exact enough.
    if public_key is not None and cert_der.find(public_key) < 0:
        return "certificate is for another key"
    if not isinstance(broker, dict):
        return "broker missing"
    host = broker.get("host")
    port = broker.get("port")
    if not isinstance(host, str) or not host:
        return "broker host missing"
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return "broker port invalid"
    ca = broker.get("ca_b64")
    try:
        ca_der = binascii.a2b_base64(ca) if isinstance(ca, str) else b""
    except ValueError:
        ca_der = b""
    if not der_certificate_ok(ca_der):
        return "broker CA invalid"
    if not isinstance(topics, dict) or not isinstance(topics.get("telemetry"), str):
        return "telemetry topic missing"
    if not topics["telemetry"].endswith("/" + device_id + "/telemetry"):
        return "telemetry topic is not this device's"
    if policy is not None and not isinstance(policy, dict):
        return "policy invalid"
    return None


def save(data_dir, device_id, cert_der, broker, topics, policy):
    meta = {
        "v": _FORMAT,
        "device_id": device_id,
        "cert_sha256": _hex(hashlib.sha256(cert_der).digest()),
        "broker": {"host": broker["host"], "port": broker["port"], "ca_b64": broker["ca_b64"]},
        "topics": topics,
        "policy": policy or {},
    }
    files.write(data_dir + "/" + _CERT, cert_der)
    files.write(data_dir + "/" + _META, json.dumps(meta).encode())
    return Stored(cert_der, meta)


def load(data_dir, device_id, public_key):
    # Returns Stored, or None when nothing usable is stored (absent, corrupt, another key).
    raw = files.read(data_dir + "/" + _META)
    cert = files.read(data_dir + "/" + _CERT)
    if raw is None and cert is None:
        return None
    reason = None
    meta = None
    if raw is None or cert is None:
        reason = "incomplete"
    else:
        try:
            meta = json.loads(raw)
        except ValueError:
            reason = "onboard.json is not JSON"
    if reason is None:
        if not isinstance(meta, dict) or meta.get("v") != _FORMAT:
            reason = "unknown format"
        elif meta.get("cert_sha256") != _hex(hashlib.sha256(cert).digest()):
            reason = "cert.der does not match onboard.json"
        elif meta.get("device_id") != device_id:
            log("I", "store", "stored certificate is for another identity; onboarding again")
            return None
        else:
            reason = check_answer(
                device_id,
                public_key,
                cert,
                meta.get("broker"),
                meta.get("topics"),
                meta.get("policy"),
            )
    if reason is not None:
        log("W", "store", "stored onboarding data unusable (%s); onboarding again", reason)
        return None
    return Stored(cert, meta)


def clear(data_dir):
    for name in (_META, _CERT):
        try:
            os.remove(data_dir + "/" + name)
        except OSError:
            pass
