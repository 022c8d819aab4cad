"""The device's side of an update (firmware/agent/ota.py, on the Unix port at the RP2040 heap)
against releases pyca/cryptography builds as docs/ota.md writes them, served over TLS with byte
ranges: a good release is staged file by file, a cut download resumes where it ended, and each
refusal names its reason, leaves ota/ empty and the running files as they were."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path

import otaenv
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from otaenv import COMMAND_EKU, FIRMWARE_EKU, P256_N, Release

RUNNING = {"main.py": b"import board\n", "agent/version.py": b'VERSION = "0.1.0"\n'}
# The test device's seed of its epoch 0, and the OTA key it gives (docs/ota.md), as the host
# computes it.
SEED = hashlib.sha256(b"qlink ota test device").digest()[:16]


def _ota_scalar(seed: bytes) -> int:
    h = hmac.new(seed, b"qlink/ecdh", hashlib.sha256).digest()[:16]
    ctr = 0
    while True:
        c = int.from_bytes(hashlib.sha256(h + ctr.to_bytes(4, "big")).digest(), "big")
        if 0 < c < P256_N:
            return c
        ctr += 1


D_OTA = _ota_scalar(SEED)
OTA_PUB = otaenv.point(ec.derive_private_key(D_OTA, ec.SECP256R1()).public_key())
DEVICE_ID = hashlib.sha256(b"qlink ota test device id").hexdigest()

# The device's side: agent.ota as main.py runs it (accept, then the step `runs` times while the
# job is open), beside the agent's resident modules at the RP2040 heap, with the test's OTA key;
# prints what it reported.
DEVICE = """
import json, gc
from agent import main  # the agent's always-loaded modules: the step runs beside them
from agent import ota, https
from agent.errors import LinkError
from agent import log
lines = []
log._sink = lines.append
class St:
    def __init__(s):
        s.evs = []
        s.acks = []
        s.ota = False
    def event(s, m):
        s.evs.append(json.loads(m))
    def ack(s, seq, status, reason=None):
        s.acks.append([seq, status, reason])
class Ident:
    device_id = %(device_id)r
    epoch = 0
    def seed(s, i):
        return %(seed)r
root = open("ca.der", "rb").read()
st = St()
ota.accept(st, 7, {"release": %(release)r, "size": %(size)d})
out = []
for i in range(%(runs)d):
    if not st.ota:
        break
    c = https.Client("localhost", %(port)d, root, "", 5000)
    try:
        out.append(ota.run(c, Ident(), st, "data", %(board)r, root))
    except LinkError as e:
        out.append("link: " + str(e))
    c = None
    gc.collect()
print("RESULT " + json.dumps({"out": out, "events": st.evs, "acks": st.acks, "log": lines}))
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> otaenv.Pki:
    return otaenv.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tree() -> list[tuple[str, bytes]]:
    return otaenv.sample_files(64)


@pytest.fixture(scope="module")
def good(pki: otaenv.Pki, tree: list[tuple[str, bytes]]) -> Release:
    return otaenv.build(pki.release, tree)


def _device_root(tmp: Path, pki: otaenv.Pki, fw_min: str | None = None) -> Path:
    root = tmp / "board"
    (root / "data").mkdir(parents=True)
    (root / "ca.der").write_bytes(pki.root_der)
    for p, b in RUNNING.items():
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b)
    if fw_min is not None:
        (root / "data" / "fw_min").write_text(fw_min)
    return root


def run_update(
    tmp: Path,
    pki: otaenv.Pki,
    rel: Release,
    head: object = None,
    payload: bytes | None = None,
    runs: int = 1,
    cut_after: int = -1,
    fw_min: str | None = None,
    board: str = "unix",
    prepare: Callable[[Path], None] | None = None,
) -> tuple[dict[str, object], otaenv.OtaServer, Path]:
    root = _device_root(tmp, pki, fw_min)
    if prepare is not None:
        prepare(root)
    srv = otaenv.OtaServer(
        {rel.id: head if head is not None else rel.head(DEVICE_ID, OTA_PUB)},
        {rel.id: payload if payload is not None else rel.payload},
        cut_after,
    )
    with otaenv.serve(pki, srv):
        code = DEVICE % {
            "device_id": DEVICE_ID,
            "seed": SEED,
            "release": rel.id,
            "size": len(rel.payload),
            "runs": runs,
            "port": srv.port,
            "board": board,
        }
        got = otaenv.run_device(code, root)
    return got, srv, root


