# Affine P-256 arithmetic written apart from qdid.p256, the reference the device tests compare
# it with (slow and plain: None is the point at infinity).
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF


def add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0]:
        if (a[1] + b[1]) % _P == 0:
            return None
        lam = (3 * a[0] * a[0] - 3) * pow(2 * a[1], _P - 2, _P) % _P
    else:
        lam = (b[1] - a[1]) * pow(b[0] - a[0], _P - 2, _P) % _P
    x = (lam * lam - a[0] - b[0]) % _P
    return x, (lam * (a[0] - x) - a[1]) % _P


def mul(k, pt):
    # Double-and-add over 256 bits.
    acc = None
    for i in range(255, -1, -1):
        acc = add(acc, acc)
        if k >> i & 1:
            acc = add(acc, pt)
    return acc
