# The DER writer (CSR, ECPrivateKey, ECDSA-Sig-Value) and X.509 reader inside MicroPython.
# The certificates below were made once with pyca/cryptography for the RFC 6979 A.2.5 key:
# _C1 subject O=qlink, CN=3f9a0..0, validity UTCTime, notAfter 2027-11-23 12:00:59Z;
# _C2 subject CN=first, C=DE, CN="dévice ✓", notAfter GeneralizedTime 2051-02-28 23:59:58Z;
# _C3 subject O=no cn, notBefore 1999-12-31 23:59:59Z, notAfter 2049-12-31 23:59:59Z (UTCTime).
# Host-side checks of the writer (openssl, cryptography) are in tests/host/test_csr.py.
# heapsize: 64k
from binascii import unhexlify
import hashlib
from qdid import QdidError
from qdid import der, x509

_D = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
_PUB = unhexlify(
    "0460fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6"
    "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299"
)
_C1 = (
    b"\x30\x82\x01\x68\x30\x82\x01\x0d\xa0\x03\x02\x01\x02\x02\x08\x12\x34\x56\x78\x90\xab\xcd\xef\x30"
    b"\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02\x30\x18\x31\x16\x30\x14\x06\x03\x55\x04\x03\x0c\x0d"
    b"\x71\x6c\x69\x6e\x6b\x20\x74\x65\x73\x74\x20\x43\x41\x30\x1e\x17\x0d\x32\x36\x31\x31\x32\x33\x31"
    b"\x32\x30\x30\x30\x30\x5a\x17\x0d\x32\x37\x31\x31\x32\x33\x31\x32\x30\x30\x35\x39\x5a\x30\x5b\x31"
    b"\x0e\x30\x0c\x06\x03\x55\x04\x0a\x0c\x05\x71\x6c\x69\x6e\x6b\x31\x49\x30\x47\x06\x03\x55\x04\x03"
    b"\x0c\x40\x33\x66\x39\x61\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30"
    b"\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30"
    b"\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x30\x59\x30\x13\x06\x07"
    b"\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07\x03\x42\x00\x04\x60\xfe\xd4"
    b"\xba\x25\x5a\x9d\x31\xc9\x61\xeb\x74\xc6\x35\x6d\x68\xc0\x49\xb8\x92\x3b\x61\xfa\x6c\xe6\x69\x62"
    b"\x2e\x60\xf2\x9f\xb6\x79\x03\xfe\x10\x08\xb8\xbc\x99\xa4\x1a\xe9\xe9\x56\x28\xbc\x64\xf2\xf1\xb2"
    b"\x0c\x2d\x7e\x9f\x51\x77\xa3\xc2\x94\xd4\x46\x22\x99\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03"
    b"\x02\x03\x49\x00\x30\x46\x02\x21\x00\x9e\x37\x89\x75\x87\x40\xe0\xc1\x05\x7b\x06\x2c\x24\x9d\x2d"
    b"\x8c\x22\xca\xc9\x2d\xe5\x98\xa0\x81\x31\xe7\xed\x3c\xb1\xde\x23\xb3\x02\x21\x00\xcf\xc0\x38\x7f"
    b"\xb0\xae\x8c\x34\xd0\x6a\xeb\x0c\xcb\xb7\xc9\x4f\x47\x08\x2d\x77\x0d\xcf\xd4\x10\x8f\xd0\xc2\x87"
    b"\x8a\x97\xdc\xa6"
)
_C2 = (
    b"\x30\x82\x01\x3f\x30\x81\xe7\xa0\x03\x02\x01\x02\x02\x08\x12\x34\x56\x78\x90\xab\xcd\xef\x30\x0a"
    b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02\x30\x18\x31\x16\x30\x14\x06\x03\x55\x04\x03\x0c\x0d\x71"
    b"\x6c\x69\x6e\x6b\x20\x74\x65\x73\x74\x20\x43\x41\x30\x20\x17\x0d\x32\x36\x30\x31\x30\x31\x30\x30"
    b"\x30\x30\x30\x30\x5a\x18\x0f\x32\x30\x35\x31\x30\x32\x32\x38\x32\x33\x35\x39\x35\x38\x5a\x30\x33"
    b"\x31\x0e\x30\x0c\x06\x03\x55\x04\x03\x0c\x05\x66\x69\x72\x73\x74\x31\x0b\x30\x09\x06\x03\x55\x04"
    b"\x06\x13\x02\x44\x45\x31\x14\x30\x12\x06\x03\x55\x04\x03\x0c\x0b\x64\xc3\xa9\x76\x69\x63\x65\x20"
    b"\xe2\x9c\x93\x30\x59\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03"
    b"\x01\x07\x03\x42\x00\x04\x60\xfe\xd4\xba\x25\x5a\x9d\x31\xc9\x61\xeb\x74\xc6\x35\x6d\x68\xc0\x49"
    b"\xb8\x92\x3b\x61\xfa\x6c\xe6\x69\x62\x2e\x60\xf2\x9f\xb6\x79\x03\xfe\x10\x08\xb8\xbc\x99\xa4\x1a"
    b"\xe9\xe9\x56\x28\xbc\x64\xf2\xf1\xb2\x0c\x2d\x7e\x9f\x51\x77\xa3\xc2\x94\xd4\x46\x22\x99\x30\x0a"
    b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02\x03\x47\x00\x30\x44\x02\x20\x10\xa6\xdc\x99\xf8\x9a\x03"
    b"\x03\x0f\x34\xd9\x53\xe0\xf8\x60\x94\x58\xc9\x82\x77\x55\xa1\xd2\xdf\x92\x6e\x71\x2e\xb7\xe4\x96"
    b"\xe2\x02\x20\x37\xbb\x95\x3c\xd0\x7e\xe9\xcd\x31\x94\x18\x72\x6d\xb0\x5c\x0e\xaa\x80\x2e\x01\xd0"
    b"\x5e\xdd\x05\xdd\x94\xe0\x89\xaa\xc6\xac\x3c"
)
_C3 = (
    b"\x30\x82\x01\x1b\x30\x81\xc2\xa0\x03\x02\x01\x02\x02\x08\x12\x34\x56\x78\x90\xab\xcd\xef\x30\x0a"
    b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02\x30\x18\x31\x16\x30\x14\x06\x03\x55\x04\x03\x0c\x0d\x71"
    b"\x6c\x69\x6e\x6b\x20\x74\x65\x73\x74\x20\x43\x41\x30\x1e\x17\x0d\x39\x39\x31\x32\x33\x31\x32\x33"
    b"\x35\x39\x35\x39\x5a\x17\x0d\x34\x39\x31\x32\x33\x31\x32\x33\x35\x39\x35\x39\x5a\x30\x10\x31\x0e"
    b"\x30\x0c\x06\x03\x55\x04\x0a\x0c\x05\x6e\x6f\x20\x63\x6e\x30\x59\x30\x13\x06\x07\x2a\x86\x48\xce"
    b"\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07\x03\x42\x00\x04\x60\xfe\xd4\xba\x25\x5a\x9d"
    b"\x31\xc9\x61\xeb\x74\xc6\x35\x6d\x68\xc0\x49\xb8\x92\x3b\x61\xfa\x6c\xe6\x69\x62\x2e\x60\xf2\x9f"
    b"\xb6\x79\x03\xfe\x10\x08\xb8\xbc\x99\xa4\x1a\xe9\xe9\x56\x28\xbc\x64\xf2\xf1\xb2\x0c\x2d\x7e\x9f"
    b"\x51\x77\xa3\xc2\x94\xd4\x46\x22\x99\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02\x03\x48\x00"
    b"\x30\x45\x02\x20\x00\x80\x38\x9c\x3f\xfa\x57\x49\x2e\xfe\xd8\xf4\x4e\x94\xd3\x06\x6a\xc2\x7b\xfd"
    b"\x01\x3c\xaf\xe8\x5e\xbf\xbb\x8a\xff\x9b\x72\xe7\x02\x21\x00\x8c\xd8\xd6\x6a\x69\x7c\xe8\x5a\x15"
    b"\xae\x5b\x54\xd4\x1a\xe7\x95\xcc\x0a\x1f\x23\x4c\xdc\xe8\xce\x91\xe8\x0f\x6c\xab\xc0\xa4\x9f"
)


