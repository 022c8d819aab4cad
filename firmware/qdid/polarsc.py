# Polar code core shared by the fuzzy-extractor profiles 4 (qdid.polar) and 5 (qdid.debias):
# the transform x = u F^(x)n and a successive-cancellation decoder (Arikan, IEEE Trans. IT-55,
# 2009), both on one byte per position, for a length N = 2^n the caller gives.
#
# Decoder: clipped min-sum on int8 LLRs that the caller writes at buf[0:N] (the root):
# f(a, b) = sign(a) sign(b) min(|a|, |b|), g(a, b, s) = clip(b + (1 - 2s) a, -31, 31); an
# information bit is 1 iff its LLR < 0 (a tie decodes to 0). Rate-0 subtrees are skipped (they
# decode to zeros whatever their LLRs; Alamdar-Yazdi and Kschischang, IEEE Comm. Letters 2011):
# bit n of r0 is set iff node n (root 1, children 2n and 2n + 1, leaf of position i = N + i)
# has no information leaf. Signs, minima, clips and selections are shifts and masks, not
# branches: the branches and loop counts follow the public frozen set only, never the response
# or the key. Viper code (native machine code: armv6m on the RP2040, xtensawin on the ESP32, x64
# on the unix port) walking the decoding tree iteratively; the walk is a recursive SC decoder's.
#
# Buffer (2N bytes, the caller's): the active node of each level, level l at offset
# 2N - (2N >> l) with N >> l entries (the root at 0, one leaf at 2N - 2). An entry holds the
# node's LLR until the decoder has read it for the last time, then the node's re-encoded bit: a
# parent's first half takes its left child's bits in the same loop that reads the parent's LLRs
# for the right child, and the whole parent takes [left XOR right, right] once both children are
# done (every read precedes the write to the same entry). On return the root holds the decoded
# codeword, one bit per byte.
from micropython import const
import micropython

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    from micropython import ptr8  # a builtin inside @micropython.viper functions

CLIP = const(31)  # LLR saturation: the margin of a decode with no error


@micropython.viper
def decode(buf, r0, n: int) -> int:
    # SC decoding of the LLRs at buf[0:n] (n = N): leaves the re-encoded codeword at buf[0:n]
    # and returns the smallest |LLR| of an information decision.
    # Node k of size sz at offset o; `down`: entering k, else k is decoded (its bits at o).
    B = ptr8(buf)
    R = ptr8(r0)
    k = 1
    o = 0
    sz = n
    down = 1
    margin = CLIP
    while True:
        if down:
            if sz == 1:
                # An information leaf (frozen leaves are rate-0 nodes, never entered).
                v = int(B[o])
                v -= (v & 0x80) << 1
                s = v >> 7  # -1 iff v < 0
                B[o] = s & 1
                d = ((v ^ s) - s) - margin
                margin += d & (d >> 7)
                down = 0
                continue
            h = sz >> 1
            c = o + sz
            m = k << 1
            j = 0
            if (R[m >> 3] >> (m & 7)) & 1:
                # Left child rate 0: its bits are 0, and the right child's LLRs are g(a, b, 0).
                while j < h:
                    a = int(B[o + j])
                    a -= (a & 0x80) << 1
                    b = int(B[o + h + j])
                    b -= (b & 0x80) << 1
                    B[o + j] = 0
                    v = a + b
                    t = CLIP - v
                    v += t & (t >> 7)  # min(v, 31)
                    t = v + CLIP
                    v -= t & (t >> 7)  # max(v, -31)
                    B[c + j] = v
                    j += 1
                m += 1
            else:
                # Left child's LLRs: f(a, b) = sign(a) sign(b) min(|a|, |b|).
                while j < h:
                    a = int(B[o + j])
                    a -= (a & 0x80) << 1
                    b = int(B[o + h + j])
                    b -= (b & 0x80) << 1
                    s = (a ^ b) >> 7  # -1 iff the signs differ
                    t = a >> 7
                    a = (a ^ t) - t
                    t = b >> 7
                    b = (b ^ t) - t
                    t = a - b
                    b += t & (t >> 7)  # min(|a|, |b|)
                    B[c + j] = (b ^ s) - s
                    j += 1
            k = m
            o = c
            sz = h
            continue
        if k == 1:
            break
        h = sz
        p = o - 2 * sz
        j = 0
        if k & 1:
            # Right child done: parent bits = [left XOR right, right].
            while j < h:
                b = int(B[o + j])
                B[p + h + j] = b
                B[p + j] ^= b
                j += 1
            k >>= 1
            o = p
            sz = 2 * h
            continue
        m = k + 1
        if (R[m >> 3] >> (m & 7)) & 1:
            # Right child rate 0: parent bits = [left, 0].
            while j < h:
                B[p + j] = B[o + j]
                B[p + h + j] = 0
                j += 1
            k >>= 1
            o = p
            sz = 2 * h
            continue
        # Left child done: its bits into the parent's first half, and the right child's LLRs
        # g(a, b, s) = clip(b + (1 - 2s) a) with s the left bit.
        while j < h:
            a = int(B[p + j])
            a -= (a & 0x80) << 1
            b = int(B[p + h + j])
            b -= (b & 0x80) << 1
            s = int(B[o + j])
            B[p + j] = s
            s = 0 - s
            v = b + ((a ^ s) - s)
            t = CLIP - v
            v += t & (t >> 7)
            t = v + CLIP
            v -= t & (t >> 7)
            B[o + j] = v
            j += 1
        k = m
        down = 1
    return margin


@micropython.viper
def encode(buf, info, key, n: int):
    # u at buf[0:n]: the 131 key bits (bit k of the big-endian 17-byte key, lowest first) at the
    # information positions (bit i & 7 of info[i >> 3]), 0 elsewhere; then x = u F^(x)n in
    # place (stage s XORs position j + 2^s into j for every j with bit s clear).
    S = ptr8(buf)
    F = ptr8(info)
    K = ptr8(key)
    k = 0
    i = 0
    while i < n:
        f = (int(F[i >> 3]) >> (i & 7)) & 1
        S[i] = f & (int(K[16 - (k >> 3)]) >> (k & 7))
        k += f
        i += 1
    d = 1
    while d < n:
        i = 0
        while i < n:
            j = i
            while j < i + d:
                S[j] ^= S[j + d]
                j += 1
            i += 2 * d
        d <<= 1


@micropython.viper
def zero(buf, n: int):
    B = ptr8(buf)
    j = 0
    while j < n:
        B[j] = 0
        j += 1
