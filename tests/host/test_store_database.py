"""The store's database layer (host/server/store/database.py): transactions are whole, a
connection always goes back to the pool or is closed, and a connection the database dropped is
replaced, on SQLite and on a private PostgreSQL."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.serverproc import PrivatePostgres
from host.server.store import DatabaseUnavailable, DuplicateKey, Store, StoreError
from host.server.store.database import Database

_databases = itertools.count()


@pytest.fixture
def db(database: str | Path) -> Iterator[Database]:
    d = Database(database)
    yield d
    assert d.checked_out == 0
    d.close()


def batches(db: Database) -> list[str]:
    return [r["name"] for r in db.all("SELECT name FROM batches ORDER BY name")]


def insert(tx: object, name: str) -> None:
    tx.execute(  # type: ignore[attr-defined]
        "INSERT INTO batches (name, tenant, active, policy, created_at)"
        " VALUES (:name, 't', TRUE, 'mosquitto', 0)",
        {"name": name},
    )


def test_a_block_commits_when_it_ends_and_rolls_back_when_it_raises(db: Database) -> None:
    with db.transaction() as tx:
        insert(tx, "kept")
    with pytest.raises(RuntimeError), db.transaction() as tx:
        insert(tx, "lost")
        raise RuntimeError("the use case failed")
    with db.transaction() as tx:
        insert(tx, "undone")
        db.rollback()
    assert batches(db) == ["kept"]


def test_a_unique_key_is_a_duplicate_and_the_connection_still_serves(db: Database) -> None:
    with db.transaction() as tx:
        insert(tx, "a")
    for _ in range(12):  # more than the pool keeps
        with pytest.raises(DuplicateKey), db.transaction() as tx:
            insert(tx, "b")
            tx.execute(
                "INSERT INTO batches (name, tenant, active, policy, created_at)"
                " VALUES ('a', 't', TRUE, 'mosquitto', 0)"
            )
        assert db.checked_out == 0
    assert batches(db) == ["a"]


def test_a_bad_statement_is_a_store_error_naming_it(db: Database) -> None:
    with pytest.raises(StoreError, match="refused a statement"):
        db.all("SELECT nothing FROM nowhere")
    assert batches(db) == []


def test_threads_share_the_pool_without_losing_a_write(db: Database) -> None:
    def work(n: int) -> None:
        for i in range(20):
            with db.transaction() as tx:
                insert(tx, f"t{n}-{i:02d}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(batches(db)) == 80


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    s = Store(tmp_path / "r.sqlite")
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.batches.list()


def test_a_connection_postgres_dropped_is_replaced(postgres: PrivatePostgres) -> None:
    url = postgres.create_database(f"drop{next(_databases)}")
    db = Database(url)

    def drop_every_connection() -> None:
        admin = Database(postgres.url(), migrate=False)
        with admin.transaction() as tx:
            tx.all(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = :name AND pid <> pg_backend_pid()",
                {"name": url.rsplit("/", 1)[1]},
            )
        admin.close()

    try:
        assert batches(db) == []  # a pooled connection now exists
        drop_every_connection()
        assert batches(db) == []  # the dropped connection is replaced, the call served
        drop_every_connection()
        assert db.one("SELECT COUNT(*) AS n FROM batches") == {"n": 0}  # the same for one()
        assert db.checked_out == 0
    finally:
        db.close()


def test_an_unreachable_database_is_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot open the database"):
        Database("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="unsupported database URL"):
        Database("mysql://x/y")
