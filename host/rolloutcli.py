"""`qlink ota rollout`: offer a published release to a share of a batch and follow it
(docs/ota.md "Rollout"): create, status, pause, resume, abort, list.

Each command works on the data directory through the application layer
(host/server/rollouts.py) and imports it only when it runs (host/cli.py says why). Offers are
signed commands: without the running server they are stored and reach each device when it
next comes online.
"""

# No `from __future__ import annotations`: typer reads the signatures (host/cli.py says why).
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

# Made before host.cli is imported, as host/otacli.py's group (it imports this module).
rollout_app = typer.Typer(
    help="Roll a release out to a batch: create, status, pause, resume, abort, list.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

from host.cli import (  # noqa: E402
    _DEFAULT_DIR,
    DataDir,
    Json,
    Tenant,
    _actor,
    _app,
    _out,
    _plain,
    _print_json,
    _progress_bar,
    _when,
)

if TYPE_CHECKING:
    from host.server.schemas import RolloutOut, RolloutSummary

RolloutId = Annotated[int, typer.Argument(help="The rollout's ID (see: qlink ota rollout list).")]


def _counts(r: "RolloutSummary") -> str:
    shown = ", ".join(f"{n} {state}" for state, n in r.counts.items() if n)
    return shown or "no devices yet"


def _show(r: "RolloutOut", as_json: bool, *, table: bool = True) -> None:
    if as_json:
        _print_json(_plain(r))
        return
    if table and r.devices:
        from rich.table import Column, Table

        t = Table(Column("device ID", overflow="fold"), "state", "reason", "seq", "updated (UTC)")
        for d in r.devices:
            seq = "-" if d.seq is None else str(d.seq)
            t.add_row(d.device_id, d.state, d.reason or "", seq, _when(d.updated_at))
        _out(t)
    _out(
        f"rollout [bold]{r.id}[/] of {r.release} to batch {r.batch} (tenant {r.tenant}, "
        f"{r.percent} %, max failures {r.max_failures}): [bold]{r.state}[/]"
        + (f" ({r.detail})" if r.detail else "")
    )
    _out(f"devices: {_counts(r)}; failures {r.failures}; created {_when(r.created_at)} UTC")


@rollout_app.command("create")
def rollout_create(
    release: Annotated[str, typer.Argument(help="A published release ID (qlink ota list).")],
    batch: Annotated[str, typer.Option("--batch", help="The batch whose devices get it.")],
    percent: Annotated[
        int,
        typer.Option(
            "--percent", help="Share of the batch's onboarded devices, 1-100 (rounded up)."
        ),
    ] = 100,
    max_failures: Annotated[
        int,
        typer.Option(
            "--max-failures",
            help="Failed devices (rolled back, refused) allowed; one more halts it (0: the "
            "first failure halts).",
        ),
    ] = 0,
    tenant: Tenant = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Offer a published release to a share of a batch.

    The first PERCENT % of the batch's onboarded devices in device ID order (rounded up) are
    sent an `ota` command; devices whose OTA key the server lacks are recorded refused
    (no_ota_key). While the rollout is active, devices of the batch that come online within
    that share are offered it too. More than --max-failures failures halt it: no new offers,
    offers not yet accepted expire.
    """
    service = _app(data_dir)
    try:
        with _progress_bar("offering", progress and not as_json) as step:
            out = service.rollouts.create(
                release,
                batch,
                percent,
                max_failures,
                tenant=tenant,
                actor=_actor(),
                progress=step,
            )
    finally:
        service.close()
    _show(out, as_json, table=False)


@rollout_app.command("status")
def rollout_status(
    rollout_id: RolloutId, as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR
) -> None:
    """A rollout's state, its devices per state and each device's progress (times UTC)."""
    service = _app(data_dir)
    try:
        out = service.rollouts.status(rollout_id)
    finally:
        service.close()
    _show(out, as_json)


def _change(rollout_id: int, change: str, data_dir: Path, as_json: bool) -> None:
    service = _app(data_dir)
    try:
        use_case: Any = getattr(service.rollouts, change)
        out = use_case(rollout_id, actor=_actor())
    finally:
        service.close()
    _show(out, as_json, table=False)


@rollout_app.command("pause")
def rollout_pause(
    rollout_id: RolloutId, as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR
) -> None:
    """Make no new offers; devices with an open offer go on."""
    _change(rollout_id, "pause", data_dir, as_json)


@rollout_app.command("resume")
def rollout_resume(
    rollout_id: RolloutId, as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR
) -> None:
    """Make offers again (a paused rollout)."""
    _change(rollout_id, "resume", data_dir, as_json)


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: RolloutId, as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR
) -> None:
    """End a rollout: no new offers, offers not yet accepted expire, downloads are refused
    (not_offered). Devices already installing it finish and report."""
    _change(rollout_id, "abort", data_dir, as_json)


@rollout_app.command("list")
def rollout_list(as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """Every rollout, newest first, with its devices per state."""
    service = _app(data_dir)
    try:
        rows = service.rollouts.list()
    finally:
        service.close()
    if as_json:
        _print_json([_plain(r) for r in rows])
        return
    from rich.table import Table

    t = Table("id", "release", "batch", "tenant", "%", "state", "devices", "created (UTC)")
    for r in rows:
        t.add_row(
            str(r.id),
            r.release,
            r.batch,
            r.tenant,
            str(r.percent),
            r.state,
            _counts(r),
            _when(r.created_at),
        )
    _out(t)
