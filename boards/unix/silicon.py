# Silicon model of one die's power-up SRAM, for the unix board.
#
# An SRAM cell is a pair of cross-coupled inverters; at power-up it settles to 0 or 1 depending
# on the mismatch of its transistors. Most cells are strongly skewed (same value at nearly every
# power-up), a share is balanced enough that thermal noise decides (noisy cells), and a change of
# temperature makes some stable cells marginal. This model reproduces those three effects:
#
#   per cell, drawn once per die from the die seed (deterministic, SHA-256 counter stream):
#     N  noisy?            P = noisy_share                 (quantised to 1/256)
#     V  stable value      P(V=1) = bias                   (quantised to 1/256)
#     T  noisy level       0..15, a noisy cell reads 1 with p = (2T+1)/32 (spread over the middle)
#     M  marginal under this stress: any cell with probability
#        min(temp_coeff * |temperature_c - 25| + supply_coeff * |supply_v - 3.3|
#            + age_coeff * age_years, 0.5)
#        (temperature and supply move the transistors' threshold voltages, ageing by NBTI shifts
#        them for good; Maes, "PUF-based key generation", 2013, ch. 4 measures all three); hot
#        and cold pick different cells, and a larger stress keeps the cells of a smaller one
#        (threshold compare on the same draw).
#   per power-up, drawn fresh from os.urandom:
#     noisy cell    -> 1 with its p
#     stable cell   -> V, flipped with p = 1/256 (no cell is perfectly stable)
#     marginal stable cell -> additionally flipped with p = 1/2
#     marginal noisy cell  -> 1 with p = 1/2 (the stress moves its balance point to the middle:
#                             temperature shifts noisy cells as well as stable ones)
#
# Every per-cell draw is bit-sliced: 2048 cells at a time as one big integer per bit-plane, so a
# probability compare costs a handful of integer operations per plane, not a Python loop per
# cell (4 KiB of SRAM in well under a second on the Unix port).
#
# Expected bit error rate between two power-ups at the defaults (bias 0.5, noisy_share 0.1, 25 C):
#   noisy cells: share 26/256; BER of a cell with p against another read is 2p(1-p); averaged over
#     p = (2T+1)/32, T uniform in 0..15: 2 * (1/2 - 5456/16384) = 1/3
#   stable cells: 2 * (1/256) * (255/256) = 0.00778
#   total: 26/256 * 1/3 + 230/256 * 0.00778 = 0.0339 + 0.0070 = 0.0408
# A stress (temperature, supply, age) adds the marginal share s: about + s * 0.46 to the BER.
# qdid.polar and qdid.fuzzy are designed for 15-20 % i.i.d. BER, well above this model at any
# stress below s = 0.2.
from micropython import const
import hashlib
import json
import os

_CHUNK = const(256)  # bytes of SRAM modelled per bit-sliced step (2048 cells)
_HASH = const(32)  # SHA-256 output, bytes
_REF_C = const(25)  # reference temperature of the die parameters, degrees C
_REF_V = 3.3  # reference supply of the die parameters, volts
_STABLE_FLIP_PLANES = const(8)  # a stable cell flips when 8 fresh bits are all 1: p = 1/256

DEFAULTS = {
    "noisy_share": 0.1,  # share of cells that noise decides
    "bias": 0.5,  # P(stable value = 1)
    "temperature_c": 25,  # die temperature at power-up, degrees C
    "temp_coeff": 0.0015,  # share of cells made marginal per degree C away from 25
    "supply_v": 3.3,  # supply voltage at power-up, volts
    "supply_coeff": 0.05,  # share of cells made marginal per volt away from 3.3 V
    "age_years": 0,  # operating years since enrolment
    "age_coeff": 0.004,  # share of cells made marginal per year of ageing
    "size": 8192,  # bytes of SRAM on the die
}


class DieError(Exception):
    # The die file is missing or malformed: the board cannot power up without its silicon.
    pass


def _q8(p):
    # Probability -> threshold out of 256 (a draw r in 0..255 is "hit" when r < threshold).
    if p <= 0:
        return 0
    if p >= 1:
        return 256
    return int(p * 256 + 0.5)


