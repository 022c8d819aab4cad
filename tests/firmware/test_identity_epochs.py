# qdid.identity's owner epochs and re-enrolment (docs/identity.md "5. Seeds") over the unix
# board's silicon model: data/owner.json's epoch E picks seed E's key (epoch 0 the enrolment key
# as before), Identity.public_key_of / use_epoch / adopt_successor, and a pending re-enrolment at
# a cold boot: the current identity from helper.bin, the next from the same read (helper.new
# written once, then reconstructed), on an ageing die, from a profile 4 helper, refused by the
# die, and kept pending by a warm boot. This module looks inside the identity (seeds, the
# extractors), which a boot never does: 128k, as tests/firmware/test_identity.py.
# heapsize: 128k
# timeout: 300
import os
import json
import hashlib
import binascii
import board
from qdid import identity, owner, debias, polar, fuzzy, p256
from qdid.hmac import hkdf
from fwtest import tmpdir, raises, raises_msg

SEED_A = "00112233445566778899aabbccddeeff"


class Rig:
    # A die file and a data dir in /tmp; power_up() is a fresh board (a power cycle).
    def __init__(self, **params):
        self.root = tmpdir()
        self.die = self.root + "/die.json"
        self.data = self.root + "/data"
        self.set_die(**params)

    def set_die(self, **params):
        p = {"seed": SEED_A}
        p.update(params)
        with open(self.die, "w") as f:
            f.write(json.dumps(p))

    def power_up(self):
        return board.make(self.die)

    def boot(self, b=None):
        return identity.boot(b or self.power_up(), self.data)

    def read(self, name):
        try:
            with open(self.data + "/" + name, "rb") as f:
                return f.read()
        except OSError:
            return None

    def owner(self, epoch, pending=None, seq=0):
        owner.save(self.data, epoch, pending, seq)


class Warm:
    # The same die after a warm reset: its SRAM read, and cold_boot() False.
    def __init__(self, b):
        self._b = b

    def __getattr__(self, name):
        return getattr(self._b, name)

    def cold_boot(self):
        return False


def _pub(seed):
    return p256.public_key(p256.scalar_from_seed(seed))


def _hexid(pub):
    return binascii.hexlify(hashlib.sha256(pub).digest()).decode()


def _seed0_of(rig, helper):
    # Seed 0 of the set `helper` gives, recomputed from a fresh read of the same die.
    secret = debias.reproduce(rig.power_up().sram_bits(debias.RESPONSE_LEN), helper)
    return hkdf(secret, hashlib.sha256(helper).digest(), b"qlink/seed/0", 16)


def test_epoch_0_is_the_enrolment_key_with_or_without_an_owner_file():
    rig = Rig()
    first = rig.boot()
    assert first.epoch == 0 and first.pending is None and first.successor is None
    assert first.public_key == _pub(first.seed(0))
    rig.owner(0)
    again = rig.boot()
    assert again.device_id == first.device_id and again.public_key == first.public_key


def test_owner_epoch_e_signs_with_seed_e_and_every_epoch_is_another_identity():
    rig = Rig()
    base = rig.boot()
    ids = [base.device_id]
    for e in range(1, 8):
        rig.owner(e)
        ident = rig.boot()
        assert ident.epoch == e
        assert ident.public_key == _pub(ident.seed(e)) == base.public_key_of(e)
        assert ident.device_id == _hexid(ident.public_key)
        digest = hashlib.sha256(b"epoch %d" % e).digest()
        assert p256.verify_digest(ident.public_key, digest, ident.sign_digest(digest))
        d = p256.scalar_from_seed(ident.seed(e))
        assert ident.private_key_der().find(d.to_bytes(32, "big")) > 0
        ids.append(ident.device_id)
    assert len(set(ids)) == 8
    raises(ValueError, base.public_key_of, 8)  # no seed 8: transfers stop at epoch 7


def test_use_epoch_moves_the_identity_in_ram():
    rig = Rig()
    ident = rig.boot()
    want = ident.public_key_of(2)
    ident.pending = owner.TRANSFER
    ident.use_epoch(2)
    assert (ident.epoch, ident.public_key, ident.pending) == (2, want, None)
    assert ident.device_id == _hexid(want)
    assert ident.csr().find(want) > 0
    ident.wipe()
    raises(identity.IdentityWiped, ident.use_epoch, 3)
    raises(identity.IdentityWiped, ident.public_key_of, 3)


def test_a_corrupt_owner_file_stops_the_boot_instead_of_guessing_epoch_0():
    rig = Rig()
    rig.boot()
    with open(rig.data + "/owner.json", "w") as f:
        f.write('{"v": 1, "epoch": "3"}')
    msg = raises_msg(owner.OwnerError, rig.boot)
    assert "owner epoch" in msg and "restore" in msg
    assert identity.health_failures(rig.data) == 0  # not the PUF's fault


def test_reenrolment_at_a_cold_boot_gives_the_next_identity_from_the_same_read():
    rig = Rig()
    cur = rig.boot()
    old_helper = rig.read("helper.bin")
    rig.owner(2, owner.REENROL, 4)
    ident = rig.boot()
    # The current identity is epoch 2's (a device that changed owners twice).
    assert (ident.epoch, ident.pending) == (2, "reenrol")
    assert ident.device_id == _hexid(cur.public_key_of(2))
    nxt = ident.successor
    assert nxt is not None and nxt.epoch == 0 and ident.successor_error is None
    new_helper = rig.read("helper.new")
    assert new_helper[0] == 5 and len(new_helper) == 468 and new_helper != old_helper
    assert rig.read("helper.bin") == old_helper  # both kept until the server's 200
    assert nxt.public_key == _pub(_seed0_of(rig, new_helper))
    assert nxt.device_id not in (cur.device_id, ident.device_id)
    assert nxt.health["margin"] == debias.MARGIN_MAX and nxt.health["corrected_bits"] == 0
    # Another cold boot before the server answered: the same next identity, from helper.new,
    # which is never written again (the server may hold its key already).
    again = rig.boot()
    assert again.successor.device_id == nxt.device_id
    assert rig.read("helper.new") == new_helper
    assert sorted(os.listdir(rig.data)) == ["helper.bin", "helper.new", "owner.json"]


