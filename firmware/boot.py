# Runs first on every boot: the OTA swap, trial and rollback (docs/ota.md "On the device").
# It never raises: whatever it finds, it leaves one complete firmware version in place, prints
# one line per action and returns, so that main.py and the REPL run. (A Ctrl-C is the one
# exception let through: it asks for the REPL, and the step it cut runs again at the next boot.)
#
# Crash safety. Two file sets, each complete with its list of paths, sizes and SHA-256:
#   new: ota/new/<path> (written by the agent), listed in ota/new.lst (the manifest of
#        ota/head.json, rewritten by the staged step in the form below);
#   old: the running files, listed in ota/old.lst with the hashes they have in place, then
#        moved to ota/old/<path> by the staged step.
# Every move is a rename (atomic on littlefs and POSIX, metadata only, no data rewritten): the
# staged step moves the running files into ota/old/, the swap moves the staged ones over their
# paths, the rollback moves the old ones back. So an update writes its bytes to flash once (the
# agent's staging) and needs no room beyond the two sets. The order keeps each step idempotent:
#   staged: ota/old.lst is written first, from the running files, before anything is moved: it
#     names what must end up in ota/old/. Then each listed file still at its path is moved (one
#     not there was moved before a cut: nothing puts a file on a running path before the swap),
#     then state := swap. Between the first move and the swap the running tree is incomplete;
#     the state says which step to finish, and boot.py finishes it before main.py runs.
#   The marks: ota/old.lst present = the backup has begun (the agent clears ota/ after each
#     update, so a list is this update's), and from then on each listed file is in ota/old/ or
#     still in place, which is all a rollback needs; state swap = ota/old/ complete.
#   swap, rollback: a set is put in place by renaming each of its files over the running path;
#     the other set's paths this one lacks are removed, every file is checked against the list,
#     and only then is the next state written. A file moved before a cut is found in place
#     with its hash.
# So a power cut anywhere leaves the state of the step, which simply runs again; a step that
# fails after the backup began rolls back, never leaving the running tree incomplete. Every
# write goes to ota/tmp first and is renamed over its name; the emulated board's cut hook
# (board.file_op) runs before each file write, rename (each move is one), removal, mkdir and
# rmdir.
# A list file is one line per file, "<sha256 hex> <size> <path>\n", read a line at a time, and
# the manifest and ota/current.json are scanned a byte at a time, so no step holds a list in RAM.
# RAM: one 512-byte buffer, a line, the state; all of it garbage once boot.py returns (the
# module's names are dropped at the end). A boot without an open update costs one stat.
from micropython import const
import os
import json
import hashlib

_CHUNK = const(512)  # bytes per read: the one buffer
_TRIALS = const(2)  # boots a new version gets to commit before it is rolled back
_DIR = const(0x4000)  # S_IFDIR in os.stat()[0]
_MAX_PATH = const(96)  # characters of a release path (docs/ota.md "Release")
_MAX_PART = const(48)  # characters of one part of it
_STATE = "ota/state.json"
_HEAD = "ota/head.json"
_CURRENT = "ota/current.json"
_NEWLST = "ota/new.lst"
_OLDLST = "ota/old.lst"
_NEW = "ota/new/"
_OLD = "ota/old/"
_TMP = "ota/tmp"  # every file boot.py writes is written here, then renamed
_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
# The release roots of the factory image (no ota/current.json): what the staged step moves.
_FACTORY = ("agent", "qdid", "main.py", "board.py", "silicon.py")
_STEPS = ("staged", "swap", "trial", "rollback")
_ENDS = ("committed", "rolled_back")  # the agent's to finish and report

_buf = bytearray(0)  # the hash buffer: _CHUNK bytes once an update is open
_mv = memoryview(_buf)  # of _buf: the last partial chunk is sliced without a copy
_one = bytearray(1)  # the byte a manifest scan reads
_hook = None  # board.file_op on the emulated board; None on real boards


def _op(tag):
    # The rig's power cut lands here, just before a file operation (docs/ota.md, "The emulated
    # board's cut hook"); tag is "<operation> <path>", as the agent's.
    if _hook is not None:
        _hook(tag)


