# agent.command: a command is checked in the order of docs/protocol.md "Command channel"
# (altered, foreign, expired, replayed, malformed; no_signer without a stored key), each refusal
# with its exact reason and nothing persisted; an accepted seq is persisted before the caller
# acts. Commands signed by pyca/cryptography (certs.CMD_*) cross-check the verification; the
# others are signed here with qdid.p256 (RFC 6979) by the test signer key, to vary the bodies.
# The signature check loads qdid.p256 beside the test's certificates (resident on a device).
# heapsize: 96k
import os
import json
from qdid import p256
from agent import command, store
from agent import log as logmod
from fwtest import raises, tmpdir
import certs

DEVICE_ID = certs.DEVICE_ID
SIGNER = certs.SIGNER_PUB
NOW = certs.CMD_EXP - 1000  # the clock: every host-signed command is still valid


def body(**over):
    doc = {"v": 1, "device_id": DEVICE_ID, "seq": 5, "exp": NOW + 60, "kind": "ping", "args": {}}
    for k in over:
        if over[k] is _DROP:
            del doc[k]
        else:
            doc[k] = over[k]
    return json.dumps(doc).encode()


_DROP = object()


def signed(raw, d=certs.SIGNER_D):
    return p256.sign_digest(d, command.digest(raw)) + raw


def rejected(payload, last=0, signer=SIGNER, now=NOW):
    return raises(command.Rejected, command.check, payload, signer, DEVICE_ID, now, last)


def test_command_signed_by_the_server_side_implementation_is_accepted():
    # Signed by pyca/cryptography over b"qlink-cmd-v1\0" || body, compact JSON as the server
    # writes it.
    assert command.check(certs.CMD_PING, SIGNER, DEVICE_ID, NOW, 0) == (1, "ping", {})
    assert command.check(certs.CMD_RENEW, SIGNER, DEVICE_ID, NOW, 1) == (2, "renew", {})


def test_digest_is_sha256_of_the_label_and_the_body():
    import hashlib

    assert command.digest(b"{}") == hashlib.sha256(b"qlink-cmd-v1\x00{}").digest()


def test_altered_signature_or_body_is_rejected_altered():
    good = signed(body())
    assert command.check(good, SIGNER, DEVICE_ID, NOW, 0)[0] == 5
    flipped_sig = bytes([good[0] ^ 1]) + good[1:]
    flipped_body = good[:-2] + bytes([good[-2] ^ 1]) + good[-1:]
    other_key = signed(body(), d=0x1234567)
    for bad in (flipped_sig, flipped_body, other_key, good[:63], b"", good[:64]):
        e = rejected(bad)
        assert (e.reason, e.seq) == ("altered", None)  # an unverified body says nothing


def test_altered_comes_before_every_other_check():
    # A body that would be foreign, expired, replayed and malformed, with a bad signature.
    raw = body(device_id="00" * 32, exp=1, seq=1, args=[])
    bad = bytes(64) + raw
    assert rejected(bad, last=3).reason == "altered"


def test_command_for_another_device_is_rejected_foreign():
    e = rejected(signed(body(device_id="cd" * 32)))
    assert (e.reason, e.seq) == ("foreign", 5)


def test_expired_command_is_rejected_expired_at_exp_and_after():
    for exp in (NOW, NOW - 1):
        e = rejected(signed(body(exp=exp)))
        assert (e.reason, e.seq) == ("expired", 5)
    assert command.check(signed(body(exp=NOW + 1)), SIGNER, DEVICE_ID, NOW, 0)[0] == 5


def test_seq_not_above_the_last_accepted_is_rejected_replayed():
    payload = signed(body(seq=5))
    for last in (5, 6):
        e = rejected(payload, last=last)
        assert (e.reason, e.seq) == ("replayed", 5)
    assert command.check(payload, SIGNER, DEVICE_ID, NOW, 4)[0] == 5


def test_checks_run_in_the_documented_order():
    # foreign before expired before replayed before malformed
    e = rejected(signed(body(device_id="cd" * 32, exp=1, args=[])), last=9)
    assert e.reason == "foreign"
    e = rejected(signed(body(exp=1, args=[])), last=9)
    assert e.reason == "expired"
    e = rejected(signed(body(args=[])), last=9)
    assert e.reason == "replayed"
    e = rejected(signed(body(args=[])), last=0)
    assert (e.reason, e.seq) == ("malformed", 5)


