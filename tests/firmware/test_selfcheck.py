# Checks that the runner itself reports from inside MicroPython with the budgeted heap.
import sys
import gc


def test_runs_on_micropython():
    assert sys.implementation.name == "micropython"


def test_heap_is_budgeted():
    gc.collect()
    # The default budget is 64 KiB: the free heap must be below it, not the 2 MiB default.
    assert gc.mem_free() + gc.mem_alloc() <= 64 * 1024