def _raises_der(fn, *args):
    try:
        fn(*args)
    except der.DerError:
        return
    raise AssertionError("no DerError")


def test_der_error_is_a_qdid_error():
    assert issubclass(der.DerError, QdidError)


def test_sig_to_der_minimal_integers():
    r = (0x80 << 248) | 1  # top bit set: a leading 0x00
    s = 0x7F  # short: one octet
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    want = b"\x30\x26\x02\x21\x00" + r.to_bytes(32, "big") + b"\x02\x01\x7f"
    assert der.sig_to_der(sig) == want
    assert x509.sig_from_der(want) == sig
    sig = (1).to_bytes(32, "big") + (0x0100).to_bytes(32, "big")
    assert der.sig_to_der(sig) == b"\x30\x07\x02\x01\x01\x02\x02\x01\x00"
    _raises_der(der.sig_to_der, sig[:63])
    _raises_der(der.sig_to_der, None)


def test_sig_from_der_rejects_non_der_signatures():
    good = b"\x30\x06\x02\x01\x01\x02\x01\x02"
    assert x509.sig_from_der(good) == (1).to_bytes(32, "big") + (2).to_bytes(32, "big")
    for bad in (
        b"",
        good[:-1],  # truncated
        good + b"\x00",  # trailing data
        b"\x30\x06\x02\x01\x81\x02\x01\x02",  # negative r
        b"\x30\x07\x02\x02\x00\x01\x02\x01\x02",  # r with a needless leading zero
        b"\x30\x06\x02\x01\x00\x02\x01\x02",  # r = 0
        b"\x30\x05\x02\x00\x02\x01\x02",  # empty INTEGER
        b"\x30\x03\x02\x01\x01",  # s missing
        b"\x30\x09\x02\x01\x01\x02\x01\x02\x02\x01\x03",  # a third INTEGER
        b"\x30\x80\x02\x01\x01\x02\x01\x02\x00\x00",  # indefinite length (BER)
        b"\x30\x81\x06\x02\x01\x01\x02\x01\x02",  # long form for a short length
        b"\x31\x06\x02\x01\x01\x02\x01\x02",  # SET, not SEQUENCE
        b"\x30\x26\x02\x21\x01" + b"\x00" * 32 + b"\x02\x01\x01",  # r >= 2^256
    ):
        _raises_der(x509.sig_from_der, bad)