def test_signed_body_that_is_not_a_command_is_rejected_malformed():
    cases = (
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"v": 1, "seq": 5', None),
        (b'{"v": 1, "kind": "\xff"}', None),  # not UTF-8
        (body(v=2), 5),
        (body(v=True), 5),
        (body(v=_DROP), 5),
        (body(device_id=7), 5),
        (body(device_id=_DROP), 5),
        (body(seq=0), None),
        (body(seq=-1), None),
        (body(seq=True), None),
        (body(seq="5"), None),
        (body(seq=1 << 32), None),  # beyond what data/cmd_seq.bin holds
        (body(seq=_DROP), None),
        (body(exp="soon"), 5),
        (body(exp=_DROP), 5),
        (body(kind=3), 5),
        (body(kind=_DROP), 5),
        (body(args=[]), 5),
        (body(args=_DROP), 5),
        (body(args={"x": "y" * 260}), 5),  # signed, but longer than 320 bytes
    )
    for raw, seq in cases:
        e = rejected(signed(raw))
        assert (e.reason, e.seq) == ("malformed", seq), raw


def test_a_command_too_long_for_the_receive_buffer_is_rejected_malformed():
    e = rejected(None)  # agent.mqtt hands over None for a dropped payload
    assert (e.reason, e.seq) == ("malformed", None)


def test_without_a_stored_signer_every_command_is_rejected_no_signer():
    for payload in (certs.CMD_PING, None, b""):
        e = rejected(payload, signer=None)
        assert (e.reason, e.seq) == ("no_signer", None)


def test_body_of_320_bytes_is_accepted_and_321_is_malformed():
    n = 320 - len(body(args={"x": ""}))
    raw = body(args={"x": "y" * n})
    assert len(raw) == 320
    assert command.check(signed(raw), SIGNER, DEVICE_ID, NOW, 0)[2] == {"x": "y" * n}
    raw = body(args={"x": "y" * (n + 1)})
    assert (rejected(signed(raw)).reason, len(raw)) == ("malformed", 321)


# -- take: the accepted seq is persisted before the caller acts, nothing for a refusal -------


def _lines():
    lines = []
    logmod._sink = lines.append
    return lines


def test_take_persists_the_seq_before_returning_and_logs_it():
    d = tmpdir()
    lines = _lines()
    try:
        assert command.take(certs.CMD_PING, SIGNER, DEVICE_ID, d, NOW) == (1, "ping", {})
    finally:
        logmod._sink = None
    assert store.cmd_seq(d) == 1
    assert lines == ["I command: seq=1 kind=ping accepted"]
    # The same command again (a broker replaying it, a resend after a power cut): refused.
    e = raises(command.Rejected, command.take, certs.CMD_PING, SIGNER, DEVICE_ID, d, NOW)
    assert (e.reason, e.seq) == ("replayed", 1)
    assert command.take(certs.CMD_RENEW, SIGNER, DEVICE_ID, d, NOW)[0:2] == (2, "renew")
    assert store.cmd_seq(d) == 2


def test_take_of_a_refused_command_persists_nothing_and_says_why():
    d = tmpdir()
    store.set_cmd_seq(d, 3)
    for payload, reason, seq in (
        (bytes(64) + body(), "altered", "null"),
        (signed(body(device_id="cd" * 32)), "foreign", "5"),
        (signed(body(exp=NOW)), "expired", "5"),
        (signed(body(seq=3)), "replayed", "3"),
        (signed(body(kind=_DROP)), "malformed", "5"),
    ):
        lines = _lines()
        try:
            e = raises(command.Rejected, command.take, payload, SIGNER, DEVICE_ID, d, NOW)
        finally:
            logmod._sink = None
        assert e.reason == reason
        assert lines == ["W command: seq=%s rejected: %s" % (seq, reason)]
        assert store.cmd_seq(d) == 3
    assert sorted(os.listdir(d)) == ["cmd_seq.bin"]
