# Successor identities (docs/protocol.md "Successor identities"): ownership transfer and
# re-enrolment, each one request, POST /v1/onboard/successor, in which the current key signs the
# next public key; once the server has registered it (200), the device moves to it and onboards.
#   accept(): a `transfer` or `reenrol` command, recorded in data/owner.json (qdid.owner) before
#             anything is asked of the server. A transfer runs at once: main.py closes the broker
#             session and calls run(). A re-enrolment runs at the next cold boot, which needs a
#             fresh power-up read (qdid.identity.boot gives the next identity then).
#   run():    the request, and after its 200 the move: onboarding data and the command seq of
#             the current identity dropped, owner.json committed (then helper.new renamed over
#             helper.bin), the identity in RAM switched. A cut anywhere resumes from owner.json
#             with the same request (the same answer: the server keeps it), since each file is
#             replaced whole and the commit comes after what it makes stale is gone.
# Answers: 429 and link failures keep the step pending (main.py's retry loop); any other refusal
# gives the step up and fails the command with the server's code, on the current identity.
# The device sends no `done` for these commands: the 200 marks the command done on the server,
# and the next identity's topics and seqs are not the current one's (an ack there would name
# another command). Loaded for a command or a step, dropped after (main.py).
import hashlib
import binascii
from agent import store, telemetry
from agent.errors import OnboardingError
from agent.log import log
from qdid import owner

_LABEL = b"qlink-successor-v1\x00"  # domain separation: this signature means nothing elsewhere
_PATH = "/v1/onboard/successor"


def digest(reason, device_id, next_pub, seq):
    # SHA-256(label || reason || 0x00 || current device_id (64 ASCII hex) || next public key
    # (65 bytes) || seq (ASCII decimal)): the page's message, whole.
    h = hashlib.sha256(_LABEL)
    h.update(reason.encode())
    h.update(b"\x00")
    h.update(device_id.encode())
    h.update(next_pub)
    h.update(str(seq).encode())
    return h.digest()


def _hex(b):
    return binascii.hexlify(b).decode()


def accept(st, seq, kind, args, data_dir):
    # An accepted `transfer` ({"epoch": E}, E = current epoch + 1) or `reenrol` command: checked,
    # then recorded as the pending step. A newer command supersedes a pending one (its request
    # is not under way: the step runs before any session, so no command arrives during it).
    try:
        epoch, pending, old = owner.load(data_dir)
    except owner.OwnerError as err:
        log("E", "agent", "%s", err)
        st.ack(seq, "failed", "owner_unreadable")
        return
    if kind == owner.TRANSFER:
        to = args.get("epoch")
        if not isinstance(to, int) or isinstance(to, bool):
            st.ack(seq, "failed", "bad_args")
            return
        if to > owner.LAST_EPOCH:
            # Seeds 0..7 serve eight owners; re-enrolment starts a fresh set.
            log("W", "agent", "transfer to epoch %d refused: seeds 0..7 are spent", to)
            st.ack(seq, "failed", "seeds_spent")
            return
        if to != epoch + 1:
            log("W", "agent", "transfer to epoch %d refused: this device is at epoch %d", to, epoch)
            st.ack(seq, "failed", "bad_epoch")
            return
    if pending is not None and old != seq:
        st.ack(old, "failed", "superseded")
        if pending == owner.REENROL and kind == owner.TRANSFER:
            owner.drop_next(data_dir)  # before pending changes: see qdid.owner
    owner.save(data_dir, epoch, kind, seq)
    st.move = kind == owner.TRANSFER  # a re-enrolment that superseded a transfer waits
    if st.move:
        log("I", "agent", "transfer to epoch %d recorded (seq=%d); moving now", epoch + 1, seq)
    else:
        log("I", "agent", "re-enrolment recorded (seq=%d); it runs at the next power-on", seq)


def run(client, ident, st, data_dir):
    # The pending step, if this boot can run it. client: agent.https.Client (or a test double
    # with .host, .retry_after and .post(path, obj)). Raises OnboardingError (429, an unusable
    # answer) or LinkError, with st.move left set: main.py's loop tries again. Returns when the
    # step is done, given up, or waits for a power-on (st.move cleared).
    epoch, pending, seq = owner.load(data_dir)
    if pending == owner.TRANSFER:
        next_pub = ident.public_key_of(epoch + 1)
    elif pending == owner.REENROL and ident.successor is not None:
        next_pub = ident.successor.public_key
    else:
        st.move = False
        if pending == owner.REENROL:
            log("W", "agent", "re-enrolment (seq=%d) waits: %s", seq, ident.successor_error)
        return
    next_id = _hex(hashlib.sha256(next_pub).digest())
    sig = ident.sign_digest(digest(pending, ident.device_id, next_pub, seq))
    log("I", "agent", "%s (seq=%d): asking %s for the next identity", pending, seq, client.host)
    status, doc = client.post(
        _PATH,
        {
            "device_id": ident.device_id,
            "public_key": _hex(next_pub),
            "reason": pending,
            "seq": seq,
            "signature": _hex(sig),
        },
    )
    from agent.onboard import answer

    try:
        doc = answer("successor", status, doc, client.retry_after)
    except OnboardingError as e:
        if status == 429:
            raise  # the same request later, when the server says
        _give_up(ident, st, data_dir, epoch, pending, seq, e.code)
        st.move = False
        return
    if doc.get("device_id") != next_id:
        # The server may have moved us already: keep the step, ask again (the same answer).
        log("E", "agent", "successor answer unusable: device_id is not the next identity's")
        raise OnboardingError("bad_answer", "successor: device_id is not the next identity's", 200)
    # The current identity is revoked now: nothing of it is used again.
    store.clear(data_dir)
    store.set_cmd_seq(data_dir, 0)  # the next identity's commands count from 1
    if pending == owner.TRANSFER:
        owner.save(data_dir, epoch + 1)
        ident.use_epoch(epoch + 1)
        log("I", "agent", "moved to owner epoch %d (transfer seq=%d)", epoch + 1, seq)
    else:
        owner.save(data_dir, 0)
        owner.commit_next(data_dir)
        ident.adopt_successor()
        telemetry.set_puf(ident.health)
        log("I", "agent", "re-enrolled: owner epoch 0 of new helper data (seq=%d)", seq)
    _fresh(st)
    st.move = False
    log("I", "agent", "device %s", ident.device_id)


def _give_up(ident, st, data_dir, epoch, pending, seq, code):
    # A refusal (bad_signature, no_successor_expected, successor_taken, ...): nothing moved on
    # the server, so the device stays who it is and says why on its event topic.
    if pending == owner.REENROL:
        owner.drop_next(data_dir)  # before pending is cleared: see qdid.owner
        nxt = ident.successor
        if nxt is not None:
            nxt.wipe()
            ident.successor = None
    owner.save(data_dir, epoch)
    ident.pending = None
    log("W", "agent", "%s (seq=%d) given up: the server refused it", pending, seq)
    st.ack(seq, "failed", code)


def _fresh(st):
    # What the agent holds for the current identity goes with it: queued telemetry, events and
    # a renewal asked for (the next owner does not see the last one's data; the current
    # identity's topics refuse it now).
    for i in range(len(st.queue)):
        st.queue[i] = None
    st.head = st.count = st.dropped = 0
    st.seq = st.sent = 0
    st.events = []
    st.renew_seq = 0
    st.renew_retry = 0