def _untouched(root: Path) -> None:
    for p, b in RUNNING.items():
        assert (root / p).read_bytes() == b
    assert set(os.listdir(root)) - {"ota"} == {"agent", "ca.der", "data", "main.py"}
    assert os.listdir(root / "agent") == ["version.py"]
    ota = root / "ota"
    assert not ota.exists() or os.listdir(ota) == [], os.listdir(ota)


def test_good_release_is_staged_file_by_file_with_the_manifest_hashes(
    tmp_path: Path, pki: otaenv.Pki, good: Release
) -> None:
    got, srv, root = run_update(tmp_path, pki, good)
    assert got["out"] == [True], got["_out"]
    assert got["events"] == [
        {"event": "ota", "release": "unix-0.2.0", "state": "downloading", "fw": "0.1.0"},
        {"event": "ota", "release": "unix-0.2.0", "state": "staged", "fw": "0.1.0"},
    ]
    assert got["acks"] == [[7, "done", None]]
    for path, data in good.files:
        assert (root / "ota" / "new" / path).read_bytes() == data
    manifest = json.loads(good.manifest)
    assert len(manifest["files"]) == 64
    staged = sorted(str(p.relative_to(root / "ota" / "new")) for p in root.rglob("ota/new/**/*"))
    assert [p for p in staged if (root / "ota" / "new" / p).is_file()] == [f[0] for f in good.files]
    state = json.loads((root / "ota" / "state.json").read_bytes())
    assert state == {"state": "staged", "release": "unix-0.2.0", "version": "0.2.0"}
    head = json.loads((root / "ota" / "head.json").read_bytes())
    assert head["manifest"] == good.manifest.decode()
    assert json.loads((root / "ota" / "job.json").read_bytes()) == {
        "release": "unix-0.2.0",
        "size": len(good.payload),
        "seq": 7,
    }
    assert not (root / "ota" / "payload.bin").exists()  # staged: only boot.py's files remain
    for p, b in RUNNING.items():  # nothing running was touched: boot.py swaps
        assert (root / p).read_bytes() == b
    assert srv.served == len(good.payload)
    assert [r for r in srv.requests if "/payload" in r[0]] == [
        ("/v1/ota/unix-0.2.0/payload", "bytes=0-")
    ]
    assert srv.requests[0][0] == f"/v1/ota/unix-0.2.0/head?device={DEVICE_ID}"
    # Nothing secret in the log: no key, no content key.
    text = "\n".join(got["log"])  # type: ignore[arg-type]
    assert good.ck.hex() not in text
    assert otaenv.content_keys(good.ck).hex()[:32] not in text


def test_cut_download_resumes_where_the_file_ends(
    tmp_path: Path, pki: otaenv.Pki, good: Release
) -> None:
    half = len(good.payload) // 2
    got, srv, root = run_update(tmp_path, pki, good, runs=2, cut_after=half)
    assert got["out"][0].startswith("link: http: body truncated"), got["_out"]  # type: ignore[index]
    assert got["out"][1] is True, got["_out"]  # type: ignore[index]
    ranges = [r[1] for r in srv.requests if "/payload" in r[0]]
    assert ranges == ["bytes=0-", f"bytes={half}-"]
    # The head is fetched once: the second run reads ota/head.json.
    assert len([r for r in srv.requests if "/head" in r[0]]) == 1
    assert srv.served == len(good.payload)  # only the rest was sent again
    for path, data in good.files:
        assert (root / "ota" / "new" / path).read_bytes() == data


def test_payload_longer_than_the_release_is_fetched_again(
    tmp_path: Path, pki: otaenv.Pki, good: Release
) -> None:
    def longer(root: Path) -> None:
        (root / "ota").mkdir()
        (root / "ota" / "payload.bin").write_bytes(good.payload + b"more")

    got, srv, root = run_update(tmp_path, pki, good, prepare=longer)
    assert got["out"] == [True], got["_out"]
    assert [r[1] for r in srv.requests if "/payload" in r[0]] == ["bytes=0-"]
    assert srv.served == len(good.payload)
    for path, data in good.files:
        assert (root / "ota" / "new" / path).read_bytes() == data


