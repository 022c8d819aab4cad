# The world of agent.main for its identity steps (transfer, re-enrolment, decommission), on top of
# agentenv's: a server that keeps identities as docs/protocol.md "Successor identities" says (a
# successor request verified over the page's message, spelled out here; registered once; the same
# request answered the same; the current identity revoked), onboards registered identities only,
# a broker per session that refuses a revoked certificate, and power cuts: every change the
# firmware makes to flash (qdid.files.write, os.remove, os.rename) is counted, and the chosen one
# raises PowerCut before it happens. Runs inside MicroPython.
import os
import sys
import json
import hashlib
import binascii
from agentenv import Env, Broker, setup, cmd, B64CA, D
from agent import main, onboard, store
from agent.errors import LinkError
from qdid import identity, owner, files, p256
import certs

PRK = bytes(range(1, 33))  # the fixed identity of these tests (real boots: test_identity_epochs)
BROKER = {"host": "broker.local", "port": 8883, "ca_b64": B64CA}
POLICY = {"telemetry_interval_ms": 1000}
_REFUSED = b"\x20\x02\x00\x05"  # CONNACK "not authorized" (MQTT 3.1.1, 3.2.2.3)
_REAL_OS = os
_REAL_WRITE = files.write


class PowerCut(Exception):
    pass


def hexid(pub):
    return binascii.hexlify(hashlib.sha256(pub).digest()).decode()


def topics(device_id, tenant="acme"):
    p = "qlink/%s/%s/" % (tenant, device_id)
    return {"telemetry": p + "telemetry", "event": p + "event", "cmd": p + "cmd"}


def cert_for(pub):
    # The test certificate with another key in it: the device checks that its own key is there,
    # its DER shape and validity, never the signature of its own certificate.
    return certs.DEVICE_CERT.replace(certs.DEVICE_PUB, pub)


def page_digest(reason, device_id, pub, seq):
    # docs/protocol.md: SHA-256(b"qlink-successor-v1\x00" || reason || b"\x00" || device_id
    # (64 ASCII hex) || next public key (65 bytes) || seq (ASCII decimal)).
    msg = b"qlink-successor-v1\x00" + reason.encode() + b"\x00" + device_id.encode()
    return hashlib.sha256(msg + pub + str(seq).encode()).digest()


def fixed_boot(board, data_dir):
    # qdid.identity.boot's owner-epoch contract (data/owner.json picks the seed) over a fixed PRK
    # instead of a power-up read; a re-enrolment has no power-up read to take its helper from.
    epoch, pending, _ = owner.load(data_dir)
    ident = identity.Identity(PRK, {}, epoch)
    ident.pending = pending
    ident.successor_error = "no power-up read in this test"
    return ident


def start(extra=None, epoch=0, pending=None, seq=0):
    # config.json and the pinned root as agentenv.setup writes them; the fixed identity at
    # `epoch` onboarded (its certificate and topics stored), owner state as given.
    # -> (config path, that identity).
    p = setup(extra or {}, stored=False)
    for name in ("owner.json", "helper.bin", "helper.new"):
        try:
            os.remove(D + "/" + name)
        except OSError:
            pass
    ident = identity.Identity(PRK, {}, epoch)
    if epoch or pending:
        owner.save(D, epoch, pending, seq)
    store.save(
        D,
        ident.device_id,
        cert_for(ident.public_key),
        BROKER,
        topics(ident.device_id),
        POLICY,
        certs.SIGNER_PUB,
    )
    return p, ident


def enrolled(die, extra, epoch=0):
    # A device enrolled on `die` by the real boot (qdid.identity over the unix board), at owner
    # epoch `epoch`, onboarded; config.json as agentenv.setup writes it.
    # -> (config path, device ID, public key); the identity itself is not kept (heap).
    p = setup(extra, stored=False)
    for name in ("helper.bin", "helper.new", "owner.json"):
        try:
            os.remove(D + "/" + name)
        except OSError:
            pass
    identity.boot(UnixBoard(die), D)
    if epoch:
        owner.save(D, epoch)
    ident = identity.boot(UnixBoard(die), D)
    cid, cpub = ident.device_id, ident.public_key
    ident.wipe()
    store.save(D, cid, cert_for(cpub), BROKER, topics(cid), POLICY, certs.SIGNER_PUB)
    return p, cid, cpub