class Die:
    def __init__(self, params):
        seed = params.get("seed")
        if not isinstance(seed, str) or not seed:
            raise DieError("die file has no hex 'seed'")
        try:
            self._seed = bytes.fromhex(seed)
        except ValueError:
            raise DieError("die 'seed' is not hex")
        p = {}
        for k in DEFAULTS:
            v = params.get(k, DEFAULTS[k])
            if not isinstance(v, (int, float)):
                raise DieError("die parameter '%s' must be a number" % k)
            p[k] = v
        if not 0 <= p["noisy_share"] <= 1 or not 0 <= p["bias"] <= 1:
            raise DieError("die noisy_share and bias must lie in [0, 1]")
        if p["temp_coeff"] < 0 or p["size"] <= 0 or p["size"] % _CHUNK:
            raise DieError("die temp_coeff must be >= 0, size a positive multiple of 256")
        if p["supply_coeff"] < 0 or p["age_coeff"] < 0 or p["age_years"] < 0:
            raise DieError("die supply_coeff, age_coeff and age_years must be >= 0")
        self.size = p["size"]
        self.temperature_c = p["temperature_c"]
        self._t_noisy = _q8(p["noisy_share"])
        self._t_bias = _q8(p["bias"])
        dt = p["temperature_c"] - _REF_C
        stress = p["temp_coeff"] * abs(dt) + p["supply_coeff"] * abs(p["supply_v"] - _REF_V)
        stress += p["age_coeff"] * p["age_years"]
        self._t_marg = _q8(min(stress, 0.5))
        self._hot = dt > 0
        self._all = (1 << (8 * _CHUNK)) - 1
        self._buf = bytearray(_CHUNK)

    def uid(self):
        # The chip's factory ID: public, a one-way function of the die seed.
        return hashlib.sha256(b"qlink/die/uid\x00" + self._seed).digest()[:8]

    def _plane(self, chunk, label, j):
        # One deterministic bit-plane of a chunk:
        # SHA-256(seed || label || plane || chunk || counter), counter over the chunk's blocks.
        buf = self._buf
        for i in range(_CHUNK // _HASH):
            h = hashlib.sha256(self._seed)
            h.update(label)
            h.update(bytes((j, chunk >> 8, chunk & 0xFF, i)))
            buf[i * _HASH : (i + 1) * _HASH] = h.digest()
        return int.from_bytes(buf, "big")

    def _fresh(self):
        return int.from_bytes(os.urandom(_CHUNK), "big")

    def _below(self, c, label, t):
        # Cells whose 8-bit draw (plane 0 is the most significant bit) is < t, bit-sliced:
        # walk from the MSB keeping "equal so far"; a 0 draw bit under a 1 threshold bit wins.
        if t <= 0:
            return 0
        if t >= 256:
            return self._all
        lt = 0
        eq = self._all
        for j in range(8):
            bit = (t >> (7 - j)) & 1
            r = self._plane(c, label, j)
            if bit:
                lt |= eq & (r ^ self._all)
                eq &= r
            else:
                eq &= r ^ self._all
            if not (t & ((1 << (7 - j)) - 1)):
                break  # no threshold bit left below: lt is final
        return lt

    def skew(self, c):
        # The die's fixed cell parameters for chunk c (cells 2048*c ..): bit-planes of the
        # noisy mask, the stable values, the marginal-under-this-stress mask, and the four
        # bit-planes (MSB first) of each noisy cell's level T. Same die seed -> same planes.
        noisy = self._below(c, b"noisy", self._t_noisy)
        value = self._below(c, b"bias", self._t_bias)
        marg = 0
        if self._t_marg:
            marg = self._below(c, b"hot" if self._hot else b"cold", self._t_marg)
        levels = tuple(self._plane(c, b"level", j) for j in range(4))
        return noisy, value, marg, levels

    def _chunk(self, c):
        allb = self._all
        noisy, value, marg, levels = self.skew(c)
        # Noisy cells: fresh 5-bit draw r < 2T+1 <=> p = (2T+1)/32.
        lt = 0
        eq = allb
        for k in levels:
            r = self._fresh()
            lt |= eq & k & (r ^ allb)
            eq &= (k ^ r) ^ allb
        lt |= eq & (self._fresh() ^ allb)  # threshold LSB is 1 for every cell
        flip = allb
        for _ in range(_STABLE_FLIP_PLANES):
            flip &= self._fresh()
        noisy_out = lt & noisy
        if marg:
            coin = self._fresh()
            flip ^= marg & coin
            noisy_out = (noisy_out & (marg ^ allb)) | (coin & noisy & marg)
        stable = (value ^ flip) & (noisy ^ allb)
        return (noisy_out | stable).to_bytes(_CHUNK, "big")

    def power_up(self, nbytes):
        # A fresh power-up state of the first nbytes of the SRAM (bytearray).
        if nbytes < 0 or nbytes > self.size:
            raise ValueError("die has %d bytes of SRAM" % self.size)
        n = (nbytes + _CHUNK - 1) // _CHUNK
        out = bytearray(n * _CHUNK)
        for c in range(n):
            out[c * _CHUNK : (c + 1) * _CHUNK] = self._chunk(c)
        if len(out) != nbytes:
            out = out[:nbytes]
        return out  # a bytearray: no second copy of a 4 KiB read in a small heap


def load(path=None):
    # The die named by QLINK_DIE (a JSON file outside the device filesystem, written by the rig).
    if path is None:
        path = os.getenv("QLINK_DIE")
    if not path:
        raise DieError(
            "QLINK_DIE is not set: the unix board needs its die file (JSON with a hex 'seed'); "
            "the rig writes one per emulated board, or set QLINK_DIE=/path/to/die.json"
        )
    try:
        with open(path) as f:
            params = json.load(f)
    except OSError:
        raise DieError("cannot read the die file named by QLINK_DIE: %s" % path)
    except ValueError:
        raise DieError("die file is not JSON: %s" % path)
    if not isinstance(params, dict):
        raise DieError("die file must hold a JSON object: %s" % path)
    return Die(params)
