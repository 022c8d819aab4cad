"""`qlink ARGS` run in-process, as the host tests drive the CLI."""

from __future__ import annotations

import sys

import pytest

from host.cli import main


def run_qlink(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `qlink ARGS`."""
    monkeypatch.setattr(sys, "argv", ["qlink", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
