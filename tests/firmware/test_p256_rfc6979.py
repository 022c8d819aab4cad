# RFC 6979 deterministic ECDSA (P-256, SHA-256) inside MicroPython, from the RFC's A.2.5
# vectors as shipped in cryptography_vectors (OpenSSL's evppkey_ecdsa_rfc6979.txt).
# timeout: 60
import os
import hashlib
from binascii import unhexlify
from qdid import p256
from qdid import der, x509

_VEC = os.getenv("QLINK_VECTORS") + "/asymmetric/"


def _pem_der(f):
    # Base64 body of one PEM block, read from an open file up to its END line.
    from binascii import a2b_base64

    body = ""
    for line in f:
        line = line.strip()
        if line.startswith("-----END"):
            return a2b_base64(body)
        if not line.startswith("-----"):
            body += line


def test_rfc6979_p256_sha256_vectors():
    # RFC 6979 A.2.5 as shipped in OpenSSL's evppkey_ecdsa_rfc6979.txt (DER signatures).
    path = _VEC + "ECDSA/RFC6979/evppkey_ecdsa_rfc6979.txt"
    inside = False
    d = pub = None
    rec = {}
    signs = verifies = rejects = 0

    def run(rec):
        nonlocal signs, verifies, rejects
        if rec.get("DigestSign") == "SHA256":
            digest = hashlib.sha256(rec["Input"].strip('"').encode()).digest()
            assert der.sig_to_der(p256.sign_digest(d, digest)) == unhexlify(rec["Output"])
            signs += 1
        elif rec.get("DigestVerify") == "SHA256":
            digest = hashlib.sha256(rec["Input"].strip('"').encode()).digest()
            sig = x509.sig_from_der(unhexlify(rec["Output"]))
            want = rec.get("Result") != "VERIFY_ERROR"
            assert p256.verify_digest(pub, digest, sig) is want, rec["Output"]
            verifies += 1
            rejects += not want

    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("Title ="):
                inside = line == "Title = RFC 6979 P-256 deterministic ECDSA tests"
                continue
            if not inside:
                continue
            if line.startswith("PrivateKey="):
                key = _pem_der(f)
                i = key.find(b"\x02\x01\x01\x04\x20")  # ECPrivateKey version 1, OCTET STRING(32)
                d = int.from_bytes(key[i + 5 : i + 37], "big")
            elif line.startswith("PublicKey="):
                pub = _pem_der(f)[-65:]
            elif not line:
                if rec:
                    run(rec)
                rec = {}
            elif line[0] != "#" and "=" in line:
                k, _, v = line.partition("=")
                rec[k.strip()] = v.strip()
    if rec:
        run(rec)
    assert d == 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
    assert p256.public_key(d) == pub
    assert (signs, verifies, rejects) == (2, 4, 2), (signs, verifies, rejects)


def test_rfc6979_nonce_with_extra_data_changes_the_signature_and_still_verifies():
    d = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
    pub = p256.public_key(d)
    digest = hashlib.sha256(b"sample").digest()
    plain = p256.sign_digest(d, digest)
    hedged = p256.sign_digest(d, digest, b"\x42" * 32)
    assert hedged != plain
    assert p256.sign_digest(d, digest, b"") == plain
    assert p256.verify_digest(pub, digest, hedged)
