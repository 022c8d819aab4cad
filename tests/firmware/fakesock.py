# A socket made of byte buffers for the firmware tests; runs inside MicroPython.
import io

_POLL = 3  # MP_STREAM_POLL (py/stream.h): select.poll asks a stream object through ioctl
_POLLIN = 1


class FakeSock(io.IOBase):
    # A socket made of byte buffers: write() records into `out`, readinto() serves `incoming`
    # (at most `chunk` bytes per call when set); errors can be injected on either side.
    # select.poll sees it readable while unread input (or an injected read error) is left, or
    # at its end once `eof` is set (a closed peer); otherwise it waits, as an idle link does.
    def __init__(self, incoming=b"", chunk=0, read_error=None, write_error=None):
        self.inp = incoming
        self.pos = 0
        self.out = bytearray()
        self.chunk = chunk
        self.read_error = read_error
        self.write_error = write_error
        self.closed = False
        self.writes = 0
        self.eof = False

    def ioctl(self, req, arg):
        if req != _POLL:
            return -1  # no file descriptor (MP_STREAM_GET_FILENO) and nothing else
        ready = self.pos < len(self.inp) or self.read_error is not None or self.eof
        return arg & _POLLIN if ready else 0

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
