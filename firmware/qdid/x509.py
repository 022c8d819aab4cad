# Reads just enough X.509 (RFC 5280) DER for the device: a certificate's validity, subject CN,
# public key, extended key usage and its issuer's ECDSA signature (the device checks the command
# signer's certificate with them), and ECDSA-Sig-Value signatures. Every length is checked
# against its enclosing element; malformed input raises DerError, never an IndexError.
from micropython import const
from qdid.der import DerError

# qdid.p256 is imported where it is needed: reading a certificate's validity or subject does
# not load the curve code.

_SEQ = const(0x30)
_SET = const(0x31)
_INT = const(0x02)
_BITS = const(0x03)
_BOOL = const(0x01)
_OCTETS = const(0x04)
_OID = const(0x06)
_UTF8 = const(0x0C)
_PRINTABLE = const(0x13)
_T61 = const(0x14)
_IA5 = const(0x16)
_UTCTIME = const(0x17)
_GENTIME = const(0x18)
_CTX0 = const(0xA0)  # [0] constructed: TBSCertificate version
_CTX3 = const(0xA3)  # [3] constructed: TBSCertificate extensions

# Encoded OBJECT IDENTIFIERs (tag, length, value).
_OID_EC_PUBLIC_KEY = b"\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"  # 1.2.840.10045.2.1 (RFC 5480)
_OID_P256 = b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"  # 1.2.840.10045.3.1.7 prime256v1
_OID_ECDSA_SHA256 = b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02"  # 1.2.840.10045.4.3.2 (RFC 5758)
_OID_CN = b"\x06\x03\x55\x04\x03"  # 2.5.4.3 id-at-commonName
_OID_EKU = b"\x55\x1d\x25"  # 2.5.29.37 id-ce-extKeyUsage (RFC 5280 4.2.1.12), value only


def _read(buf, pos, end):
    # One TLV at buf[pos:end] -> (tag, value start, value end). Low tag numbers and definite,
    # minimal lengths up to 4 octets only (X.690 8.1.2, 8.1.3, 10.1).
    if pos + 2 > end:
        raise DerError  # truncated header
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError  # high tag numbers never occur in X.509
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or pos + k > end:
            raise DerError  # indefinite, oversized or truncated length
        if buf[pos] == 0:
            raise DerError  # length with a leading zero octet is not DER
        n = 0
        for i in range(k):
            n = (n << 8) | buf[pos + i]
        pos += k
        if n < 0x80:
            raise DerError  # long form for a short length is not DER
    if n > end - pos:
        raise DerError  # value runs past its container
    return tag, pos, pos + n


def _expect(buf, pos, end, tag):
    t, s, e = _read(buf, pos, end)
    if t != tag:
        raise DerError  # unexpected element
    return s, e


def _certificate(cert):
    # The bounds of the outer Certificate SEQUENCE's value, which must be all of cert.
    if not isinstance(cert, (bytes, bytearray, memoryview)):
        raise DerError  # certificate must be bytes
    s, e = _expect(cert, 0, len(cert), _SEQ)
    if e != len(cert):
        raise DerError  # trailing data after the certificate
    return s, e


def _tbs(cert):
    # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    # (RFC 5280 4.1). Returns the bounds of the TBSCertificate fields and the position of
    # validity.
    s, e = _certificate(cert)
    ts, te = _expect(cert, s, e, _SEQ)
    t, s1, e1 = _read(cert, ts, te)
    if t == _CTX0:  # [0] EXPLICIT version
        t, s1, e1 = _read(cert, e1, te)
    if t != _INT:
        raise DerError  # serialNumber missing
    _, _, e1 = _read(cert, e1, te)  # signature AlgorithmIdentifier
    _, _, e1 = _read(cert, e1, te)  # issuer
    return e1, te


def _digits(buf, pos, n):
    v = 0
    for i in range(pos, pos + n):
        c = buf[i] - 0x30
        if c < 0 or c > 9:
            raise DerError  # time field with a non-digit
        v = v * 10 + c
    return v