def test_a_warm_boot_keeps_the_reenrolment_pending_and_writes_nothing():
    rig = Rig()
    cur = rig.boot()
    rig.owner(0, owner.REENROL, 1)
    ident = rig.boot(Warm(rig.power_up()))
    assert ident.device_id == cur.device_id and ident.pending == "reenrol"
    assert ident.successor is None and "warm reset" in ident.successor_error
    assert rig.read("helper.new") is None


def test_adopting_the_successor_wipes_the_current_key():
    rig = Rig()
    rig.boot()
    rig.owner(5, owner.REENROL, 1)
    ident = rig.boot()
    nxt = ident.successor
    want = (nxt.device_id, nxt.public_key)
    old_prk = ident._prk
    ident.adopt_successor()
    assert old_prk == bytearray(32)  # zeroed in place
    assert (ident.device_id, ident.public_key, ident.epoch) == want + (0,)
    assert ident.successor is None and ident.pending is None
    assert ident.public_key == _pub(ident.seed(0))
    raises(identity.IdentityWiped, nxt.seed, 0)
    raises(ValueError, ident.adopt_successor)


def test_a_committed_reenrolment_cut_before_its_rename_is_finished_at_boot():
    # The agent commits owner.json (epoch 0, nothing pending), then renames helper.new over
    # helper.bin; a cut between leaves both helpers: the boot finishes the rename.
    rig = Rig()
    rig.boot()
    rig.owner(3, owner.REENROL, 1)
    nxt = rig.boot().successor.device_id
    new_helper = rig.read("helper.new")
    rig.owner(0)
    ident = rig.boot()
    assert ident.device_id == nxt and ident.epoch == 0 and ident.pending is None
    assert rig.read("helper.bin") == new_helper and rig.read("helper.new") is None


def test_an_ageing_die_is_reenrolled_and_its_next_identity_holds_as_it_ages():
    # Ten years and 85 C after enrolment (a marginal share of 0.13 of the cells, on top of the
    # model's noise): the old helper still decodes, with more corrections than a fresh die has;
    # the fresh helper comes from that read and keeps its identity as the die ages further.
    rig = Rig()
    cur = rig.boot()
    rig.set_die(age_years=10, temperature_c=85)
    rig.owner(0, owner.REENROL, 7)
    ident = rig.boot()
    assert ident.device_id == cur.device_id and ident.health["corrected_bits"] > 100
    nxt = ident.successor.device_id
    rig.owner(0)  # committed by the agent after the 200
    for age in (10, 12):
        rig.set_die(age_years=age, temperature_c=85)
        assert rig.boot().device_id == nxt
    assert rig.read("helper.new") is None and rig.read("helper.bin")[0] == 5


def test_a_profile_4_device_moves_to_profile_5_by_reenrolment():
    rig = Rig()
    os.mkdir(rig.data)
    helper, _ = polar.enrol(rig.power_up().sram_bits(224), os.urandom(17))
    with open(rig.data + "/helper.bin", "wb") as f:
        f.write(helper)
    cur = rig.boot()
    rig.owner(1, owner.REENROL, 2)
    ident = rig.boot()
    assert ident.device_id == _hexid(cur.public_key_of(1)) and ident.successor is not None
    assert rig.read("helper.new")[0] == 5
    nxt = ident.successor.device_id
    rig.owner(0)
    assert rig.boot().device_id == nxt and rig.read("helper.bin")[0] == 5


def test_a_die_the_enrolment_refuses_keeps_the_current_identity_and_the_step_pending():
    # A die of population bias 0.34 reads about 36 % ones: inside the 35-65 % health window,
    # so its profile 2 helper (an earlier firmware's) reconstructs, but outside the 38-62 %
    # profile 5 enrols. The boot goes on as the current identity, says why, counts a health
    # failure and writes no helper.new; the next power-on tries again.
    rig = Rig(bias=0.34)
    os.mkdir(rig.data)
    helper, _ = fuzzy.enrol(rig.power_up().sram_bits(224), bytes(range(17)))
    with open(rig.data + "/helper.bin", "wb") as f:
        f.write(helper)
    cur = rig.boot()
    rig.owner(0, owner.REENROL, 3)
    ident = rig.boot()
    assert ident.device_id == cur.device_id and ident.successor is None
    assert ident.successor_error.startswith("DieBiasError: SRAM power-up share of ones is 3")
    assert "38-62%" in ident.successor_error
    assert rig.read("helper.new") is None and identity.health_failures(rig.data) == 1
    assert owner.load(rig.data) == (0, "reenrol", 3)


def test_a_fresh_enrolment_starts_epoch_0_whatever_owner_state_was_left():
    # helper.bin lost (a decommission erased it, or the flash): the owner state left behind
    # belongs to keys that are gone; the new set starts at epoch 0 with nothing pending.
    rig = Rig()
    rig.boot()
    os.remove(rig.data + "/helper.bin")
    rig.owner(4, owner.REENROL, 2)
    with open(rig.data + "/helper.new", "wb") as f:
        f.write(b"\x05" + bytes(467))
    ident = rig.boot()
    assert ident.epoch == 0 and ident.pending is None and ident.successor is None
    assert ident.public_key == _pub(ident.seed(0))
    assert sorted(os.listdir(rig.data)) == ["helper.bin"]
