"""The `qlink` command: run the server, manage batches and devices, export the root CA.

Every command works on the data directory (`--data-dir`, or env QLINK_DATA_DIR, default
./qlink-data) through the server's application layer (host/server/application.py), as the
operator API does. The store is SQLite in WAL mode by default, so these commands are safe while
the server runs. A command that only reads refuses a directory without qlink data rather than
create an empty store there.

Start-up cost: this module imports only what `qlink --help` needs (typer and the settings'
names). Each command imports its own layers (the application and its store, the CA, rich's
tables and progress bars, httpx), and the plug-in groups of other packages (`qlink rig`,
`qlink puf`: numpy, matplotlib, the whole rig) are imported only when invoked; `--help` reads
their one-line help from their module's docstring without running it. bench/cli_start.py
measures each command against a bare `import typer, cryptography.x509`.

Every list and every command that reports a result takes `--json`: one JSON document on
stdout, messages on stderr, the same exit codes.
"""

# No `from __future__ import annotations`: typer reads every command's signature when it builds
# the command tree, and string annotations cost it an eval each (~20 ms on every call).
import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from host.server import ServerError
from host.server.settings import ENV_DATA_DIR, Settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from rich.console import Console

    from host.server.application import Application
    from host.server.store import Actor

PLUGIN_GROUP = "qlink.cli"


class CliError(ServerError):
    pass


# -- plug-in groups ----------------------------------------------------------------------------
# The project's own groups that load like plug-ins, only when invoked: `qlink ota` builds on the
# helpers here and would otherwise cost every command its import.
_LAZY_GROUPS = {"ota": "host.otacli:ota_app", "user": "host.usercli:user_app"}


def _lazy_groups() -> dict[str, str]:
    """Every group `qlink` imports only when invoked: the project's own, then the plug-ins."""
    return {**_LAZY_GROUPS, **_plugins()}


@functools.cache
def _plugins() -> dict[str, str]:
    """Command groups that other packages add (the rig's `qlink rig`, `qlink puf`), found through
    the `qlink.cli` entry points so the server package never imports them: name -> module:attr.

    Read straight from the entry_points.txt of each distribution on sys.path (the first of a
    name wins, as in importlib.metadata), because importing importlib.metadata and letting it
    scan costs ~25 ms, a tenth of `qlink --help`.
    """
    found: dict[str, str] = {}
    seen: set[str] = set()
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # a zip file or a missing directory: no plug-in installs there
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            dist = name.rsplit(".", 1)[0].split("-")[0].lower().replace("_", "-")
            if dist in seen:
                continue
            seen.add(dist)
            try:
                text = Path(entry or ".", name, "entry_points.txt").read_text()
            except (OSError, UnicodeDecodeError):
                continue
            found.update(_entry_points(text, PLUGIN_GROUP))
    return found


def _entry_points(text: str, group: str) -> dict[str, str]:
    """`name = module:attr` lines of section [group] of an entry_points.txt (an INI file)."""
    points: dict[str, str] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            points[name.strip()] = value.split("[", 1)[0].strip()  # drop any [extras]
    return points


class _PluginStub(TyperGroup):
    """Stands for a plug-in group in `qlink --help` until the group is invoked."""


def _plugin_help(target: str) -> str:
    """The first line of the plug-in module's docstring, read from its source without running
    it (its imports are what a lazy group saves)."""
    import ast
    from importlib.util import find_spec

    module = target.partition(":")[0]
    source: str | None = None
    try:
        spec = find_spec(module)
        if spec is None:
            return f"(unavailable: no module {module})"
        if spec.origin and spec.origin.endswith(".py"):
            source = Path(spec.origin).read_text()
        else:  # not a plain source file: ask its loader, if it can tell
            get_source = getattr(spec.loader, "get_source", None)
            source = get_source(module) if get_source else None
        doc = ast.get_docstring(ast.parse(source)) if source else None
    except Exception as e:  # a broken plug-in must not take `qlink --help` down
        return f"(unavailable: {type(e).__name__}: {e})"
    if not doc:
        return ""
    line = doc.strip().splitlines()[0]
    # "`qlink rig`: list targets, ..." -> "List targets, ..."
    if line.startswith("`qlink ") and "`:" in line:
        line = line.split("`:", 1)[1].strip()
    return line[:1].upper() + line[1:]


def _load_plugin(name: str) -> Any:
    """Import the plug-in group `name`. One that fails says why (and what to do) when used."""
    import importlib

    module, _, attr = _lazy_groups()[name].partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
        return typer.main.get_group(obj) if isinstance(obj, typer.Typer) else obj
    except Exception as e:  # a broken plug-in must not take the whole CLI down
        raise CliError(
            f"'qlink {name}' cannot load ({type(e).__name__}: {e}); in a checkout run: make "
            "setup; else install the extra it needs (pip install 'qlink[puf]' for qlink puf)"
        ) from e


class _Qlink(TyperGroup):
    """The root group: its own commands, then the plug-in groups, imported when invoked."""

    def list_commands(self, ctx: Any) -> list[str]:
        own = super().list_commands(ctx)
        return own + sorted(n for n in _lazy_groups() if n not in self.commands)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in _lazy_groups():
            return _PluginStub(name=cmd_name, help=_plugin_help(_lazy_groups()[cmd_name]))
        return cmd

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if isinstance(cmd, _PluginStub) and name is not None:
            cmd = _load_plugin(name)
        return name, cmd, rest


