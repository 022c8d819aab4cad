"""The SRAM PUF's key against an attacker who knows the die is biased: real SRAM powers up with
0.42..0.58 ones, and a code offset over biased cells (helper profile 4) hands out the bias: the
helper says which value each covered cell most likely holds. Profile 5 (von Neumann pairs,
docs/identity.md) keeps only pairs whose cells differ and publishes which: the kept first cells
must be coin flips to anyone holding the helper. And an attacker who biases the SRAM before
enrolment (imprinting a pattern by holding it for a long time, or a die out of its range) must
not get a weak key enrolled."""

from __future__ import annotations

import binascii
import math
from pathlib import Path

import pytest
from attacksuite import Attack

from hil.emulated import BoardError, EmulatedBoard

_CONFIG = {"server": "https://127.0.0.1:9", "root_ca": "ca.der"}
_READ = (
    "import board, binascii\nprint('R', binascii.hexlify(board.make().sram_bits(640)).decode())\n"
)


def _board(root: Path, name: str, bias: float) -> EmulatedBoard:
    board = EmulatedBoard(
        root, name, die_seed=name.encode().ljust(16, b"."), die_params={"bias": bias}
    )
    board.flash(_CONFIG, b"\x30\x00")
    return board


def _bits(data: bytes) -> list[int]:
    return [(b >> (7 - k)) & 1 for b in data for k in range(8)]


def test_helper_of_a_biased_die_does_not_predict_its_key_bits(
    attack: Attack, tmp_path: Path
) -> None:
    attack.expect(
        "key bits guessed from a biased die's public helper",
        "guessing every kept pair's first cell as the die's majority value is right half the "
        "time (within 4 standard deviations), while the same guess on the cells of a code "
        "offset is right as often as the bias says",
    )
    right = kept = raw_right = raw = 0
    for i, bias in enumerate((0.42, 0.42, 0.58, 0.58)):
        board = _board(tmp_path, f"biased-{i}", bias)
        board.enrol()
        helper = (board.fs / "data" / "helper.bin").read_bytes()  # public: on the device's flash
        assert helper[0] == 5
        majority = 1 if bias > 0.5 else 0  # the attacker knows which way the die leans
        # The evaluator's view of the die (a later power-up: the enrolment read plus ~4 % noise).
        line = next(x for x in board.run_script(_READ).splitlines() if x.startswith("R "))
        cells = _bits(binascii.unhexlify(line[2:]))
        selection = _bits(helper[4:324])
        for pair, chosen in enumerate(selection):
            if chosen:
                t, k = divmod(pair, 8)
                right += cells[16 * t + k] == majority
                kept += 1
        # The same guess against the raw cells a code offset covers (profile 4: 1785 of them).
        raw_right += sum(c == majority for c in cells[:1785])
        raw += 1785
    share, raw_share = right / kept, raw_right / raw
    sd = math.sqrt(0.25 / kept)
    attack.observe(
        f"majority guess right on {share:.3f} of {kept} kept pairs (sd {sd:.3f}) and on "
        f"{raw_share:.3f} of {raw} code-offset cells of the same 4 dies (bias 0.42 / 0.58)"
    )
    assert kept == 4 * 1024
    assert abs(share - 0.5) <= 4 * sd
    assert raw_share > 0.5 + 8 * math.sqrt(0.25 / raw)  # the door profile 4 left open


@pytest.mark.parametrize("bias", [0.34, 0.66, 0.25])
def test_a_biased_sram_is_not_enrolled(attack: Attack, tmp_path: Path, bias: float) -> None:
    attack.expect(
        f"enrolment of an SRAM biased to {bias:g}",
        "the factory enrolment refuses the die with a sentence saying the SRAM is too biased, "
        "prints no identity and writes no helper data",
    )
    board = _board(tmp_path, f"imprinted-{bias:g}", bias)
    with pytest.raises(BoardError) as err:
        board.enrol()
    message = next(
        (x for x in str(err.value).splitlines() if x.startswith("E enrol:")), str(err.value)
    )
    helper = board.fs / "data" / "helper.bin"
    attack.observe(f"{message!r}; helper written: {helper.exists()}")
    # Profile 5's window (38-62 % ones) or, further out, the health check (35-65 %).
    assert message.startswith("E enrol: SRAM power-up") and "too biased" in message
    assert not helper.exists()
    assert "QDID" not in str(err.value)
