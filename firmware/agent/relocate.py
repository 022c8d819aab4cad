# Moving to another broker (docs/protocol.md "Moving a device to another broker"): a `broker`
# command, or a renewal whose answer names another broker (host, port or CA), is tried with the
# previous settings kept, and falls back to them when the new broker cannot be reached.
#   data/relocate.json  {"v": 1, "device_id", "seq": N (0: a renewal's answer), "phase",
#                        "prev": {"host", "port", "ca_b64"}, "tries": K, "until": unix s}
#   phase "proof": the previous settings are kept; hello + proof (agent.onboard) is to run.
#   phase "trial": onboard.json names the new broker; K attempts made (at most 3), none after
#                  `until` (60 s after the first).
#   phase "back":  the new broker was not reached; onboard.json is to name `prev` again.
# Crash safety. Each file is replaced whole by a rename (qdid.files): a cut leaves the old file or
# the new one. The changes in order, and what the next boot does after a cut that follows each:
#   1. cmd_seq.bin := N (agent.command). Cut before 2: the command is lost (sent again, it is
#      replayed: never run twice; it expires on the server); the device stays where it is.
#   2. relocate.json "proof", prev read from onboard.json. Cut before 4: the boot finds "proof"
#      and runs the proof again (the server gives the same answer).
#   3. cert.der, then onboard.json: the proof's answer (agent.onboard). A new certificate cut
#      between its two renames leaves a pair store.load refuses: the boot onboards, and that
#      onboarding is the proof.
#   4. relocate.json "trial", its attempt count raised before each attempt is made: attempts count
#      across boots, so cuts during the trial never keep the device at a broker it cannot reach;
#      after 3 (or 60 s) it goes back.
#   5. relocate.json "back", then onboard.json with prev: a boot that finds "back" writes prev
#      into onboard.json again (the same content when it was written already).
#   6. relocate.json removed once the broker took the session (CONNACK, SUBACK, online's PUBACK),
#      then the outcome queued and sent: a cut in between loses that report alone (the server
#      learns where the device is from `online` too), never a broker setting.
# So at every point onboard.json names a broker the device reached before, or one it is trying
# under the count while relocate.json holds the way back (tests/firmware/test_agent_relocate.py
# cuts the power before each change). Going back restores host, port and CA only: the
# certificate is the one the proof gave (the same, or a renewal's, which the old broker takes
# as it took the one it replaces). An answer that names the broker in use is done at once.
# Loaded for a step (a command, a session start, a landing, a renewal's proof) and dropped after
# (main.py): 4 KiB of heap while loaded on the Unix port (x86-64), as main.py counts.
import os
import json
import binascii
from micropython import const
from agent import store, clock
from agent.errors import LinkError, OnboardingError
from agent.log import log
from qdid import files

_FILE = "/relocate.json"
_FORMAT = const(1)  # relocate.json layout version
_TRIES = const(3)  # attempts at the new broker before going back
_TRIAL_S = const(60)  # s from the first attempt after which no attempt starts
PROOF = "proof"
TRIAL = "trial"
BACK = "back"


def _load(data_dir):
    # The recorded move, or None. A file that is not ours cannot come from a power cut (it is
    # replaced whole): reported and dropped, and the device stays with what onboard.json says.
    raw = files.read(data_dir + _FILE)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    prev = doc.get("prev") if isinstance(doc, dict) else None
    if not (
        isinstance(doc, dict)
        and doc.get("v") == _FORMAT
        and doc.get("phase") in (PROOF, TRIAL, BACK)
        and isinstance(doc.get("seq"), int)
        and isinstance(doc.get("tries"), int)
        and isinstance(doc.get("until"), int)
        and isinstance(prev, dict)
        and isinstance(prev.get("host"), str)
        and isinstance(prev.get("port"), int)
        and isinstance(prev.get("ca_b64"), str)
    ):
        log("W", "agent", "relocate.json unreadable; staying with the stored broker")
        forget(data_dir)
        return None
    return doc


def _save(data_dir, doc):
    files.write(data_dir + _FILE, json.dumps(doc).encode())


def pending(data_dir):
    return files.read(data_dir + _FILE) is not None


def forget(data_dir):
    try:
        os.remove(data_dir + _FILE)
    except OSError:
        pass  # absent already


def _why(seq):
    return "seq=%d" % seq if seq else "renewal"


def keep(data_dir, device_id, seq):
    # Before a proof whose answer may name another broker: records the settings in use. False
    # when there are none to keep (onboard.json unreadable).
    prev = store.broker(data_dir)
    if not isinstance(prev, dict):
        return False
    doc = {"v": _FORMAT, "device_id": device_id, "seq": seq, "phase": PROOF, "prev": prev}
    doc["tries"] = 0
    doc["until"] = 0
    _save(data_dir, doc)
    return True


