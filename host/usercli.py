"""`qlink user`: the web console's users (docs/console.md "Users and sessions").

Like every `qlink` command, each works on the data directory through the store and imports its
own layers when it runs (host/cli.py says why): `qlink user --help` costs nothing.
"""

# No `from __future__ import annotations`: typer reads the signatures (host/cli.py says why).
import sys
import time
from typing import Annotated

import typer

# `qlink` loads this module when the group is invoked (host.cli._LAZY_GROUPS).
user_app = typer.Typer(
    help="Web console users: create, list, unlock, delete.",
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
    _app_in,
    _check_names,
    _err,
    _out,
    _print_json,
    _when,
)

_ROLES = ("viewer", "operator", "admin")


def _read_password(from_stdin: bool) -> str:
    """The new password: one line of stdin, or typed twice without echo."""
    from host.server.console.auth import MIN_PASSWORD, PasswordRefused, check_password_rule

    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    else:
        import getpass

        if not sys.stdin.isatty():
            raise CliError("no terminal to type the password on; pipe it in with --password-stdin")
        password = getpass.getpass(f"Password (at least {MIN_PASSWORD} characters): ")
        again = getpass.getpass("The same password again: ")
        if password != again:
            raise CliError("the two passwords differ; nothing was stored, run the command again")
    try:
        check_password_rule(password)
    except PasswordRefused as e:
        raise CliError(f"{e}; nothing was stored") from None
    return password


@user_app.command("create")
def user_create(
    name: Annotated[str, typer.Argument(help="The user name to sign in with (unique).")],
    role: Annotated[
        str, typer.Option(help="viewer (reads), operator (also changes), admin (also tokens).")
    ] = "",
    tenant: Annotated[str, typer.Option(help="The one tenant the user sees and acts in.")] = "",
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the password from the first line of stdin (scripts)."
        ),
    ] = False,
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Create a console user; the password is read twice without echo (or from stdin).

    NAME and TENANT are 1 to 64 characters: letters, digits, '.', '_' and '-', starting and
    ending with a letter or digit. The password needs at least 12 characters; only its argon2id
    hash is stored. Example:

        qlink user create alice --role operator --tenant acme
    """
    if not role:
        raise CliError(f"give the user's --role: {', '.join(_ROLES)}")
    if role not in _ROLES:
        raise CliError(f"--role must be one of {', '.join(_ROLES)}, not {role!r}")
    if not tenant:
        raise CliError("give the user's --tenant (see: qlink tenant list)")
    _check_names(user_name=name, tenant=tenant)
    application = _app_in(data_dir, tenant)
    try:
        if application.user(name) is not None:  # before the password is typed
            raise CliError(f"a user named {name} exists; choose another name")
        if not application.has_tenant(tenant):
            from host.server.store.tenants import unknown

            raise unknown(tenant)
        password = _read_password(password_stdin)
        from host.server.console.auth import hash_password

        user = application.create_user(name, tenant, role, hash_password(password), _actor())
    finally:
        application.close()
    if as_json:
        _print_json(user.public())
        return
    _err(f"user {user.name} created: {user.role} in tenant {user.tenant}")


@user_app.command("list")
def user_list(as_json: Json = False, data_dir: DataDir = _DEFAULT_DIR) -> None:
    """List console users, their tenant and role, and whether they are locked out."""
    application = _app(data_dir)
    try:
        rows = application.users()
    finally:
        application.close()
    now = time.time()
    if as_json:
        _print_json([u.public(now) for u in rows])
        return
    from rich.table import Table

    table = Table("user", "tenant", "role", "created (UTC)", "state")
    for u in rows:
        if u.disabled_at is not None:
            state = "disabled"
        elif u.locked(now):
            state = f"locked until {_when(u.locked_until)} UTC"
        else:
            state = "active"
        table.add_row(u.name, u.tenant, u.role, _when(u.created_at), state)
    _out(table)


@user_app.command("unlock")
def user_unlock(
    name: Annotated[str, typer.Argument(help="The user locked out by failed logins.")],
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Clear a user's lockout (5 failed logins in a row) and its failed-login count."""
    application = _app(data_dir)
    try:
        user = application.unlock_user(name, _actor())
    finally:
        application.close()
    if as_json:
        _print_json(user.public())
        return
    _err(f"user {name} unlocked")


@user_app.command("delete")
def user_delete(
    name: Annotated[str, typer.Argument(help="The user to delete.")],
    as_json: Json = False,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Delete a console user and end every session of it at once."""
    application = _app(data_dir)
    try:
        n = application.delete_user(name, _actor())
    finally:
        application.close()
    if as_json:
        _print_json({"deleted": name, "sessions_ended": n})
        return
    _err(f"user {name} deleted; {n} session(s) ended")
