# Over-the-air update, the agent's side (docs/ota.md "On the device", steps 1-5; boot.py does
# the swap and the rollback). Files, relative to the board's root:
#   ota/job.json      the accepted offer {"release", "size", "seq"}: written before anything else
#   ota/payload.bin   the encrypted payload as far as it came; its length is the resume offset
#   ota/head.json     the head answer, written once every check of step 2 held
#   ota/new/<path>    the staged plaintext files, each checked against the manifest
#   ota/state.json    {"state", "release", "version"}: "staged" here is the commit point of the
#                     staging; boot.py moves it on (swap, trial, rollback, rolled_back), the agent
#                     ends it (committed, then removed)
#   ota/current.json  the manifest of the version now running (kept across updates)
#   data/fw_min       the monotonic minimum version, text (absent: the running VERSION)
# Crash safety: every JSON file is replaced whole (temporary name, then rename); the payload only
# grows; ota/new is written again from the payload until state.json says "staged". So a cut
# before the commit point leaves a job that runs again from where the payload ends, and a cut
# after it leaves boot.py's work. Each file change first calls the emulated board's cut hook
# (board.file_op, docs/ota.md; real boards have none).
# Secrets: the OTA private key is derived for the unwrap (Identity.ota_key) and dropped; the
# content key and its two halves live in RAM for this step only, never on flash or in a log.
# RAM: one 1 KiB buffer for download, MAC and decryption (allocated once per step); the head
# answer (<= 16 KiB) is parsed once the TLS session that brought it is closed; the payload and
# the plaintext are never held whole. Loaded for a step (a command, the session start, the
# commit) and dropped after (main.py).
import os
import sys
import json
import hashlib
import binascii
from micropython import const
from agent.errors import LinkError
from agent.log import log
from agent.version import VERSION
from qdid import files

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here

DIR = "ota"
_JOB = "ota/job.json"
_PAYLOAD = "ota/payload.bin"
_HEAD = "ota/head.json"
_HEAD_TMP = "ota/head.tmp"
_STATE = "ota/state.json"
_NEW = "ota/new/"
_CURRENT = "ota/current.json"
_FW_MIN = "/fw_min"

_CHUNK = const(1024)  # bytes; the one buffer for download, MAC and decryption
_HEAD_LIMIT = const(16384)  # bytes; a 64-file head answer is ~8 KiB
_ERROR_LIMIT = const(512)  # bytes; an error answer is {"error": ..., "detail": ...}
_MAX_TOTAL = const(1048576)  # bytes of plaintext in a release (docs/ota.md "Release")
_MAX_FILES = const(64)
_MAX_PATH = const(96)  # characters of a path
_MAX_PART = const(48)  # characters of a path part
_MAX_RELEASE = const(48)  # characters of a release ID
MAX_SIZE = const(1153433)  # bytes of payload an offer may name (1.1 MiB: 1 MiB + IV, pad, tag)
_IV = const(16)  # AES block, the payload's first bytes
_TAG = const(32)  # HMAC-SHA256, the payload's last bytes
TRIES = const(5)  # failed downloads before the job is refused as unreachable

_LABEL_SIG = b"qlink-ota-v1\x00"  # domain separation of the manifest signature
_EVENT_FMT = '{"event": "ota", "release": %s, "state": "%s", "fw": "%s"%s}'
_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_RELEASE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-"
_REASON_CHARS = "abcdefghijklmnopqrstuvwxyz_"
_MAX_REASON = const(24)

# States of ota/state.json (docs/ota.md); boot.py owns swap and rollback.
STAGED = "staged"
TRIAL = "trial"
COMMITTED = "committed"
ROLLED_BACK = "rolled_back"


def _op(tag):
    # The emulated board's cut hook before each file change (docs/ota.md): the rig's power cut
    # lands exactly there. main.py imported the HAL as `board` already; looking it up in
    # sys.modules costs no import (and a test without a board has none). Real boards have none.
    hook = getattr(sys.modules.get("board"), "file_op", None)
    if hook is not None:
        hook(tag)


