# The world around agent.main for its tests (runs inside MicroPython): a broker that answers
# packet by packet, an onboarding server behind agent.onboard, a device clock the waits move
# forward, and the files under data/. Env patches main's seams and restores them.
import io
import os
import json
import binascii
from agent import main, store, tlslink, clock, onboard
from agent.mqtt import encode_length
from agent import log as logmod
import certs

PUB = certs.DEVICE_PUB
DEVICE_ID = certs.DEVICE_ID
CERT = certs.DEVICE_CERT  # 2026-01-01 .. 2027-01-01
CERT2 = certs.DEVICE_CERT2  # 2026-09-01 .. 2027-09-01
NOT_BEFORE = 1767225600
NOT_AFTER = 1798761600
CA = b"\x30\x03\x02\x01\x07"
B64CA = binascii.b2a_base64(CA).decode().strip()
PREFIX = "qlink/acme/%s/" % DEVICE_ID
TOPIC = PREFIX + "telemetry"
EVENT = PREFIX + "event"
CMD = PREFIX + "cmd"
ALL_TOPICS = {"telemetry": TOPIC, "event": EVENT, "cmd": CMD}
T0 = 1772323200  # 2026-03-01T00:00:00Z: the device clock when a test starts
# One folder per interpreter: test files run side by side (pytest-xdist) must not share it.
D = "/tmp/qlink-main-test-" + "".join("%02x" % b for b in os.urandom(4))
KEY = b"\x30\x02\x05\x00"
_POLL = 3  # MP_STREAM_POLL


class FakeIdentity:
    device_id = DEVICE_ID
    public_key = PUB

    def private_key_der(self):
        return KEY

    def sign_digest(self, digest32):
        return bytes(64)

    def csr(self):
        return b"\x30\x03\x02\x01\x00"


def boot(board, data_dir):
    return FakeIdentity()


def publish_packet(topic, payload, pid):
    # A QoS 1 PUBLISH as a broker sends it (MQTT 3.1.1 section 3.3).
    t = topic.encode()
    body = bytes([len(t) >> 8, len(t) & 0xFF]) + t + bytes([pid >> 8, pid & 0xFF]) + payload
    head = bytearray(5)
    i = encode_length(len(body), head, 5)
    head[i - 1] = 0x32
    return bytes(head[i - 1 :]) + body


class Broker(io.IOBase):
    # The broker's end of one session, answering each packet the device writes: CONNACK for
    # CONNECT, SUBACK for SUBSCRIBE, PUBACK for a QoS 1 PUBLISH, PINGRESP for PINGREQ. After
    # `answers` answers the link drops (reads give 0, as from a closed socket). `granted` is the
    # SUBACK return code (None: the QoS asked). Commands queued with push() reach the device when
    # it reads next; on_publish(broker, topic, payload) runs for each PUBLISH the device sends
    # (to push commands at a chosen moment).
    def __init__(self, answers=1000, connack=b"\x20\x02\x00\x00", on_publish=None, granted=None):
        self.out = bytearray()
        self.inp = bytearray()
        self.pos = 0
        self.parsed = 0
        self.answers = answers
        self.connack = connack
        self.on_publish = on_publish
        self.granted = granted
        self.closed = False
        self.pid = 0x100
        self.acked = []  # packet ids the device acknowledged (PUBACK for a command)

    def ioctl(self, req, arg):
        if req != _POLL:
            return -1
        return arg & 1 if self.pos < len(self.inp) or self.answers <= 0 else 0

    def readinto(self, buf):
        k = min(len(buf), len(self.inp) - self.pos)
        buf[:k] = self.inp[self.pos : self.pos + k]
        self.pos += k
        if self.pos == len(self.inp):
            self.inp = bytearray()  # all read: keep the test's heap small
            self.pos = 0
        return k

    def close(self):
        self.closed = True

    def push(self, payload, topic=CMD):
        self.pid += 1
        self.inp.extend(publish_packet(topic, payload, self.pid))

    def _answer(self, packet):
        if self.answers <= 0:
            return
        self.answers -= 1
        self.inp.extend(packet)

    def write(self, b):
        self.out.extend(bytes(b))
        while True:
            i = self.parsed
            if i + 2 > len(self.out):
                break
            n, shift, j = 0, 0, i + 1
            while j < len(self.out):
                c = self.out[j]
                j += 1
                n |= (c & 0x7F) << shift
                shift += 7
                if not c & 0x80:
                    break
            if j + n > len(self.out):
                break
            self.parsed = j + n
            self._packet(self.out[i], bytes(self.out[j : j + n]))
        return len(b)

    def _packet(self, first, body):
        kind = first & 0xF0
        if kind == 0x10:
            self._answer(self.connack)
        elif kind == 0x80:
            rc = body[-1] if self.granted is None else self.granted
            self._answer(b"\x90\x03" + body[:2] + bytes([rc]))
        elif kind == 0xC0:
            self._answer(b"\xd0\x00")
        elif kind == 0x40:
            self.acked.append((body[0] << 8) | body[1])
        elif kind == 0x30:
            tl = (body[0] << 8) | body[1]
            topic = body[2 : 2 + tl].decode()
            qos = (first >> 1) & 3
            payload = body[2 + tl + (2 if qos else 0) :]
            if qos:
                self._answer(b"\x40\x02" + body[2 + tl : 4 + tl])
            if self.on_publish is not None:
                self.on_publish(self, topic, payload)


