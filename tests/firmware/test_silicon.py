# The unix board's silicon model (boards/unix/silicon.py) and its board HAL (boards/unix/board.py).
# heapsize: 64k
import os
import time
import json
import silicon
import board
from fwtest import tmpdir as _tmpdir, raises_msg as _raises

SEED_A = "00112233445566778899aabbccddeeff"
SEED_B = "ffeeddccbbaa99887766554433221100"
_POP = bytes(bin(i).count("1") for i in range(256))


def _weight(buf):
    n = 0
    for b in buf:
        n += _POP[b]
    return n


def _distance(a, b):
    n = 0
    for i in range(len(a)):
        n += _POP[a[i] ^ b[i]]
    return n / (8 * len(a))


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _die(seed=SEED_A, **params):
    p = {"seed": seed}
    p.update(params)
    return silicon.Die(p)


def test_same_die_seed_gives_the_same_cell_skews():
    a = _die()
    b = _die()
    for c in (0, 1, 15):
        assert a.skew(c) == b.skew(c)
    assert a.skew(0) != a.skew(1)  # chunks are drawn independently
    assert _die(SEED_B).skew(0) != a.skew(0)


def test_same_die_reads_alike_across_objects():
    # Two power-ups of the same die through separate objects differ only by noise (~4 %).
    d = _distance(_die().power_up(4096), _die().power_up(4096))
    assert 0.025 < d < 0.06, d


def test_read_to_read_noise_is_present_at_the_modelled_rate():
    die = _die()
    a = die.power_up(4096)
    b = die.power_up(4096)
    assert a != b
    # Expected 0.0408 (silicon.py header); 32768 cells: sigma ~ 0.0011.
    d = _distance(a, b)
    assert 0.034 < d < 0.048, d


def test_different_dies_differ_by_about_half():
    d = _distance(_die(SEED_A).power_up(4096), _die(SEED_B).power_up(4096))
    assert 0.47 < d < 0.53, d


def test_default_die_is_balanced():
    w = _weight(_die().power_up(4096)) / 32768
    assert 0.48 < w < 0.52, w


def test_bias_shifts_the_weight():
    # 26/256 noisy cells average 1/2, the rest follow bias 0.8 (205/256).
    w = _weight(_die(bias=0.8).power_up(4096)) / 32768
    expect = 26 / 256 * 0.5 + 230 / 256 * 205 / 256
    assert abs(w - expect) < 0.015, w


def test_no_noisy_cells_leaves_only_stable_flips():
    die = _die(noisy_share=0)
    d = _distance(die.power_up(4096), die.power_up(4096))
    assert 0.004 < d < 0.012, d  # 2 * 1/256 * 255/256 = 0.0078


def test_all_noisy_cells_average_one_third():
    die = _die(noisy_share=1)
    d = _distance(die.power_up(4096), die.power_up(4096))
    assert 0.31 < d < 0.36, d


def test_temperature_makes_more_cells_flip():
    ref = _die().power_up(4096)
    hot = _distance(ref, _die(temperature_c=85).power_up(4096))
    cold = _distance(ref, _die(temperature_c=-40).power_up(4096))
    # s = 23/256 marginal at 85 C: 0.0408 + s * (230/256 / 2 + 26/256 / 6) = 0.083;
    # s = 25/256 at -40 C: 0.0408 + s * 0.466 = 0.086.
    assert 0.07 < hot < 0.092, hot
    assert 0.074 < cold < 0.096, cold
    # Hot and cold make different cells marginal.
    assert _die(temperature_c=85).skew(0)[2] != _die(temperature_c=-35).skew(0)[2]


def test_temperature_shifts_noisy_cells_to_the_middle():
    # All cells noisy: read-to-read BER 1/3 at 25 C. Half of them marginal (temp_coeff * 60 =
    # 0.5) read 1 with p = 1/2 against each other: 0.5 * 1/3 + 0.5 * 1/2 = 0.417.
    cold = _die(noisy_share=1)
    hot = _die(noisy_share=1, temperature_c=85, temp_coeff=0.5 / 60)
    d_cold = _distance(cold.power_up(4096), cold.power_up(4096))
    d_hot = _distance(hot.power_up(4096), hot.power_up(4096))
    assert 0.32 < d_cold < 0.347, d_cold
    assert 0.40 < d_hot < 0.433, d_hot


def test_supply_drift_and_ageing_make_more_cells_flip():
    ref = _die().power_up(4096)
    # 0.6 V * 0.05 / V = 8/256 marginal: 0.0408 + 0.031 * 0.466 = 0.055.
    low = _distance(ref, _die(supply_v=2.7).power_up(4096))
    assert 0.047 < low < 0.063, low
    # 10 years * 0.004 / year = 10/256 marginal: 0.0408 + 0.039 * 0.466 = 0.059.
    old = _distance(ref, _die(age_years=10).power_up(4096))
    assert 0.051 < old < 0.067, old
    # Stress beyond 0.5 is capped: half the cells marginal.
    worst = _distance(ref, _die(age_years=1000).power_up(4096))
    assert 0.24 < worst < 0.29, worst


def test_larger_temperature_keeps_the_cells_of_a_smaller_one():
    m40 = _die(temperature_c=40).skew(0)[2]
    m85 = _die(temperature_c=85).skew(0)[2]
    assert m40 and m40 & m85 == m40


def test_four_kib_power_up_is_fast():
    die = _die()
    t0 = time.ticks_ms()
    die.power_up(4096)
    assert time.ticks_diff(time.ticks_ms(), t0) < 500