def accept(st, seq, device_id, data_dir):
    # An accepted `broker` command: kept, and run where the next session starts (main.py closes
    # this one). Commands arrive only in a session, after any earlier move has landed.
    if not keep(data_dir, device_id, seq):
        st.ack(seq, "failed", "no_broker")  # nothing to fall back to: the device stays
        return
    st.relocate = True
    log("I", "agent", "broker move recorded (seq=%d); asking the server for the broker", seq)


def _same(stored, b):
    # The Stored's broker against a broker block: host, port and CA all.
    try:
        ca = binascii.a2b_base64(b["ca_b64"])
    except (KeyError, ValueError):
        return False
    host, port = b.get("host"), b.get("port")
    return stored.broker_host == host and stored.broker_port == port and stored.broker_ca == ca


def _begin(doc, stored, now):
    # The proof named stored's broker: the trial starts (saved by the caller).
    doc["phase"] = TRIAL
    doc["until"] = now + _TRIAL_S
    log(
        "I",
        "agent",
        "moving to broker %s:%d (%s)",
        stored.broker_host,
        stored.broker_port,
        _why(doc["seq"]),
    )


def renewal(st, data_dir, device_id, proof):
    # A renewal's hello + proof (proof: () -> Stored) with the settings in use kept first: an
    # answer that names the same broker ends the record; another one is tried where the next
    # session starts, as a `broker` command's is, and can fall back.
    kept = keep(data_dir, device_id, 0)
    try:
        new = proof()
    except (OnboardingError, LinkError):
        if kept:
            forget(data_dir)
        raise
    if not kept:
        return new
    doc = _load(data_dir)
    if doc is None or _same(new, doc["prev"]):
        forget(data_dir)
        return new
    _begin(doc, new, clock.now())
    _save(data_dir, doc)
    st.relocate = True
    return new


def step(st, data_dir, stored, proof):
    # Where a session starts, with relocate.json present: -> the Stored to connect with. proof:
    # () -> Stored (hello + proof by the onboarding path), or None when onboarding just ran (it
    # was the proof). Sets st.trial (this session is an attempt at the new broker) and
    # st.landing (seq, status, reason) to report once a session stands.
    st.trial = False
    st.landing = None
    now = clock.now()
    doc = _load(data_dir)
    if doc is None:
        st.relocate = False
        return stored
    seq = doc["seq"]
    if doc.get("device_id") != stored.device_id:
        # A transfer ran in between: the command was the old identity's, and the answer that
        # onboarded this one names its broker.
        forget(data_dir)
        st.relocate = False
        return stored
    if doc["phase"] == PROOF:
        if proof is not None:
            try:
                stored = proof()
            except (OnboardingError, LinkError) as e:
                # Refused or unreachable: onboard.json is untouched, the device stays.
                forget(data_dir)
                st.relocate = False
                log("W", "agent", "broker move (%s) failed: %s", _why(seq), e)
                if seq:
                    st.ack(
                        seq, "failed", e.code if isinstance(e, OnboardingError) else "unreachable"
                    )
                return stored
        if _same(stored, doc["prev"]):
            # Nothing to try: the device is where the answer says (done once a session stands).
            forget(data_dir)
            st.relocate = False
            log(
                "I",
                "agent",
                "broker %s:%d unchanged (%s)",
                stored.broker_host,
                stored.broker_port,
                _why(seq),
            )
            if seq:
                st.ack(seq, "done")
            return stored
        _begin(doc, stored, now)
    prev = doc["prev"]
    if doc["phase"] == TRIAL:
        if doc["tries"] < _TRIES and now < doc["until"]:
            doc["tries"] += 1
            _save(data_dir, doc)  # counted before it is made: a cut cannot grant more
            log(
                "I",
                "agent",
                "trying broker %s:%d (attempt %d of %d)",
                stored.broker_host,
                stored.broker_port,
                doc["tries"],
                _TRIES,
            )
            st.trial = True
            st.landing = (seq, "done", None)
            return stored
        log(
            "W",
            "agent",
            "broker %s:%d unreachable; back to %s:%d (%s)",
            stored.broker_host,
            stored.broker_port,
            prev["host"],
            prev["port"],
            _why(seq),
        )
        doc["phase"] = BACK
        _save(data_dir, doc)
    if not _same(stored, prev):
        stored = store.set_broker(data_dir, stored, prev)
    st.landing = (seq, "failed", "unreachable")
    return stored


def landed(st, data_dir, stored):
    # The broker took the session: the previous settings go, then the outcome is queued (it goes
    # out at once, on this broker; a link lost first sends it on the next session, here too).
    seq, status, reason = st.landing
    forget(data_dir)
    st.relocate = False
    st.trial = False
    st.landing = None
    if status == "done":
        log(
            "I",
            "agent",
            "moved to broker %s:%d (%s)",
            stored.broker_host,
            stored.broker_port,
            _why(seq),
        )
    else:
        log(
            "W",
            "agent",
            "back on broker %s:%d (%s)",
            stored.broker_host,
            stored.broker_port,
            _why(seq),
        )
    if seq:
        st.ack(seq, status, reason)
