# Device identity (firmware/qdid/identity.py) over the unix board's silicon model.
# This module keeps every qdid module loaded at once (fuzzy, entropy, p256, hkdf) to look inside
# the identity, which a boot never does (all three fuzzy extractors included: 128k, not 96k);
# tests/host/test_identity_host.py runs the boot itself
# in the 64 KiB identity budget.
# heapsize: 128k
# timeout: 300
import os
import json
import hashlib
import binascii
import board
from qdid import QdidError
from qdid import identity
from qdid import fuzzy
from qdid import polar
from qdid import debias
from qdid import entropy
from qdid import p256
from qdid.hmac import hkdf
from fwtest import tmpdir as _tmpdir, raises_msg as _raises

SEED_A = "00112233445566778899aabbccddeeff"
SEED_B = "ffeeddccbbaa99887766554433221100"


def _rmtree(path):
    for name in os.listdir(path):
        p = path + "/" + name
        if os.stat(p)[0] & 0x4000:
            _rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


class Rig:
    # A die file and a data dir in /tmp; power_up() is a fresh board object (a power cycle).
    def __init__(self, seed=SEED_A, **params):
        self.root = _tmpdir()
        self.die = self.root + "/die.json"
        self.data = self.root + "/data"
        p = {"seed": seed}
        p.update(params)
        with open(self.die, "w") as f:
            f.write(json.dumps(p))

    def power_up(self):
        return board.make(self.die)

    def boot(self, b=None):
        return identity.boot(b or self.power_up(), self.data)

    def helper(self):
        with open(self.data + "/helper.bin", "rb") as f:
            return f.read()

    def close(self):
        _rmtree(self.root)


class FakeBoard:
    # Board with a scripted SRAM read and cold/warm flag; noise from urandom.
    name = "fake"

    def __init__(self, sram, cold=True):
        self._sram = sram
        self._cold = cold

    def sram_bits(self, n):
        return self._sram[:n]

    def noise(self, n):
        return os.urandom(n)

    def unique_id(self):
        return b"fakeuid0"

    def cold_boot(self):
        return self._cold


def test_same_device_id_on_every_boot():
    rig = Rig()
    try:
        first = rig.boot()
        helper = rig.helper()
        for _ in range(5):
            again = rig.boot()
            assert again.device_id == first.device_id
            assert again.public_key == first.public_key
        assert rig.helper() == helper  # enrolled once, never rewritten
    finally:
        rig.close()


def test_device_id_is_sha256_of_the_uncompressed_public_key():
    rig = Rig()
    try:
        ident = rig.boot()
        assert len(ident.public_key) == 65 and ident.public_key[0] == 4
        assert p256.is_valid_public_key(ident.public_key)
        want = binascii.hexlify(hashlib.sha256(ident.public_key).digest()).decode()
        assert ident.device_id == want
        assert len(ident.device_id) == 64 and ident.device_id == ident.device_id.lower()
        assert p256.public_key(p256.scalar_from_seed(ident.seed(0))) == ident.public_key
    finally:
        rig.close()


def test_different_dies_get_different_ids():
    a = Rig(SEED_A)
    b = Rig(SEED_B)
    try:
        assert a.boot().device_id != b.boot().device_id
    finally:
        a.close()
        b.close()


def test_re_enrolling_the_same_die_gives_a_new_id():
    # The identity is bound to the enrolment (fresh key and response), not to the die alone.
    rig = Rig()
    try:
        first = rig.boot().device_id
        os.remove(rig.data + "/helper.bin")
        assert rig.boot().device_id != first
    finally:
        rig.close()


def test_seeds_follow_hkdf_over_the_fuzzy_secret():
    rig = Rig()
    try:
        ident = rig.boot()
        helper = rig.helper()
        assert helper[0] == 5  # new enrolments use the debiased polar profile
        assert len(helper) == debias.HELPER_LEN == 468
        secret = debias.reproduce(rig.power_up().sram_bits(debias.RESPONSE_LEN), helper)
        salt = hashlib.sha256(helper).digest()
        for i in range(8):
            assert ident.seed(i) == hkdf(secret, salt, b"qlink/seed/" + str(i).encode(), 16)
    finally:
        rig.close()


def test_changing_one_seed_label_changes_only_that_seed():
    # Each seed is its own HKDF-Expand output: a label change moves that seed and no other.
    from qdid.hmac import hkdf_expand

    rig = Rig()
    try:
        ident = rig.boot()
        prk = bytes(ident._prk)
        labels = [b"qlink/seed/" + str(i).encode() for i in range(8)]
        base = [hkdf_expand(prk, label, 16) for label in labels]
        assert base == [ident.seed(i) for i in range(8)]
        for k in range(8):
            changed = list(labels)
            changed[k] = changed[k] + b"'"
            out = [hkdf_expand(prk, label, 16) for label in changed]
            assert [i for i in range(8) if out[i] != base[i]] == [k]
    finally:
        rig.close()