def _stat(path):
    try:
        return os.stat(path)
    except OSError:
        return None


def _hash(path):
    # The SHA-256 of a file, None when it cannot be read.
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while True:
                n = f.readinto(_buf)
                if not n:
                    break
                h.update(_buf if n == _CHUNK else _mv[:n])
    except OSError:
        return None
    return h.digest()


def _same(path, size, digest):
    # True when path is a file of exactly this size and SHA-256.
    st = _stat(path)
    return st is not None and not st[0] & _DIR and st[6] == size and _hash(path) == digest


def _mkdirs(path):
    # The folders above the file path that do not exist yet (MicroPython's os has no makedirs).
    i = path.find("/")
    while i > 0:
        if _stat(path[:i]) is None:
            _op("mkdir " + path[:i])
            os.mkdir(path[:i])
        i = path.find("/", i + 1)


def _move(src, path):
    _mkdirs(path)
    _op("rename " + path)
    os.rename(src, path)


def _remove(path):
    # Removes a file and then the folders its removal left empty, so the tree holds nothing a
    # version does not list. The folders are looked at even when the file is gone already: a
    # cut may have landed between the removal and the rmdir.
    if _stat(path) is not None:
        _op("remove " + path)
        os.remove(path)
    i = path.rfind("/")
    while i > 0:
        path = path[:i]
        try:
            names = os.listdir(path)
        except OSError:  # gone already: its parent may not be
            names = None
        if names:
            return
        if names is not None:
            _op("rmdir " + path)
            os.rmdir(path)
        i = path.rfind("/")


def _put(path, obj):
    # path := JSON of obj, whole or not at all.
    _op("write " + path)
    with open(_TMP, "w") as f:
        json.dump(obj, f)
    _op("rename " + path)
    os.rename(_TMP, path)


def _path_ok(p):
    # docs/ota.md "Release": boot.py writes and removes nothing outside the release roots, even
    # when a list it is handed is garbage; the characters also keep a list line parseable. The
    # agent checks the same rules (agent.ota._path_ok), but boot.py imports nothing an update
    # replaces, so it keeps its own copy.
    if not isinstance(p, str) or not 0 < len(p) <= _MAX_PATH:
        return False
    if p in ("boot.py", "config.json", "enrol.py") or p.endswith(".der"):
        return False
    parts = p.split("/")
    if parts[0] in ("ota", "data"):
        return False
    for part in parts:
        if part in ("", ".", "..") or len(part) > _MAX_PART:
            return False
        for c in part:
            if c not in _CHARS:
                return False
    return True


def _getc(f):
    # The next byte of f (-1 at its end), read into _one (no allocation), backslashes dropped:
    # the only escapes of a manifest are the \" of the head answer's JSON string holding it
    # (paths and versions have neither \ nor ").
    while f.readinto(_one):
        if _one[0] != 0x5C:
            return _one[0]
    return -1


def _find(f, lit):
    # Reads f up to the end of the first occurrence of lit (bytes).
    i = 0
    while i < len(lit):
        c = _getc(f)
        if c < 0:
            raise ValueError
        i = i + 1 if c == lit[i] else 1 if c == lit[0] else 0


def _expect(f, lit):
    for c in lit:
        if _getc(f) != c:
            raise ValueError


def _until(f, end):
    # The bytes of f before the next byte end, as a str (at most _CHUNK of them, in _buf).
    k = 0
    while True:
        c = _getc(f)
        if c == end:
            return bytes(_mv[:k]).decode()
        if c < 0 or k == _CHUNK:
            raise ValueError
        _buf[k] = c
        k += 1