def _mkdirs(path):
    # Every folder above the file `path` (littlefs and POSIX mkdir make one level at a time).
    i = path.find("/")
    while i > 0:
        try:
            os.mkdir(path[:i])
        except OSError:
            pass  # exists; a real failure shows on the write that follows
        i = path.find("/", i + 1)


def _write(path, data):
    # path := data, whole or not at all: a temporary file renamed over it (qdid.files' rule),
    # with the cut hook before the write and before the rename.
    _mkdirs(path)
    _op("write " + path)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    _op("rename " + path)
    os.rename(path + ".tmp", path)


def _remove(path):
    # A file, or a folder with everything under it; absent is fine.
    try:
        kind = os.stat(path)[0] & 0x4000  # S_IFDIR
    except OSError:
        return
    if kind:
        for name in os.listdir(path):
            _remove(path + "/" + name)
    _op("remove " + path)
    if kind:
        os.rmdir(path)
    else:
        os.remove(path)


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _json(path):
    # A JSON object from a file, or None (absent, or not an object: treated as absent). Parsed
    # from the stream: the file's bytes never sit in RAM next to the objects made of them.
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        doc = None
    return doc if isinstance(doc, dict) else None


def _fetch_head(client, release, device_id, buf):
    # The head answer into ota/head.tmp through the one buffer, then parsed from there once the
    # TLS session is closed: a long-running device's heap may hold no contiguous block for the
    # whole answer next to a TLS session. -> (status, the answer or None).
    path = "/v1/ota/%s/head?device=%s" % (release, device_id)
    _mkdirs(_HEAD_TMP)
    with open(_HEAD_TMP, "wb") as f:
        status, _ = client.download(path, 0, f, buf, _HEAD_LIMIT)
    doc = _json(_HEAD_TMP) if status == 200 else None
    _remove(_HEAD_TMP)
    if 400 <= status < 500:
        status, doc = client.get(path, _ERROR_LIMIT)  # the short error answer names its code
    return status, doc


def clear():
    # ota/ goes, all but current.json (the running version's manifest); the state file last, so
    # a cut in between leaves a state whose cleanup runs again.
    try:
        names = os.listdir(DIR)
    except OSError:
        return
    # ota/old.lst first: without it boot.py never reads ota/old/ as a way back, so a state file
    # spoilt in the middle of the cleanup cannot take a committed device below data/fw_min.
    _remove(DIR + "/old.lst")
    for name in names:
        if name not in ("current.json", "state.json", "old.lst"):
            _remove(DIR + "/" + name)
    _remove(_STATE)


def version(s):
    # "MAJOR.MINOR.PATCH", decimal, each 0..65535 -> (major, minor, patch), else None.
    if not isinstance(s, str) or len(s) > 17:
        return None
    parts = s.split(".")
    if len(parts) != 3:
        return None
    out = []
    for p in parts:
        if not p or not p.isdigit() or len(p) > 5 or int(p) > 65535:
            return None
        out.append(int(p))
    return tuple(out)


def fw_min(data_dir):
    # data/fw_min, the lowest version this device may run from now on; absent or unreadable:
    # the running version (a file a cut left half-written cannot exist: it is renamed whole).
    raw = files.read(data_dir + _FW_MIN)
    v = None
    if raw is not None:
        try:
            v = version(raw.decode().strip())
        except UnicodeError:
            v = None
    return v if v is not None else version(VERSION)


def set_fw_min(data_dir, v):
    _write(data_dir + _FW_MIN, v.encode())


def _event(st, release, state, reason=None):
    extra = ', "reason": "%s"' % reason if reason else ""
    st.event(_EVENT_FMT % (json.dumps(release), state, VERSION, extra))


def _chars(s, allowed, most):
    if not isinstance(s, str) or not 0 < len(s) <= most:
        return False
    for c in s:
        if allowed.find(c) < 0:
            return False
    return True


