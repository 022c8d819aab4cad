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
    from host.server.registry import Actor, Registry

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
token_app = typer.Typer(
    help="Operator API tokens (role viewer, operator or admin in one tenant).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
device_app = typer.Typer(
    help="Revoke, disable or enable one device (the running server's broker applies it live).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(batch_app, name="batch")
app.add_typer(ca_app, name="ca")
app.add_typer(token_app, name="token")
app.add_typer(device_app, name="device")

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

    return Registry(Settings(data_dir=data_dir).database)


def _actor() -> Actor:
    import getpass

    from host.server.registry import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", "local")


Tenant = Annotated[
    str | None,
    typer.Option(help="Tenant of the batch (needed only when two tenants use the name)."),
]


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
    cert_days: Annotated[int, typer.Option(help="Validity of device certificates, days.")] = 365,
    renewal_days: Annotated[
        int, typer.Option(help="A device asking this close to expiry gets a new certificate.")
    ] = 30,
    database_url: Annotated[
        str,
        typer.Option(
            envvar="QLINK_DATABASE_URL", help="postgresql://... (default: SQLite in DATA_DIR)."
        ),
    ] = "",
    workers: Annotated[
        int,
        typer.Option(
            help="API worker processes; one per core for the most onboardings per second."
        ),
    ] = 1,
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
            cert_validity_days=cert_days,
            renewal_window_days=renewal_days,
            database_url=database_url,
            workers=workers,
        )
    except ValueError as e:
        raise CliError(str(e)) from e
    configure_logging()
    serve(settings)


@batch_app.command("create")
def batch_create(
    name: Annotated[str, typer.Argument(help="Unique batch name, e.g. factory-2026-11.")],
    tenant: Annotated[str, typer.Option(help="Tenant the batch's devices belong to.")] = "default",
    policy: Annotated[
        str, typer.Option(help="Policy driver of its devices: mosquitto, aws or azure.")
    ] = "mosquitto",
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Create an empty, active batch."""
    if policy not in ("mosquitto", "aws", "azure"):
        raise CliError(f"policy must be mosquitto, aws or azure, not {policy!r}")
    _registry(data_dir).create_batch(name, tenant, policy, actor=_actor())
    out.print(f"batch [bold]{name}[/] created (tenant {tenant})")


@batch_app.command("import")
def batch_import(
    name: Annotated[str, typer.Argument(help="Batch to import into (must exist).")],
    file: Annotated[Path, typer.Argument(help="CSV or JSON identities ('-' for stdin).")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or json (default: from the content).")
    ] = None,
    tenant: Tenant = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Import devices from a CSV or JSON file: all rows or none.

    CSV: each line is `device_id,public_key_hex` (64 and 130 hex characters, the ID being
    SHA-256 of the uncompressed P-256 key). JSON: an array of `{"device_id", "public_key"}`
    objects, or a batch export. Bad rows are listed with their line numbers. Devices already in
    this batch are left as they are, so importing the same file again changes nothing.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from host.server.registry import ImportRejected

    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise CliError(f"cannot read {file}: {why}; check the path") from e
    bar = Progress(
        TextColumn("checking"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=not progress,
    )
    try:
        with bar:
            task = bar.add_task("import", total=None)
            count = _registry(data_dir).import_devices(
                name,
                text,
                tenant=tenant,
                fmt=fmt,
                actor=_actor(),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
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
    table = Table("batch", "tenant", "active", "policy", "devices")
    for b in _registry(data_dir).batches():
        table.add_row(b.name, b.tenant, "yes" if b.active else "no", b.policy, str(b.devices))
    out.print(table)


@batch_app.command("export")
def batch_export(
    name: Annotated[str, typer.Argument(help="Batch to export.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to FILE.")] = None,
    tenant: Tenant = None,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Export a batch and its devices as JSON (a backup; `batch import` takes it back)."""
    from host.server.files import atomic_write

    doc = json.dumps(_registry(data_dir).export_batch(name, tenant), indent=1) + "\n"
    if out_file is None:
        sys.stdout.write(doc)
    else:
        atomic_write(out_file, doc.encode(), 0o600)
        err.print(f"batch {name} written to {out_file}")


def _set_active(name: str, active: bool, tenant: str | None, data_dir: Path) -> None:
    _registry(data_dir).set_batch_active(name, active, tenant, actor=_actor())
    out.print(f"batch [bold]{name}[/] {'enabled' if active else 'disabled'}")


@batch_app.command("disable")
def batch_disable(name: str, tenant: Tenant = None, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """Stop onboarding the batch's devices (onboarded devices keep their certificates)."""
    _set_active(name, False, tenant, data_dir)


@batch_app.command("enable")
def batch_enable(name: str, tenant: Tenant = None, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """Let the batch's devices onboard again."""
    _set_active(name, True, tenant, data_dir)


def _device_change(device_id: str, change: str, data_dir: Path) -> None:
    from host.server.admin import device_change
    from host.server.ca import CertificateAuthority
    from host.server.onboarding import BrokerEndpoint, Onboarding
    from host.server.policy import PolicyError
    from host.server.policy.mosquitto import MosquittoDynsec

    settings = Settings(data_dir=data_dir)
    try:
        info = json.loads(settings.server_json.read_text())
    except (OSError, ValueError):
        raise CliError(
            "the server is not running; start it (qlink server) so its broker applies the change"
        ) from None
    ca = CertificateAuthority.load(settings.ca_dir, settings.hsm)
    try:
        driver = MosquittoDynsec(ca, settings.bind_host, int(info["broker_port"]))
    except PolicyError as e:
        raise CliError(f"cannot reach the server's broker: {e}") from e
    try:
        service = Onboarding(settings, _registry(data_dir), ca, driver, BrokerEndpoint("-", 0))
        dev = device_change(service, device_id.lower(), change, None, _actor())
    except PolicyError as e:
        raise CliError(f"the broker refused the change ({e}); nothing changed, retry") from e
    finally:
        driver.close()
    state = dev.state + (" (disabled)" if dev.disabled else "")
    out.print(f"device {dev.device_id}: {state}")


@device_app.command("revoke")
def device_revoke(device_id: str, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """Revoke a device for good: its certificate goes on the CRL, the broker forgets it."""
    _device_change(device_id, "revoke", data_dir)


@device_app.command("disable")
def device_disable(device_id: str, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """Refuse the device's broker connections and onboarding until it is enabled again."""
    _device_change(device_id, "disable", data_dir)


@device_app.command("enable")
def device_enable(device_id: str, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """Undo `device disable`."""
    _device_change(device_id, "enable", data_dir)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Operator name (shown in the audit log).")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "operator",
    tenant: Annotated[str, typer.Option(help="Tenant the token acts in.")] = "default",
    remote: Annotated[
        bool, typer.Option(help="Ask the server you logged in to (qlink login), in your tenant.")
    ] = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Create an operator API token and print it once (only its SHA-256 is stored)."""
    if remote:
        from host.client import AdminClient

        answer = AdminClient.from_login().post("/v1/admin/tokens", {"name": name, "role": role})
        print(answer["token"])
        err.print(f"token for {name} ({answer['role']} in tenant {answer['tenant']})")
        return
    token, op = _registry(data_dir).create_token(name, tenant, role, actor=_actor())
    print(token)
    err.print(f"token for {op.name} ({op.role} in tenant {op.tenant}); it is not shown again")


@token_app.command("list")
def token_list(data_dir: DataDir = _DEFAULT_DIR) -> None:
    """List operators and their tokens' state (never the tokens)."""
    table = Table("operator", "tenant", "role", "created", "state")
    for o in _registry(data_dir).operators():
        state = "revoked" if o.revoked else "live"
        table.add_row(o.name, o.tenant, o.role, _when(o.created_at), state)
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    name: str,
    tenant: Annotated[str, typer.Option(help="Tenant of the operator.")] = "default",
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Revoke every token of an operator."""
    n = _registry(data_dir).revoke_tokens(name, tenant, actor=_actor())
    out.print(f"revoked {n} token(s) of {name} in tenant {tenant}")


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="The server's API URL, e.g. https://host:8443.")],
    token: Annotated[str, typer.Option(envvar="QLINK_TOKEN", help="Your operator token.")],
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca", help="Root CA PEM the server's TLS chains to (qlink ca root)."),
    ] = None,
) -> None:
    """Check a token against a server and remember both for `--remote` commands."""
    from host.client import AdminClient

    ca_pem = ca_file.read_text() if ca_file is not None else None
    client = AdminClient(url, token, ca_pem)
    who = client.get("/v1/admin/whoami")
    path = client.save()
    out.print(f"logged in to {url} as {who['name']} ({who['role']} in tenant {who['tenant']})")
    err.print(f"credentials saved to {path} (mode 0600)")


@app.command()
def audit(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action: device.revoke")] = None,
    target: Annotated[str | None, typer.Option(help="Only this target, e.g. batch:f1.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many events, newest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON array instead of a table.")] = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """The audit log: every state change with who, what, when and from where."""
    rows = _registry(data_dir).audit(tenant, action=action, target=target, limit=limit)
    if as_json:
        print(json.dumps([a.as_json() for a in rows], indent=2))
        return
    target_col = Column("target", overflow="fold")
    table = Table("when (UTC)", "tenant", "actor", "from", "action", target_col)
    for a in rows:
        table.add_row(_when(a.at), a.tenant, a.actor, a.source, a.action, a.target)
    out.print(table)


@app.command()
def devices(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array instead of a table.")
    ] = False,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's devices.")] = None,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """List devices: ID, batch, state, certificate expiry, last seen, last telemetry seq."""
    rows = _registry(data_dir).devices(tenant)
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
    settings = Settings(data_dir=data_dir)
    ca = CertificateAuthority.load_or_create(settings.ca_dir, hsm=settings.hsm)
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