def _time(buf, tag, s, e):
    # UTCTime YYMMDDHHMMSSZ (years 1950-2049) or GeneralizedTime YYYYMMDDHHMMSSZ, both in UTC
    # with seconds (RFC 5280 4.1.2.5.1, 4.1.2.5.2) -> unix seconds.
    if tag == _UTCTIME and e - s == 13:
        y = _digits(buf, s, 2)
        y += 1900 if y >= 50 else 2000
        s += 2
    elif tag == _GENTIME and e - s == 15:
        y = _digits(buf, s, 4)
        s += 4
    else:
        raise DerError  # not a UTC time of the RFC 5280 form
    if buf[s + 10] != 0x5A:  # 'Z'
        raise DerError  # time not in UTC
    mo = _digits(buf, s, 2)
    d = _digits(buf, s + 2, 2)
    hh = _digits(buf, s + 4, 2)
    mi = _digits(buf, s + 6, 2)
    ss = _digits(buf, s + 8, 2)
    if not (1 <= mo <= 12 and 1 <= d <= 31 and hh < 24 and mi < 60 and ss < 60):
        raise DerError  # time field out of range
    # Days since 1970-01-01 for a proleptic Gregorian date (civil-from-days inverse).
    yy = y - (mo <= 2)
    era = yy // 400
    yoe = yy - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hh * 3600 + mi * 60 + ss


def cert_validity(cert_der):
    # (notBefore, notAfter) in unix seconds (RFC 5280 4.1.2.5): renewal is due at a share of the
    # span between them.
    pos, end = _tbs(cert_der)
    s, e = _expect(cert_der, pos, end, _SEQ)  # Validity
    t, ts, te = _read(cert_der, s, e)
    not_before = _time(cert_der, t, ts, te)
    t, ts, te = _read(cert_der, te, e)
    if te != e:
        raise DerError  # Validity holds exactly two times
    return not_before, _time(cert_der, t, ts, te)


def cert_not_before(cert_der):
    return cert_validity(cert_der)[0]


def cert_not_after(cert_der):
    return cert_validity(cert_der)[1]


def _subject(cert):
    pos, end = _tbs(cert)
    _, _, pos = _read(cert, pos, end)  # validity
    s, e = _expect(cert, pos, end, _SEQ)  # subject Name
    return s, e, end


def cert_subject_cn(cert_der):
    # The subject's (last) commonName; DerError when there is none.
    s, e, _ = _subject(cert_der)
    found = None
    while s < e:
        rs, re_ = _expect(cert_der, s, e, _SET)  # RelativeDistinguishedName
        s = re_
        while rs < re_:
            as_, ae = _expect(cert_der, rs, re_, _SEQ)  # AttributeTypeAndValue
            rs = ae
            t, os_, oe = _read(cert_der, as_, ae)
            if t != _OID:
                raise DerError  # attribute type is not an OID
            t, vs, ve = _read(cert_der, oe, ae)
            if ve != ae:
                raise DerError  # attribute holds exactly a type and a value
            if bytes(cert_der[os_ - 2 : oe]) == _OID_CN:
                if t not in (_UTF8, _PRINTABLE, _IA5, _T61):
                    raise DerError  # commonName in an unsupported string type
                found = (vs, ve)
    if found is None:
        raise DerError  # subject has no commonName
    try:
        return str(bytes(cert_der[found[0] : found[1]]), "utf-8")
    except Exception:
        raise DerError  # commonName is not valid UTF-8


def cert_public_key(cert_der):
    # The 65-byte P-256 key of the certificate's SubjectPublicKeyInfo (RFC 5480).
    _, e, end = _subject(cert_der)
    s, se = _expect(cert_der, e, end, _SEQ)  # SubjectPublicKeyInfo
    a, ae = _expect(cert_der, s, se, _SEQ)
    if bytes(cert_der[a:ae]) != _OID_EC_PUBLIC_KEY + _OID_P256:
        raise DerError  # not an id-ecPublicKey on prime256v1
    bs, be = _expect(cert_der, ae, se, _BITS)
    if be != se or be - bs != 66 or cert_der[bs] != 0:
        raise DerError  # public key BIT STRING of the wrong size
    pub = bytes(cert_der[bs + 1 : be])
    from qdid import p256

    if not p256.is_valid_public_key(pub):
        raise DerError  # public key not on the curve
    return pub