# -- the command tree ----------------------------------------------------------------------------
app = typer.Typer(
    cls=_Qlink,
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
    help=(
        "Revoke, disable, enable, command, transfer, claim, re-enrol or decommission one device "
        "(the running server's broker applies it live)."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
tenant_app = typer.Typer(
    help="Tenants: every batch and operator token belongs to one that exists.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
target_app = typer.Typer(
    help="Targets: the brokers batches are served by (managed, an external Mosquitto, AWS IoT).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(batch_app, name="batch")
app.add_typer(tenant_app, name="tenant")
app.add_typer(target_app, name="target")
app.add_typer(ca_app, name="ca")
app.add_typer(token_app, name="token")
app.add_typer(device_app, name="device")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"qlink {version('qlink')}")
        except PackageNotFoundError:
            raise CliError(
                "qlink is not installed, so it has no version; run: make setup"
            ) from None
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


# -- output ----------------------------------------------------------------------------------
def _console(stderr: bool) -> "Console":
    # rich's console costs ~25 ms to import: only commands that print through it pay. A new one
    # each time (cheap once imported): a console fixes its width from COLUMNS when it is made,
    # and a process that runs several commands (tests, scripts) may change it in between.
    from rich.console import Console

    # No emoji codes: a message such as "bad.csv:100: ..." must not print a symbol for ":100:".
    return Console(stderr=stderr, soft_wrap=True, emoji=False)


def _out(*text: Any) -> None:
    _console(False).print(*text)


def _err(*text: Any, **kw: Any) -> None:
    _console(True).print(*text, **kw)


def _check_out(out: Path | None, data_dir: Path) -> None:
    """Refuse an --out that is a folder, in a folder that does not exist (a typo is not made a
    folder), or inside the data directory (it could overwrite the registry or a key)."""
    if out is None:
        return
    where = Settings(data_dir=data_dir).data_dir
    if out.resolve().is_relative_to(where):
        raise CliError(
            f"--out {out} is inside the data directory {where}, where it could overwrite "
            "what the server keeps; write it elsewhere"
        )
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; give the file to write in it")
    if out.parent.exists() and not out.parent.is_dir():
        raise CliError(f"--out {out}: {out.parent} is a file, not a folder")
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: the folder {out.parent} does not exist; create it first")


def _text(value: object) -> str:
    """`value` as text inside a message that uses rich markup: a path, a URL or a user's input
    may hold brackets, which must print as they are."""
    from rich.markup import escape

    return escape(str(value))


@contextlib.contextmanager
def _progress_bar(label: str, enabled: bool) -> "Iterator[Callable[[int, int], None]]":
    """A bar on stderr for a step over many rows, gone once the step ends; yields the
    `progress(done, total)` callback the use cases take."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = _console(True)
    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        # Not on a file or a pipe: there a bar is no progress, only a stray blank line.
        disable=not enabled or not console.is_terminal,
    )
    with bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _plain(obj: Any) -> Any:
    """A read model (the store's pydantic schemas) as JSON-ready data: what the operator API
    would answer. Every JSON the CLI prints goes through here."""
    from host.server.schemas import plain

    return plain(obj)


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _when(ts: float | None) -> str:
    import datetime as dt

    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar=ENV_DATA_DIR,
        help="Where the server keeps its CA, registry and broker files.",
        show_default=True,
    ),
]
_DEFAULT_DIR: Path = Path("qlink-data")  # typed: host/otacli.py and rolloutcli.py import it
Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
Tenant = Annotated[
    str | None,
    typer.Option(help="Tenant of the batch (needed only when two tenants use the name)."),
]


def _device_arg(value: str) -> str:
    """A device ID argument checked by its form before anything is opened."""
    from host.server.deviceid import BadDeviceId, parse_device_id

    try:
        return parse_device_id(value)
    except BadDeviceId:
        raise typer.BadParameter(
            f"{value[:80]!r} is not a device ID (64 hex characters); see: qlink devices"
        ) from None


DeviceArg = Annotated[
    str,
    typer.Argument(
        metavar="DEVICE_ID", help="The device's ID (64 hex characters).", callback=_device_arg
    ),
]


def _app(data_dir: Path, *, create: bool = False) -> "Application":
    """The application over `data_dir`. Only a command that makes the first records (`tenant
    create`, `batch create`, `token create`) may create it; any other refuses a directory
    without qlink data, which it leaves exactly as it was (an operator who mistyped the path
    learns it at once)."""
    from host.server.datadir import NoQlinkData, data_dir_has_qlink_data

    settings = Settings(data_dir=data_dir)
    if not data_dir_has_qlink_data(settings.data_dir, settings.database_url):
        if not create:
            raise NoQlinkData(settings.data_dir)
        # A command that fails after making the store (a refused role, an unknown target) must
        # not leave a new qlink directory behind: main() takes back what this run made.
        where = settings.data_dir
        existed = where.is_dir()
        _MADE.append((where, existed, frozenset(os.listdir(where)) if existed else frozenset()))
    from host.server.application import Application

    service = Application.for_operator(settings)
    _OPENED.append(service)
    return service


# The applications this run opened: main() closes each (a command may close its own first), so
# that the store's connections end with the run, also when it runs in a longer-lived process.
_OPENED: list["Application"] = []


def _close_opened() -> None:
    while _OPENED:
        _OPENED.pop().close()


# Data directories this run found without qlink data and made a store in: (path, whether the
# folder existed, its entries before).
_MADE: list[tuple[Path, bool, frozenset[str]]] = []


def _take_back_made() -> None:
    """Remove what this run added to a data directory that held no qlink data before."""
    import shutil

    for where, existed, before in _MADE:
        with contextlib.suppress(OSError):
            for name in set(os.listdir(where)) - before:
                entry = where / name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            if not existed:
                where.rmdir()
    _MADE.clear()


def _app_in(data_dir: Path, tenant: str) -> "Application":
    """The application for a command that makes a record in `tenant`. A new store holds only
    tenant `default`, so for any other tenant a directory without qlink data is refused with the
    step to take, and left exactly as it was."""
    from host.server.datadir import NoQlinkData
    from host.server.store.tenants import DEFAULT_TENANT, unknown

    try:
        return _app(data_dir, create=tenant == DEFAULT_TENANT)
    except NoQlinkData:
        raise unknown(tenant) from None


def _actor() -> "Actor":
    import getpass

    from host.server.store import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", "local")


def _check_names(**names: str) -> None:
    """Refuse a new name that breaks the one name rule (host/server/store/names.py) before the
    data directory is opened, so a refused command creates nothing at all."""
    from host.server.store.names import name_problem

    for kind, value in names.items():
        problem = name_problem(kind.replace("_", " "), value)
        if problem is not None:
            raise CliError(problem)


# -- commands ----------------------------------------------------------------------------------
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
    cert_days: Annotated[
        float, typer.Option(help="Validity of device certificates, days (fractions allowed).")
    ] = 365,
    renewal_days: Annotated[
        float,
        typer.Option(help="A device asking this many days before expiry gets a new certificate."),
    ] = 30,
    renew_at: Annotated[
        int,
        typer.Option(help="Devices renew once this percent of their certificate's life passed."),
    ] = 67,
    puf_drift: Annotated[
        int,
        typer.Option(help="Flag a device whose PUF used this percent of its correction budget."),
    ] = 50,
    auto_reenrol: Annotated[
        bool,
        typer.Option(help="Command a device past --puf-drift to re-enrol (else only flag it)."),
    ] = False,
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
    max_challenges: Annotated[
        int | None,
        typer.Option(
            hidden=True,  # a hello stores nothing now (docs/operator.md, abuse limits)
            help="No longer has an effect: challenges are not stored until a proof uses them.",
        ),
    ] = None,
    hello_per_source: Annotated[
        int,
        typer.Option(help="Hellos a minute from one address, all may come at once (0: no limit)."),
    ] = 30_000,
    hello_per_device: Annotated[
        int, typer.Option(help="Hellos a minute for one device from one address (0: no limit).")
    ] = 12,
    console_lockout_s: Annotated[
        float,
        typer.Option(help="Seconds the console locks a user out after 5 failed logins in a row."),
    ] = 900.0,
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
            renew_at_pct=renew_at,
            puf_drift_pct=puf_drift,
            auto_reenrol=auto_reenrol,
            database_url=database_url,
            workers=workers,
            hello_per_source_per_min=hello_per_source,
            hello_per_device_per_min=hello_per_device,
            console_lockout_s=console_lockout_s,
        )
    except ValueError as e:
        raise CliError(str(e)) from e
    if max_challenges is not None:
        typer.echo(
            "note: --max-challenges has no effect any more: a hello stores nothing, so a "
            "device's outstanding challenges take no room; the option will be removed",
            err=True,
        )
    configure_logging()
    serve(settings)


@batch_app.command("create")
def batch_create(
    name: Annotated[str, typer.Argument(help="Unique batch name, e.g. factory-2026-11.")],
    tenant: Annotated[str, typer.Option(help="Tenant the batch's devices belong to.")] = "default",
    policy: Annotated[
        str | None,
        typer.Option(
            help="Policy driver of its devices: mosquitto, aws or azure (default: the target's)."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="Target (broker) that serves its devices (default: managed)."),
    ] = None,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Create an empty, active batch.

    NAME and TENANT are 1 to 64 characters: letters, digits, '.', '_' and '-', starting and
    ending with a letter or digit.
    """
    if policy not in (None, "mosquitto", "aws", "azure"):
        raise CliError(f"policy must be mosquitto, aws or azure, not {policy!r}")
    _check_names(batch_name=name, tenant=tenant)
    batch = _app_in(data_dir, tenant).create_batch(
        name, tenant, policy, actor=_actor(), target=target
    )
    if as_json:
        _print_json(_plain(batch))
        return
    _out(f"batch [bold]{name}[/] created (tenant {tenant})")


_IMPORT_MAX = 256 * 2**20  # bytes of one import file: read before anything is checked
_ROWS_SHOWN = 100  # bad rows listed one by one; a file of garbage says how many more


@batch_app.command("import")
def batch_import(
    name: Annotated[str, typer.Argument(help="Batch to import into (must exist).")],
    file: Annotated[Path, typer.Argument(help="CSV or JSON identities ('-' for stdin).")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or json (default: from the content).")
    ] = None,
    tenant: Tenant = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Import devices from a CSV or JSON file: all rows or none.

    CSV: each line is `device_id,public_key_hex` (64 and 130 hex characters, the ID being
    SHA-256 of the uncompressed P-256 key). JSON: an array of `{"device_id", "public_key"}`
    objects, or a batch export. Bad rows are listed with their line numbers. Devices already in
    this batch are left as they are, so importing the same file again changes nothing.
    """
    from host.server.store import ImportRejected

    try:
        if str(file) == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            raw = stdin.read(_IMPORT_MAX + 1) if stdin else sys.stdin.read().encode()
        else:
            with file.open("rb") as f:
                raw = f.read(_IMPORT_MAX + 1)
        if len(raw) > _IMPORT_MAX:
            raise CliError(
                f"{file} is larger than an import takes ({_IMPORT_MAX // 2**20} MiB, about a "
                "million devices); split it into several imports"
            )
        text = raw.decode()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise CliError(f"cannot read {file}: {why}; check the path") from e
    service = _app(data_dir)
    try:
        with _progress_bar("checking", progress) as step:
            count = service.import_devices(
                name, text, tenant=tenant, fmt=fmt, actor=_actor(), progress=step
            )
    except ImportRejected as e:
        for row in e.errors[:_ROWS_SHOWN]:
            _err(f"[red]{_text(file)}:{row.line}: {_text(row.reason)}[/]")
        if len(e.errors) > _ROWS_SHOWN:
            _err(f"[red]... and {len(e.errors) - _ROWS_SHOWN} more bad row(s)[/]")
        raise CliError(
            f"{len(e.errors)} bad row(s) in {file}; nothing was imported. Fix them and run again"
        ) from e
    if as_json:
        _print_json({"imported": count, "batch": _plain(service.batch(name, tenant))})
        return
    _out(f"imported {count} device(s) into batch [bold]{name}[/]")


@batch_app.command("list")
def batch_list(as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """List batches with their tenant, state and device count."""
    rows = _app(data_dir).batches()
    if as_json:
        _print_json([_plain(b) for b in rows])
        return
    from rich.table import Table

    table = Table("batch", "tenant", "active", "policy", "target", "devices", "created (UTC)")
    for b in rows:
        active = "yes" if b.active else "no"
        table.add_row(
            b.name, b.tenant, active, b.policy, b.target, str(b.devices), _when(b.created_at)
        )
    _out(table)


@batch_app.command("export")
def batch_export(
    name: Annotated[str, typer.Argument(help="Batch to export.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to FILE.")] = None,
    tenant: Tenant = None,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Export a batch and its devices as JSON (a backup; `batch import` takes it back)."""
    _check_out(out_file, data_dir)
    doc = json.dumps(_plain(_app(data_dir).export_batch(name, tenant)), indent=1) + "\n"
    if out_file is None:
        sys.stdout.write(doc)
    else:
        from host.server.files import atomic_write

        atomic_write(out_file, doc.encode(), 0o600)
        _err(f"batch {name} written to {_text(out_file)}")


def _set_active(name: str, active: bool, tenant: str | None, data_dir: Path, as_json: bool) -> None:
    batch = _app(data_dir).set_batch_active(name, active, tenant, actor=_actor())
    if as_json:
        _print_json(_plain(batch))
        return
    _out(f"batch [bold]{name}[/] {'enabled' if active else 'disabled'}")


@batch_app.command("disable")
def batch_disable(
    name: str, tenant: Tenant = None, as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR
) -> None:
    """Stop onboarding the batch's devices (onboarded devices keep their certificates)."""
    _set_active(name, False, tenant, data_dir, as_json)


@batch_app.command("enable")
def batch_enable(
    name: str, tenant: Tenant = None, as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR
) -> None:
    """Let the batch's devices onboard again."""
    _set_active(name, True, tenant, data_dir, as_json)


@batch_app.command("revoke")
def batch_revoke(
    name: Annotated[str, typer.Argument(help="Batch whose devices to revoke.")],
    tenant: Tenant = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Revoke every device of a batch for good (needs the running server).

    The broker denies them all at once and drops their connections, the CRL lists their
    certificates, and each device gets its own audit event. Devices revoked before are left as
    they are: running it again revokes only what is left.
    """
    from host.server.policy import PolicyError

    service = _app(data_dir)
    try:
        with _progress_bar("revoking", progress) as step:
            result = service.revoke_batch(name, tenant=tenant, actor=_actor(), progress=step)
    except PolicyError as e:
        raise CliError(f"the broker refused the change ({e}); nothing changed, retry") from e
    finally:
        service.close()
    if as_json:
        _print_json(_plain(result))
        return
    _out(
        f"batch [bold]{result.batch}[/] (tenant {result.tenant}): {result.revoked} device(s) "
        f"revoked, {result.already_revoked} revoked before, {result.devices} in all"
    )


@batch_app.command("policy")
def batch_policy(
    name: Annotated[str, typer.Argument(help="Batch to move.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Target to move it to (see: qlink target list).")
    ] = None,
    status: Annotated[
        bool,
        typer.Option("--status", help="Show its target and each device's progress; move nothing."),
    ] = False,
    tenant: Tenant = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Move a batch's devices to another target (broker), or show how far its move got.

    Each onboarded device is registered at the target first; then the batch's target changes
    (its devices' next onboarding answer names it) and each device is sent `broker` over the
    broker it is on. The devices say the rest: `moved` once online on the new target,
    `fell_back` when they could not reach it and went back. Running it again sends `broker`
    to the devices that have not moved. Needs the running server.
    """
    from host.server.policy import PolicyError

    if to is not None and status:
        raise CliError("give --to TARGET or --status, not both: --status moves nothing")
    if to is None and not status:
        raise CliError("give --to TARGET to move the batch, or --status to see its progress")
    service = _app(data_dir)
    try:
        if to is None:
            out = service.move_status(name, tenant)
        else:
            with _progress_bar("moving", progress) as step:
                out = service.move_batch(name, to, tenant=tenant, actor=_actor(), progress=step)
    except PolicyError as e:
        raise CliError(f"{e}; nothing changed, retry") from e
    finally:
        service.close()
    if as_json:
        _print_json(_plain(out))
        return
    if status:
        from rich.table import Column, Table

        table = Table(
            Column("device ID", overflow="fold"), "from", "to", "state", "seq", "updated (UTC)"
        )
        for m in out.progress:
            seq = "-" if m.seq is None else str(m.seq)
            table.add_row(
                m.device_id, m.from_target, m.to_target, m.state, seq, _when(m.updated_at)
            )
        _out(table)
    _out(
        f"batch [bold]{out.batch}[/] (tenant {out.tenant}) is on target {out.target}; "
        f"{out.devices} device(s) in its move: {out.moved} moved, {out.commanded} commanded, "
        f"{out.fell_back} fell back, {out.registered} registered only"
    )


CodeTtl = Annotated[
    float,
    typer.Option(
        "--ttl", help="Seconds a transfer code stays valid (600 s to 30 days; default 7 days)."
    ),
]


@batch_app.command("transfer")
def batch_transfer(
    name: Annotated[str, typer.Argument(help="Batch whose devices to hand over.")],
    tenant: Tenant = None,
    ttl: CodeTtl = 7 * 86400,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON array of {device_id, code, expires_at}."),
    ] = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """A transfer code for every device of a batch that can be transferred now.

    Devices that have not onboarded, are disabled or revoked, or are already moving get none.
    Each code is shown once (only its SHA-256 is stored): hand them to the new owner, who
    redeems each with `qlink device claim CODE --tenant T --batch B`.
    """
    service = _app(data_dir)
    try:
        codes = service.transfer_codes(name, ttl_s=ttl, tenant=tenant, actor=_actor())
    finally:
        service.close()
    if as_json:
        _print_json([_plain(c) for c in codes])
    else:
        from rich.table import Column, Table

        table = Table(Column("device ID", overflow="fold"), "code", "expires (UTC)")
        for c in codes:
            table.add_row(c.device_id, c.code, _when(c.expires_at))
        _out(table)
    _err(f"{len(codes)} transfer code(s) for batch {name}; they are not shown again")


def _device_change(device_id: str, change: str, data_dir: Path, as_json: bool = False) -> None:
    from host.server.policy import PolicyError

    service = _app(data_dir)
    use_case = {"revoke": service.revoke, "disable": service.disable, "enable": service.enable}[
        change
    ]
    try:
        dev = use_case(device_id, actor=_actor())
    except PolicyError as e:
        raise CliError(f"the broker refused the change ({e}); nothing changed, retry") from e
    finally:
        service.close()
    if as_json:
        _print_json(_plain(dev))
        return
    state = dev.state + (" (disabled)" if dev.disabled else "")
    _out(f"device {dev.device_id}: {state}")


@device_app.command("revoke")
def device_revoke(
    device_id: DeviceArg, as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR
) -> None:
    """Revoke a device for good: its certificate goes on the CRL, its broker denies it."""
    _device_change(device_id, "revoke", data_dir, as_json)


@device_app.command("disable")
def device_disable(
    device_id: DeviceArg, as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR
) -> None:
    """Refuse the device's broker connections and onboarding until it is enabled again."""
    _device_change(device_id, "disable", data_dir, as_json)


@device_app.command("enable")
def device_enable(
    device_id: DeviceArg, as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR
) -> None:
    """Undo `device disable`."""
    _device_change(device_id, "enable", data_dir, as_json)


def _print_command(cmd: Any, as_json: bool) -> None:
    if as_json:
        _print_json(_plain(cmd))
        return
    note = {
        "queued": "queued; the device gets it now if online, else when it next comes online",
    }.get(cmd.state, cmd.state)
    _out(f"device {cmd.device_id}: command {cmd.seq} {cmd.kind}: {note}")


def _wait_command(service: "Application", cmd: Any, timeout_s: float) -> Any:
    """Poll the store until the command has an outcome (done, failed, expired) or time runs
    out; the server's event intake records what the device says."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = service.store.commands.get(cmd.device_id, cmd.seq)
        if now is not None and now.state not in ("queued", "delivered"):
            return now
        time.sleep(0.1)
    return service.store.commands.get(cmd.device_id, cmd.seq) or cmd


def _send_command(
    device_id: str,
    kind: str,
    args: dict[str, Any],
    ttl_s: float,
    wait_s: float,
    data_dir: Path,
    as_json: bool,
) -> None:
    service = _app(data_dir)
    try:
        cmd = service.send_operator_command(device_id, kind, args, ttl_s=ttl_s, actor=_actor())
        if wait_s > 0:
            cmd = _wait_command(service, cmd, wait_s)
    finally:
        service.close()
    _print_command(cmd, as_json)
    if wait_s > 0 and cmd.state != "done":
        raise typer.Exit(1)


Ttl = Annotated[
    float, typer.Option("--ttl", help="Seconds the command stays valid (10 s to 30 days).")
]
Wait = Annotated[
    float,
    typer.Option(
        "--wait",
        min=0,
        max=30 * 86400,  # a command lives at most 30 days
        help="Wait up to this many seconds for the outcome (exit 1 if not done).",
    ),
]


@device_app.command("command")
def device_command(
    device_id: DeviceArg,
    kind: Annotated[
        str,
        typer.Argument(
            help="ping or renew (docs/protocol.md, Command channel); transfer, reenrol, "
            "decommission, broker and ota are sent by their own commands."
        ),
    ],
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="An argument as KEY=VALUE (repeatable).")
    ] = None,
    ttl: Ttl = 3600,
    wait: Wait = 0,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Send a signed command to a device (QoS 1; kept until it comes online or expires)."""
    args: dict[str, Any] = {}
    for item in arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--arg must be KEY=VALUE, not {item[:40]!r}")
        args[key] = value
    _send_command(device_id, kind, args, ttl, wait, data_dir, as_json)


@device_app.command("renew")
def device_renew(
    device_id: DeviceArg,
    ttl: Ttl = 3600,
    wait: Wait = 0,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Command the device to renew its certificate now (fresh proof; old serial revoked)."""
    _send_command(device_id, "renew", {}, ttl, wait, data_dir, as_json)


@device_app.command("health")
def device_health(
    device_id: DeviceArg,
    limit: Annotated[int, typer.Option(min=0, help="Newest N reports.")] = 20,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """PUF health the device reported at its sessions: decoder margin, corrected bits."""
    service = _app(data_dir)
    try:
        dev = service.require_device(device_id)
        rows = service.puf_health(device_id, limit=limit)
    finally:
        service.close()
    if as_json:
        doc = {"device_id": dev.device_id, "used_pct": dev.puf_used_pct}
        _print_json({**doc, "history": [_plain(r) for r in rows]})
        return
    from rich.table import Table

    used = "-" if dev.puf_used_pct is None else f"{dev.puf_used_pct} %"
    _out(f"device {dev.device_id}: correction budget used {used}")
    table = Table("at (UTC)", "margin", "corrected bits", "health failures")
    for r in rows:
        values = (r.margin, r.corrected_bits, r.health_failures)
        table.add_row(_when(r.at), *("-" if v is None else str(v) for v in values))
    _out(table)


@device_app.command("commands")
def device_commands(
    device_id: DeviceArg,
    limit: Annotated[int, typer.Option(min=0, help="Newest N commands.")] = 50,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """List a device's commands and their state (queued, delivered, done, failed, expired)."""
    service = _app(data_dir)
    try:
        cmds = service.commands(device_id, limit=limit)
    finally:
        service.close()
    if as_json:
        _print_json([_plain(c) for c in cmds])
        return
    from rich.table import Table

    table = Table("seq", "kind", "state", "created", "expires", "detail")
    for c in cmds:
        table.add_row(
            str(c.seq), c.kind, c.state, _when(c.created_at), _when(c.expires_at), c.detail or ""
        )
    _console(False).print(table)


@device_app.command("transfer")
def device_transfer(
    device_id: DeviceArg,
    ttl: CodeTtl = 7 * 86400,
    as_json: Annotated[
        bool, typer.Option("--json", help="The code with its device and expiry as JSON.")
    ] = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Issue a single-use code that hands the device over to a new owner.

    The code is printed once (only its SHA-256 is stored); a new one replaces the device's
    open code. The new owner redeems it: `qlink device claim CODE --tenant T --batch B`; the
    device then moves to a new identity that nothing of this one leads to.
    """
    service = _app(data_dir)
    try:
        out = service.transfer_code(device_id, ttl_s=ttl, actor=_actor())
    finally:
        service.close()
    if as_json:
        _print_json(_plain(out))
    else:
        print(out.code)
    _err(
        f"transfer code for device {out.device_id}, valid until {_when(out.expires_at)} UTC; "
        "it is not shown again"
    )


@device_app.command("claim")
def device_claim(
    code: Annotated[str, typer.Argument(help="The transfer code the current owner gave you.")],
    tenant: Annotated[str, typer.Option(help="Your tenant (the new owner's).")],
    batch: Annotated[str, typer.Option(help="Your batch the device moves into.")],
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Redeem a transfer code: the device moves into BATCH of TENANT under a new identity.

    The answer is a claim handle; the device's new ID shows in `qlink devices --batch B` once it
    has moved (when it next comes online).
    """
    service = _app(data_dir)
    try:
        out = service.claim(code, tenant, batch, actor=_actor())
    finally:
        service.close()
    if as_json:
        _print_json(_plain(out))
        return
    _out(
        f"claim {out.claim} ({out.state}): the device moves into batch {out.batch} of tenant "
        f"{out.tenant} when it next comes online"
    )


@device_app.command("reenrol")
def device_reenrol(
    device_id: DeviceArg, as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR
) -> None:
    """Command the device to re-enrol at its next cold boot (fresh helper data, a new ID in
    the same batch, linked to this record)."""
    service = _app(data_dir)
    try:
        cmd = service.reenrol(device_id, actor=_actor())
    finally:
        service.close()
    _print_command(cmd, as_json)


@device_app.command("decommission")
def device_decommission(
    device_id: DeviceArg,
    wait: Annotated[
        float,
        typer.Option(
            "--wait", min=0, max=300, help="Seconds to wait for the device's erase (0 to 300)."
        ),
    ] = 10,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Erase the device's keys and revoke it for good (needs the running server).

    The device is told to erase its helper data, certificate and configuration; whether it
    confirms within WAIT seconds or not (offline), it is then revoked.
    """
    from host.server.policy import PolicyError

    service = _app(data_dir)
    try:
        out = service.decommission(device_id, wait_s=wait, actor=_actor())
    except PolicyError as e:
        raise CliError(
            f"the broker refused the revocation ({e}); the device is not revoked yet, run "
            f"again: qlink device decommission {device_id}"
        ) from e
    finally:
        service.close()
    if as_json:
        _print_json(_plain(out))
        return
    said = (
        "the device confirmed its erase"
        if out.confirmed
        else f"the device did not confirm its erase (offline, or no answer within {wait:g} s)"
    )
    _out(f"device {out.device.device_id}: {out.device.state}; {said}")


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Unique tenant name, e.g. acme.")],
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Create a tenant; its batches and tokens are then made with `--tenant NAME`.

    NAME is 1 to 64 characters: letters, digits, '.', '_' and '-', starting and ending with a
    letter or digit. It is part of every device topic of the tenant (qlink/NAME/...).
    """
    _check_names(tenant=name)
    tenant = _app(data_dir, create=True).create_tenant(name, actor=_actor())
    if as_json:
        _print_json(_plain(tenant))
        return
    _out(f"tenant [bold]{name}[/] created; add a batch: qlink batch create NAME --tenant {name}")


@tenant_app.command("list")
def tenant_list(as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """List tenants with their batch and device counts."""
    rows = _app(data_dir).tenants()
    if as_json:
        _print_json([_plain(t) for t in rows])
        return
    from rich.table import Table

    table = Table("tenant", "batches", "devices", "created (UTC)")
    for t in rows:
        table.add_row(t.name, str(t.batches), str(t.devices), _when(t.created_at))
    _out(table)


@target_app.command("add")
def target_add(
    name: Annotated[str, typer.Argument(help="Unique target name, e.g. eu-mqtt.")],
    kind: Annotated[str, typer.Option(help="mosquitto (an external Mosquitto) or aws (AWS IoT).")],
    host: Annotated[str, typer.Option(help="Host name or address devices connect to.")],
    ca_file: Annotated[
        Path,
        typer.Option(
            "--ca", help="CA certificate (PEM or DER) devices trust for the broker's certificate."
        ),
    ],
    port: Annotated[int, typer.Option(help="Port devices connect to (MQTT over TLS).")] = 8883,
    admin_user: Annotated[
        str | None, typer.Option(help="Dynamic-security admin user (mosquitto).")
    ] = None,
    admin_password_file: Annotated[
        Path | None,
        typer.Option(help="File whose first line is the admin user's password (mosquitto)."),
    ] = None,
    admin_port: Annotated[
        int | None,
        typer.Option(help="Port of the listener the server logs in to (default: --port)."),
    ] = None,
    check: Annotated[
        bool, typer.Option(help="Log in to an external Mosquitto first (--no-check: do not).")
    ] = True,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Add a target: a broker batches can be served by (`qlink batch policy B --to NAME`).

    An external Mosquitto (`--kind mosquitto`) is reached by its dynamic-security admin user over
    TLS checked against --ca, at --admin-port: the server checks the login, the broker's default
    rights and gives the admin user the role it needs, before anything is recorded. The password
    is kept in a file only the server's user can read, never in the database or any output.
    NAME is 1 to 64 characters: letters, digits, '.', '_' and '-'.
    """
    from host.server.targets import TargetSpec, read_password

    _check_names(target_name=name)
    files: dict[str, bytes] = {}
    for what, path in (("ca", ca_file), ("password", admin_password_file)):
        if path is None:
            continue
        try:
            files[what] = path.read_bytes()
        except OSError as e:
            raise CliError(f"cannot read {path}: {e.strerror}; check the path") from e
    password = read_password(files["password"]) if "password" in files else None
    spec = TargetSpec(name, kind, host, port, files["ca"], admin_user, password, admin_port)
    spec.check()  # before the data directory is opened: a refused target creates nothing
    from host.server.policy import PolicyError

    service = _app(data_dir, create=True)
    try:
        rec = service.add_target(spec, _actor(), check=check)
    except PolicyError as e:
        raise CliError(f"{e}; nothing was recorded") from e
    finally:
        service.close()
    if as_json:
        _print_json(_plain(rec))
        return
    _out(
        f"target [bold]{name}[/] added ({kind} at {host}:{port}); move a batch: "
        f"qlink batch policy BATCH --to {name}"
    )


@target_app.command("list")
def target_list(as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """List targets: kind, where devices connect, the admin login, the CA's SHA-256."""
    rows = _app(data_dir).list_targets()
    if as_json:
        _print_json([_plain(t) for t in rows])
        return
    from rich.table import Table

    table = Table("target", "kind", "devices connect to", "admin", "CA SHA-256", "created (UTC)")
    for t in rows:
        where = f"{t.host}:{t.port}" if t.host else "-"
        if t.kind == "managed":
            where = "the server's broker"
        admin = f"{t.admin_user} at port {t.admin_port}" if t.admin_user else "-"
        ca = (t.ca_sha256 or "-")[:16]
        table.add_row(t.name, t.kind, where, admin, ca, _when(t.created_at))
    _out(table)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Operator name (shown in the audit log).")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "operator",
    tenant: Annotated[
        str | None, typer.Option(help="Tenant the token acts in (default: default).")
    ] = None,
    remote: Annotated[
        bool, typer.Option(help="Ask the server you logged in to (qlink login), in your tenant.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="The token and its operator as one JSON object.")
    ] = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Create an operator API token and print it once (only its SHA-256 is stored).

    NAME and TENANT are 1 to 64 characters: letters, digits, '.', '_' and '-', starting and
    ending with a letter or digit.
    """
    if remote and tenant is not None:
        raise typer.BadParameter(
            "with --remote the token is made in your own tenant (the one you logged in to); "
            "drop --tenant",
            param_hint="--tenant",
        )
    tenant = tenant or "default"
    _check_names(operator_name=name, tenant=tenant)
    if remote:
        from host.client import AdminClient

        answer = AdminClient.from_login().post("/v1/admin/tokens", {"name": name, "role": role})
        if as_json:
            _print_json(answer)
        else:
            print(answer["token"])
        _err(f"token for {name} ({answer['role']} in tenant {answer['tenant']})")
        return
    token, op = _app_in(data_dir, tenant).create_token(name, tenant, role, actor=_actor())
    if as_json:
        _print_json({"token": token, **_plain(op)})
    else:
        print(token)
    _err(f"token for {op.name} ({op.role} in tenant {op.tenant}); it is not shown again")


@token_app.command("list")
def token_list(as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """List operators and their tokens' state (never the tokens)."""
    rows = _app(data_dir).operators()
    if as_json:
        _print_json([{**_plain(o), "created_at": o.created_at, "revoked": o.revoked} for o in rows])
        return
    from rich.table import Table

    table = Table("operator", "tenant", "role", "created (UTC)", "state")
    for o in rows:
        state = "revoked" if o.revoked else "live"
        table.add_row(o.name, o.tenant, o.role, _when(o.created_at), state)
    _out(table)


@token_app.command("revoke")
def token_revoke(
    name: str,
    tenant: Annotated[str, typer.Option(help="Tenant of the operator.")] = "default",
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Revoke every token of an operator."""
    n = _app(data_dir).revoke_tokens(name, tenant, actor=_actor())
    if as_json:
        _print_json({"revoked": n, "name": name, "tenant": tenant})
        return
    _out(f"revoked {n} token(s) of {name} in tenant {tenant}")


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="The server's API URL, e.g. https://host:8443.")],
    token: Annotated[str, typer.Option(envvar="QLINK_TOKEN", help="Your operator token.")],
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca", help="Root CA PEM the server's TLS chains to (qlink ca root)."),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object: url, name, role, tenant, credentials."),
    ] = False,
) -> None:
    """Check a token against a server and remember both for `--remote` commands."""
    from host.client import AdminClient, read_ca

    ca_pem = read_ca(ca_file) if ca_file is not None else None
    client = AdminClient(url, token, ca_pem)
    who = client.get("/v1/admin/whoami")
    path = client.save()
    if as_json:
        _print_json(
            {
                "url": url,
                "name": who["name"],
                "role": who["role"],
                "tenant": who["tenant"],
                "credentials": str(path),
            }
        )
    else:
        _out(
            f"logged in to {_text(url)} as {who['name']} ({who['role']} in tenant {who['tenant']})"
        )
    _err(f"credentials saved to {_text(path)} (mode 0600)")


@app.command()
def audit(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action: device.revoke")] = None,
    target: Annotated[str | None, typer.Option(help="Only this target, e.g. batch:f1.")] = None,
    limit: Annotated[
        int, typer.Option(min=0, help="At most this many events, newest first.")
    ] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON array instead of a table.")] = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """The audit log: every state change with who, what, when and from where."""
    rows = _app(data_dir).audit(tenant, action=action, target=target, limit=limit)
    if as_json:
        _print_json([_plain(a) for a in rows])
        return
    from rich.table import Column, Table

    target_col = Column("target", overflow="fold")
    table = Table("when (UTC)", "tenant", "actor", "from", "action", target_col)
    for a in rows:
        table.add_row(_when(a.at), a.tenant, a.actor, a.source, a.action, a.target)
    _out(table)


State = Literal["registered", "onboarded", "revoked", "disabled"]


def _server_drift_pct(settings: Settings) -> int:
    """The drift threshold of the server running on the data directory (its server.json),
    else the default: what the server itself flags and re-enrols by."""
    try:
        pct = json.loads(settings.server_json.read_text())["puf_drift_pct"]
    except (OSError, ValueError, KeyError, TypeError):
        return settings.puf_drift_pct
    return pct if isinstance(pct, int) and 1 <= pct <= 100 else settings.puf_drift_pct


@app.command()
def devices(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array instead of a table.")
    ] = False,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's devices.")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch's devices.")] = None,
    state: Annotated[
        State | None,
        typer.Option(help="Only devices in this state (disabled: the disabled flag is set)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=0, help="At most this many devices (by batch, then ID).")
    ] = None,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many devices first.")] = 0,
    drifting: Annotated[
        bool,
        typer.Option(
            "--drifting",
            help="Only devices whose PUF used the drift share of its budget: --drift-pct, else "
            "the running server's --puf-drift, else 50.",
        ),
    ] = False,
    drift_pct: Annotated[
        int | None,
        typer.Option(min=1, max=100, help="The drift share for --drifting, in percent."),
    ] = None,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """List devices: ID, batch, state, certificate expiry, last seen, last telemetry seq."""
    if drift_pct is not None and not drifting:
        raise typer.BadParameter("--drift-pct goes with --drifting", param_hint="--drift-pct")
    service = _app(data_dir)
    pct = (drift_pct or _server_drift_pct(service.settings)) if drifting else None
    rows = service.devices(tenant, batch, state=state, limit=limit, offset=offset, drifting_pct=pct)
    if as_json:
        _print_json([_plain(d) for d in rows])
        return
    from rich.table import Column, Table

    # The full ID is what an operator acts on: fold it over lines rather than cut it.
    device_column = Column("device ID", overflow="fold", min_width=16)
    table = Table(device_column, "batch", "state", "cert expires (UTC)", "last seen (UTC)", "seq")
    for d in rows:
        seq = d.last_telemetry.get("seq") if d.last_telemetry else None
        table.add_row(
            d.device_id,
            d.batch,
            d.state + (" (disabled)" if d.disabled else ""),
            _when(d.not_after),
            _when(d.last_seen),
            "-" if seq is None else str(seq),
        )
    _out(table)


@ca_app.command("root")
def ca_root(
    pem: Annotated[bool, typer.Option("--pem", help="PEM output (the default).")] = False,
    der: Annotated[bool, typer.Option("--der", help="DER output (what devices pin).")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to FILE.")] = None,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Print or save the root CA certificate (created with the CA if there is none yet)."""
    from host.server.ca import CertificateAuthority

    _check_out(out_file, data_dir)

    if pem and der:
        raise CliError("choose one of --pem and --der")
    settings = Settings(data_dir=data_dir)
    ca = CertificateAuthority.load_or_create(settings.ca_dir, hsm=settings.hsm)
    data = (ca.root_der_path if der else ca.root_pem_path).read_bytes()
    if out_file is not None:
        out_file.write_bytes(data)
        _err(f"root CA written to {_text(out_file)}")
    elif der:
        if sys.stdout.isatty():
            raise CliError("DER is binary; add --out FILE or redirect the output")
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data.decode())


@ca_app.command("azure-dps-group")
def ca_azure_dps_group(
    group_id: Annotated[
        str,
        typer.Argument(
            metavar="GROUP_ID",
            help="Enrollment group ID in DPS: 1 to 64 letters, digits, '.', '_', '-'.",
            show_default=True,
        ),
    ] = "qlink",
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the document to FILE (mode 0644).")
    ] = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Create it disabled (provisioningStatus).")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="With --out: the result (ID, file, certificate fingerprint) as one JSON object.",
        ),
    ] = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Print or save the Azure DPS enrollment group that admits every device this CA issues.

    The document is an EnrollmentGroup of the DPS service REST API (api-version 2021-10-01):
    X.509 CA attestation whose signing certificate is the issuing CA (base64 DER), so a device
    with a qlink certificate provisions with no per-device step. PUT it to your DPS instance
    (here DPS) with the Azure CLI:

        URL=https://DPS.azure-devices-provisioning.net/enrollmentGroups/GROUP_ID
        az rest --method put --url "$URL?api-version=2021-10-01" --body @group.json \\
          --resource https://azure-devices-provisioning.net

    or with Microsoft's SDKs. Devices of batches with `--policy azure` also get individual
    enrollments (DATA_DIR/azure/TENANT/ID.json): these let a single device be disabled.
    The CA must exist (qlink server creates it); nothing is created here.
    """
    import hashlib

    from host.server.ca import CertificateAuthority
    from host.server.policy.azure import API_VERSION, enrollment_group

    _check_names(enrollment_group_ID=group_id)
    _check_out(out_file, data_dir)
    settings = Settings(data_dir=data_dir)
    ca = CertificateAuthority.load(settings.ca_dir, settings.hsm)
    doc = enrollment_group(group_id, ca.issuing_der(), "disabled" if disabled else "enabled")
    text = json.dumps(doc, indent=1) + "\n"
    if out_file is None:
        sys.stdout.write(text)
        return
    from host.server.files import atomic_write

    try:
        atomic_write(out_file, text.encode())
    except OSError as e:
        raise CliError(f"cannot write {out_file}: {e.strerror}") from e
    if as_json:
        _print_json(
            {
                "enrollmentGroupId": group_id,
                "file": str(out_file),
                "api_version": API_VERSION,
                "signing_certificate_sha256": hashlib.sha256(ca.issuing_der()).hexdigest(),
            }
        )
        return
    _err(f"enrollment group {group_id} written to {_text(out_file)}")


def _not_utf8(args: list[str]) -> str | None:
    """The first argument that is not UTF-8 (Python holds its bad bytes as surrogates, which no
    store, name or header can take), shown as bytes."""
    for arg in args:
        try:
            arg.encode()
        except UnicodeEncodeError:
            return repr(arg.encode(errors="surrogateescape"))
    return None


def main() -> None:
    # The first pydantic model a command builds (a read model's JSON) would scan every
    # installed distribution for pydantic plug-ins (~20 ms); the CLI uses none.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    bad = _not_utf8(sys.argv[1:])
    if bad is not None:
        _err(f"[red]error: the argument {_text(bad)} is not UTF-8 text[/]", highlight=False)
        raise SystemExit(2)
    _MADE.clear()  # one run's (main() may run more than once in a process: the tests)
    _OPENED.clear()
    try:
        try:
            try:
                app()
            finally:
                _close_opened()
        except SystemExit as e:
            if e.code not in (0, None):
                _take_back_made()
            raise
        except BaseException:
            _take_back_made()
            raise
    except ServerError as e:
        # The message may hold brackets of its own (qlink[puf], a user's input): text, not markup.
        _err(f"[red]error: {_text(e)}[/]", highlight=False)
        raise SystemExit(1) from None
    except OSError as e:
        # A path the user gave that cannot be read or written (a folder, a file where a folder
        # should be, a missing folder, no permission): the path and the system's reason.
        why = e.strerror or str(e)
        if isinstance(e, FileExistsError) and e.filename and Path(e.filename).is_file():
            why = "a file is where a folder must be"  # a folder to make under it
        where = f"{e.filename}: " if e.filename else ""
        _err(f"[red]error: {_text(where)}{_text(why)}[/]", highlight=False)
        raise SystemExit(1) from None
    except OverflowError:
        _err("[red]error: a number given is too large (at most 2^63 - 1)[/]", highlight=False)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
