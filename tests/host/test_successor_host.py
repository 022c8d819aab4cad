"""Owner epochs and the successor request as the device makes them, checked with `cryptography`
on the host against docs/identity.md "5. Seeds" and docs/protocol.md "Successor identities".

The device runs the firmware compiled to .mpy on the unix board over its die, one process per
power cycle; test scripts (never shipped) print the fuzzy extractor's secret so that the host can
recompute every seed with its own HKDF, every key from its seed, and check the successor
request's signature over the page's message, which this file spells out on its own. The
re-enrolment boot (both reconstructions and an enrolment) must run in the identity's heap
budget, 64 KiB, as the plain boot does."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hil import unixport

SEED_A = "00112233445566778899aabbccddeeff"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Test-only device scripts. SECRET: the extractor's secret of a helper file from this power-up
# (the board's snapshot is read before the boot forgets it); KEYS: each epoch's public key.
SECRET = """
import board, binascii
from qdid import debias
b = board.make()
with open("data/%s", "rb") as f:
    helper = f.read()
secret = debias.reproduce(b.sram_bits(debias.RESPONSE_LEN), helper)
print("SECRET", binascii.hexlify(secret).decode())
"""

KEYS = """
import board, binascii
from qdid import identity
ident = identity.boot(board.make())
print("EPOCH", ident.epoch, ident.device_id)
for e in range(8):
    print("PUB", e, binascii.hexlify(ident.public_key_of(e)).decode())
"""

# The successor request of the pending step, through agent.successor with a client that prints
# the body and answers 409 (so that nothing moves: the device gives the step up). The agent's
# step runs in the agent's heap (the RP2040 budget), after the identity's boot.
REQUEST = """
import board, json
from qdid import identity
from agent import successor

class Client:
    host = "localhost"
    retry_after = 0
    def post(self, path, obj):
        print("POST", path)
        print("BODY", json.dumps(obj))
        return 409, {"error": "no_successor_expected", "detail": "test"}

class State:
    move = True
    def ack(self, seq, status, reason=None):
        print("ACK", seq, status, reason)