def test_complete_payload_on_flash_is_not_fetched_again(
    tmp_path: Path, pki: otaenv.Pki, good: Release
) -> None:
    # A cut after the last byte arrived, before the staging: the next run stages from flash.
    def complete(root: Path) -> None:
        (root / "ota").mkdir()
        (root / "ota" / "payload.bin").write_bytes(good.payload)

    got, srv, root = run_update(tmp_path, pki, good, prepare=complete)
    assert got["out"] == [True], got["_out"]
    assert srv.served == 0
    assert (root / "ota" / "state.json").exists()


def _flip(b: bytes, i: int) -> bytes:
    out = bytearray(b)
    out[i] ^= 0x01
    return bytes(out)


def _head(rel: Release, **change: object) -> dict[str, object]:
    h = rel.head(DEVICE_ID, OTA_PUB)
    h.update(change)
    return h


Case = Callable[[otaenv.Pki, Release, list[tuple[str, bytes]]], dict[str, object]]


def _tampered(pki: otaenv.Pki, good: Release, tree: list[tuple[str, bytes]]) -> dict[str, object]:
    return {
        "rel": good,
        "head": _head(good, manifest=good.manifest.decode().replace("0.2.0", "0.3.0")),
    }


def _bad_signature(
    pki: otaenv.Pki, good: Release, tree: list[tuple[str, bytes]]
) -> dict[str, object]:
    return {"rel": good, "head": _head(good, signature=_flip(good.signature, 40).hex())}


def _signer(ekus: list[x509.ObjectIdentifier] | None, foreign: bool = False) -> Case:
    def case(pki: otaenv.Pki, good: Release, tree: list[tuple[str, bytes]]) -> dict[str, object]:
        issuer = otaenv.root_ca("another root") if foreign else pki.root
        return {"rel": otaenv.build(otaenv.leaf(issuer, "qlink release", ekus), tree)}

    return case


def _release(**kw: object) -> Case:
    def case(pki: otaenv.Pki, good: Release, tree: list[tuple[str, bytes]]) -> dict[str, object]:
        args = {k: v for k, v in kw.items() if k != "fw_min"}
        rel = otaenv.build(pki.release, tree[:3], **args)  # type: ignore[arg-type]
        return {"rel": rel, "fw_min": kw.get("fw_min")}

    return case


def _manifest_files(files: list[dict[str, object]]) -> Case:
    # A release whose signed manifest lists `files` (the payload: three real files).
    def case(pki: otaenv.Pki, good: Release, tree: list[tuple[str, bytes]]) -> dict[str, object]:
        doc = {"v": 1, "version": "0.2.0", "min_version": "0.1.0", "board": "unix", "files": files}
        m = json.dumps(doc, separators=(",", ":")).encode()
        return {"rel": otaenv.build(pki.release, tree[:3], manifest=m)}

    return case


def _wrap_for(other_pub: bool, other_release: bool) -> Case:
    def case(pki: otaenv.Pki, good: Release, tree: list[tuple[str, bytes]]) -> dict[str, object]:
        pub = OTA_PUB
        if other_pub:
            pub = otaenv.point(ec.generate_private_key(ec.SECP256R1()).public_key())
        rid = "unix-0.2.1" if other_release else good.id
        return {"rel": good, "head": _head(good, wrap=otaenv.wrap(good.ck, rid, DEVICE_ID, pub))}

    return case


def _payload_flip(where: int) -> Case:
    def case(pki: otaenv.Pki, good: Release, tree: list[tuple[str, bytes]]) -> dict[str, object]:
        return {"rel": good, "payload": _flip(good.payload, where % len(good.payload))}

    return case


def _entry(path: str, data: bytes = b"x") -> dict[str, object]:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _bad_hash(pki: otaenv.Pki, good: Release, tree: list[tuple[str, bytes]]) -> dict[str, object]:
    three = tree[:3]
    entries = [_entry(p, b) for p, b in three]
    entries[1]["sha256"] = hashlib.sha256(b"not this file").hexdigest()
    return _manifest_files(entries)(pki, good, tree)


