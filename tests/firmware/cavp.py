# Reader of NIST CAVP response files for the firmware tests; runs inside MicroPython.


def records(path, want):
    # Yields the `key = value` records (blank-line separated) of the CAVP sections whose header
    # line equals `want`. "[B.4.2 ...]" in KeyPair.rsp is a method line, not a curve section.
    sect = None
    rec = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] == "[":
                if rec and sect == want:
                    yield rec
                rec = {}
                if line and not line.startswith("[B.4"):
                    sect = line
                continue
            if line[0] == "#":
                continue
            eq = line.find("=")
            if eq > 0:
                rec[line[:eq].strip()] = line[eq + 1 :].strip()
    if rec and sect == want:
        yield rec


def int16(h):
    return int(h, 16)


def point(qx, qy):
    # SEC1 uncompressed encoding; a coordinate wider than 256 bits gets a wider field, which
    # makes the encoding the wrong length (it can only be rejected).
    x = int16(qx)
    y = int16(qy)
    n = 32 if x < (1 << 256) and y < (1 << 256) else 33
    return b"\x04" + x.to_bytes(n, "big") + y.to_bytes(n, "big")
