# agent.log: the console line format the rig parses, and nothing formatted below the level.
from agent import log as logmod
from agent.log import log


class Boom:
    # Formatting this raises: proves that a suppressed line is never formatted.
    def __str__(self):
        raise AssertionError("formatted below the level")


def capture():
    lines = []
    logmod._sink = lines.append
    return lines


def test_line_format_matches_protocol():
    lines = capture()
    logmod.set_level("I")
    log("I", "telemetry", "published seq=%d", 7)
    log("E", "onboard", "server refused: %s: %s", "not_registered", "ask the operator")
    log("W", "agent", "plain text 100%")
    logmod._sink = None
    assert lines == [
        "I telemetry: published seq=7",
        "E onboard: server refused: not_registered: ask the operator",
        "W agent: plain text 100%",
    ]


def test_below_level_nothing_is_formatted():
    lines = capture()
    logmod.set_level("W")
    log("D", "x", "%s", Boom())
    log("I", "x", "%s", Boom())
    log("W", "x", "kept")
    logmod.set_level("I")
    logmod._sink = None
    assert lines == ["W x: kept"]


def test_enabled_and_level():
    logmod.set_level("E")
    assert logmod.level() == "E"
    assert logmod.enabled("E") and not logmod.enabled("W")
    logmod.set_level("I")


def test_bad_level_is_refused():
    for bad in ("X", "", "II", None, 1):
        try:
            logmod.set_level(bad)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % (bad,))
    assert logmod.level() == "I"