def command(device_id, seq, kind, args=None):
    # A command for `device_id`, signed as the server signs (agentenv.cmd).
    return cmd(seq, kind, device_id=device_id, args=args)


def exists(path):
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def owner_doc():
    try:
        with open(D + "/owner.json") as f:
            return json.loads(f.read())
    except OSError:
        return None


class UnixBoard:
    # The unix board over a die file, without its RTC (the clock of these tests is agentenv's
    # T0, not the host's); `cold` False is a warm reset. A new object is a power cycle.
    def __init__(self, die, cold=True):
        import board

        self._b = board.make(die)
        self.name = self._b.name
        self.cold = cold

    def sram_bits(self, n):
        return self._b.sram_bits(n)

    def forget_sram(self):
        self._b.forget_sram()

    def noise(self, n):
        return self._b.noise(n)

    def unique_id(self):
        return self._b.unique_id()

    def cold_boot(self):
        return self.cold


class _Flash:
    # os as the firmware's flash changes see it: each counted, a power cut at the chosen one.
    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        return getattr(_REAL_OS, name)

    def remove(self, path):
        self._env.change("remove " + path)
        if path[path.rfind("/") + 1 :] in self._env.stuck:
            raise OSError(5)  # EIO: the flash refuses
        if path.find("/helper.") >= 0:
            with open(path, "rb") as f:
                self._env.removed[path] = f.read()  # what a helper held when it went
        _REAL_OS.remove(path)

    def rename(self, old, new):
        self._env.change("rename " + old)
        _REAL_OS.rename(old, new)


