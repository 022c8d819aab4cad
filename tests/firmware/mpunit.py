# Test runner that executes inside MicroPython: runs the test_* functions of one test file and
# prints one result line per test for the host-side pytest collector (tests/firmware/conftest.py).
#   micropython -X heapsize=N mpunit.py path/to/test_x.py [test_name ...]
import sys
import gc
import io
import time

_MARK = "@@mpunit"


def _run(mod, name):
    fn = getattr(mod, name)
    gc.collect()
    t0 = time.ticks_ms()
    try:
        fn()
    except Exception as e:  # report every failure, keep going with the next test
        buf = io.StringIO()
        sys.print_exception(e, buf)
        text = buf.getvalue().replace("\n", "\\n")
        print(_MARK, "FAIL", name, time.ticks_diff(time.ticks_ms(), t0), text)
        return False
    print(_MARK, "PASS", name, time.ticks_diff(time.ticks_ms(), t0))
    return True


def main():
    path = sys.argv[1]
    wanted = sys.argv[2:]
    slash = path.rfind("/")
    folder = path[:slash] if slash > 0 else "."
    modname = path[slash + 1 :]
    for ext in (".py", ".mpy"):
        if modname.endswith(ext):
            modname = modname[: -len(ext)]
    sys.path.insert(0, folder)
    mod = __import__(modname)
    names = wanted or sorted(n for n in dir(mod) if n.startswith("test_"))
    failed = 0
    for name in names:
        if not _run(mod, name):
            failed += 1
    print(_MARK, "DONE", len(names), failed)


main()
