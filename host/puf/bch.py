"""The binary BCH code of the firmware's fuzzy extractor (profile 2), computed from first
principles so that the firmware's constants can be checked against it.

GF(2^8) with the primitive polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11D); the narrow-sense
BCH(255, k, t) code's generator is the product of the distinct minimal polynomials of
alpha^1 .. alpha^(2t) (MacWilliams and Sloane, ch. 7 and 9).
"""

from __future__ import annotations

PRIMITIVE = 0x11D
N = 255


def gf_tables() -> tuple[list[int], list[int]]:
    """exp (length 510, so that exp[a + b] needs no reduction) and log tables of GF(2^8)."""
    exp = [0] * 510
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= PRIMITIVE
    for i in range(255, 510):
        exp[i] = exp[i - 255]
    return exp, log


def _gf_mul(a: int, b: int, exp: list[int], log: list[int]) -> int:
    if a == 0 or b == 0:
        return 0
    return exp[log[a] + log[b]]


def cyclotomic_coset(r: int) -> list[int]:
    coset = [r]
    c = (2 * r) % N
    while c != r:
        coset.append(c)
        c = (2 * c) % N
    return coset


def generator(t: int) -> int:
    """g(x) as an integer, bit i = coefficient of x^i."""
    exp, log = gf_tables()
    seen: set[int] = set()
    g = 1
    for j in range(1, 2 * t + 1):
        if j in seen:
            continue
        coset = cyclotomic_coset(j)
        seen.update(coset)
        # Minimal polynomial: product of (x + alpha^c) over the coset; coefficients in GF(2^8)
        # end up in GF(2).
        poly = [1]
        for c in coset:
            a = exp[c]
            nxt = [0] * (len(poly) + 1)
            for i, coef in enumerate(poly):
                nxt[i + 1] ^= coef
                nxt[i] ^= _gf_mul(coef, a, exp, log)
            poly = nxt
        if any(coef not in (0, 1) for coef in poly):
            raise ArithmeticError("minimal polynomial is not binary: tables are wrong")
        m = sum(coef << i for i, coef in enumerate(poly))
        g = clmul(g, m)
    return g


def dimension(t: int) -> int:
    return N - (generator(t).bit_length() - 1)


def clmul(a: int, b: int) -> int:
    """Product of two GF(2)[x] polynomials held as integers."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        b >>= 1
    return r


def syndromes(word: int, t: int) -> list[int]:
    exp, _ = gf_tables()
    out = []
    for j in range(1, 2 * t + 1):
        s = 0
        for i in range(N):
            if (word >> i) & 1:
                s ^= exp[(i * j) % 255]
        out.append(s)
    return out