def _scan(path, fn, arg):
    # Calls fn(arg, path, size, sha256 hex) for each file of the manifest in a file: the head
    # answer (ota/head.json, the manifest as a JSON string in it) or ota/current.json (the
    # manifest itself). It reads the compact form (docs/ota.md "Release": no spaces, keys in
    # order) a byte at a time: neither the manifest (12 KiB for 64 files) nor a dict per file
    # is ever in RAM. Anything else where an entry belongs raises ValueError; an absent file
    # OSError; fn returning False stops the scan.
    with open(path, "rb") as f:
        _find(f, b'"files":[')
        c = _getc(f)
        while c != 0x5D:  # ]
            if c != 0x7B:  # {
                raise ValueError
            _expect(f, b'"path":"')
            p = _until(f, 0x22)  # "
            _expect(f, b',"size":')
            n = int(_until(f, 0x2C))  # ,
            _expect(f, b'"sha256":"')
            h = _until(f, 0x22)
            _expect(f, b"}")
            if not fn(arg, p, n, h):
                return
            c = _getc(f)
            if c == 0x2C:
                c = _getc(f)


def _each(lst, fn, arg):
    # Calls fn(arg, path, size, sha256) for the lines of a list file in order, a line at a
    # time; returns False at the first call that returns False, else True. A malformed line
    # raises (ValueError, IndexError), an absent file OSError.
    with open(lst) as f:
        for line in f:
            if line[-1] != "\n":
                raise ValueError  # cut short
            e = line[:-1].split(" ", 2)
            if not fn(arg, e[2], int(e[1]), bytes.fromhex(e[0])):
                return False
    return True


def _valid(_, p, n, d):
    return _path_ok(p) and n >= 0 and len(d) == 32


def _usable(lst):
    # True when every line of the list file is well formed.
    try:
        return _each(lst, _valid, None)
    except Exception:
        return False


def _listed(lst, path):
    # True when the list file names path (a line at a time: no set of paths in RAM).
    key = " " + path + "\n"
    with open(lst) as f:
        for line in f:
            if line.endswith(key):  # no space in a path: " path" is the whole last field
                return True
    return False


def _walk(path, fn, arg):
    # Calls fn(arg, file, None, None) for every file at or under path (absent: none).
    st = _stat(path)
    if st is None:
        return
    if st[0] & _DIR:
        for name in os.listdir(path):
            _walk(path + "/" + name, fn, arg)
    else:
        fn(arg, path, None, None)


def _root(roots, p, n, d):
    r = p.split("/")[0]
    if r not in roots:
        roots.append(r)
    return True


def _take(src, p, n, d):
    # A file of the set found in src with its size and hash is moved over its path.
    if _same(src + p, n, d):
        _move(src + p, p)
    return True


def _unlisted(lst, p, n, d):
    if not _listed(lst, p):
        _remove(p)
    return True


def _in_place(_, p, n, d):
    if _same(p, n, d):
        return True
    print("boot: ota file %s differs from its list" % p)
    return False


def _install(src, lst, other):
    # Puts the set of list file lst (files in src, or already in place) over the running paths,
    # removes the paths of list file other that lst lacks (other unusable: every file under the
    # release roots that lst lacks), then checks every file. A source that differs from its
    # list is never moved.
    _each(lst, _take, src)
    if _usable(other):
        _each(other, _unlisted, lst)
    else:
        roots = list(_FACTORY)
        _each(lst, _root, roots)
        for r in roots:
            _walk(r, _unlisted, lst)
    return _each(lst, _in_place, None)


def _hashed(lst, p, n, d):
    # Writes the line of a running file, with its size and SHA-256 where it is, to the open list
    # lst (a file that cannot be read raises). A path outside the release rules is no part of a
    # version, and a path the version lists but the board lacks is nothing to keep: neither is
    # listed nor moved.
    if _path_ok(p) and _stat(p) is not None:
        lst.write("%s %d %s\n" % (_hash(p).hex(), os.stat(p)[6], p))
    return True


def _backup(_, p, n, d):
    # Moves a file of the old list to ota/old/<path>. One no longer at its path was moved before
    # a cut (nothing puts a file on a running path before the swap). The rename replaces any
    # file an earlier update left at ota/old/<path> (the agent clears ota/ after each one). The
    # folders the move leaves empty go too (also after a cut between the move and the rmdir):
    # whatever set is put in place next, the tree holds no folder it does not list.
    if _stat(p) is not None:
        _move(p, _OLD + p)
    _remove(p)  # p is gone: its folders only
    return True