CASES: dict[str, tuple[Case, str]] = {
    "tampered_manifest": (_tampered, "bad_signature"),
    "bad_signature": (_bad_signature, "bad_signature"),
    "signer_without_eku": (_signer(None), "bad_signature"),
    "signer_with_command_eku": (_signer([COMMAND_EKU]), "bad_signature"),
    "signer_with_firmware_and_tls_eku": (
        _signer([FIRMWARE_EKU, x509.ExtendedKeyUsageOID.SERVER_AUTH]),
        "bad_signature",
    ),
    "signer_from_another_root": (_signer([FIRMWARE_EKU], foreign=True), "bad_signature"),
    "wrong_board": (_release(board="rp2040"), "wrong_board"),
    "equal_version": (_release(version="0.1.0", min_version="0.0.0"), "not_newer"),
    "older_version": (_release(version="0.0.9", min_version="0.0.0"), "not_newer"),
    "equal_to_fw_min": (_release(version="0.2.0", fw_min="0.2.0"), "not_newer"),
    "older_than_fw_min": (_release(version="0.2.0", fw_min="0.3.0"), "not_newer"),
    "too_old": (_release(min_version="0.1.1"), "too_old"),
    "wrap_for_another_device": (_wrap_for(True, False), "wrong_device"),
    "wrap_for_another_release": (_wrap_for(False, True), "wrong_device"),
    "payload_byte_flipped": (_payload_flip(3000), "altered"),
    "payload_iv_flipped": (_payload_flip(0), "altered"),
    "payload_tag_flipped": (_payload_flip(-1), "altered"),
    "payload_truncated_answer": (
        lambda pki, good, tree: {"rel": good, "payload": good.payload[:-16]},
        "altered",
    ),
    "manifest_hash_mismatch": (_bad_hash, "bad_file"),
    "too_large": (_manifest_files([_entry("agent/a.mpy") | {"size": 1048577}]), "too_large"),
    "too_many_files": (
        _manifest_files([_entry(f"agent/f{i:02d}.py") for i in range(65)]),
        "too_large",
    ),
    "path_dotdot": (_manifest_files([_entry("agent/../x.py")]), "bad_file"),
    "path_leading_dotdot": (_manifest_files([_entry("../x.py")]), "bad_file"),
    "path_absolute": (_manifest_files([_entry("/main.py")]), "bad_file"),
    "path_boot_py": (_manifest_files([_entry("boot.py")]), "bad_file"),
    "path_data": (_manifest_files([_entry("data/x")]), "bad_file"),
    "path_ota": (_manifest_files([_entry("ota/state.json")]), "bad_file"),
    "path_config": (_manifest_files([_entry("config.json")]), "bad_file"),
    "path_root_der": (_manifest_files([_entry("ca.der")]), "bad_file"),
    "path_enrol": (_manifest_files([_entry("enrol.py")]), "bad_file"),
    "path_bad_char": (_manifest_files([_entry("agent/a b.py")]), "bad_file"),
    "path_too_long": (_manifest_files([_entry("a/" + "b" * 95)]), "bad_file"),
    "path_twice": (_manifest_files([_entry("a.py"), _entry("a.py")]), "bad_file"),
    "path_unsorted": (_manifest_files([_entry("b.py"), _entry("a.py")]), "bad_file"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_refusal_names_its_reason_and_changes_nothing(
    name: str, tmp_path: Path, pki: otaenv.Pki, good: Release, tree: list[tuple[str, bytes]]
) -> None:
    make, reason = CASES[name]
    case = make(pki, good, tree)
    rel = case["rel"]
    assert isinstance(rel, Release)
    got, _, root = run_update(
        tmp_path,
        pki,
        rel,
        head=case.get("head"),
        payload=case.get("payload"),  # type: ignore[arg-type]
        fw_min=case.get("fw_min"),  # type: ignore[arg-type]
    )
    assert got["out"] == [False], got["_out"]
    assert got["events"][-1] == {  # type: ignore[index]
        "event": "ota",
        "release": rel.id,
        "state": "refused",
        "fw": "0.1.0",
        "reason": reason,
    }
    assert got["acks"] == [[7, "failed", reason]]
    _untouched(root)


def test_wrong_board_is_the_hals_name(tmp_path: Path, pki: otaenv.Pki, good: Release) -> None:
    got, _, root = run_update(tmp_path, pki, good, board="rp2040")
    assert got["acks"] == [[7, "failed", "wrong_board"]]
    _untouched(root)


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, "not_offered"), (404, "unknown_release"), (409, "no_ota_key")],
)
def test_server_refusal_of_the_head_ends_the_job(
    status: int, code: str, tmp_path: Path, pki: otaenv.Pki, good: Release
) -> None:
    got, _, root = run_update(tmp_path, pki, good, head=(status, {"error": code, "detail": "x"}))
    assert got["out"] == [False]
    assert got["acks"] == [[7, "failed", code]]
    assert got["events"] == []  # the server knows; a device refusal would count as a failure
    _untouched(root)