def packets(out):
    # (first byte, body) of each packet the device wrote.
    res = []
    i = 0
    while i < len(out):
        first = out[i]
        n, shift = 0, 0
        i += 1
        while True:
            b = out[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        res.append((first, bytes(out[i : i + n])))
        i += n
    return res


def published(out):
    # (topic, JSON payload, packet id) of each PUBLISH the device wrote.
    res = []
    for first, body in packets(out):
        if first & 0xF0 == 0x30:
            tl = (body[0] << 8) | body[1]
            res.append(
                (body[2 : 2 + tl].decode(), json.loads(body[4 + tl :]), body[2 + tl : 4 + tl])
            )
    return res


def events(sock):
    return [m[1] for m in published(sock.out) if m[0] == EVENT]


def telemetry_seqs(sock):
    return [m[1]["seq"] for m in published(sock.out) if m[0] == TOPIC]


def sign(raw, d=None):
    # As the server signs a command (docs/protocol.md "Command channel"), with the test key.
    import hashlib
    from qdid import p256

    digest = hashlib.sha256(b"qlink-cmd-v1\x00" + raw).digest()
    return p256.sign_digest(d or certs.SIGNER_D, digest) + raw


def cmd(seq, kind="ping", exp=T0 + 3600, device_id=DEVICE_ID, args=None):
    doc = {"v": 1, "device_id": device_id, "seq": seq, "exp": exp, "kind": kind}
    doc["args"] = args or {}
    return sign(json.dumps(doc).encode())


class FakeServer:
    # The onboarding API as agent.onboard sees it (agent.https.Client's surface): a challenge,
    # then the certificate env.issue names, with env's topics, policy and command signer.
    def __init__(self, env):
        self.env = env
        self.host = "localhost"
        self.retry_after = 0

    def post(self, path, obj):
        env = self.env
        env.posts.append(path)
        if path.endswith("/hello"):
            return 200, {"challenge_id": "ab" * 16, "challenge": "cd" * 32, "expires": 1}
        if env.proof_answer is not None:
            return env.proof_answer  # a refusal, as (status, body)
        cert = env.issue.pop(0) if len(env.issue) > 1 else env.issue[0]
        doc = {
            "device_id": DEVICE_ID,
            "certificate_b64": binascii.b2a_base64(cert).decode().strip(),
            "chain_b64": [],
            "broker": env.broker,
            "topics": env.topics,
            "policy": env.policy,
        }
        if env.signer is not None:
            doc["command_signer_b64"] = binascii.b2a_base64(env.signer).decode().strip()
        return 200, doc


class Env:
    # Patches the module seams and restores them afterwards. Time moves only when the agent
    # waits (between samples, in retries): `now` is the device clock in unix seconds.
    def __init__(self, socks):
        self.socks = list(socks)
        self.opened = []
        self.sleeps = []
        self.lines = []
        self.onboards = 0
        self.onboard_result = None  # an exception to raise instead of onboarding
        self.onboard_times = []
        self.posts = []
        self.issue = [CERT]
        self.topics = {"telemetry": TOPIC}
        self.policy = {"telemetry_interval_ms": 250}
        self.signer = certs.SIGNER
        self.broker = {"host": "broker.local", "port": 8883, "ca_b64": B64CA}  # in proof answers
        self.proof_answer = None  # (status, body) the proof gets instead of a certificate
        self.brokers = {}  # host -> its sessions (as socks), for a second broker; others: socks
        self.ms = 0
        self.start = T0

    @property
    def now(self):
        return self.start + self.ms // 1000

    def __enter__(self):
        self.saved = (tlslink.connect, main._sleep_ms, main._onboard, main._serve)
        self.clock = (clock._source, clock._setter, clock._offset)
        tlslink.connect = self.connect
        main.tlslink.connect = self.connect
        main._sleep_ms = self.sleep
        main._serve = self.serve
        main._onboard = self.onboard
        clock.use(lambda: self.now)
        logmod._sink = self.lines.append
        return self

    def __exit__(self, *a):
        tlslink.connect, main._sleep_ms, main._onboard, main._serve = self.saved
        clock._source, clock._setter, clock._offset = self.clock
        logmod._sink = None

    def sleep(self, ms):
        self.sleeps.append(ms)
        self.ms += ms

    def serve(self, client, ms):
        # A packet already there is served at once; otherwise the slice passes.
        if client.serve(0):
            return True
        self.sleep(ms)
        return False

    def connect(self, host, port, ca, timeout, cert=None, key=None):
        self.opened.append((host, port, ca, cert, key))
        s = self.brokers.get(host, self.socks).pop(0)
        if isinstance(s, Exception):
            raise s
        return s, None

    def onboard(self, cfg, ident, data_dir):
        self.onboards += 1
        self.onboard_times.append(self.now)
        r = self.onboard_result
        if isinstance(r, Exception):
            raise r
        return onboard.run(FakeServer(self), ident, data_dir, certs.ROOT)


def setup(extra, stored=True, topics=None, policy=None, signer=certs.SIGNER_PUB, cert=CERT):
    try:
        os.mkdir(D)
    except OSError:
        pass
    with open(D + "/ca.der", "wb") as f:
        f.write(certs.ROOT)
    doc = {
        "server": "https://localhost:8443",
        "root_ca": D + "/ca.der",
        "telemetry_interval_ms": 2000,
    }
    for k in extra:
        doc[k] = extra[k]
    with open(D + "/config.json", "w") as f:
        f.write(json.dumps(doc))
    store.clear(D)
    try:
        os.remove(D + "/cmd_seq.bin")
    except OSError:
        pass
    if stored:
        store.save(
            D,
            DEVICE_ID,
            cert,
            {"host": "localhost", "port": 8883, "ca_b64": B64CA},
            topics or {"telemetry": TOPIC},
            policy or {},
            signer,
        )
    return D + "/config.json"