def accept(st, seq, args):
    # The `ota` command (docs/ota.md step 1): args {"release": ID, "size": payload bytes}. The
    # job is written before anything is fetched; main.py leaves the broker session for the step.
    # An offer of another release while one is open is refused `busy`; the same one again (a
    # resent offer) takes the newer seq and carries on.
    release = args.get("release")
    size = args.get("size")
    if not (
        _chars(release, _RELEASE_CHARS, _MAX_RELEASE)
        and isinstance(size, int)
        and not isinstance(size, bool)
        and 0 < size <= MAX_SIZE
    ):
        st.ack(seq, "failed", "bad_args")
        return
    job = _json(_JOB)
    state = _json(_STATE)
    busy = job or state
    if busy is not None and busy.get("release") != release:
        log("W", "ota", "offer of %s refused: %s is open", release, busy.get("release"))
        st.ack(seq, "failed", "busy")
        _event(st, release, "refused", "busy")
        return
    if state is not None:
        st.ack(seq, "done")  # staged, in trial or committed already
        return
    _write(_JOB, json.dumps({"release": release, "size": size, "seq": seq}).encode())
    st.ota = True
    log("I", "ota", "offer of %s accepted (%d bytes)", release, size)


def start(st):
    # At agent start (main.py): what an earlier run or boot.py left. Sets st.ota (a job to run)
    # and st.ota_trial ((release, version) of a version on trial); reports and finishes the end
    # states.
    state = _json(_STATE)
    if state is None:
        if _size(_STATE) >= 0:
            log("E", "ota", "state.json unreadable; boot.py decides on it")
        elif _json(_JOB) is not None:
            st.ota = True  # a cut during the download or the staging: the step runs again
        return
    s = state.get("state")
    release = state.get("release")
    if not isinstance(release, str):
        release = ""
    if s == TRIAL:
        st.ota_trial = (release, state.get("version"))
        log("I", "ota", "%s on trial", release)
        _event(st, release, TRIAL)  # goes out once the first broker session stands
    elif s == COMMITTED:
        clear()  # a cut during the cleanup: finish it, and tell the server again
        _event(st, release, COMMITTED)
    elif s == ROLLED_BACK:
        # boot.py says why: trial_failed, swap_failed, bad_file, stage_failed or bad_state.
        why = state.get("reason")
        if not _chars(why, _REASON_CHARS, _MAX_REASON):
            why = "trial_failed"
        log("W", "ota", "%s rolled back by boot.py: %s", release, why)
        _event(st, release, ROLLED_BACK, why)
        clear()
    else:
        # staged, swap or rollback: boot.py's steps, which run before main.py (a board whose
        # boot.py did not run them finds them at its next reset).
        log("W", "ota", "state %s left for boot.py", s)


def commit(st, data_dir):
    # The trial version reached the broker and a telemetry message was acknowledged
    # (docs/ota.md step 5): fw_min, current.json, state committed, event, then the cleanup.
    state = _json(_STATE)
    st.ota_trial = None
    if state is None or state.get("state") != TRIAL:
        return
    release = state.get("release")
    v = state.get("version")
    if version(v) is not None:
        set_fw_min(data_dir, v)
    head = _json(_HEAD)
    if head is not None and isinstance(head.get("manifest"), str):
        _write(_CURRENT, head["manifest"].encode())
    state["state"] = COMMITTED
    _write(_STATE, json.dumps(state).encode())
    _event(st, release, COMMITTED)
    log("I", "ota", "%s committed", release)
    clear()


def refuse(st, job, reason, event=True):
    # The job ends without an update: reported (event, and the command's outcome), ota/ removed;
    # no running file was touched. event False: the server refused (its code is the reason).
    release = job.get("release") if job else ""
    log("W", "ota", "%s refused: %s", release, reason)
    if event:
        _event(st, release, "refused", reason)
    seq = job.get("seq") if job else None
    if isinstance(seq, int):
        st.ack(seq, "failed", reason)
    st.ota = False
    clear()