class OwnerEnv(Env):
    # registered: {device_id: public key} of the identities the server knows; open_seqs: the
    # seqs of the transfer / reenrol commands it holds open; script: {session number (from 1):
    # command payloads the broker sends after that session's first telemetry message}.
    host = "localhost"

    def __init__(self, registered, open_seqs=(), script=None):
        super().__init__([])
        self.keys = dict(registered)
        self.revoked = []
        self.moves = {}  # (device_id, reason, seq) -> next device_id
        self.open = list(open_seqs)
        self.requests = []  # successor request bodies, in order
        self.refusals = []  # (status, code) answers for the next successor requests, in order
        self.lose = 0  # successor answers lost on the way back (after the server acted)
        self.script = script or {}
        self.sessions = []  # (device_id or None, Broker) per TLS session opened
        self.hello_id = None
        self.cut_at = 0  # the flash change (1..) a power cut comes before; 0: none
        self.oom_at = 0  # the flash change (1..) the heap fails at (MemoryError); 0: none
        self.changes = []
        self.removed = {}  # path of a helper file -> its content at removal
        self.stuck = ()  # names of files whose removal fails

    def __enter__(self):
        super().__enter__()
        self.saved_owner = (main._server, main._onboard)
        main._server = lambda cfg: self
        main._onboard = self.onboard
        self.flash = _Flash(self)
        sys.modules["os"] = self.flash
        store.os = self.flash
        files.write = self.write
        m = sys.modules.get("qdid.owner")
        if m is not None:
            m.os = self.flash
        return self

    def __exit__(self, *a):
        main._server, main._onboard = self.saved_owner
        sys.modules["os"] = _REAL_OS
        store.os = _REAL_OS
        files.write = _REAL_WRITE
        # Modules imported while the shim stood in for os, and the one this file holds (main.py
        # may have dropped it from sys.modules meanwhile): none may keep the shim, or this env.
        owner.os = _REAL_OS
        for name in ("qdid.owner", "agent.successor", "agent.decommission"):
            m = sys.modules.get(name)
            if m is not None:
                m.os = _REAL_OS
        super().__exit__(*a)

    def server_of(self, before):
        # After a power cut the server is the same: what it registered, revoked and answered.
        self.keys, self.revoked, self.moves = before.keys, before.revoked, before.moves
        self.open, self.requests = before.open, before.requests
        return self

    def change(self, what):
        self.changes.append(what)
        if len(self.changes) == self.cut_at:
            raise PowerCut(what)
        if len(self.changes) == self.oom_at:
            raise MemoryError("memory allocation failed, allocating 1024 bytes")

    def write(self, path, data):
        self.change("write " + path)
        _REAL_WRITE(path, data)

    def onboard(self, cfg, ident, data_dir):
        self.onboards += 1
        self.onboard_times.append(self.now)
        return onboard.run(self, ident, data_dir, certs.ROOT)

    # -- the server -----------------------------------------------------------------------------
    def post(self, path, obj):
        self.posts.append(path)
        self.retry_after = 0
        if path.endswith("/successor"):
            return self._successor(obj)
        if path.endswith("/hello"):
            dev = obj["device_id"]
            if dev not in self.keys or dev in self.revoked:
                return 403, {"error": "not_registered", "detail": "not in an active batch"}
            self.hello_id = dev
            return 200, {"challenge_id": "ab" * 16, "challenge": "cd" * 32, "expires": 1}
        dev = self.hello_id
        pub = self.keys[dev]
        assert binascii.a2b_base64(obj["csr_b64"]).find(pub) > 0  # the CSR has the key
        return 200, {
            "device_id": dev,
            "certificate_b64": binascii.b2a_base64(cert_for(pub)).decode().strip(),
            "chain_b64": [],
            "broker": BROKER,
            "topics": topics(dev, "beta"),
            "policy": POLICY,
            "command_signer_b64": binascii.b2a_base64(certs.SIGNER).decode().strip(),
        }

    def _successor(self, obj):
        self.requests.append(obj)
        if self.refusals:
            status, code = self.refusals.pop(0)
            if status == 429:
                self.retry_after = 30
            return status, {"error": code, "detail": "refused by the test"}
        dev = obj["device_id"]
        reason = obj["reason"]
        seq = obj["seq"]
        pub = binascii.unhexlify(obj["public_key"])
        key = self.keys.get(dev)
        if key is None:
            return 403, {"error": "not_registered", "detail": "unknown"}
        sig = binascii.unhexlify(obj["signature"])
        if not p256.verify_digest(key, page_digest(reason, dev, pub, seq), sig):
            return 403, {"error": "bad_signature", "detail": "does not verify"}
        nxt = hexid(pub)
        if self.moves.get((dev, reason, seq)) != nxt:
            if dev in self.revoked:
                return 403, {"error": "not_registered", "detail": "revoked"}
            if seq not in self.open:
                return 409, {"error": "no_successor_expected", "detail": "no open command"}
            if nxt in self.keys:
                return 409, {"error": "successor_taken", "detail": "taken"}
            self.keys[nxt] = pub
            self.revoked.append(dev)
            self.moves[(dev, reason, seq)] = nxt
            self.open.remove(seq)
        if self.lose:
            self.lose -= 1
            raise LinkError("https localhost:8443: read failed: connection reset")
        return 200, {"device_id": nxt}

    # -- the broker -----------------------------------------------------------------------------
    def connect(self, host, port, ca, timeout, cert=None, key=None):
        self.opened.append((host, port, ca, cert, key))
        dev = None
        for d in self.keys:
            if cert is not None and cert.find(self.keys[d]) >= 0:
                dev = d
        if dev is None or dev in self.revoked:
            sock = Broker(connack=_REFUSED)
        else:
            sock = Broker(on_publish=self._hook(self.script.get(len(self.sessions) + 1)))
        self.sessions.append((dev, sock))
        return sock, None

    def _hook(self, payloads):
        sent = []

        def hook(broker, topic, payload):
            if payloads and not sent and topic.endswith("/telemetry"):
                sent.append(1)
                for p in payloads:
                    broker.push(p, topic[: -len("telemetry")] + "cmd")

        return hook


def events(sock):
    # Every event message the device published in a session: (topic, JSON).
    from agentenv import published

    return [(t, m) for t, m, _ in published(sock.out) if t.endswith("/event")]


def env_for(ident, open_seqs=(), script=None):
    # An OwnerEnv whose server knows `ident` (registered and onboarded).
    return OwnerEnv({ident.device_id: ident.public_key}, open_seqs, script)
