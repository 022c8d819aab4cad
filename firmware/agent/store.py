# Persistent state under data/ (docs/protocol.md "Device filesystem"):
#   data/cert.der       the device certificate (public)
#   data/onboard.json   device id, certificate digest, broker {host, port, ca_b64}, topics, policy,
#                       and the command signer's public key (checked against the pinned root
#                       before it was stored; absent in files older than the command channel)
#   data/cmd_seq.bin    the seq of the last command accepted (4 bytes, big-endian)
# Each file is written to a temporary name and renamed over the old one, so a power cut leaves
# either the old or the new file, never half of one. onboard.json names the SHA-256 of cert.der,
# so a cut between the two renames shows up as a mismatch and the pair is treated as absent; the
# signer key lives inside onboard.json, so it is replaced with it, in the same rename. A renewal
# writes the same two files: a cut leaves the old pair, the new pair, or a mismatch (onboarding
# again). cmd_seq.bin is one file on its own: the old seq or the new one.
# Nothing secret is stored here: the private key is re-derived from the PUF on every boot.
import os
import sys
import json
import hashlib
import binascii
from agent.log import log
from qdid import files
from qdid.der import DerError


def cert_validity(cert_der):
    # qdid.x509's reader for this one read, dropped after (STYLE.md Firmware 5): the agent reads
    # a validity once per session, and its heap has no room to keep the reader resident.
    from qdid import x509

    try:
        return x509.cert_validity(cert_der)
    finally:
        del x509
        sys.modules.pop("qdid.x509", None)
        try:
            delattr(sys.modules["qdid"], "x509")
        except (AttributeError, KeyError):
            pass


_CERT = "cert.der"
_META = "onboard.json"
_SEQ = "cmd_seq.bin"
_FORMAT = 1  # onboard.json layout version (command_signer is optional: older files lack it)


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
        self.not_before, self.not_after = cert_validity(cert_der)
        self.device_id = meta["device_id"]
        b = meta["broker"]
        self.broker_host = b["host"]
        self.broker_port = b["port"]
        self.broker_ca = binascii.a2b_base64(b["ca_b64"])
        self.topics = meta["topics"]
        self.policy = meta.get("policy") or {}
        signer = meta.get("command_signer")
        # The command signer's 65-byte public key; None: commands are refused (no_signer).
        self.signer = binascii.unhexlify(signer) if signer else None


def _hex(b):
    return binascii.hexlify(b).decode()


def _signer_ok(s):
    # 130 lowercase hex characters of an uncompressed point (its curve check is verify_digest's).
    if s is None:
        return True
    if not isinstance(s, str) or len(s) != 130 or s.lower() != s or not s.startswith("04"):
        return False
    try:
        binascii.unhexlify(s)
    except ValueError:
        return False
    return True


def check_answer(device_id, public_key, cert_der, broker, topics, policy):
    # Returns None when the onboarding result is usable, else a reason (for the log).
    if not der_certificate_ok(cert_der):
        return "certificate is not DER"
    # The certificate must carry this device's key: the 65-byte uncompressed point appears
    # verbatim in its SubjectPublicKeyInfo (RFC 5480 2.2), so a byte search is exact enough.
    if public_key is not None and cert_der.find(public_key) < 0:
        return "certificate is for another key"
    try:
        cert_validity(cert_der)
    except DerError:
        return "certificate validity unreadable"  # renewal is timed by it
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


def save(data_dir, device_id, cert_der, broker, topics, policy, signer=None):
    # signer: the command signer's public key, already checked against the pinned root.
    meta = {
        "v": _FORMAT,
        "device_id": device_id,
        "cert_sha256": _hex(hashlib.sha256(cert_der).digest()),
        "broker": {"host": broker["host"], "port": broker["port"], "ca_b64": broker["ca_b64"]},
        "topics": topics,
        "policy": policy or {},
    }
    if signer is not None:
        meta["command_signer"] = _hex(signer)
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
        elif not _signer_ok(meta.get("command_signer")):
            reason = "command signer key malformed"
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


def broker(data_dir):
    # The broker block of onboard.json as stored ({"host", "port", "ca_b64"}), or None when the
    # file cannot be read: agent.relocate keeps it before a proof that may replace it.
    raw = files.read(data_dir + "/" + _META)
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return meta.get("broker") if isinstance(meta, dict) else None


def set_broker(data_dir, stored, broker):
    # onboard.json with its broker block replaced, in one rename (agent.relocate's fallback); the
    # certificate is not touched, so the pair still matches. Returns the Stored to use.
    meta = json.loads(files.read(data_dir + "/" + _META))
    meta["broker"] = {"host": broker["host"], "port": broker["port"], "ca_b64": broker["ca_b64"]}
    files.write(data_dir + "/" + _META, json.dumps(meta).encode())
    return Stored(stored.cert_der, meta)


def cmd_seq(data_dir):
    # The seq of the last command accepted, 0 for none. A file of the wrong size cannot come from
    # a power cut (it is replaced whole): it is reported and read as 0, so commands the server
    # still holds unexpired may run again; refusing every command instead would leave the device
    # with no command channel at all.
    raw = files.read(data_dir + "/" + _SEQ)
    if raw is None:
        return 0
    if len(raw) != 4:
        log("W", "store", "%s unreadable; last command seq taken as 0", _SEQ)
        return 0
    return int.from_bytes(raw, "big")


def set_cmd_seq(data_dir, seq):
    # Before the command runs (docs/protocol.md "Command channel"): a power cut after this
    # line leaves the command refused as replayed, never run twice.
    files.write(data_dir + "/" + _SEQ, seq.to_bytes(4, "big"))


def clear(data_dir):
    # The onboarding result only: the command seq outlives it (the server's seq does too).
    for name in (_META, _CERT):
        try:
            os.remove(data_dir + "/" + name)
        except OSError:
            pass
