"""The firmware image for one board, as the rig flashes it: host/firmware.py builds it (the
service's `qlink ota build` uses the same build), and these names stay here for the rig."""

from __future__ import annotations

from hil import unixport as unixport
from host.firmware import ENTRY_POINTS as ENTRY_POINTS
from host.firmware import PACKAGES as PACKAGES
from host.firmware import BuildError as BuildError
from host.firmware import board_info as board_info
from host.firmware import build as build
from host.firmware import sha256_of as sha256_of