def test_ec_private_key_exact_bytes():
    want = (
        b"\x30\x77\x02\x01\x01\x04\x20"
        + _D.to_bytes(32, "big")
        + unhexlify("a00a06082a8648ce3d030107a144034200")
        + _PUB
    )
    assert der.ec_private_key(_D, _PUB) == want


def test_csr_info_exact_bytes_and_signature_verifies():
    c = der.csr(_D, _PUB, "abc")
    info = (
        unhexlify(
            "3070020100300e310c300a06035504030c03616263"
            "3059301306072a8648ce3d020106082a8648ce3d030107034200"
        )
        + _PUB
        + b"\xa0\x00"
    )
    assert c[:3] == b"\x30\x81" + bytes((len(c) - 3,))
    assert c[3 : 3 + len(info)] == info
    alg = unhexlify("300a06082a8648ce3d040302")
    rest = c[3 + len(info) :]
    assert rest[: len(alg)] == alg
    bits = rest[len(alg) :]
    assert bits[0] == 0x03 and bits[1] == len(bits) - 2 and bits[2] == 0
    sig = x509.sig_from_der(bits[3:])
    from qdid import p256

    assert p256.verify_digest(_PUB, hashlib.sha256(info).digest(), sig)
    assert der.csr(_D, _PUB, "abc") == c  # RFC 6979: deterministic


def test_csr_common_name_rules():
    assert len(der.csr(_D, _PUB, "x" * 64)) > 0
    assert len(der.csr(_D, _PUB, "d\u00e9vice")) > 0
    _raises_der(der.csr, _D, _PUB, "")
    _raises_der(der.csr, _D, _PUB, "x" * 65)
    _raises_der(der.csr, _D, _PUB, b"abc")
    _raises_der(der.csr, _D, _PUB, None)


def test_writers_reject_bad_keys():
    from qdid import p256

    for fn in (der.ec_private_key, lambda d, p: der.csr(d, p, "a")):
        _raises_der(fn, 0, _PUB)
        _raises_der(fn, p256.N, _PUB)
        _raises_der(fn, _D, _PUB[:-1])
        _raises_der(fn, _D, _PUB[:64] + bytes((_PUB[64] ^ 1,)))
        _raises_der(fn, _D, None)


