"""The `qlink` command: run the server, manage batches and devices, export the root CA.

Every command works on the data directory (`--data-dir`, or env QLINK_DATA_DIR, default
./qlink-data). The registry is SQLite in WAL mode, so these commands are safe while the
server runs.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from host.server import ServerError
from host.server.settings import ENV_DATA_DIR, Settings

if TYPE_CHECKING:
    from host.server.registry import Registry

app = typer.Typer(
    help="qlink: chip-to-cloud device security (server, CA, registry, broker).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
batch_app = typer.Typer(
    help="Create batches and import devices into them.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
ca_app = typer.Typer(help="The platform CA.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(batch_app, name="batch")
app.add_typer(ca_app, name="ca")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar=ENV_DATA_DIR,
        help="Where the server keeps its CA, registry and broker files.",
        show_default=True,
    ),
]
_DEFAULT_DIR = Path("qlink-data")


class CliError(ServerError):
    pass


def _registry(data_dir: Path) -> Registry:
    from host.server.registry import Registry

    return Registry(Settings(data_dir=data_dir).db_path)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command()
def server(
    data_dir: DataDir = _DEFAULT_DIR,
    port: Annotated[int, typer.Option(help="HTTPS port of the device API (0: any free).")] = 8443,
    broker_port: Annotated[int, typer.Option(help="MQTT/TLS port (0: any free).")] = 8883,
    hostname: Annotated[
        str, typer.Option(help="Host name devices use for the server and verify in TLS.")
    ] = "localhost",
    bind: Annotated[str, typer.Option(help="Address the API and broker listen on.")] = "127.0.0.1",
    challenge_ttl: Annotated[int, typer.Option(help="Seconds an onboarding challenge lives.")] = 60,
) -> None:
    """Run the server: device API over HTTPS, CA, registry and a managed Mosquitto broker.

    Writes DATA_DIR/server.json with the API URL and broker port once it accepts connections;
    stops (with its broker) on Ctrl-C or SIGTERM.
    """
    from host.server.app import configure_logging, serve

    try:
        settings = Settings(
            data_dir=data_dir,
            bind_host=bind,
            api_port=port,
            public_host=hostname,
            broker_port=broker_port,
            challenge_ttl_s=challenge_ttl,
        )
    except ValueError as e:
        raise CliError(str(e)) from e
    configure_logging()
    serve(settings)


@batch_app.command("create")
def batch_create(
    name: Annotated[str, typer.Argument(help="Unique batch name, e.g. factory-2026-11.")],
    tenant: Annotated[str, typer.Option(help="Tenant the batch's devices belong to.")] = "default",
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Create an empty, active batch."""
    _registry(data_dir).create_batch(name, tenant)
    out.print(f"batch [bold]{name}[/] created (tenant {tenant})")


@batch_app.command("import")
def batch_import(
    name: Annotated[str, typer.Argument(help="Batch to import into (must exist).")],
    file: Annotated[
        Path, typer.Argument(help="CSV lines device_id,public_key_hex ('-' for stdin).")
    ],
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Import devices from a CSV file: all rows or none.

    Each line is `device_id,public_key_hex` (64 and 130 hex characters, the ID being SHA-256
    of the uncompressed P-256 key). Bad rows are listed with their line numbers.
    """
    from host.server.registry import ImportRejected

    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
    except OSError as e:
        raise CliError(f"cannot read {file}: {e.strerror}; check the path") from e
    try:
        count = _registry(data_dir).import_devices(name, text.splitlines())
    except ImportRejected as e:
        for row in e.errors:
            err.print(f"[red]{file}:{row.line}: {row.reason}[/]")
        raise CliError(
            f"{len(e.errors)} bad row(s) in {file}; nothing was imported. Fix them and run again"
        ) from e
    out.print(f"imported {count} device(s) into batch [bold]{name}[/]")


@batch_app.command("list")
def batch_list(data_dir: DataDir = _DEFAULT_DIR) -> None:
    """List batches with their tenant, state and device count."""
    table = Table("batch", "tenant", "active", "devices")
    for b in _registry(data_dir).batches():
        table.add_row(b.name, b.tenant, "yes" if b.active else "no", str(b.devices))
    out.print(table)


@app.command()
def devices(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array instead of a table.")
    ] = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """List devices: ID, batch, state, certificate expiry, last seen, last telemetry seq."""
    rows = _registry(data_dir).devices()
    if as_json:
        print(json.dumps([d.as_json() for d in rows], indent=2))
        return
    # The full ID is what an operator acts on: fold it over lines rather than cut it.
    device_column = Column("device ID", overflow="fold", min_width=16)
    table = Table(device_column, "batch", "state", "cert expires", "last seen", "seq")
    for d in rows:
        seq = d.last_telemetry.get("seq") if d.last_telemetry else None
        table.add_row(
            d.device_id,
            d.batch,
            d.state,
            _when(d.not_after),
            _when(d.last_seen),
            "-" if seq is None else str(seq),
        )
    out.print(table)


@ca_app.command("root")
def ca_root(
    pem: Annotated[bool, typer.Option("--pem", help="PEM output (the default).")] = False,
    der: Annotated[bool, typer.Option("--der", help="DER output (what devices pin).")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to FILE.")] = None,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Print or save the root CA certificate (created with the CA if there is none yet)."""
    from host.server.ca import CertificateAuthority

    if pem and der:
        raise CliError("choose one of --pem and --der")
    ca = CertificateAuthority.load_or_create(Settings(data_dir=data_dir).ca_dir)
    data = (ca.root_der_path if der else ca.root_pem_path).read_bytes()
    if out_file is not None:
        out_file.write_bytes(data)
        err.print(f"root CA written to {out_file}")
    elif der:
        if sys.stdout.isatty():
            raise CliError("DER is binary; add --out FILE or redirect the output")
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data.decode())


PLUGIN_GROUP = "qlink.cli"


def _add_plugins() -> None:
    """Command groups that other packages add (the rig's `qlink rig`, `qlink puf`) are found
    through the `qlink.cli` entry points, so the server package never imports them. A group that
    fails to load still shows up, and says why when it is used."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            sub = ep.load()
        except Exception as e:  # a broken plug-in must not take the whole CLI down
            reason = f"{type(e).__name__}: {e}"
            sub = typer.Typer(help=f"(unavailable: {reason})")

            @sub.callback(invoke_without_command=True)
            def _unavailable(reason: str = reason, name: str = ep.name) -> None:
                raise CliError(f"'qlink {name}' cannot load ({reason}); run: make setup")

        app.add_typer(sub, name=ep.name)


def main() -> None:
    _add_plugins()
    try:
        app()
    except ServerError as e:
        err.print(f"[red]error: {e}[/]", highlight=False)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
