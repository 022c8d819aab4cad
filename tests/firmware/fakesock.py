# A socket made of byte buffers for the firmware tests; runs inside MicroPython.


class FakeSock:
    # A socket made of byte buffers: write() records into `out`, readinto() serves `incoming`
    # (at most `chunk` bytes per call when set); errors can be injected on either side.
    def __init__(self, incoming=b"", chunk=0, read_error=None, write_error=None):
        self.inp = incoming
        self.pos = 0
        self.out = bytearray()
        self.chunk = chunk
        self.read_error = read_error
        self.write_error = write_error
        self.closed = False
        self.writes = 0

    def write(self, b):
        if self.write_error is not None:
            raise self.write_error
        self.out += bytes(b)  # b may be a memoryview of a preallocated buffer
        self.writes += 1
        return len(b)

    def readinto(self, buf):
        if self.read_error is not None:
            raise self.read_error
        n = len(buf)
        if self.chunk:
            n = min(n, self.chunk)
        k = min(n, len(self.inp) - self.pos)
        buf[:k] = self.inp[self.pos : self.pos + k]
        self.pos += k
        return k

    def close(self):
        self.closed = True
