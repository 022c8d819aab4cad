"""`qlink user`: create (password typed twice or piped), list, unlock, delete; every bad input
refused with a sentence that says what to do, and nothing stored."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from cliutil import run_qlink

from host.server.console import auth
from host.server.store import Actor, Store

GOOD = "a long enough password"
_CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Path:
    d = tmp_path / "data"
    code, _, err = run_qlink(monkeypatch, capsys, "tenant", "create", "acme", "--data-dir", str(d))
    assert code == 0, err
    return d


def _qlink(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    *args: str,
    stdin: str | None = None,
) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    result: tuple[int, str, str] = run_qlink(
        monkeypatch, capsys, *args, "--data-dir", str(data_dir)
    )
    return result


def _users(data_dir: Path) -> list[str]:
    store = Store(data_dir / "registry.sqlite")
    try:
        return [u.name for u in store.users.list()]
    finally:
        store.close()


def _create(
    mp: pytest.MonkeyPatch,
    cap: pytest.CaptureFixture[str],
    d: Path,
    *extra: str,
    stdin: str = GOOD + "\n",
) -> tuple[int, str, str]:
    return _qlink(mp, cap, d, "user", "create", *extra, "--password-stdin", stdin=stdin)


def test_create_from_stdin_stores_only_an_argon2id_hash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, out, err = _create(
        monkeypatch, capsys, data_dir, "alice", "--role", "operator", "--tenant", "acme"
    )
    assert code == 0, err
    assert "user alice created: operator in tenant acme" in err
    store = Store(data_dir / "registry.sqlite")
    try:
        user = store.users.require("alice")
        assert user.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
        assert auth.hasher().verify(user.password_hash, GOOD)
        rows = store.db.all("SELECT actor, action, detail FROM audit WHERE target = 'user:alice'")
        assert [r["action"] for r in rows] == ["user.create"]
        assert rows[0]["actor"].startswith("cli:")
        assert GOOD not in json.dumps([dict(r) for r in rows])
    finally:
        store.close()
    code, out, _ = _qlink(monkeypatch, capsys, data_dir, "user", "list", "--json")
    listed = json.loads(out)
    assert [(u["name"], u["tenant"], u["role"], u["locked_until"]) for u in listed] == [
        ("alice", "acme", "operator", None)
    ]
    assert "password" not in out and "argon2" not in out


def test_create_asks_twice_without_echo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    import getpass

    answers = iter([GOOD, GOOD])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    code, _, err = _qlink(
        monkeypatch,
        capsys,
        data_dir,
        "user",
        "create",
        "bob",
        "--role",
        "viewer",
        "--tenant",
        "acme",
    )
    assert code == 0, err
    assert len(prompts) == 2 and "12 characters" in prompts[0]
    assert _users(data_dir) == ["bob"]


def test_two_different_passwords_store_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    import getpass

    answers = iter([GOOD, GOOD + "x"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    code, _, err = _qlink(
        monkeypatch,
        capsys,
        data_dir,
        "user",
        "create",
        "bob",
        "--role",
        "viewer",
        "--tenant",
        "acme",
    )
    assert code == 1 and "the two passwords differ" in err
    assert _users(data_dir) == []


def test_without_a_terminal_it_asks_for_password_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, _, err = _qlink(
        monkeypatch,
        capsys,
        data_dir,
        "user",
        "create",
        "bob",
        "--role",
        "viewer",
        "--tenant",
        "acme",
        stdin="",
    )
    assert code == 1 and "--password-stdin" in err
    assert _users(data_dir) == []


@pytest.mark.parametrize(
    "args,stdin,sentence",
    [
        (
            ["carol", "--role", "viewer", "--tenant", "acme"],
            "elevenchars\n",
            "at least 12 characters",
        ),
        (["carol", "--role", "viewer", "--tenant", "acme"], "\n", "at least 12 characters"),
        (
            ["carol", "--role", "viewer", "--tenant", "acme"],
            " " * 12 + "\n",
            "a password must not be only spaces",
        ),
        (
            ["carol", "--role", "viewer", "--tenant", "acme"],
            # stdin bytes that are not UTF-8, as Python hands them over
            b"\xff\xfe correct horse battery\n".decode(errors="surrogateescape"),
            "a password must be UTF-8 text",
        ),
        (
            ["carol", "--role", "root", "--tenant", "acme"],
            GOOD + "\n",
            "--role must be one of viewer, operator, admin",
        ),
        (["carol", "--role", "viewer"], GOOD + "\n", "give the user's --tenant"),
        (["carol", "--tenant", "acme"], GOOD + "\n", "give the user's --role: viewer"),
        (
            ["carol", "--role", "viewer", "--tenant", "nope"],
            GOOD + "\n",
            "tenant 'nope' does not exist; create it first",
        ),
        (
            ["carol.", "--role", "viewer", "--tenant", "acme"],
            GOOD + "\n",
            "user name must be 1 to 64 characters",
        ),
        (
            ["car ol", "--role", "viewer", "--tenant", "acme"],
            GOOD + "\n",
            "user name must be 1 to 64 characters",
        ),
        (
            ["c" * 65, "--role", "viewer", "--tenant", "acme"],
            GOOD + "\n",
            "user name must be 1 to 64 characters",
        ),
    ],
)
def test_a_bad_create_names_the_rule_and_stores_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    args: list[str],
    stdin: str,
    sentence: str,
) -> None:
    code, _, err = _create(monkeypatch, capsys, data_dir, *args, stdin=stdin)
    assert code != 0
    assert sentence in " ".join(err.split()), err
    assert _users(data_dir) == []


def test_a_duplicate_name_is_refused_and_the_first_user_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    assert (
        _create(monkeypatch, capsys, data_dir, "dave", "--role", "viewer", "--tenant", "acme")[0]
        == 0
    )
    before = Store(data_dir / "registry.sqlite")
    first = before.users.require("dave")
    before.close()
    code, _, err = _create(
        monkeypatch, capsys, data_dir, "dave", "--role", "admin", "--tenant", "default"
    )
    assert code == 1 and "a user named dave exists; choose another name" in err
    after = Store(data_dir / "registry.sqlite")
    try:
        assert after.users.require("dave") == first
    finally:
        after.close()


def test_unlock_clears_a_lockout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    assert (
        _create(monkeypatch, capsys, data_dir, "erin", "--role", "viewer", "--tenant", "acme")[0]
        == 0
    )
    store = Store(data_dir / "registry.sqlite")
    try:
        for _ in range(auth.MAX_FAILURES):
            store.users.login_failed(
                "erin", Actor("user:erin", "t"), max_failures=auth.MAX_FAILURES, lockout_s=900
            )
    finally:
        store.close()
    code, out, _ = _qlink(monkeypatch, capsys, data_dir, "user", "list")
    assert "locked until" in out
    code, _, err = _qlink(monkeypatch, capsys, data_dir, "user", "unlock", "erin")
    assert code == 0 and "user erin unlocked" in err
    code, out, _ = _qlink(monkeypatch, capsys, data_dir, "user", "list", "--json")
    assert json.loads(out)[0]["locked_until"] is None
    assert json.loads(out)[0]["failed_logins"] == 0


def test_delete_ends_every_session(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    assert (
        _create(monkeypatch, capsys, data_dir, "frank", "--role", "admin", "--tenant", "acme")[0]
        == 0
    )
    store = Store(data_dir / "registry.sqlite")
    try:
        value, _ = store.users.create_session("frank")
        store.users.create_session("frank")
        code, out, _ = _qlink(monkeypatch, capsys, data_dir, "user", "delete", "frank", "--json")
        assert code == 0 and json.loads(out) == {"deleted": "frank", "sessions_ended": 2}
        assert store.users.session(value) is None
        assert store.db.all("SELECT 1 FROM console_sessions") == []
    finally:
        store.close()
    assert _users(data_dir) == []


@pytest.mark.parametrize("command", ["unlock", "delete"])
def test_an_unknown_user_is_named(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    command: str,
) -> None:
    code, _, err = _qlink(monkeypatch, capsys, data_dir, "user", command, "ghost")
    assert code == 1 and "no user named 'ghost'; see: qlink user list" in err


def test_help_says_what_each_command_does(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_qlink(monkeypatch, capsys, "user", "--help")
    assert code == 0
    for word in ("create", "list", "unlock", "delete"):
        assert word in out
    code, out, _ = run_qlink(monkeypatch, capsys, "user", "create", "--help")
    flat = " ".join(out.split())
    assert "--password-stdin" in flat and "12 characters" in flat and "--role" in flat


def test_the_lockout_time_is_a_server_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from host.server.settings import Settings

    code, out, _ = run_qlink(monkeypatch, capsys, "server", "--help")
    assert code == 0 and "--console-lockout-s" in out
    assert Settings().console_lockout_s == 900
    with pytest.raises(ValueError, match="console lockout must be 0 or more seconds"):
        Settings(console_lockout_s=-1)


def test_the_lockout_lasts_the_given_time(tmp_path: Path) -> None:
    store = Store(tmp_path / "registry.sqlite")
    try:
        store.users.create("gina", "default", "viewer", auth.hash_password(GOOD, _CHEAP))
        before = time.time()
        for _ in range(auth.MAX_FAILURES):
            user = auth.login(store.users, "gina", "not her password", "t", lockout_s=60, h=_CHEAP)
            assert user.error == auth.WRONG
        locked = store.users.require("gina")
        assert locked.locked_until is not None
        assert before + 60 <= locked.locked_until <= time.time() + 60
        result = auth.login(store.users, "gina", GOOD, "t", lockout_s=60, h=_CHEAP)
        assert result.cookie is None and result.error and "locked until" in result.error
        store.users.unlock("gina")
        assert auth.login(store.users, "gina", GOOD, "t", lockout_s=60, h=_CHEAP).cookie
    finally:
        store.close()
