# Reader of NIST's CAVP HMAC_DRBG vectors (CAVS 14.3) in the form Mbed TLS's test suite carries
# them (test_suite_hmac_drbg.{no_reseed,nopr,pr}.data, fetched by scripts/fetch-drbg-vectors).
# Runs inside MicroPython (tests/firmware/test_drbg.py) and on CPython
# (tests/host/test_drbg_crosscheck.py), streaming line by line within the 64 KiB heap.
#
# One case is a name line ("HMAC_DRBG NIST CAVS 14.3 PR True (SHA-256, 256, 0) #3") and a call
# line of colon-separated fields, hex in quotes:
#   hmac_drbg_no_reseed:MD:"EI||Nonce":"Pers":"Add1":"Add2":"ReturnedBits"
#   hmac_drbg_nopr:MD:"EI||Nonce||EIReseed":"Pers":"AddReseed":"Add1":"Add2":"ReturnedBits"
#   hmac_drbg_pr:MD:"EI||Nonce||EIPR1||EIPR2":"Pers":"Add1":"Add2":"ReturnedBits"
# The CAVP files' fields, with the entropy inputs in the order the DRBG asks for them: Mbed TLS
# draws the entropy input and the nonce in one read of 3/2 x security strength (48 bytes for
# SHA-256) and one entropy input of the security strength (32 bytes) per reseed.
from binascii import unhexlify

SHA256 = "MBEDTLS_MD_SHA256"
EI = 32  # SHA-256 entropy input, bytes ([EntropyInputLen = 256])
NONCE = 16  # [NonceLen = 128]
# Mode -> the file's name part and the entropy string's length for SHA-256.
MODES = {
    "no_reseed": ("no_reseed", EI + NONCE),
    "pr_false": ("nopr", EI + NONCE + EI),
    "pr_true": ("pr", EI + NONCE + 2 * EI),
}


class Case:
    def __init__(self, name, mode, fields):
        # fields: entropy string, personalization, then the additional inputs and ReturnedBits.
        self.name = name
        self.mode = mode
        e = fields[0]
        if len(e) != MODES[mode][1]:
            raise ValueError("%s: entropy string of %d bytes" % (name, len(e)))
        self.entropy = e[:EI]
        self.nonce = e[EI : EI + NONCE]
        self.reseeds = [e[i : i + EI] for i in range(EI + NONCE, len(e), EI)]
        self.pers = fields[1]
        self.adds = fields[2:-1]
        self.returned = fields[-1]

    def section(self):
        # "(SHA-256, 256, 0)": the CAVP section (personalization and additional input lengths).
        return self.name[self.name.find("(") : self.name.find(")") + 1]


def path(folder, mode):
    return "%s/test_suite_hmac_drbg.%s.data" % (folder, MODES[mode][0])


def cases(folder, mode, md=SHA256):
    # Yields the Case of every call line of `mode` for hash `md`, in file order.
    func = "hmac_drbg_" + MODES[mode][0]
    name = ""
    with open(path(folder, mode)) as f:
        for line in f:
            line = line.strip()
            if line.startswith("HMAC_DRBG"):
                name = line
                continue
            parts = line.split(":")
            if len(parts) < 3 or parts[0] != func or parts[1] != md:
                continue
            yield Case(name, mode, [unhexlify(p.strip('"')) for p in parts[2:]])
