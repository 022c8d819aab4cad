# qdid.owner: data/owner.json (the owner epoch and a pending successor step) and data/helper.new,
# each replaced whole; a file that is not owner state is refused with a sentence, never read as
# epoch 0; a committed re-enrolment's rename finished; helpers overwritten before removal.
import os
import json
from qdid import owner
from qdid.owner import OwnerError
from fwtest import raises, tmpdir


def _put(d, name, data):
    with open(d + "/" + name, "wb") as f:
        f.write(data)


def _get(d, name):
    try:
        with open(d + "/" + name, "rb") as f:
            return f.read()
    except OSError:
        return None


class _Watch:
    # os for qdid.owner, recording what each file held when it was removed.
    def __init__(self):
        self.removed = []
        self.fail = False

    def __getattr__(self, name):
        return getattr(os, name)

    def remove(self, path):
        if self.fail:
            raise OSError(5)  # EIO
        self.removed.append((path[path.rfind("/") + 1 :], _get("/", path[1:])))
        os.remove(path)


def _watching(fn, d, fail=False):
    # fn(d) with qdid.owner's os watched -> the watch (what was removed, holding what).
    w = _Watch()
    w.fail = fail
    owner.os = w
    try:
        fn(d)
    finally:
        owner.os = os
    return w


def test_absent_owner_file_is_epoch_0_with_nothing_pending():
    d = tmpdir()
    assert owner.load(d) == (0, None, 0)


def test_saved_state_loads_back_and_is_the_page_shape():
    d = tmpdir()
    owner.save(d, 3)
    assert owner.load(d) == (3, None, 0)
    assert json.loads(_get(d, "owner.json")) == {"v": 1, "epoch": 3}
    owner.save(d, 3, owner.TRANSFER, 17)
    assert owner.load(d) == (3, "transfer", 17)
    assert json.loads(_get(d, "owner.json")) == {
        "v": 1,
        "epoch": 3,
        "pending": "transfer",
        "seq": 17,
    }
    owner.save(d, 0, owner.REENROL, 0xFFFFFFFF)
    assert owner.load(d) == (0, "reenrol", 0xFFFFFFFF)
    assert sorted(os.listdir(d)) == ["owner.json"]  # no temporary file left


def test_a_file_that_is_not_owner_state_is_refused_with_what_to_do():
    d = tmpdir()
    for bad in (
        b"",
        b"\xff",
        b"{",
        b"[1]",
        b'{"epoch": 1}',
        b'{"v": 2, "epoch": 1}',
        b'{"v": 1}',
        b'{"v": 1, "epoch": 8}',
        b'{"v": 1, "epoch": -1}',
        b'{"v": 1, "epoch": 1.0}',
        b'{"v": 1, "epoch": false}',
        b'{"v": 1, "epoch": 1, "pending": "sell", "seq": 2}',
        b'{"v": 1, "epoch": 1, "pending": "reenrol"}',
        b'{"v": 1, "epoch": 1, "pending": "reenrol", "seq": 0}',
        b'{"v": 1, "epoch": 1, "pending": "reenrol", "seq": 4294967296}',
        b'{"v": 1, "epoch": 1, "pending": "reenrol", "seq": true}',
        b'{"v": 1, "epoch": 7, "pending": "transfer", "seq": 2}',
    ):
        _put(d, "owner.json", bad)
        msg = str(raises(OwnerError, owner.load, d))
        assert msg.startswith("data/owner.json ") and "restore the file" in msg, bad
    # The edges that are owner state.
    for good, want in (
        (b'{"v": 1, "epoch": 7}', (7, None, 0)),
        (b'{"v": 1, "epoch": 0, "pending": null}', (0, None, 0)),
        (b'{"v": 1, "epoch": 6, "pending": "transfer", "seq": 1}', (6, "transfer", 1)),
        (b'{"v": 1, "epoch": 7, "pending": "reenrol", "seq": 9}', (7, "reenrol", 9)),
    ):
        _put(d, "owner.json", good)
        assert owner.load(d) == want


def test_commit_next_finishes_a_committed_reenrolment():
    d = tmpdir()
    assert owner.commit_next(d) is False
    _put(d, "helper.bin", b"old")
    assert owner.commit_next(d) is False and _get(d, "helper.bin") == b"old"
    _put(d, "helper.new", b"new")
    assert owner.commit_next(d) is True
    assert _get(d, "helper.bin") == b"new" and _get(d, "helper.new") is None


def test_drop_next_overwrites_then_removes_the_next_helper_only():
    d = tmpdir()
    _put(d, "helper.bin", b"old helper")
    _put(d, "helper.new", b"next helper data" * 10)
    _put(d, "helper.new.tmp", b"half")
    w = _watching(owner.drop_next, d)
    assert w.removed == [("helper.new", bytes(160)), ("helper.new.tmp", bytes(4))]
    assert sorted(os.listdir(d)) == ["helper.bin"] and _get(d, "helper.bin") == b"old helper"
    owner.drop_next(d)  # nothing there: no error


def test_reset_drops_the_next_helper_before_the_owner_file():
    d = tmpdir()
    _put(d, "helper.new", b"x" * 70)
    owner.save(d, 2, owner.REENROL, 5)
    w = _watching(owner.reset, d)
    assert [n for n, _ in w.removed] == ["helper.new", "owner.json"]
    assert w.removed[0][1] == bytes(70)
    assert os.listdir(d) == []


def test_erase_overwrites_every_helper_then_removes_it_and_the_owner_file():
    d = tmpdir()
    helper = bytes((i * 7 + 1) & 0xFF for i in range(468))
    for name in ("helper.bin", "helper.bin.tmp", "helper.new", "helper.new.tmp"):
        _put(d, name, helper)
    owner.save(d, 4, owner.TRANSFER, 3)
    _put(d, "owner.json.tmp", b"{}")
    _put(d, "puf_health.bin", b"\x00\x00\x00\x02")
    _put(d, "cert.der", b"\x30\x00")
    w = _watching(owner.erase, d)
    got = dict(w.removed)
    for name in ("helper.bin", "helper.bin.tmp", "helper.new", "helper.new.tmp"):
        assert got[name] == bytes(468), name  # zeros of the same length when it went
    assert sorted(got) == [
        "helper.bin",
        "helper.bin.tmp",
        "helper.new",
        "helper.new.tmp",
        "owner.json",
        "owner.json.tmp",
    ]
    # What is not qdid's key material stays (agent.decommission erases the rest).
    assert sorted(os.listdir(d)) == ["cert.der", "puf_health.bin"]
    assert owner.load(d) == (0, None, 0)


def test_erase_says_so_when_a_helper_cannot_be_removed():
    d = tmpdir()
    _put(d, "helper.bin", b"h" * 10)
    raises(OSError, _watching, owner.erase, d, True)
    assert os.listdir(d) == ["helper.bin"]