def test_cert_not_after_utctime_and_generalizedtime():
    assert x509.cert_not_after(_C1) == 1826971259  # 2027-11-23 12:00:59Z
    assert x509.cert_not_after(_C2) == 2561241598  # 2051-02-28 23:59:58Z
    assert x509.cert_not_after(_C3) == 2524607999  # 2049-12-31 23:59:59Z (UTCTime "49")
    assert x509.cert_not_after(bytearray(_C1)) == 1826971259
    assert x509.cert_not_after(memoryview(_C1)) == 1826971259


def test_cert_not_before_and_validity_read_both_times():
    assert x509.cert_not_before(_C1) == 1795435200  # 2026-11-23 12:00:00Z
    assert x509.cert_not_before(_C2) == 1767225600  # 2026-01-01 00:00:00Z
    assert x509.cert_not_before(_C3) == 946684799  # 1999-12-31 23:59:59Z
    assert x509.cert_validity(_C1) == (1795435200, 1826971259)
    assert x509.cert_validity(memoryview(_C2)) == (1767225600, 2561241598)
    # A malformed notBefore fails both readers: Validity is read as one element.
    bad = _with(_C1, b"261123120000Z", b"261323120000Z")
    _raises_der(x509.cert_not_before, bad)
    _raises_der(x509.cert_not_after, bad)


# Encoded OIDs (tag, length, value) as pyca/cryptography wrote them into tests/firmware/certs.py.
_EKU_QLINK = (  # 2.25.311889229853575044542618327131203868764 (qlink command signing)
    b"\x06\x14\x69\x83\xd5\xa3\xd7\x90\xe1\xe3\xe2\x81\xaf\x8f\x93\xcd\xa0\x98\x94\xf2\xb0\x5c"
)
_EKU_SERVER = b"\x06\x08\x2b\x06\x01\x05\x05\x07\x03\x01"  # 1.3.6.1.5.5.7.3.1 serverAuth


def test_cert_ext_key_usage_lists_the_key_purposes_rfc5280_4_2_1_12():
    import certs

    assert x509.cert_ext_key_usage(certs.SIGNER) == [_EKU_QLINK]
    assert x509.cert_ext_key_usage(certs.SIGNER_EXTRA) == [_EKU_QLINK, _EKU_SERVER]
    assert x509.cert_ext_key_usage(certs.SIGNER_TLS) == [_EKU_SERVER]
    assert x509.cert_ext_key_usage(certs.SIGNER_NO_EKU) is None  # other extensions, no EKU
    for c in (_C1, _C2, _C3):
        assert x509.cert_ext_key_usage(c) is None  # no extensions at all


def test_cert_signature_gives_the_signed_bytes_and_r_s_rfc5280_4_1_1():
    import certs
    from qdid import p256

    root = x509.cert_public_key(certs.ROOT)
    start, end, sig = x509.cert_signature(certs.SIGNER)
    assert certs.SIGNER[start] == 0x30 and end < len(certs.SIGNER) and len(sig) == 64
    digest = hashlib.sha256(certs.SIGNER[start:end]).digest()
    assert p256.verify_digest(root, digest, sig)
    # The root signs itself: its own signature verifies with its own key.
    start, end, sig = x509.cert_signature(certs.ROOT)
    assert p256.verify_digest(root, hashlib.sha256(certs.ROOT[start:end]).digest(), sig)
    start, end, sig = x509.cert_signature(certs.SIGNER_FOREIGN)
    assert not p256.verify_digest(
        root, hashlib.sha256(certs.SIGNER_FOREIGN[start:end]).digest(), sig
    )


def test_cert_signature_reads_only_ecdsa_with_sha256():
    import certs

    _raises_der(x509.cert_signature, certs.SIGNER_SHA384)  # ecdsa-with-SHA384
    _raises_der(x509.cert_signature, certs.SIGNER + b"\x00")
    _raises_der(x509.cert_signature, certs.SIGNER[:-1])
    _raises_der(x509.cert_signature, None)


def test_cert_subject_cn_and_public_key():
    assert x509.cert_subject_cn(_C1) == "3f9a" + "0" * 60
    assert x509.cert_subject_cn(_C2) == "d\u00e9vice \u2713"  # the last CN
    _raises_der(x509.cert_subject_cn, _C3)  # no CN
    for c in (_C1, _C2, _C3):
        assert x509.cert_public_key(c) == _PUB


