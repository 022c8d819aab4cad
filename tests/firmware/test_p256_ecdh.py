# P-256 ECDH inside MicroPython: the NIST SP 800-56A ECC CDH validity vectors of
# cryptography_vectors (P-256 section, each listed fault) and malformed peer keys.
# timeout: 120
import os
from binascii import unhexlify
from qdid import p256
from cavp import int16, point, records

_VEC = os.getenv("QLINK_VECTORS") + "/asymmetric/"
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF


def test_ecc_cdh_vectors_agree_and_reject_each_listed_fault():
    # SP 800-56A ECC CDH (dhStaticUnified, Z only), P-256 section. Reason codes: 1-2 CAVS key
    # fails partial validation, 5-6 IUT key fails it, 7 IUT private key changed, 8 Z changed;
    # 0 and 13 pass. In every failing case of this file Z differs from d_IUT * Q_CAVS.
    n = 0
    path = _VEC + "ECDH/KASValidityTest_ECCStaticUnified_NOKC_ZZOnly_resp.fax"
    for rec in records(path, "[EC - SHA256]"):
        if "Result" not in rec:
            continue
        code = int(rec["Result"][3:].split()[0])
        q_cavs = point(rec["QsCAVSx"], rec["QsCAVSy"])
        q_iut = point(rec["QsIUTx"], rec["QsIUTy"])
        d_iut = int16(rec["dsIUT"])
        z = unhexlify(rec["Z"])
        if code in (1, 2):
            assert not p256.is_valid_public_key(q_cavs)
            try:
                p256.ecdh(d_iut, q_cavs)
            except ValueError:
                pass
            else:
                raise AssertionError("ecdh accepted an invalid peer key")
        else:
            # Z is symmetric: d_IUT * Q_CAVS and d_CAVS * Q_IUT (when Q_IUT is valid)
            got = p256.ecdh(d_iut, q_cavs)
            assert (got == z) is (code in (0, 13)), rec["Result"]
            assert p256.is_valid_public_key(q_iut) is (code not in (5, 6)), rec["Result"]
            if code not in (5, 6):
                assert (p256.public_key(d_iut) == q_iut) is (code != 7), rec["Result"]
            if code == 0 or code == 13:
                assert p256.ecdh(int16(rec["dsCAVS"]), q_iut) == z
                assert p256.public_key(int16(rec["dsCAVS"])) == q_cavs
        n += 1
    assert n == 30, n


def test_ecdh_agrees_both_ways():
    a = p256.scalar_from_seed(b"a")
    b = p256.scalar_from_seed(b"b")
    za = p256.ecdh(a, p256.public_key(b))
    zb = p256.ecdh(b, p256.public_key(a))
    assert za == zb and len(za) == 32


def _must_raise(fn, *args):
    try:
        fn(*args)
    except ValueError:
        return
    raise AssertionError("no ValueError")


def test_ecdh_rejects_malformed_off_curve_and_infinity_points():
    d = 5
    good = p256.public_key(7)
    _must_raise(p256.ecdh, d, good[:-1])  # short
    _must_raise(p256.ecdh, d, good + b"\x00")  # long
    _must_raise(p256.ecdh, d, b"\x02" + good[1:33])  # compressed form is not accepted
    _must_raise(p256.ecdh, d, b"\x03" + good[1:])  # wrong prefix
    _must_raise(p256.ecdh, d, b"\x00")  # SEC1 encoding of infinity
    _must_raise(p256.ecdh, d, bytes(65))  # (0, 0) is not on the curve
    _must_raise(p256.ecdh, d, good[:64] + bytes((good[64] ^ 1,)))  # off the curve
    _must_raise(p256.ecdh, d, "not bytes")
    _must_raise(p256.ecdh, d, None)
    # x = 0 is on the curve; x = p is the same residue but out of range
    y0 = 0x66485C780E2F83D72433BD5D84A06BB6541C2AF31DAE871728BF856A174F93F4
    on = b"\x04" + bytes(32) + y0.to_bytes(32, "big")
    assert p256.is_valid_public_key(on)
    _must_raise(p256.ecdh, d, b"\x04" + _P.to_bytes(32, "big") + y0.to_bytes(32, "big"))
    _must_raise(p256.ecdh, 0, good)
    _must_raise(p256.ecdh, p256.N, good)