def abandon(st, reason):
    # main.py gives the open job up (unreachable: its download failed ota.TRIES times in a row).
    refuse(st, _json(_JOB), reason)


def _unhex(s, n):
    if not isinstance(s, str) or len(s) != 2 * n:
        return None
    try:
        return binascii.unhexlify(s)
    except ValueError:
        return None


def _path_ok(p):
    # docs/ota.md "Release": relative, "/"-separated, parts [A-Za-z0-9_.-]{1,48} and not . or ..,
    # at most 96 characters; never boot.py (the fixed loader), nothing under data/ or ota/, not
    # config.json, enrol.py or a file named like the pinned root (*.der).
    if not isinstance(p, str) or not 0 < len(p) <= _MAX_PATH:
        return False
    if p in ("boot.py", "config.json", "enrol.py") or p.endswith(".der"):
        return False
    parts = p.split("/")
    if parts[0] in ("data", "ota"):
        return False
    for part in parts:
        if part in (".", "..") or not _chars(part, _NAME_CHARS, _MAX_PART):
            return False
    return True


def _manifest(raw):
    # The signed manifest's shape -> dict, or None (a release key signed something malformed).
    try:
        m = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(m, dict) or m.get("v") != 1 or not isinstance(m.get("board"), str):
        return None
    fl = m.get("files")
    if not isinstance(fl, list) or version(m.get("version")) is None:
        return None
    if version(m.get("min_version", "0.0.0")) is None:
        return None
    for f in fl:
        if not isinstance(f, dict):
            return None
        size = f.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return None
        h = f.get("sha256")
        if not isinstance(h, str) or _unhex(h, 32) is None or h.lower() != h:
            return None
    return m


def check_head(doc, release, ident, data_dir, board_name, root_der):
    # docs/ota.md step 2, in its order. -> (None, manifest, keys) or (reason, None, None).
    manifest = doc.get("manifest")
    sig = _unhex(doc.get("signature"), 64)
    signer = doc.get("signer_b64")
    try:
        signer = binascii.a2b_base64(signer) if isinstance(signer, str) else b""
    except ValueError:
        signer = b""
    if not isinstance(manifest, str) or sig is None or not signer:
        return "bad_signature", None, None
    from agent import otacrypto
    from qdid import p256

    key = otacrypto.signer_key(signer, root_der)
    if key is None:
        return "bad_signature", None, None

    raw = manifest.encode()
    h = hashlib.sha256(_LABEL_SIG)
    h.update(raw)
    if not p256.verify_digest(key, h.digest(), sig):
        return "bad_signature", None, None
    del raw, h, key, signer
    m = _manifest(manifest)
    if m is None:
        return "bad_file", None, None
    if m["board"] != board_name:
        return "wrong_board", None, None
    v = version(m["version"])
    running = version(VERSION)
    if not (v > running and v > fw_min(data_dir)):
        return "not_newer", None, None
    if running < version(m.get("min_version", "0.0.0")):
        return "too_old", None, None
    fl = m["files"]
    total = 0
    last = ""
    for f in fl:
        p = f.get("path")
        if not _path_ok(p) or p <= last:  # sorted by path: also no path twice
            return "bad_file", None, None
        last = p
        total += f["size"]
    if len(fl) > _MAX_FILES or total > _MAX_TOTAL:
        return "too_large", None, None
    wrap = doc.get("wrap")
    if not isinstance(wrap, dict):
        return "wrong_device", None, None
    epk = _unhex(wrap.get("epk"), 65)
    key = _unhex(wrap.get("key"), 32)
    tag = _unhex(wrap.get("tag"), 32)
    if epk is None or key is None or tag is None:
        return "wrong_device", None, None
    from qdid import otakey

    d, _ = otakey.derive(ident)
    keys = otacrypto.unwrap(epk, key, tag, release, ident.device_id, d)
    d = None
    if keys is None:
        return "wrong_device", None, None
    return None, m, keys