def test_power_up_sizes():
    die = _die(size=512)
    assert die.power_up(0) == b""
    assert len(die.power_up(300)) == 300
    assert len(die.power_up(512)) == 512
    _raises(ValueError, die.power_up, 513)
    _raises(ValueError, die.power_up, -1)


def test_uid_is_public_and_per_die():
    assert _die().uid() == _die().uid()
    assert len(_die().uid()) == 8
    assert _die().uid() != _die(SEED_B).uid()


def test_die_parameters_are_checked():
    assert "seed" in _raises(silicon.DieError, silicon.Die, {})
    assert "seed" in _raises(silicon.DieError, silicon.Die, {"seed": ""})
    assert "hex" in _raises(silicon.DieError, silicon.Die, {"seed": "zz"})
    assert "noisy_share" in _raises(silicon.DieError, lambda: _die(noisy_share="x"))
    _raises(silicon.DieError, lambda: _die(noisy_share=1.5))
    _raises(silicon.DieError, lambda: _die(bias=-0.1))
    _raises(silicon.DieError, lambda: _die(temp_coeff=-1))
    assert "supply_coeff" in _raises(silicon.DieError, lambda: _die(supply_coeff=-1))
    _raises(silicon.DieError, lambda: _die(age_coeff=-0.1))
    _raises(silicon.DieError, lambda: _die(age_years=-1))
    assert "supply_v" in _raises(silicon.DieError, lambda: _die(supply_v="3.3"))
    _raises(silicon.DieError, lambda: _die(size=100))
    _raises(silicon.DieError, lambda: _die(size=0))


def test_load_needs_qlink_die():
    os.unsetenv("QLINK_DIE")
    msg = _raises(silicon.DieError, silicon.load)
    assert "QLINK_DIE is not set" in msg
    _raises(silicon.DieError, board.make)


def test_load_reports_unreadable_and_malformed_die_files():
    d = _tmpdir()
    assert "cannot read" in _raises(silicon.DieError, silicon.load, d + "/missing.json")
    _write(d + "/bad.json", "{not json")
    assert "not JSON" in _raises(silicon.DieError, silicon.load, d + "/bad.json")
    _write(d + "/list.json", "[1, 2]")
    assert "object" in _raises(silicon.DieError, silicon.load, d + "/list.json")
    for n in ("missing.json", "bad.json", "list.json"):
        try:
            os.remove(d + "/" + n)
        except OSError:
            pass
    os.rmdir(d)


def test_load_reads_the_file_named_by_qlink_die():
    d = _tmpdir()
    _write(d + "/die.json", json.dumps({"seed": SEED_A, "noisy_share": 0.2}))
    os.putenv("QLINK_DIE", d + "/die.json")
    try:
        die = silicon.load()
        assert die.skew(0) == _die(noisy_share=0.2).skew(0)
        assert board.make().unique_id() == _die().uid()
    finally:
        os.unsetenv("QLINK_DIE")
        os.remove(d + "/die.json")
        os.rmdir(d)


def _board():
    d = _tmpdir()
    path = d + "/die.json"
    _write(path, json.dumps({"seed": SEED_A}))
    b = board.make(path)
    os.remove(path)
    os.rmdir(d)
    return b


def test_board_surface():
    b = _board()
    assert b.name == "unix"
    assert b.unique_id() == _die().uid()
    for name in ("sram_bits", "noise", "unique_id", "cold_boot", "reset", "led"):
        assert callable(getattr(b, name))


def test_board_sram_is_one_power_up_per_boot():
    b = _board()
    first = b.sram_bits(256)
    assert b.sram_bits(256) == first  # same boot, same SRAM
    longer = b.sram_bits(1024)
    assert len(longer) == 1024 and longer[:256] == first
    assert b.sram_bits(100) == first[:100]
    # A new board object is a new power cycle: noise changes some cells, not most.
    d = _distance(_board().sram_bits(1024), longer)
    assert 0.0 < d < 0.08


def test_board_noise_samples_are_imperfect_and_in_range():
    s = _board().noise(4096)
    assert len(s) == 4096
    assert min(s) >= 64 and max(s) <= 190
    counts = bytearray(256)
    for v in s:
        if counts[v] < 255:
            counts[v] += 1
    assert max(counts) < 4096 // 16  # triangular: max p = 1/64, nowhere near stuck
    assert counts[127] > counts[70]  # mid-scale is likelier than the edges


def test_board_forgets_its_sram_snapshot():
    d = _tmpdir()
    _write(d + "/die.json", json.dumps({"seed": SEED_A}))
    b = board.make(d + "/die.json")
    first = b.sram_bits(256)
    snap = b._sram
    b.forget_sram()
    assert snap == bytearray(len(snap))
    assert len(first) == 256 and first != bytes(256)
    assert "forgotten" in _raises(ValueError, b.sram_bits, 16)
    os.remove(d + "/die.json")
    os.rmdir(d)


def test_board_cold_boot_follows_qlink_warm_boot():
    b = _board()
    os.unsetenv("QLINK_WARM_BOOT")
    assert b.cold_boot() is True
    os.putenv("QLINK_WARM_BOOT", "1")
    try:
        assert b.cold_boot() is False
    finally:
        os.unsetenv("QLINK_WARM_BOOT")


def test_board_reset_exits_with_status_3():
    try:
        _board().reset()
    except SystemExit as e:
        assert e.args[0] == 3
        return
    raise AssertionError("reset() returned")
