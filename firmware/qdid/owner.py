# The identity's owner state on flash (docs/identity.md "5. Seeds", docs/protocol.md "Successor
# identities"). All of it is public:
#   data/owner.json   {"v": 1, "epoch": E} or {"v": 1, "epoch": E, "pending": "transfer" |
#                     "reenrol", "seq": N}: E (0..7) is the owner epoch whose seed gives the
#                     device's key now; pending is a successor step recorded before its request
#                     (a transfer moves to E + 1, a re-enrolment to epoch 0 of a fresh helper),
#                     N the seq of the command that asked for it
#   data/helper.new   during a re-enrolment, the next helper data, kept beside helper.bin until
#                     the server has registered the identity it gives
# Absent owner.json: epoch 0, nothing pending (every device before its first move).
# Crash safety. Every file is replaced whole (qdid.files.write: temporary file, then rename) or
# renamed, so a power cut leaves the old or the new version of each. The order of the writes
# makes every mix of versions mean one thing:
#   - a step is recorded (pending) before its request, so a cut resumes it with the same request;
#   - helper.new is written before the request that names its key, and never again for the same
#     step (a second enrolment would give another key than the one the server may hold);
#   - after the server's 200 the agent commits owner.json (the next epoch, or epoch 0 with no
#     pending) and only then renames helper.new over helper.bin, so a helper.new found with no
#     re-enrolment pending belongs to a committed one: commit_next() finishes the rename;
#   - a re-enrolment given up erases helper.new before it clears pending.
# Loaded by qdid.identity.boot and by the agent's identity steps, and dropped after each.
import os
import json
from micropython import const
from qdid import QdidError
from qdid import files

LAST_EPOCH = const(7)  # seeds 0..7: epoch 7 is the last owner of a helper's set
TRANSFER = "transfer"
REENROL = "reenrol"
_MAX_SEQ = const(0xFFFFFFFF)  # a command seq (agent.command)
_OWNER = "owner.json"
_HELPER = "helper.bin"  # qdid.identity's helper data
_NEXT = "helper.new"
_WIPE = const(64)  # bytes of zeros written per call when a helper is overwritten


class OwnerError(QdidError):
    # owner.json is not one of the shapes above: no power cut makes that (it is replaced whole).
    pass


def _int(v, lo, hi):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def load(data_dir):
    # -> (epoch, pending or None, seq); raises OwnerError for a file that is not owner state.
    raw = files.read(data_dir + "/" + _OWNER)
    if raw is None:
        return 0, None, 0
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("v") != 1 or not _int(doc.get("epoch"), 0, LAST_EPOCH):
        raise OwnerError(
            "data/owner.json is corrupt, so the owner epoch (which key is this device's) is "
            "unknown; restore the file or have the device re-provisioned"
        )
    pending = doc.get("pending")
    if pending is None:
        return doc["epoch"], None, 0
    seq = doc.get("seq")
    if pending not in (TRANSFER, REENROL) or not _int(seq, 1, _MAX_SEQ):
        raise OwnerError(
            "data/owner.json names an unknown pending step; restore the file or have the "
            "device re-provisioned"
        )
    if pending == TRANSFER and doc["epoch"] == LAST_EPOCH:
        raise OwnerError("data/owner.json asks for a transfer past epoch 7; restore the file")
    return doc["epoch"], pending, seq


def save(data_dir, epoch, pending=None, seq=0):
    doc = {"v": 1, "epoch": epoch}
    if pending is not None:
        doc["pending"] = pending
        doc["seq"] = seq
    files.write(data_dir + "/" + _OWNER, json.dumps(doc).encode())


def next_path(data_dir):
    return data_dir + "/" + _NEXT


def commit_next(data_dir):
    # Finishes a committed re-enrolment that a cut left before its rename (see the top).
    # Called with no re-enrolment pending; True when it renamed.
    path = next_path(data_dir)
    if files.read(path) is None:
        return False
    os.rename(path, data_dir + "/" + _HELPER)
    return True


def drop_next(data_dir):
    # A re-enrolment given up (refused, superseded) or a fresh enrolment: its helper goes first.
    _erase(next_path(data_dir))
    _erase(next_path(data_dir) + ".tmp")


def reset(data_dir):
    # A fresh enrolment (no helper.bin) starts a new set at epoch 0: whatever owner state a
    # lost helper left is stale. helper.new first, so a cut between leaves nothing pending for it.
    drop_next(data_dir)
    _remove(data_dir + "/" + _OWNER)


def erase(data_dir):
    # Decommissioning: both helpers (and a temporary copy a cut may have left) overwritten and
    # removed, then owner.json. Raises OSError when a helper stays.
    for name in (_HELPER, _HELPER + ".tmp", _NEXT, _NEXT + ".tmp"):
        _erase(data_dir + "/" + name)
    for name in (_OWNER, _OWNER + ".tmp"):
        _remove(data_dir + "/" + name)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass  # absent


def _erase(path):
    # Overwrite in place, then remove. On a filesystem that writes in place (FAT) the helper's
    # blocks then hold zeros; littlefs writes copies, so its old blocks stay until they are
    # reused (docs/identity.md "What does not hold yet"). An absent file is no error.
    try:
        n = os.stat(path)[6]
    except OSError:
        return
    zero = memoryview(bytes(_WIPE))
    with open(path, "r+b") as f:
        while n > 0:
            k = n if n < _WIPE else _WIPE
            f.write(zero[:k])
            n -= k
        f.flush()
    os.remove(path)