def test_seeds_are_pairwise_distinct_16_byte_values():
    rig = Rig()
    try:
        ident = rig.boot()
        seeds = [ident.seed(i) for i in range(8)]
        for s in seeds:
            assert len(s) == 16
        for i in range(8):
            for j in range(i + 1, 8):
                assert seeds[i] != seeds[j]
        _raises(ValueError, ident.seed, 8)
        _raises(ValueError, ident.seed, -1)
    finally:
        rig.close()


def test_nothing_secret_under_the_data_dir():
    rig = Rig()
    try:
        ident = rig.boot()
        ident = rig.boot()  # a reconstructing boot must not write either
        helper = rig.helper()
        assert helper[0] == 5  # new enrolments use the debiased polar profile
        secret = debias.reproduce(rig.power_up().sram_bits(debias.RESPONSE_LEN), helper)
        secrets = [ident.seed(i) for i in range(8)]
        secrets.append(ident._d.to_bytes(32, "big"))
        secrets.append(secret)
        secrets.append(bytes(ident._prk))
        names = os.listdir(rig.data)
        assert names == ["helper.bin"]  # no temporary file left either
        for name in names:
            with open(rig.data + "/" + name, "rb") as f:
                content = f.read()
            hexed = binascii.hexlify(content)
            for s in secrets:
                # Any 8-byte window of a secret, raw or as hex, is absent.
                for k in range(0, len(s) - 7, 4):
                    assert s[k : k + 8] not in content
                    assert binascii.hexlify(s[k : k + 8]) not in hexed
    finally:
        rig.close()


def test_warm_boot_refuses_to_enrol():
    rig = Rig()
    try:
        sram = rig.power_up().sram_bits(fuzzy.RESPONSE_LEN)
        msg = _raises(identity.EnrolmentRefused, rig.boot, FakeBoard(sram, cold=False))
        assert "power" in msg
        _raises(OSError, os.stat, rig.data + "/helper.bin")
    finally:
        rig.close()


def test_warm_boot_reconstructs_when_the_sram_kept_its_power_up_state():
    rig = Rig()
    try:
        first = rig.boot().device_id
        sram = rig.power_up().sram_bits(debias.RESPONSE_LEN)
        assert rig.boot(FakeBoard(sram, cold=False)).device_id == first
    finally:
        rig.close()


def test_warm_boot_with_overwritten_sram_says_power_cycle():
    rig = Rig()
    try:
        rig.boot()
        # Balanced, no repeated block, not the die.
        written = bytes((i * 37 + (i >> 8) * 11) & 0xFF for i in range(debias.RESPONSE_LEN))
        msg = _raises(polar.ReconstructionError, rig.boot, FakeBoard(written, cold=False))
        assert "warm reset" in msg
    finally:
        rig.close()


def test_clone_die_with_a_copied_helper_is_rejected():
    a = Rig(SEED_A)
    try:
        a.boot()
        with open(a.die, "w") as f:
            f.write(json.dumps({"seed": SEED_B}))
        clone = a.power_up()
        _raises(polar.ReconstructionError, a.boot, clone)
    finally:
        a.close()


