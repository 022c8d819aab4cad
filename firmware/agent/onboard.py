# Onboarding (docs/protocol.md "Onboarding API"): hello -> sign the exact proof message ->
# proof with the CSR -> check the command signer's certificate against the pinned root -> store
# the certificate, broker settings and signer key.
# Loaded only while the device onboards or renews its certificate; main.py drops it afterwards.
import gc
import sys
import hashlib
import binascii
from agent import store
from agent.errors import LinkError, OnboardingError
from agent.log import log

_LABEL = b"qlink-onboard-v1\x00"  # domain separation: this signature means nothing elsewhere
_HELLO = "/v1/onboard/hello"
_PROOF = "/v1/onboard/proof"
# 2.25.311889229853575044542618327131203868764 "qlink command signing" (docs/protocol.md
# "Command channel"), encoded as an OID (X.690 8.19: 2*40+25, then base-128 groups).
_EKU_COMMAND = (
    b"\x06\x14\x69\x83\xd5\xa3\xd7\x90\xe1\xe3\xe2\x81\xaf\x8f\x93\xcd\xa0\x98\x94\xf2\xb0\x5c"
)


def proof_digest(challenge, device_id, host, ota_key=None):
    # SHA-256(label || challenge (32 bytes) || device_id (64 ASCII hex) || 0x00 || host name
    # [|| OTA public key, 65 bytes, when sent]).
    # The host name is the one our TLS stack verified against the pinned root: the proof is
    # bound to this server and cannot be replayed to another (docs/protocol.md). The OTA key is
    # signed with it, so no one on the way can make the server wrap updates to another key
    # (docs/ota.md "The device's OTA key").
    h = hashlib.sha256(_LABEL)
    h.update(challenge)
    h.update(device_id.encode())
    h.update(b"\x00")
    h.update(host.encode())
    if ota_key is not None:
        h.update(ota_key)
    return h.digest()


def _hex(b):
    return binascii.hexlify(b).decode()


def _unhex(s, nbytes):
    # Lowercase hex of exactly nbytes bytes, else None.
    if not isinstance(s, str) or len(s) != 2 * nbytes or s.lower() != s:
        return None
    try:
        return binascii.unhexlify(s)
    except ValueError:
        return None


def _b64(s):
    if not isinstance(s, str):
        return None
    try:
        return binascii.a2b_base64(s)
    except ValueError:
        return None


def answer(step, status, doc, retry_after=0):
    # 200 with a JSON object continues; a 4xx with {"error", "detail"} is the server's refusal;
    # anything else (5xx, not JSON) is treated as a link problem and retried with backoff.
    # agent.successor reads the successor request's answer with it too.
    if status == 200 and isinstance(doc, dict):
        return doc
    if 400 <= status < 500 and isinstance(doc, dict) and isinstance(doc.get("error"), str):
        detail = doc.get("detail")
        err = OnboardingError(
            doc["error"], detail if isinstance(detail, str) else "", status, retry_after
        )
        log("E", "onboard", "server refused: %s", err)
        raise err
    raise LinkError("onboard: %s answered HTTP %d" % (step, status))


def _drop_otakey():
    sys.modules.pop("qdid.otakey", None)
    try:
        delattr(sys.modules["qdid"], "otakey")
    except (AttributeError, KeyError):
        pass


def _bad(step, what):
    # The server said 200 but the answer breaks the contract: refuse it, do not store it.
    log("E", "onboard", "%s answer unusable: %s", step, what)
    return OnboardingError("bad_answer", step + ": " + what, 200)


def signer_key(cert, root_der):
    # The command signer's public key, or the reason its certificate is refused: it must be
    # signed (ECDSA P-256 / SHA-256) by the root the device pins, carry the command-signing
    # extended key usage and no other (so no TLS or CA key can sign a command), and hold a P-256
    # key (docs/protocol.md "Command channel").
    from qdid import p256, x509

    try:
        root = x509.cert_public_key(root_der)
    except x509.DerError:
        return None, "the pinned root has no P-256 key to check the command signer with"
    try:
        start, end, sig = x509.cert_signature(cert)
        key = x509.cert_public_key(cert)
        usage = x509.cert_ext_key_usage(cert)
    except x509.DerError:
        return None, "command signer certificate unreadable, not ECDSA/SHA-256 or not P-256"
    if not p256.verify_digest(root, hashlib.sha256(cert[start:end]).digest(), sig):
        return None, "command signer is not signed by the pinned root"
    if usage != [_EKU_COMMAND]:
        return None, "command signer lacks the command-signing usage, or has others"
    return key, None


def run(client, ident, data_dir, root_der):
    # client: agent.https.Client (or a test double with .host and .post(path, obj)).
    # root_der: the pinned root (config), against which the command signer is checked.
    # Returns the agent.store.Stored it saved.
    device_id = ident.device_id
    # The OTA key of this epoch (qdid.otakey, loaded for it and dropped after); an identity
    # without seeds (a test double) sends none, and the server then offers it no update. First,
    # and collected after: the curve arithmetic's garbage goes before any answer is kept.
    ota = None
    if getattr(ident, "seed", None) is not None:
        from qdid import otakey

        ota = otakey.derive(ident)[1]
        del otakey
        _drop_otakey()
        gc.collect()
    log("I", "onboard", "hello %s as %s...", client.host, device_id[:12])
    status, doc = client.post(
        _HELLO, {"device_id": device_id, "public_key": _hex(ident.public_key)}
    )
    doc = answer("hello", status, doc, getattr(client, "retry_after", 0))
    cid = doc.get("challenge_id")
    challenge = _unhex(doc.get("challenge"), 32)
    if _unhex(cid, 16) is None or challenge is None:
        raise _bad("hello", "challenge_id or challenge malformed")
    digest = proof_digest(challenge, device_id, client.host, ota)
    sig = ident.sign_digest(digest)
    csr = binascii.b2a_base64(ident.csr()).decode().strip()
    body = {"challenge_id": cid, "signature": _hex(sig), "csr_b64": csr}
    if ota is not None:
        body["ota_key"] = _hex(ota)
    status, doc = client.post(_PROOF, body)
    del body
    del csr
    doc = answer("proof", status, doc, getattr(client, "retry_after", 0))
    if doc.get("device_id") != device_id:
        raise _bad("proof", "device_id is not ours")
    cert = _b64(doc.get("certificate_b64"))
    if cert is None:
        raise _bad("proof", "certificate_b64 malformed")
    broker = doc.get("broker")
    topics = doc.get("topics")
    policy = doc.get("policy")
    reason = store.check_answer(device_id, ident.public_key, cert, broker, topics, policy)
    if reason is not None:
        raise _bad("proof", reason)
    signer = None
    raw = doc.get("command_signer_b64")
    if raw is not None:
        signer_der = _b64(raw)
        if not signer_der:  # MicroPython decodes text without base64 characters as b""
            raise _bad("proof", "command_signer_b64 malformed")
        signer, reason = signer_key(signer_der, root_der)
        if reason is not None:
            raise _bad("proof", reason)
    else:
        # A server without the command channel: the device runs, and refuses commands.
        log("W", "onboard", "no command signer in the answer; commands will be refused")
    stored = store.save(data_dir, device_id, cert, broker, topics, policy, signer)
    log("I", "onboard", "certificate stored; broker %s:%d", stored.broker_host, stored.broker_port)
    return stored
