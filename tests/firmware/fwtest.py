# Helpers shared by the firmware tests; runs inside MicroPython (compiled to .mpy like them).
import os


def raises(exc, fn, *args):
    # The exception `fn(*args)` raised, which must be an `exc`; anything else fails the test.
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("expected %s" % exc.__name__)


def raises_msg(exc, fn, *args):
    return str(raises(exc, fn, *args))


def tmpdir():
    # A fresh folder under /tmp: tests of files never share state.
    path = "/tmp/qlink-test-" + "".join("%02x" % b for b in os.urandom(6))
    os.mkdir(path)
    return path
