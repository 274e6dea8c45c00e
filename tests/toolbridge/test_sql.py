"""SQL tools on Chinook in SQLite and PostgreSQL: rows come back, writes never happen.

PostgreSQL tests need a server: ``$AGENTRT_TEST_PG_DSN`` or the role and
database ``.ci/run`` creates (agentrt/agentrt@127.0.0.1:5432/chinook).  They
skip, saying why, only when no server answers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from toolbridge import (
    Database,
    PostgresDatabase,
    ReadOnlyViolation,
    SQLError,
    SQLiteDatabase,
    chinook_sqlite,
    load_chinook_postgres,
    run_tool,
    sql_tools,
)

PG_DSN = os.environ.get("AGENTRT_TEST_PG_DSN", "postgresql://agentrt:agentrt@127.0.0.1:5432/chinook")

WRITES = [
    "INSERT INTO genre (id, name) VALUES (999, 'Polka')",
    "DROP TABLE track",
    "UPDATE track SET name = 'x'",
    "DELETE FROM invoiceline",
    "CREATE TABLE evil (x INTEGER)",
]


@pytest.fixture(scope="module")
def chinook_path() -> Path:
    return chinook_sqlite()


@pytest.fixture(scope="module")
def sqlite_db(chinook_path: Path) -> SQLiteDatabase:
    return SQLiteDatabase(chinook_path, max_rows=50, timeout_s=2)


@pytest.fixture(scope="module")
def pg_db() -> PostgresDatabase:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server reachable at {PG_DSN} ({str(exc).strip()[:200]}); .ci/run starts one")
    load_chinook_postgres(PG_DSN)
    return PostgresDatabase(PG_DSN, max_rows=50, timeout_s=2)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Database:
    fixture = "sqlite_db" if request.param == "sqlite" else "pg_db"
    database: Database = request.getfixturevalue(fixture)
    return database


def test_chinook_sqlite_is_complete(chinook_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(chinook_path) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("track", "invoiceline")}
    conn.close()
    assert counts == {"track": 3503, "invoiceline": 2240}
    assert chinook_sqlite() == chinook_path  # cached: a second call builds nothing


async def test_queries_return_rows(db: Database) -> None:
    result = await db.query(
        "SELECT ar.name, count(*) AS albums FROM album al JOIN artist ar ON al.artist_id = ar.id "
        "GROUP BY ar.name ORDER BY albums DESC, ar.name LIMIT 3"
    )
    assert result.columns == ["name", "albums"]
    assert result.rows[0] == ["Iron Maiden", 21]
    capped = await db.query("SELECT id FROM track")
    assert len(capped.rows) == 50 and capped.truncated
    total = await db.query("SELECT sum(unit_price * quantity) FROM invoiceline")
    assert total.rows[0][0] == pytest.approx(2328.6)


@pytest.mark.parametrize("sql", WRITES)
async def test_writes_are_refused(db: Database, sql: str) -> None:
    with pytest.raises(ReadOnlyViolation, match="read-only"):
        await db.query(sql)
    assert (await db.query("SELECT count(*) FROM track")).rows == [[3503]]
    assert (await db.query("SELECT count(*) FROM genre")).rows == [[25]]


async def test_statement_smuggling_is_refused(db: Database) -> None:
    with pytest.raises(SQLError):
        await db.query("SELECT 1; COMMIT; DELETE FROM genre")
    with pytest.raises(SQLError):
        await db.query("SELECT 1; PRAGMA query_only = OFF; SET default_transaction_read_only = off")
    assert (await db.query("SELECT count(*) FROM genre")).rows == [[25]]


async def test_introspection(db: Database) -> None:
    tables = await db.tables()
    assert "track" in tables and "playlisttrack" in tables and len(tables) == 11
    columns = {c["name"]: c for c in await db.columns("track")}
    assert columns["id"]["primary_key"]
    assert columns["album_id"]["references"] == "album.id"
    with pytest.raises(SQLError, match="no table 'tracks'"):
        await db.columns("tracks")


async def test_slow_query_is_stopped(db: Database) -> None:
    # A triple cross join of track: ~4e10 rows, far beyond the 2 s timeout.
    with pytest.raises(SQLError, match="longer than 2"):
        await db.query("SELECT count(*) FROM track a, track b, track c")


async def test_sql_tools_for_a_model(db: Database) -> None:
    query, list_tables, describe = sql_tools(db)
    assert query.name == "sql_query" and db.dialect in query.description
    ok = await run_tool(query, {"sql": "SELECT name FROM genre ORDER BY id LIMIT 2"})
    assert ok.ok and ok.value["rows"] == [["Rock"], ["Jazz"]] and ok.value["truncated"] is False
    refused = await run_tool(query, '{"sql": "DROP TABLE track"}')
    assert refused.error is not None and refused.error.kind == "exception"
    assert "read-only" in refused.error.message
    broken = await run_tool(query, {"sql": "SELECT nme FROM genre"})
    assert broken.error is not None and "nme" in broken.error.message
    assert (await run_tool(list_tables, {})).value == await db.tables()
    described = await run_tool(describe, {"table": "genre"})
    assert [c["name"] for c in described.value] == ["id", "name"]