def _weighted(w, n=fuzzy.RESPONSE_LEN):
    # n bytes with exactly w bits set, spread by a step coprime with 8 * n so that no 16-byte
    # block repeats or is all 0 / all 1.
    out = bytearray(n)
    for i in range(w):
        p = (i * 1031) % (8 * n)
        out[p // 8] |= 1 << (p % 8)
    return bytes(out)


def test_sram_health_checks():
    rig = Rig()
    try:
        n = fuzzy.RESPONSE_LEN
        msg = _raises(identity.SramHealthError, rig.boot, FakeBoard(bytes(n)))
        assert "all 0" in msg
        msg = _raises(identity.SramHealthError, rig.boot, FakeBoard(b"\xff" * n))
        assert "all 1" in msg
        # Hamming weight bounds 35 %..65 % of 1792 bits: 628 = 35.04 % passes, 627 fails.
        for bad in (627, 1165):
            msg = _raises(identity.SramHealthError, identity.check_sram, _weighted(bad))
            assert "35-65" in msg
        identity.check_sram(_weighted(628))
        identity.check_sram(_weighted(1164))
        _raises(OSError, os.stat, rig.data + "/helper.bin")
        # Two failed boots so far, counted in the public health file.
        assert identity.health_failures(rig.data) == 2
    finally:
        rig.close()


def test_sram_with_a_written_block_is_refused():
    good = _weighted(896)
    identity.check_sram(good)
    for fill, word in ((b"\x00" * 16, "all-0"), (b"\xff" * 16, "all-1")):
        bad = good[:64] + fill + good[80:]
        msg = _raises(identity.SramHealthError, identity.check_sram, bad)
        assert word in msg and "byte 64" in msg
    rep = good[:96] + good[80:96] + good[112:]
    msg = _raises(identity.SramHealthError, identity.check_sram, rep)
    assert "repeats a block at byte 96" in msg
    _raises(identity.SramHealthError, identity.check_sram, b"")


def test_health_reports_margin_corrections_and_failures():
    rig = Rig()
    try:
        first = rig.boot()
        assert first.health["margin"] == 31 and first.health["health_failures"] == 0
        again = rig.boot()
        h = again.health
        assert sorted(h) == [
            "code_errors",
            "corrected_bits",
            "corrected_limit",
            "health_failures",
            "margin",
        ]
        assert h["corrected_limit"] == 2048 // 4  # 25 % of profile 5's decoded bits
        assert first.health["corrected_limit"] == h["corrected_limit"]
        # The model's ~4 % BER over the 2048 cells of the kept pairs: dozens of corrected cells,
        # in as many pairs or a few fewer (both cells of a pair rarely flip together); at that
        # noise the decoder's smallest information LLR stays saturated or close to it.
        assert 30 < h["corrected_bits"] < 160
        # The difference is the pairs with both cells flipped, a rare count: mean 2.6 and at most
        # 7 over 60 boots. As Poisson(2.6), 16 or more has odds of about 2e-8.
        assert h["corrected_bits"] - 15 <= h["code_errors"] <= h["corrected_bits"]
        assert 10 <= h["margin"] <= 31
        assert h["health_failures"] == 0
        with open(rig.die, "w") as f:
            f.write(json.dumps({"seed": SEED_B}))
        _raises(polar.ReconstructionError, rig.boot)
        with open(rig.die, "w") as f:
            f.write(json.dumps({"seed": SEED_A}))
        assert rig.boot().health["health_failures"] == 1
    finally:
        rig.close()


def test_too_noisy_a_response_fails_closed_even_when_decoded():
    # A profile-2 helper (repetition 7 + BCH, still reconstructed): 3 of the 7 copies of every
    # code bit flipped still decode (no code error), but 765 of 1785 bits (42 %) were corrected,
    # far beyond any healthy die: fail closed.
    rig = Rig()
    try:
        resp = bytearray(_weighted(896))
        helper, secret = fuzzy.enrol(resp, bytes(range(17)))
        os.mkdir(rig.data)
        with open(rig.data + "/helper.bin", "wb") as f:
            f.write(helper)
        assert rig.boot(FakeBoard(bytes(resp))).health["margin"] == 18
        for blk in range(255):
            for j in range(3):
                b = 255 * j + blk + 7
                resp[223 - (b >> 3)] ^= 1 << (b & 7)
        msg = _raises(identity.SramHealthError, rig.boot, FakeBoard(bytes(resp)))
        assert "42%" in msg and "operating range" in msg
        assert fuzzy.stats["corrected_bits"] == 765 and fuzzy.stats["margin"] == 18
        assert identity.health_failures(rig.data) == 1
    finally:
        rig.close()


def test_boot_drops_the_extractor_it_loaded():
    import sys

    rig = Rig()
    try:
        saved = sys.modules.pop("qdid.debias")
        core = sys.modules.pop("qdid.polarsc")
        try:
            rig.boot()
            assert "qdid.debias" not in sys.modules and "qdid.polarsc" not in sys.modules
        finally:
            sys.modules["qdid.debias"] = saved
            sys.modules["qdid.polarsc"] = core
        rig.boot()
        assert "qdid.debias" in sys.modules  # loaded before the boot: left alone
    finally:
        rig.close()


def test_boot_makes_the_board_forget_its_sram_snapshot():
    rig = Rig()
    try:
        b = rig.power_up()
        rig.boot(b)
        _raises(ValueError, b.sram_bits, 16)
    finally:
        rig.close()


def test_sign_digest_verifies_against_the_public_key():
    rig = Rig()
    try:
        ident = rig.boot()
        digest = hashlib.sha256(b"qlink").digest()
        sig = ident.sign_digest(digest)
        assert len(sig) == 64
        assert p256.verify_digest(ident.public_key, digest, sig)
        assert not p256.verify_digest(ident.public_key, hashlib.sha256(b"x").digest(), sig)
    finally:
        rig.close()


def test_csr_and_private_key_der_carry_the_identity():
    rig = Rig()
    try:
        ident = rig.boot()
        csr = ident.csr()
        assert csr[0] == 0x30
        assert ident.device_id.encode() in csr
        assert ident.public_key in csr
        key = ident.private_key_der()
        assert key[0] == 0x30 and ident._d.to_bytes(32, "big") in key
    finally:
        rig.close()


def test_wipe_drops_the_key():
    rig = Rig()
    try:
        ident = rig.boot()
        device_id = ident.device_id
        ident.wipe()
        assert ident._prk == bytearray(32)
        assert ident._d is None
        digest = bytes(32)
        _raises(identity.IdentityWiped, ident.sign_digest, digest)
        _raises(identity.IdentityWiped, ident.seed, 0)
        _raises(identity.IdentityWiped, ident.csr)
        _raises(identity.IdentityWiped, ident.private_key_der)
        assert ident.device_id == device_id  # public values stay
        assert issubclass(identity.IdentityWiped, QdidError)
    finally:
        rig.close()


def test_corrupt_helper_file_is_a_qdid_error():
    rig = Rig()
    try:
        rig.boot()
        with open(rig.data + "/helper.bin", "wb") as f:
            f.write(b"\x01\x1f")
        _raises(polar.HelperError, rig.boot)
    finally:
        rig.close()


def test_entropy_is_ready_after_boot():
    rig = Rig()
    try:
        entropy._drbg = None
        rig.boot()
        assert entropy.ready()
    finally:
        rig.close()


def _enrolled_with(rig, fe):
    # A device enrolled by an earlier firmware with profile `fe`: its helper on the data dir.
    resp = rig.power_up().sram_bits(fe.RESPONSE_LEN)
    helper, _ = fe.enrol(resp, os.urandom(17))
    os.mkdir(rig.data)
    with open(rig.data + "/helper.bin", "wb") as f:
        f.write(helper)
    return helper


def test_profile_4_and_2_helpers_still_reconstruct():
    for fe in (polar, fuzzy):
        rig = Rig()
        try:
            helper = _enrolled_with(rig, fe)
            first = rig.boot()
            assert first.health["health_failures"] == 0
            for _ in range(3):
                assert rig.boot().device_id == first.device_id
            assert rig.helper() == helper  # never re-enrolled behind the owner's back
        finally:
            rig.close()


def test_dies_across_the_supported_bias_range_enrol_and_reconstruct():
    # Population biases 0.42 and 0.58 (real SRAM's range) and a hot, aged read of the first.
    for bias in (0.42, 0.58):
        rig = Rig(SEED_B, bias=bias)
        try:
            first = rig.boot()
            assert rig.helper()[0] == 5
            for _ in range(3):
                assert rig.boot().device_id == first.device_id
        finally:
            rig.close()
    rig = Rig(SEED_A, bias=0.42)
    try:
        first = rig.boot().device_id
        with open(rig.die, "w") as f:
            f.write(
                json.dumps({"seed": SEED_A, "bias": 0.42, "temperature_c": 85, "age_years": 10})
            )
        assert rig.boot().device_id == first
    finally:
        rig.close()


def test_a_die_outside_the_supported_bias_range_is_refused_at_enrolment():
    # Population biases 0.34 and 0.64 (this die reads about 36 % and 64 % ones): inside the
    # 35-65 % health window, outside the 38-62 % profile 5 supports. Refused with a sentence
    # that says what to do, counted as a health failure, nothing written.
    for bias, lo, hi, share in ((0.34, 35, 38, "3"), (0.64, 62, 65, "6")):
        rig = Rig(SEED_A, bias=bias)
        try:
            w = identity.hamming_weight(rig.power_up().sram_bits(debias.RESPONSE_LEN))
            assert lo * 5120 < w * 100 < hi * 5120, w  # the premise: this die's share
            msg = _raises(debias.DieBiasError, rig.boot)
            assert ("share of ones is " + share) in msg and "38-62%" in msg
            assert "another board" in msg
            assert issubclass(debias.DieBiasError, QdidError)
            _raises(OSError, os.stat, rig.data + "/helper.bin")
            assert identity.health_failures(rig.data) == 1
        finally:
            rig.close()
    # Population bias 0.30 reads about 32 % ones: the health check refuses it first.
    rig = Rig(SEED_A, bias=0.30)
    try:
        assert "too biased to enrol" in _raises(identity.SramHealthError, rig.boot)
    finally:
        rig.close()