def test_server_error_is_a_link_failure_and_keeps_the_job(
    tmp_path: Path, pki: otaenv.Pki, good: Release
) -> None:
    got, _, root = run_update(tmp_path, pki, good, head=(503, {"error": "busy", "detail": ""}))
    assert got["out"] == ["link: ota: head answered HTTP 503"]
    assert (root / "ota" / "job.json").exists()
    assert got["acks"] == []


# ---- the OTA key: derivation, the wrap round trip, and the proof that carries it ----

IDENT = """
import json, binascii
from qdid import identity
from agent import otacrypto, onboard
prk = binascii.unhexlify(%(prk)r)
ident = identity.Identity(prk, None, %(epoch)d)
from qdid import otakey
d, pub = otakey.derive(ident)
w = json.loads(%(wrap)r)
u = binascii.unhexlify
keys = otacrypto.unwrap(u(w["epk"]), u(w["key"]), u(w["tag"]), %(release)r, ident.device_id, d)
class Client:
    host = "qlink.example"
    retry_after = 0
    def __init__(s):
        s.sent = []
    def post(s, path, obj):
        s.sent.append(obj)
        if path.endswith("/hello"):
            return 200, {"challenge_id": "ab" * 16, "challenge": "cd" * 32}
        return 403, {"error": "stop", "detail": ""}
c = Client()
try:
    onboard.run(c, ident, "data", b"")
except Exception:
    pass
print("RESULT " + json.dumps({
    "pub": binascii.hexlify(pub).decode(),
    "id_pub": binascii.hexlify(ident.public_key).decode(),
    "keys": binascii.hexlify(keys).decode() if keys else None,
    "proof": c.sent[-1],
}))
"""


def _host_ota_pub(prk: bytes, epoch: int) -> bytes:
    # docs/identity.md "5. Seeds" and docs/ota.md "The device's OTA key", with cryptography.
    seed = HKDFExpand(hashes.SHA256(), 16, b"qlink/seed/%d" % epoch).derive(prk)
    c = _ota_scalar(seed)
    return otaenv.point(ec.derive_private_key(c, ec.SECP256R1()).public_key())


@pytest.mark.parametrize("epoch", [0, 3])
def test_ota_key_is_the_documented_derivation_and_unwraps_a_host_wrap(
    epoch: int, tmp_path: Path
) -> None:
    prk = hashlib.sha256(b"qlink ota prk %d" % epoch).digest()
    pub = _host_ota_pub(prk, epoch)
    ck = os.urandom(32)
    rid = "unix-0.2.0"
    # The device ID the device will use is SHA-256 of its signing key: compute it the same way.
    seed = HKDFExpand(hashes.SHA256(), 16, b"qlink/seed/%d" % epoch).derive(prk)
    ctr = 0
    while True:
        d = int.from_bytes(hashlib.sha256(seed + ctr.to_bytes(4, "big")).digest(), "big")
        if 0 < d < P256_N:
            break
        ctr += 1
    sign_pub = otaenv.point(ec.derive_private_key(d, ec.SECP256R1()).public_key())
    device_id = hashlib.sha256(sign_pub).hexdigest()
    w = otaenv.wrap(ck, rid, device_id, pub)
    (tmp_path / "data").mkdir()
    got = otaenv.run_device(
        IDENT % {"prk": prk.hex(), "epoch": epoch, "wrap": json.dumps(w), "release": rid}, tmp_path
    )
    assert got["pub"] == pub.hex()
    assert got["id_pub"] == sign_pub.hex()
    assert got["pub"] != got["id_pub"]  # its own key, not the signing key
    assert got["keys"] == otaenv.content_keys(ck).hex()
    # The proof carries the key, and its signature covers it (docs/ota.md).
    proof = got["proof"]
    assert isinstance(proof, dict)
    assert proof["ota_key"] == pub.hex()
    msg = (
        b"qlink-onboard-v1\x00"
        + bytes.fromhex("cd" * 32)
        + device_id.encode()
        + b"\x00"
        + b"qlink.example"
        + pub
    )
    sig = bytes.fromhex(proof["signature"])
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sign_pub)
    key.verify(
        utils.encode_dss_signature(
            int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        ),
        msg,
        ec.ECDSA(hashes.SHA256()),
    )
    assert base64.b64decode(proof["csr_b64"])