def sig_from_der(der):
    # ECDSA-Sig-Value -> 64-byte r || s; r and s must be positive, minimally encoded and < 2^256.
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise DerError  # signature must be bytes
    s, e = _expect(der, 0, len(der), _SEQ)
    if e != len(der):
        raise DerError  # trailing data after the signature
    out = b""
    for _ in range(2):
        vs, ve = _expect(der, s, e, _INT)
        s = ve
        n = ve - vs
        if n == 0 or der[vs] & 0x80 or (n > 1 and der[vs] == 0 and der[vs + 1] < 0x80):
            raise DerError  # empty, negative or non-minimal INTEGER
        v = int.from_bytes(bytes(der[vs:ve]), "big")
        if v == 0 or v >= 1 << 256:
            raise DerError  # r or s out of range for P-256
        out += v.to_bytes(32, "big")
    if s != e:
        raise DerError  # ECDSA-Sig-Value holds exactly r and s
    return out


def cert_signature(cert_der):
    # (start, end, sig64): cert_der[start:end] is the encoded TBSCertificate, the bytes its
    # issuer signed, and sig64 the signature as r || s. Only ecdsa-with-SHA256 with its
    # parameters absent (RFC 5758 3.2) is read: the device verifies nothing else.
    s, e = _certificate(cert_der)
    _, _, te = _read(cert_der, s, e)  # tbsCertificate
    a, ae = _expect(cert_der, te, e, _SEQ)  # signatureAlgorithm (RFC 5280 4.1.1.2)
    if bytes(cert_der[a:ae]) != _OID_ECDSA_SHA256:
        raise DerError  # not signed with ecdsa-with-SHA256
    bs, be = _expect(cert_der, ae, e, _BITS)  # signatureValue (RFC 5280 4.1.1.3)
    if be != e or be == bs or cert_der[bs] != 0:
        raise DerError  # signature BIT STRING malformed or not the last field
    return s, te, sig_from_der(cert_der[bs + 1 : be])


def cert_ext_key_usage(cert_der):
    # The KeyPurposeIds of the extKeyUsage extension (RFC 5280 4.2.1.12) as encoded OIDs (tag,
    # length, value), or None when the certificate has no such extension.
    _, e, end = _subject(cert_der)
    _, _, pos = _read(cert_der, e, end)  # SubjectPublicKeyInfo
    while pos < end:
        t, s, e = _read(cert_der, pos, end)  # [1], [2] unique IDs (RFC 5280 4.1.2.8), [3]
        pos = e
        if t != _CTX3:
            continue
        xs, xe = _expect(cert_der, s, e, _SEQ)  # Extensions
        if xe != e:
            raise DerError  # [3] holds exactly one Extensions SEQUENCE
        while xs < xe:
            es, ee = _expect(cert_der, xs, xe, _SEQ)  # Extension
            xs = ee
            t, os_, oe = _read(cert_der, es, ee)  # extnID
            if t != _OID:
                raise DerError  # extension without an OID
            t, vs, ve = _read(cert_der, oe, ee)
            if t == _BOOL:
                t, vs, ve = _read(cert_der, ve, ee)  # critical flag, then the value
            if t != _OCTETS or ve != ee:
                raise DerError  # extnValue is an OCTET STRING that ends the extension
            if bytes(cert_der[os_:oe]) != _OID_EKU:
                continue
            ps, pe = _expect(cert_der, vs, ve, _SEQ)  # ExtKeyUsageSyntax
            if pe != ve:
                raise DerError  # trailing data after the key purposes
            out = []
            while ps < pe:
                t, _, k = _read(cert_der, ps, pe)
                if t != _OID:
                    raise DerError  # a KeyPurposeId is an OID
                out.append(bytes(cert_der[ps:k]))
                ps = k
            return out
    return None