def payload_size(m):
    # IV || AES-256-CBC(plaintext || PKCS#7 padding, 1..16 bytes) || tag.
    total = 0
    for f in m["files"]:
        total += f["size"]
    return _IV + (total // 16 + 1) * 16 + _TAG, total


class _Appender:
    # The payload file as agent.https.download writes it: the cut hook before each chunk, so a
    # power cut can land between any two (the next run resumes after the last whole one).
    def __init__(self, f):
        self.f = f

    def write(self, b):
        _op("append " + _PAYLOAD)
        return self.f.write(b)


def _download(client, release, want, buf):
    # Step 3: the payload from where ota/payload.bin ends; a longer file is discarded.
    have = _size(_PAYLOAD)
    if have > want:
        log("W", "ota", "payload longer than the release; fetched again")
        _remove(_PAYLOAD)
        have = -1
    if have < 0:
        _mkdirs(_PAYLOAD)
        have = 0
    if have == want:
        return 200, 0
    log("I", "ota", "download from byte %d of %d", have, want)
    with open(_PAYLOAD, "ab") as f:
        return client.download("/v1/ota/%s/payload" % release, have, _Appender(f), buf, want - have)


class _Staging:
    # The plaintext's way into ota/new/<path>, file after file in manifest order, each hashed as
    # it is written: the file open now (its index in the manifest, its hash, the bytes it still
    # expects).
    def __init__(self, fl):
        self.fl = fl
        self.i = -1
        self.out = None
        self.h = hashlib.sha256()
        self.left = 0

    def open_next(self):
        # False when the manifest has no further file.
        self.i += 1
        if self.i == len(self.fl):
            return False
        path = _NEW + self.fl[self.i]["path"]
        _mkdirs(path)
        _op("write " + path)
        self.out = open(path, "wb")
        self.h = hashlib.sha256()
        self.left = self.fl[self.i]["size"]
        return True

    def write(self, part):
        if _TYPE_CHECKING:
            assert self.out is not None  # open_next ran: _stage writes only into an open file
        self.out.write(part)
        self.h.update(part)
        self.left -= len(part)

    def close(self):
        # -> the path of the file just closed when its hash is not the manifest's, else None.
        out = self.out
        self.out = None
        if out is not None:
            out.close()
        f = self.fl[self.i]
        if binascii.hexlify(self.h.digest()).decode() != f["sha256"]:
            return f["path"]
        return None


def _stage(k_enc, fl, total, n, buf):
    # Step 4: decrypt the n ciphertext bytes (after the IV) in place, chunk by chunk (the
    # cryptolib CBC object keeps the chain between calls), into ota/new/<path>, hashing each file
    # as it is written. -> None, or the path whose size or hash is wrong ("" for the padding).
    import cryptolib

    _remove(_NEW[:-1])  # what an earlier, cut attempt staged
    mv = memoryview(buf)
    s = _Staging(fl)
    try:
        with open(_PAYLOAD, "rb") as src:
            aes = cryptolib.aes(k_enc, 2, src.read(_IV))  # mode 2: CBC
            rest = n
            while rest:
                k = src.readinto(buf if rest >= len(buf) else mv[:rest])
                if not k or k % 16:
                    return ""
                chunk = buf if k == len(buf) else mv[:k]
                aes.decrypt(chunk, chunk)
                rest -= k
                if not rest:
                    # PKCS#7 (RFC 5652 6.3): the last block ends in p bytes of value p, and p is
                    # what the manifest's total leaves (the tag held: this is a check of ours).
                    p = n - total
                    for j in range(k - p, k):
                        if buf[j] != p:
                            return ""
                    k -= p
                at = 0
                while at < k:
                    if s.out is None and not s.open_next():
                        return ""  # more plaintext than the manifest's files
                    m = k - at if k - at < s.left else s.left
                    s.write(mv[at : at + m])
                    at += m
                    if not s.left:
                        bad = s.close()
                        if bad:
                            return bad
        while s.i + 1 < len(fl):  # empty files at the end, or a manifest longer than the data
            if not s.open_next() or s.left:
                return ""
            bad = s.close()
            if bad:
                return bad
    finally:
        if s.out is not None:
            s.out.close()
    return None


def step(client, ident, st, data_dir, root_der):
    # main.py's update step where a session starts: run() with its failures counted. A link
    # failure, or a heap too fragmented for this try, counts; after TRIES in a row the job is
    # refused as unreachable. A flash error (sockets fail as LinkError) means the release does
    # not fit: too_large. st.ota_reset once staged (main.py reports, then resets the board).
    try:
        if run(client, ident, st, data_dir, getattr(st.board, "name", None), root_der):
            st.ota_reset = True
        st.ota_tries = 0
    except (LinkError, MemoryError) as e:
        st.ota_tries += 1
        if st.ota_tries < TRIES:
            if isinstance(e, MemoryError):
                raise LinkError("ota: out of memory")
            raise
        st.ota_tries = 0
        abandon(st, "unreachable")
    except OSError as e:
        log("E", "agent", "update does not fit the flash (errno %s)", e.args[0] if e.args else "?")
        st.ota_tries = 0
        abandon(st, "too_large")


def run(client, ident, st, data_dir, board_name, root_der):
    # The step (main.py, where sessions start): head, checks, download, tag, staging. Returns
    # True once staged (main.py reports, then resets the board for boot.py), False when the job
    # ended otherwise (refused, reported). Link failures raise LinkError: the download resumes
    # at the next run.
    job = _json(_JOB)
    release = job.get("release") if job else None
    if job is None or not _chars(release, _RELEASE_CHARS, _MAX_RELEASE):
        log("E", "ota", "job.json unusable; dropped")
        refuse(st, None, "bad_args", False)
        return False
    doc = _json(_HEAD)
    fresh = doc is None
    buf = bytearray(_CHUNK)
    if fresh:
        status, doc = _fetch_head(client, release, ident.device_id, buf)
        if 400 <= status < 500 and isinstance(doc, dict) and isinstance(doc.get("error"), str):
            # unknown_release, not_offered (aborted), no_ota_key: the server's word ends it.
            refuse(st, job, doc["error"][:32], False)
            return False
        if status != 200 or not isinstance(doc, dict):
            raise LinkError("ota: head answered HTTP %d" % status)
    reason, m, keys = check_head(doc, release, ident, data_dir, board_name, root_der)
    if reason is not None:
        refuse(st, job, reason)
        return False
    if fresh:
        keep = {}
        for k in ("release", "manifest", "signature", "signer_b64", "wrap"):
            keep[k] = doc.get(k)
        _write(_HEAD, json.dumps(keep).encode())
        del keep
        _event(st, release, "downloading")
    del doc
    want, total = payload_size(m)
    status, _ = _download(client, release, want, buf)
    if status == 416:
        # The server's payload is shorter than ours: not this release's; fetch it anew.
        _remove(_PAYLOAD)
        raise LinkError("ota: payload range refused")
    if status not in (200, 206):
        raise LinkError("ota: payload answered HTTP %d" % status)
    if _size(_PAYLOAD) != want:
        refuse(st, job, "altered")  # a whole answer of another length: not this release
        return False
    from agent import otacrypto

    if not otacrypto.tag_ok(_PAYLOAD, keys[32:], release, want - _TAG, buf):
        refuse(st, job, "altered")  # encrypt-then-MAC: not a byte decrypted
        return False
    bad = _stage(keys[:32], m["files"], total, want - _IV - _TAG, buf)
    keys = None
    if bad is not None:
        log("W", "ota", "staged file %s differs from the manifest", bad or "(padding)")
        refuse(st, job, "bad_file")
        return False
    state = {"state": STAGED, "release": release, "version": m["version"]}
    _write(_STATE, json.dumps(state).encode())
    _remove(_PAYLOAD)  # staged: only boot.py's files are needed now
    _event(st, release, STAGED)
    st.ack(job["seq"], "done")
    st.ota = False
    log("I", "ota", "%s staged; resetting for boot.py", release)
    return True
