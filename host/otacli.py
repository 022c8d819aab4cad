"""`qlink ota`: build, publish and list firmware releases (docs/ota.md), and roll them out.

Like every `qlink` command, each works on the data directory through the application layer and
imports its own layers when it runs (host/cli.py says why): `qlink ota --help` costs nothing.
"""

# No `from __future__ import annotations`: typer reads the signatures (host/cli.py says why).
from pathlib import Path
from typing import Annotated

import typer

# `qlink` loads this module when the group is invoked (host.cli._LAZY_GROUPS).
ota_app = typer.Typer(
    help="Firmware releases over the air: build, publish, list (and roll out).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

from host.cli import (  # noqa: E402
    _DEFAULT_DIR,
    CliError,
    DataDir,
    Json,
    _actor,
    _app,
    _check_out,
    _out,
    _plain,
    _print_json,
    _text,
    _when,
)


@ota_app.command("build")
def ota_build(
    tree: Annotated[
        str,
        typer.Argument(
            help="Firmware tree to release as it is, or - for the project's own firmware."
        ),
    ] = "-",
    version: Annotated[
        str, typer.Option("--version", help="The release's version, MAJOR.MINOR.PATCH.")
    ] = "",
    board: Annotated[str, typer.Option(help="The board it is for (boards/NAME), e.g. unix.")] = "",
    min_version: Annotated[
        str, typer.Option(help="The oldest running version this release may replace.")
    ] = "0.0.0",
    out: Annotated[
        Path | None,
        typer.Option(help="The bundle to write (default: qlink-BOARD-VERSION.qota here)."),
    ] = None,
    hsm: Annotated[
        bool,
        typer.Option(
            help="Sign with the release key in the PKCS#11 token of QLINK_PKCS11_MODULE, "
            "QLINK_PKCS11_TOKEN and QLINK_PKCS11_PIN (label qlink-release)."
        ),
    ] = False,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Build a signed release bundle (.qota) from a firmware tree.

    With TREE `-` (the default) the tree is the project's firmware for --board: its packages
    compiled to .mpy for the board, main.py and the board's HAL, with agent/version.py saying
    --version (never boot.py or enrol.py). A given TREE is taken as it is; its
    agent/version.py must say --version. The release key of the server on --data-dir signs
    it (made on first use, certified by its root for firmware signing alone).
    """
    from host.server.releases import build_release, check_board, parse_version, release_id

    if not version or not board:
        raise CliError("give the release's --version (e.g. 0.2.0) and --board (e.g. unix)")
    parse_version(version)
    parse_version(min_version)
    check_board(board)
    tree_dir = None if tree == "-" else Path(tree)
    out_file = out if out is not None else Path(f"qlink-{board}-{version}.qota")
    _check_out(out_file, data_dir)
    from host.server.releases import ReleaseSigner, verify_bundle

    service = _app(data_dir)
    try:
        token = service.settings.hsm
        if hsm and token is None:
            raise CliError(
                "--hsm needs the token: set QLINK_PKCS11_MODULE, QLINK_PKCS11_TOKEN and "
                "QLINK_PKCS11_PIN"
            )
        signer = ReleaseSigner.load_or_create(service.ca, token if hsm else None)
        written = build_release(tree_dir, version, board, min_version, signer, out_file)
        # What publish will check, checked here: a bundle that fails says so at once.
        checked = verify_bundle(written, service.ca.root_cert)
    finally:
        service.close()
    doc = {
        "file": str(written),
        "release": release_id(board, version),
        "version": version,
        "min_version": min_version,
        "board": board,
        "files": len(checked.manifest.files),
        "size": checked.manifest.size,
        "bundle_size": written.stat().st_size,
    }
    if as_json:
        _print_json(doc)
        return
    _out(
        f"release [bold]{_text(doc['release'])}[/] built: {_text(written)} ({doc['files']} "
        f"files, {doc['size']} bytes); publish it: qlink ota publish {_text(written)}"
    )


@ota_app.command("publish")
def ota_publish(
    bundle: Annotated[Path, typer.Argument(help="The .qota bundle qlink ota build wrote.")],
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Check a release bundle and publish it: the signer's certificate against the server's
    root, the signature, the paths, every file's size and SHA-256; then its payload is
    encrypted and kept. A release ID (BOARD-VERSION) is published once.
    """
    service = _app(data_dir)
    if not (service.settings.ca_dir / "root.pem").exists():
        service.close()
        # A bundle is checked against this server's root: a root made now could not pass it.
        raise CliError(
            f"{service.settings.data_dir} has no CA yet, so no bundle can be checked against "
            "it; start the server once (qlink server), then build the bundle with this data "
            "directory (qlink ota build --data-dir ...)"
        )
    try:
        rel = service.releases.publish(bundle, _actor())
    finally:
        service.close()
    if as_json:
        _print_json(_plain(rel))
        return
    _out(
        f"release [bold]{rel.id}[/] published ({rel.files} files, payload {rel.payload_size} "
        f"bytes); roll it out: qlink ota rollout create {rel.id} --batch NAME"
    )


@ota_app.command("list")
def ota_list(as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """List published releases: ID, version, board, files, size, when, payload bytes served."""
    service = _app(data_dir)
    try:
        rows = service.releases.releases()
    finally:
        service.close()
    if as_json:
        _print_json([_plain(r) for r in rows])
        return
    from rich.table import Table

    table = Table(
        "release", "version", "min", "board", "files", "size", "published (UTC)", "bytes served"
    )
    for r in rows:
        table.add_row(
            r.id,
            r.version,
            r.min_version,
            r.board,
            str(r.files),
            str(r.size),
            _when(r.published_at),
            str(r.bytes_served),
        )
    _out(table)


# -- rollouts ----------------------------------------------------------------------------------
from host.rolloutcli import rollout_app  # noqa: E402

ota_app.add_typer(rollout_app, name="rollout")
