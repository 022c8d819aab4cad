# Device log: `<L> <module>: <text>` on the console, where the rig reads it (docs/protocol.md).
# Below the configured level nothing is formatted, so a disabled debug line costs one compare.
# Never pass a seed, a private key or a signature input to log().
from micropython import const

_LEVELS = "DIWE"  # index = severity
_DEFAULT = const(1)  # I

_level = _DEFAULT
_sink = None  # tests set a callable to capture lines; the device prints to its console


def set_level(letter):
    global _level
    i = _LEVELS.find(letter) if isinstance(letter, str) and len(letter) == 1 else -1
    if i < 0:
        raise ValueError("log level must be one of D I W E")
    _level = i


def level():
    return _LEVELS[_level]


def enabled(letter):
    return _LEVELS.find(letter) >= _level


def log(letter, module, fmt, *args):
    i = _LEVELS.find(letter)
    if i < _level:
        return
    if args:
        fmt = fmt % args
    line = "%s %s: %s" % (letter, module, fmt)
    if _sink is None:
        print(line)
    else:
        _sink(line)