ident = identity.boot(board.make())
print("SUCCESSOR", ident.successor.device_id if ident.successor else "-")
successor.run(Client(), ident, State(), "data")
"""

# The re-enrolment boot alone, at the identity budget: its peak heap and result.
REENROL_BOOT = """
import board, gc
from qdid import identity
ident = identity.boot(board.make())
print("IDS", ident.device_id, ident.successor.device_id if ident.successor else "-")
gc.collect()
print("FREE", gc.mem_free())
"""


@dataclass
class Device:
    fs: Path
    die: Path

    def run(self, code: str, heap: int = unixport.HEAP_IDENTITY) -> dict[str, list[list[str]]]:
        """One power cycle running `code`; its `TAG value...` lines, by tag."""
        proc = unixport.run(
            [],
            stdin=code,
            heap=heap,
            cwd=self.fs,
            env={"QLINK_DIE": str(self.die), "QLINK_WARM_BOOT": "0"},
            path=[unixport.compiled_firmware()],
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out: dict[str, list[list[str]]] = {}
        for line in proc.stdout.splitlines():
            tag, *values = line.split(" ", 1) if line.startswith("BODY") else line.split()
            out.setdefault(tag, []).append(values)
        return out

    def owner(self, doc: dict[str, Any]) -> None:
        (self.fs / "data" / "owner.json").write_text(json.dumps(doc))

    def secret(self, helper: str = "helper.bin") -> bytes:
        return bytes.fromhex(self.run(SECRET % helper)["SECRET"][0][0])

    def helper(self, name: str = "helper.bin") -> bytes:
        return (self.fs / "data" / name).read_bytes()


def _blank(tmp_path: Path) -> Device:
    """A board over a new die, its filesystem holding an empty data/."""
    fs = tmp_path / "fs"
    (fs / "data").mkdir(parents=True)
    die = tmp_path / "die.json"
    die.write_text(json.dumps({"seed": SEED_A}))
    return Device(fs, die)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    dev = _blank(tmp_path)
    dev.run(KEYS)  # enrolment
    return dev


def _key(secret: bytes, helper: bytes, epoch: int) -> ec.EllipticCurvePrivateKey:
    """docs/identity.md "5. Seeds": seed E by HKDF-SHA256, then the first SHA-256(seed ||
    counter) in [1, n-1]."""
    seed = HKDF(
        algorithm=hashes.SHA256(),
        length=16,
        salt=hashlib.sha256(helper).digest(),
        info=b"qlink/seed/%d" % epoch,
    ).derive(secret)
    for ctr in range(4):
        d = int.from_bytes(hashlib.sha256(seed + ctr.to_bytes(4, "big")).digest(), "big")
        if 0 < d < P256_N:
            return ec.derive_private_key(d, ec.SECP256R1())
    raise AssertionError("no scalar in four counters")


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _page_message(reason: str, device_id: str, next_pub: bytes, seq: int) -> bytes:
    """docs/protocol.md "Successor identities", byte for byte."""
    return (
        b"qlink-successor-v1\x00"
        + reason.encode("ascii")
        + b"\x00"
        + device_id.encode("ascii")
        + next_pub
        + str(seq).encode("ascii")
    )


def _verify(key: ec.EllipticCurvePrivateKey, message: bytes, sig_hex: str) -> None:
    sig = bytes.fromhex(sig_hex)
    assert len(sig) == 64
    der = utils.encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
    key.public_key().verify(der, message, ec.ECDSA(hashes.SHA256()))


def test_each_epochs_key_is_the_one_its_seed_gives(device: Device) -> None:
    secret, helper = device.secret(), device.helper()
    keys = [_key(secret, helper, e) for e in range(8)]
    out = device.run(KEYS)
    assert out["EPOCH"] == [["0", hashlib.sha256(_point(keys[0])).hexdigest()]]
    assert [bytes.fromhex(p) for _, p in out["PUB"]] == [_point(k) for k in keys]
    device.owner({"v": 1, "epoch": 5})
    out = device.run(KEYS)
    assert out["EPOCH"] == [["5", hashlib.sha256(_point(keys[5])).hexdigest()]]


def test_the_transfer_request_is_the_page_body_signed_by_the_current_epoch(
    device: Device,
) -> None:
    secret, helper = device.secret(), device.helper()
    current, nxt = _key(secret, helper, 2), _key(secret, helper, 3)
    current_id = hashlib.sha256(_point(current)).hexdigest()
    device.owner({"v": 1, "epoch": 2, "pending": "transfer", "seq": 41})
    out = device.run(REQUEST, heap=unixport.HEAP_RP2040)
    assert out["POST"] == [["/v1/onboard/successor"]]
    body = json.loads(out["BODY"][0][0])
    assert sorted(body) == ["device_id", "public_key", "reason", "seq", "signature"]
    assert body["device_id"] == current_id
    assert body["public_key"] == _point(nxt).hex()
    assert (body["reason"], body["seq"]) == ("transfer", 41)
    _verify(current, _page_message("transfer", current_id, _point(nxt), 41), body["signature"])
    with pytest.raises(InvalidSignature):  # the message is bound to its seq
        _verify(current, _page_message("transfer", current_id, _point(nxt), 42), body["signature"])
    # The refusal gave the step up: the device stays at epoch 2.
    assert out["ACK"] == [["41", "failed", "no_successor_expected"]]
    assert json.loads((device.fs / "data" / "owner.json").read_text()) == {"v": 1, "epoch": 2}


def test_the_reenrolment_request_signs_the_fresh_helpers_epoch_0_key_with_the_old_key(
    device: Device,
) -> None:
    old_secret, old_helper = device.secret(), device.helper()
    current = _key(old_secret, old_helper, 1)
    current_id = hashlib.sha256(_point(current)).hexdigest()
    device.owner({"v": 1, "epoch": 1, "pending": "reenrol", "seq": 9})
    # A cold boot enrols helper.new from its read; the 409 makes the device give the step up and
    # erase it, so the request is printed by a boot that then keeps it: answer it again below.
    out = device.run(REENROL_BOOT)
    new_helper = device.helper("helper.new")
    nxt = _key(device.secret("helper.new"), new_helper, 0)
    assert out["IDS"] == [[current_id, hashlib.sha256(_point(nxt)).hexdigest()]]
    out = device.run(REQUEST, heap=unixport.HEAP_RP2040)
    body = json.loads(out["BODY"][0][0])
    assert body["device_id"] == current_id
    assert body["public_key"] == _point(nxt).hex()
    assert (body["reason"], body["seq"]) == ("reenrol", 9)
    _verify(current, _page_message("reenrol", current_id, _point(nxt), 9), body["signature"])
    assert device.helper() == old_helper and not (device.fs / "data" / "helper.new").exists()


def test_the_reenrolment_boot_runs_in_the_identity_heap_budget(device: Device) -> None:
    device.owner({"v": 1, "epoch": 0, "pending": "reenrol", "seq": 1})
    out = device.run(REENROL_BOOT, heap=unixport.HEAP_IDENTITY)
    (ids,) = out["IDS"]
    assert ids[1] != "-" and ids[1] != ids[0]
    # And the next power-on reconstructs both from the two helpers in the same budget.
    again = device.run(REENROL_BOOT, heap=unixport.HEAP_IDENTITY)
    assert again["IDS"] == [ids]


def test_a_profile_4_device_reenrols_in_the_identity_heap_budget(tmp_path: Path) -> None:
    dev = _blank(tmp_path)
    dev.run(
        "import board, os\nfrom qdid import polar\n"
        "h, _ = polar.enrol(board.make().sram_bits(224), os.urandom(17))\n"
        "open('data/helper.bin', 'wb').write(h)\n",
        heap=128 * 1024,
    )
    assert dev.helper()[0] == 4
    dev.owner({"v": 1, "epoch": 0, "pending": "reenrol", "seq": 1})
    out = dev.run(REENROL_BOOT, heap=unixport.HEAP_IDENTITY)
    assert out["IDS"][0][1] != "-" and dev.helper("helper.new")[0] == 5


def test_a_reenrolment_boot_prints_nothing(device: Device) -> None:
    # The secrets above come from the test scripts; the firmware's boot itself prints nothing.
    device.owner({"v": 1, "epoch": 0, "pending": "reenrol", "seq": 1})
    proc = unixport.run(
        [],
        stdin="import board\nfrom qdid import identity\nidentity.boot(board.make())\n",
        cwd=device.fs,
        env={"QLINK_DIE": str(device.die), "QLINK_WARM_BOOT": "0"},
        path=[unixport.compiled_firmware()],
    )
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
