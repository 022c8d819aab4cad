# Plain references for the polar decoders of profiles 4 and 5 (qdid.polarsc), written apart from
# the firmware: the rate-0 table an information set implies, and recursive SC decoding.
import array


def rate0_table(info, n):
    # Bit k of the table: node k of the decoding tree (root 1, children 2k and 2k + 1, leaf
    # n + i) has no information leaf below it.
    want = bytearray(2 * n // 8)
    flags = bytearray(2 * n)
    for i in range(n):
        flags[n + i] = 0 if (info >> i) & 1 else 1
    for k in range(n - 1, 0, -1):
        flags[k] = flags[2 * k] & flags[2 * k + 1]
    for k in range(2 * n):
        if flags[k]:
            want[k >> 3] |= 1 << (k & 7)
    return bytes(want)


def sc_decode(llr, info):
    # Successive cancellation with the firmware's clipped min-sum arithmetic and no rate-0
    # skipping: -> (re-encoded bits of every position, smallest information |LLR|).
    margin = [31]

    def rec(ll, first):
        n = len(ll)
        if n == 1:
            if (info >> first) & 1:
                margin[0] = min(margin[0], abs(ll[0]))
                return bytearray([1 if ll[0] < 0 else 0])
            return bytearray(1)
        h = n // 2
        child = array.array("b", bytes(h))
        for j in range(h):
            a, b = ll[j], ll[j + h]
            m = min(abs(a), abs(b))
            child[j] = -m if (a < 0) != (b < 0) else m
        sl = rec(child, first)
        for j in range(h):
            child[j] = max(-31, min(31, ll[j + h] + (-ll[j] if sl[j] else ll[j])))
        sr = rec(child, first + h)
        child = None
        sl.extend(sr)
        for j in range(h):
            sl[j] ^= sr[j]
        return sl

    bits = rec(llr, 0)
    return bits, margin[0]