def _new_list():
    # ota/new.lst from the manifest in ota/head.json; False when it is unusable.
    if _stat(_HEAD) is None:
        return False
    _op("write " + _NEWLST)
    bad = []  # type: list[str]
    try:
        with open(_TMP, "w") as f:
            _scan(_HEAD, _list_line, (f, bad))
    except (OSError, ValueError):  # unreadable, or not a manifest in its compact form
        return False
    if bad:
        return False
    _op("rename " + _NEWLST)
    os.rename(_TMP, _NEWLST)
    return True


def _list_line(out, p, n, h):
    # One manifest entry as a list line; a path outside the rules or a hash that is not 32 bytes
    # of hex marks the list bad (out: the open file, the marks).
    if not (_path_ok(p) and n >= 0 and len(bytes.fromhex(h)) == 32):
        out[1].append(p)
        return False
    out[0].write("%s %d %s\n" % (h, n, p))
    return True


def _staged_there(missing, p, n, d):
    s = _stat(_NEW + p)
    if s is None or s[6] != n:
        missing.append(p)
        return False
    return True


def _stage(st):
    # staged -> swap. The staged set must be all there; then ota/old.lst is written from the
    # running files (ota/current.json's paths, or the factory image's release roots) and each
    # file it lists is moved to ota/old/. A run after a cut finds the list (the mark that the
    # backup began) and moves what is still in place; a failure once it began rolls back.
    begun = _stat(_OLDLST) is not None
    if not _new_list():
        return _drop(st, "bad_file", "no readable manifest", begun)
    missing = []  # type: list[str]
    if not _each(_NEWLST, _staged_there, missing):
        return _drop(st, "bad_file", "staged file %s missing" % missing[0], begun)
    if not begun:
        # The list first, from the running files as they are, renamed into place before a file
        # moves: the paths of ota/current.json, scanned as the list is written (no path list in
        # RAM), or, when it is absent (the factory image) or unreadable, every file of the
        # release roots.
        _op("write " + _OLDLST)
        try:
            with open(_TMP, "w") as lst:
                _scan(_CURRENT, _hashed, lst)
        except (OSError, ValueError):
            with open(_TMP, "w") as lst:
                for r in _FACTORY:
                    _walk(r, _hashed, lst)
        _op("rename " + _OLDLST)
        os.rename(_TMP, _OLDLST)
    if _usable(_OLDLST):
        _each(_OLDLST, _backup, None)
    elif begun:
        # A flash fault spoilt the list after files may have moved: without it there is no way
        # back, so the way forward (the swap needs no old list) leaves one complete version.
        print("boot: ota/old.lst unreadable; the update goes on without a way back")
    else:
        return _drop(st, "stage_failed", "the running files could not be listed")
    st["state"] = "swap"
    _put(_STATE, st)
    return "swap"


def _drop(st, reason, why, begun=False):
    # An update that cannot go on. Before the backup began nothing running was touched: it ends
    # (rolled_back; the agent reports and clears). After, running files may be in ota/old/: they
    # are moved back first (a rollback, run at once), so main.py never runs an incomplete tree.
    print("boot: ota update dropped:", why)
    return _to_rollback(st, reason, "rollback" if begun else "rolled_back")


def _swap(st):
    # swap -> trial (the whole new set in place) or rollback.
    print("boot: ota swap to %s" % st.get("version"))
    # The list is the staged step's; made again from the manifest if a flash fault spoilt it.
    if (_usable(_NEWLST) or _new_list()) and _install(_NEW, _NEWLST, _OLDLST):
        st["state"] = "trial"
        st["boots"] = 0
        _put(_STATE, st)
        return "trial"
    return _to_rollback(st, "swap_failed")


