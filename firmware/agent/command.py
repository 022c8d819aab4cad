# Commands from the server (docs/protocol.md "Command channel"). The MQTT payload is
#   signature (64 bytes, r || s) || body (UTF-8 JSON, at most 320 bytes)
# signed (ECDSA P-256, SHA-256 over b"qlink-cmd-v1\0" || body) by the command signer, whose key
# the device checked against its pinned root at onboarding (agent.onboard.signer_key). The broker
# is not trusted: nothing in the body is read before the signature holds. The checks run in the
# page's order: altered, foreign, expired, replayed, malformed; each refusal names its reason.
# An accepted seq is written to data/ before the command runs, so a power cut never lets it run
# twice; the kinds that write a record of their own (ota's job, transfer and reenrol's step), which
# the same command taken again leaves as it is, write it first: a power cut or a heap that fails
# between the two leaves the command to the server's resend (the seq was not recorded), never
# lost; any other kind the heap fails in is reported failed (out_of_memory), not left accepted.
# Everything here is public (signed bodies, the signer's key): plain compares suffice.
# Kinds: ping (done at once), renew (main.py closes the session and renews), transfer and
# reenrol (agent.successor records the step; a transfer makes main.py close the session and run
# it), decommission (agent.decommission erases and stops the agent), broker (agent.relocate keeps
# the broker settings; main.py closes the session and moves), ota (agent.ota writes the job;
# main.py closes the session and runs the update step); others fail with unknown_kind.
# Loaded when a command arrives and dropped after (main.py), with the kinds' modules.
import gc
import json
import hashlib
from micropython import const
from agent import store
from agent.log import log

_LABEL = b"qlink-cmd-v1\x00"  # domain separation: this signature means nothing elsewhere
_SIG = const(64)  # bytes, r || s
_MAX_BODY = const(320)  # bytes
_MAX_SEQ = const(0xFFFFFFFF)  # data/cmd_seq.bin holds 4 bytes
_MAX_KIND = const(32)  # chars of a kind written to the log
# Kinds whose own record is written before the seq (see above).
_RECORD_FIRST = ("ota", "transfer", "reenrol")
_REJECTED_FMT = '{"event": "command_rejected", "seq": %s, "reason": "%s"}'


class Rejected(Exception):
    # reason: one of the page's words; seq: the body's seq once the signature held and the body
    # gave one, else None (an unverified body says nothing).
    def __init__(self, reason, seq=None):
        super().__init__(reason)
        self.reason = reason
        self.seq = seq


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def digest(body):
    h = hashlib.sha256(_LABEL)
    h.update(body)
    return h.digest()


def check(payload, signer, device_id, now, last_seq):
    # -> (seq, kind, args) of a command that may run; raises Rejected. Persists nothing.
    # payload None: the message was longer than the MQTT receive buffer and was dropped.
    if signer is None:
        raise Rejected("no_signer")  # onboarded by a server without the command channel
    if payload is None:
        raise Rejected("malformed")  # longer than any body the page allows
    if len(payload) < _SIG:
        raise Rejected("altered")  # no room for a signature
    body = payload[_SIG:]
    from qdid import p256

    if not p256.verify_digest(signer, digest(body), payload[:_SIG]):
        raise Rejected("altered")
    try:
        doc = json.loads(body)
    except ValueError:  # not JSON, or not UTF-8
        doc = None
    if not isinstance(doc, dict):
        raise Rejected("malformed")
    seq = doc.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq <= _MAX_SEQ:
        seq = None
    dev = doc.get("device_id")
    if isinstance(dev, str) and dev != device_id:
        raise Rejected("foreign", seq)
    exp = doc.get("exp")
    # "exp: unix seconds after which the command must not run"; at exp itself it is refused too,
    # as "in the future" asks.
    if _int(exp) and exp <= now:
        raise Rejected("expired", seq)
    if seq is not None and seq <= last_seq:
        raise Rejected("replayed", seq)
    v = doc.get("v")
    kind = doc.get("kind")
    args = doc.get("args")
    if not (
        len(body) <= _MAX_BODY
        and _int(v)
        and v == 1
        and isinstance(dev, str)
        and seq is not None
        and _int(exp)
        and isinstance(kind, str)
        and isinstance(args, dict)
    ):
        raise Rejected("malformed", seq)
    return seq, kind, args


def take(payload, signer, device_id, data_dir, now, record=True):
    # Checks one command against the last accepted seq and records it as accepted before the
    # caller acts on it: -> (seq, kind, args); raises Rejected (logged) and then records nothing.
    # record False: the caller records it (store.set_cmd_seq) once its own first write is done.
    try:
        seq, kind, args = check(payload, signer, device_id, now, store.cmd_seq(data_dir))
    except Rejected as e:
        log("W", "command", "seq=%s rejected: %s", "null" if e.seq is None else e.seq, e.reason)
        raise
    if record:
        store.set_cmd_seq(data_dir, seq)
    log("I", "command", "seq=%d kind=%s accepted", seq, kind[:_MAX_KIND])
    return seq, kind, args


def run_all(st, signer, device_id, data_dir, now):
    # Takes the commands waiting in st.inbox (main.py's state), oldest first, and answers each
    # on st's event queue: command_rejected, or accepted and then done or failed. A renew is
    # left in st.renew_seq for main.py, which must close the session before it runs.
    while st.inbox:
        payload = st.inbox.pop(0)
        try:
            seq, kind, args = take(payload, signer, device_id, data_dir, now, False)
        except Rejected as e:
            st.event(_REJECTED_FMT % ("null" if e.seq is None else e.seq, e.reason))
            continue
        if kind not in _RECORD_FIRST:
            store.set_cmd_seq(data_dir, seq)  # before it acts: a power cut never runs it twice
        st.ack(seq, "accepted")
        try:
            if _act(st, seq, kind, args, device_id, data_dir):
                return
            if kind in _RECORD_FIRST:
                store.set_cmd_seq(data_dir, seq)  # after its own record: see above
        except MemoryError:
            if kind in _RECORD_FIRST:
                raise  # its seq is not recorded: the server's resend takes it again (main.py)
            # Its seq is recorded, so it cannot run again: the server hears that it failed,
            # rather than "accepted" for good. The session's buffers stay; the command's go.
            gc.collect()
            log("E", "command", "seq=%d kind=%s failed: out of memory", seq, kind[:_MAX_KIND])
            st.ack(seq, "failed", "out_of_memory")


def _act(st, seq, kind, args, device_id, data_dir):
    # One accepted command (its `accepted` queued; its seq recorded, or recorded by run_all
    # after it for _RECORD_FIRST). True: nothing may run after it.
    if kind == "ping":
        st.ack(seq, "done")  # the round trip is the point
    elif kind == "renew":
        st.renew_seq = seq
    elif kind == "transfer" or kind == "reenrol":
        from agent import successor

        successor.accept(st, seq, kind, args, data_dir)
    elif kind == "broker":
        from agent import relocate

        relocate.accept(st, seq, device_id, data_dir)
    elif kind == "ota":
        # The job is written (agent.ota, docs/ota.md step 1); main.py leaves the session and
        # runs the step where sessions start.
        # The job is on flash before the seq (run_all): a power cut between the two leaves a
        # job that the next start resumes and a seq not recorded, so the server's resend is
        # taken again and continues that job; the other order would lose the offer.
        from agent import ota

        ota.accept(st, seq, args)
    elif kind == "decommission":
        from agent import decommission

        decommission.run(st, seq, data_dir)
        return True
    else:
        st.ack(seq, "failed", "unknown_kind")
    return False