def _with(cert, old, new):
    i = cert.find(old)
    assert i > 0
    return cert[:i] + new + cert[i + len(old) :]


def test_reader_rejects_malformed_certificates():
    for bad in (
        b"",
        b"\x30",
        b"\x30\x00",
        _C1 + b"\x00",  # trailing data
        _C1[:-1],  # truncated
        b"\x31" + _C1[1:],  # SET, not SEQUENCE
        b"\x30\x80" + _C1[4:] + b"\x00\x00",  # indefinite length
        b"\x30\x85\x00\x00\x00\x01\x68" + _C1[4:],  # 5 length octets
        b"\x30\x83\x00\x01\x68" + _C1[4:],  # length with a leading zero octet
        b"\x3f" + _C1[1:],  # high tag number form
        None,
        "text",
    ):
        for fn in (
            x509.cert_not_after,
            x509.cert_not_before,
            x509.cert_subject_cn,
            x509.cert_public_key,
            x509.cert_signature,
            x509.cert_ext_key_usage,
        ):
            _raises_der(fn, bad)


def test_utctime_century_boundary_and_leap_day():
    # RFC 5280 4.1.2.5.1: YY >= 50 is 19YY, YY < 50 is 20YY.
    c = _with(_C3, b"491231235959Z", b"500101000000Z")
    assert x509.cert_not_after(c) == -631152000  # 1950-01-01 00:00:00Z
    c = _with(_C3, b"491231235959Z", b"000229123001Z")
    assert x509.cert_not_after(c) == 951827401  # 2000-02-29 12:30:01Z


def test_element_longer_than_its_container_is_rejected():
    assert x509._read(b"\x04\x02\x00\x00", 0, 4) == (4, 2, 4)
    _raises_der(x509._read, b"\x04\x02\x00\x00", 0, 3)  # one octet past the container
    _raises_der(x509._read, b"\x04\x81", 0, 2)  # length octet missing


def test_reader_rejects_malformed_times():
    for old, new in (
        (b"271123120059Z", b"271323120059Z"),  # month 13
        (b"271123120059Z", b"271100120059Z"),  # day 0
        (b"271123120059Z", b"271123240059Z"),  # hour 24
        (b"271123120059Z", b"271123126059Z"),  # minute 60
        (b"271123120059Z", b"271123120059Y"),  # not UTC
        (b"271123120059Z", b"27112312005xZ"),  # non-digit
        (b"\x17\x0d271123", b"\x18\x0d271123"),  # GeneralizedTime of 13 characters
        (b"\x17\x0d271123", b"\x04\x0d271123"),  # not a time type
    ):
        _raises_der(x509.cert_not_after, _with(_C1, old, new))
    # the other fields are still readable
    assert x509.cert_subject_cn(_with(_C1, b"271123120059Z", b"271323120059Z")) == "3f9a" + "0" * 60


def test_reader_never_fails_otherwise_on_mutated_certificates():
    # Every single-byte change either still parses or raises DerError; never IndexError etc.
    rejected = 0
    for c in (_C1, _C2):
        buf = bytearray(c)
        for i in range(len(buf)):
            orig = buf[i]
            for x in (0x01, 0x80, 0xFF):
                buf[i] = orig ^ x
                for fn in (x509.cert_not_after, x509.cert_subject_cn, x509.cert_public_key):
                    try:
                        fn(buf)
                    except der.DerError:
                        rejected += 1
            buf[i] = orig
    assert rejected > 1000, rejected


def test_extension_and_signature_readers_never_fail_otherwise_on_mutated_certificates():
    # The command signer's certificate, with extensions: every single-byte change either still
    # parses or raises DerError.
    import certs

    rejected = 0
    buf = bytearray(certs.SIGNER)
    for i in range(len(buf)):
        orig = buf[i]
        for x in (0x01, 0x80, 0xFF):
            buf[i] = orig ^ x
            for fn in (x509.cert_ext_key_usage, x509.cert_signature, x509.cert_validity):
                try:
                    fn(buf)
                except der.DerError:
                    rejected += 1
        buf[i] = orig
    assert rejected > 300, rejected