# ---- power cuts: the board's cut hook before each file change ----

CUTS = """
import json, os, sys, hashlib, binascii
from agent import ota, https
class PowerCut(Exception):
    pass
class Board:
    # The emulated board's file_op (docs/ota.md): a power cut at the chosen change.
    def __init__(s):
        s.n = 0
        s.cut_at = 0
    def file_op(s, tag):
        s.n += 1
        if s.n == s.cut_at:
            raise PowerCut(tag)
board = Board()
sys.modules["board"] = board
class St:
    def __init__(s):
        s.ota = False
        s.ota_trial = None
    def event(s, m):
        pass
    def ack(s, seq, status, reason=None):
        pass
class Ident:
    device_id = %(device_id)r
    epoch = 0
    def seed(s, i):
        return %(seed)r
def rm(p):
    try:
        names = os.listdir(p)
    except OSError:
        try:
            os.remove(p)
        except OSError:
            pass
        return
    for n in names:
        rm(p + "/" + n)
    os.rmdir(p)
def sha(p):
    try:
        with open(p, "rb") as f:
            return binascii.hexlify(hashlib.sha256(f.read()).digest()).decode()
    except OSError:
        return None
root = open("ca.der", "rb").read()
def client():
    return https.Client("localhost", %(port)d, root, "", 5000)
res = []
n = 1
while True:
    rm("ota")
    board.n = 0
    board.cut_at = n
    st = St()
    cut = None
    try:
        ota.accept(st, 7, {"release": %(release)r, "size": %(size)d})
        ota.run(client(), Ident(), st, "data", "unix", root)
    except PowerCut as e:
        cut = str(e)
    if cut is None:
        break
    board.cut_at = 0
    st = St()
    ota.start(st)  # power back: what main.run does at start
    staged = None
    if st.ota:
        staged = ota.run(client(), Ident(), st, "data", "unix", root)
    try:
        state = json.loads(open("ota/state.json").read())
    except OSError:
        state = None
    res.append({"cut": cut, "staged": staged, "state": state,
                "hashes": [sha("ota/new/" + p) for p in %(paths)r]})
    n += 1
print("RESULT " + json.dumps({"runs": res, "ops": board.n}))
"""


def test_power_cut_before_any_file_change_still_stages_or_leaves_no_job(
    tmp_path: Path, pki: otaenv.Pki
) -> None:
    rel = otaenv.build(
        pki.release, [("agent/a.mpy", b"a" * 300), ("qdid/b.mpy", b""), ("x.mpy", os.urandom(2500))]
    )
    root = _device_root(tmp_path, pki)
    srv = otaenv.OtaServer({rel.id: rel.head(DEVICE_ID, OTA_PUB)}, {rel.id: rel.payload})
    paths = [p for p, _ in rel.files]
    with otaenv.serve(pki, srv):
        code = CUTS % {
            "device_id": DEVICE_ID,
            "seed": SEED,
            "port": srv.port,
            "release": rel.id,
            "size": len(rel.payload),
            "paths": paths,
        }
        got = otaenv.run_device(code, root)
    runs = got["runs"]
    assert isinstance(runs, list)
    # Every change of the uncut run was cut once: job, head, payload chunks, files, state.
    assert len(runs) == got["ops"] >= 2 + 2 + 3 + 3 + 2 + 1, got["_out"]
    want = [hashlib.sha256(b).hexdigest() for _, b in rel.files]
    for r in runs:
        if r["cut"] in ("write ota/job.json", "rename ota/job.json"):
            # The offer never became a job: nothing to resume (the server offers it again).
            assert r["state"] is None and r["staged"] is None, r
            continue
        assert r["state"] == {"state": "staged", "release": rel.id, "version": "0.2.0"}, r
        assert r["hashes"] == want, r
    cuts = [r["cut"] for r in runs]
    assert cuts[:5] == [
        "write ota/job.json",
        "rename ota/job.json",
        "remove ota/head.tmp",  # the head answer, streamed there, parsed and dropped
        "write ota/head.json",
        "rename ota/head.json",
    ]
    assert "append ota/payload.bin" in cuts
    assert cuts[-3:] == ["write ota/state.json", "rename ota/state.json", "remove ota/payload.bin"]
