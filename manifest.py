# MicroPython freeze manifest: the qlink firmware compiled into a MicroPython image.
#
# Paths are relative to this file. From a board's own manifest:
#     include("/path/to/qlink/manifest.py", board="rp2040")
# or as the whole frozen manifest of a port build:
#     QLINK_BOARD=rp2040 make -C ports/rp2 BOARD=RPI_PICO FROZEN_MANIFEST=/path/to/qlink/manifest.py
#
# Options (include() keywords; `board` also from the environment):
#   board          the HAL of boards/<board>/ to freeze (board.py, and silicon.py for the unix
#                  board); default $QLINK_BOARD; none: board.py stays a file on the filesystem
#   port_manifest  the port's own manifest, included first: it freezes the modules the port
#                  needs to boot (rp2 and esp32 mount their filesystem from a frozen _boot.py);
#                  default "$(PORT_DIR)/boards/manifest.py" (the unix port's is
#                  "$(PORT_DIR)/variants/manifest.py"); "" for none
#   entry_points   freeze boot.py, main.py and enrol.py too (default True). MicroPython runs a
#                  frozen boot.py or main.py in place of the filesystem's, while a package on the
#                  filesystem shadows its frozen copy ("" comes before ".frozen" in sys.path).
#
# The firmware's configuration (config.json, the pinned root CA) is not frozen: it is written to
# the board's filesystem at flash time (`qlink rig flash`, docs/rig.md).
#
# MicroPython's manifest tool runs this file with options, include(), package() and module()
# defined for it.
# ruff: noqa: F821
import os

options.defaults(
    board=os.environ.get("QLINK_BOARD"),
    port_manifest="$(PORT_DIR)/boards/manifest.py",
    entry_points=True,
)

if options.port_manifest:
    include(options.port_manifest)

package("qdid", base_path="firmware")
package("agent", base_path="firmware")

if options.entry_points:
    for _name in ("boot.py", "main.py", "enrol.py"):
        module(_name, base_path="firmware")

if options.board:
    _hal = os.path.join("boards", options.board)
    if not os.path.isfile(os.path.join(_hal, "board.py")):
        raise ValueError(f"qlink has no board {options.board!r} (boards/<board>/board.py)")
    for _name in ("board.py", "silicon.py"):
        if os.path.isfile(os.path.join(_hal, _name)):
            module(_name, base_path=_hal)