def _to_rollback(st, reason, kind="rollback"):
    # state := kind with its reason; returns the state to run now (rolled_back: none). A state
    # that cannot be written is left: a rollback runs now anyway (the state says what it said
    # until a write succeeds), and the step that failed runs again at the next boot.
    st["state"] = kind
    st["reason"] = reason
    try:
        _put(_STATE, st)
    except Exception:
        pass
    if kind == "rollback":
        return kind


def _trial(st):
    # Counts the boots of the new version, this one included (the boot of the swap is the
    # first), so a version that never commits, even one stuck in a reset loop, runs _TRIALS
    # times and the next boot rolls it back.
    n = st["boots"] + 1
    if n > _TRIALS:
        return _to_rollback(st, "trial_failed")
    st["boots"] = n
    _put(_STATE, st)
    print("boot: trial %d of %d" % (n, _TRIALS))


def _rollback(st):
    # rollback -> rolled_back, once every file of the old set is back in place.
    if _usable(_OLDLST) and _install(_OLD, _OLDLST, _NEWLST):
        st["state"] = "rolled_back"
        _put(_STATE, st)
        print("boot: rolled back")
    else:
        print("boot: rollback incomplete; it runs again at the next boot")


def _unreadable(st):
    # A state file that is not one of the states: a rollback when the old set can be put back
    # (ota/old.lst readable, each file it lists in ota/old/ or still in place: true from the
    # moment the list is written, as the backup moves one file at a time), otherwise nothing was
    # touched yet and it stays.
    if _usable(_OLDLST) and _each(_OLDLST, _saved, None):
        print("boot: ota state unreadable; rolling back")
        return _to_rollback(st, "bad_state")
    print("boot: ota state unreadable; no complete ota/old, nothing touched")


def _saved(_, p, n, d):
    return _same(_OLD + p, n, d) or _same(p, n, d)


def _step(kind, st):
    # Runs one state's step and returns the next state to run now (None: done for this boot).
    # An exception (a full flash, a read error) ends the step where it is as safely as a cut.
    try:
        if kind == "staged":
            return _stage(st)
        if kind == "swap":
            return _swap(st)
        if kind == "trial":
            return _trial(st)
        return _rollback(st)
    except Exception as e:
        print("boot: ota %s failed: %r" % (kind, e))
    if kind == "staged":
        # The update ends: at once when only ota/ was written, by a rollback once the backup
        # began.
        return _drop(
            st, "stage_failed", "the running files could not be moved", _stat(_OLDLST) is not None
        )
    elif kind == "swap":
        return _to_rollback(st, "swap_failed")
    # trial: the new version is complete in place, only its count was not written; rollback:
    # it runs again at the next boot.


def _run():
    global _buf, _mv, _hook
    if _stat(_STATE) is None:
        return
    try:
        with open(_STATE) as f:
            st = json.load(f)
    except Exception:  # not JSON, or too large for the heap
        st = None
    kind = st.get("state") if isinstance(st, dict) else None
    if kind in _ENDS:
        return
    if kind == "trial":
        b = st.get("boots")
        if not isinstance(b, int) or b < 0:
            kind = None
    _buf = bytearray(_CHUNK)
    _mv = memoryview(_buf)
    # board is imported for its cut hook only, and dropped again (with what it imported): main.py
    # must load the HAL this boot put in place, not the one that was running.
    import sys

    mods = sys.modules
    had = list(mods)
    try:
        import board

        _hook = getattr(board, "file_op", None)
    except Exception:  # no HAL, or one a cut left half swapped: no hook then
        pass
    try:
        if kind not in _STEPS:
            st = {}
            kind = _unreadable(st)
        while kind:
            kind = _step(kind, st)
    finally:
        for k in list(mods):
            if k not in had:
                del mods[k]


try:
    _run()
except Exception as e:
    try:
        print("boot: ota error %r" % (e,))
    except Exception:
        pass

# On a board boot.py runs in the namespace main.py shares: drop its names, so that its code and
# buffer are garbage from here on (6 KiB of heap on the Unix port, kept for nothing otherwise).
for _k in [k for k in globals() if k[0] == "_" and k[1] != "_"]:
    del globals()[_k]
del _k
