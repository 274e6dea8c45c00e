"""SQL tools over SQLite (the embedded default) and PostgreSQL, read-only whatever the SQL says.

Model-written SQL must never write, so the guarantee comes from the database,
not from inspecting the text:

- SQLite: opened with a ``file:...?mode=ro`` URI (the file handle cannot
  write) and ``PRAGMA query_only = ON``; one statement per call (sqlite3
  refuses more); a progress handler enforces the statement timeout.
- PostgreSQL (psycopg 3): the session starts with
  ``default_transaction_read_only = on`` and a ``statement_timeout``; the
  query runs in a read-only transaction, as a prepared statement (the
  extended protocol refuses ``SELECT 1; COMMIT; ...`` smuggling), and the
  transaction is rolled back.
- Both fetch at most ``max_rows + 1`` rows so a huge result never reaches
  the model (``truncated`` says so).
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from pydantic import Field

from ._errors import ReadOnlyViolation, SQLError
from ._tool import Tool

__all__ = ["Database", "PostgresDatabase", "QueryResult", "SQLiteDatabase", "sql_tools"]


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Rows of one query: ``columns``, at most the row cap of ``rows``, ``truncated`` if more existed."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for a model."""
        return {"columns": self.columns, "rows": self.rows, "row_count": len(self.rows), "truncated": self.truncated}


def _plain(value: Any) -> Any:
    # Decimal, datetime, bytes... -> something JSON can carry.
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "is_finite") and hasattr(value, "as_tuple"):  # Decimal
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    return str(value)


class Database(ABC):
    """A database that model-written SQL can read and never write.

    ``max_rows`` caps rows per query; ``timeout_s`` bounds each statement in seconds.
    """

    #: ``"sqlite"`` or ``"postgresql"``: shown to models so they write the right dialect.
    dialect: str = ""

    def __init__(self, *, max_rows: int = 200, timeout_s: float = 5.0) -> None:
        self.max_rows = max_rows
        self.timeout_s = timeout_s

    @abstractmethod
    async def query(self, sql: str, *, max_rows: int | None = None) -> QueryResult:
        """Run one read-only statement; raises :class:`SQLError` (:class:`ReadOnlyViolation` for writes)."""

    @abstractmethod
    async def tables(self) -> list[str]:
        """Names of the user tables, sorted."""

    @abstractmethod
    async def columns(self, table: str) -> list[dict[str, Any]]:
        """``[{"name", "type", "nullable", "primary_key", "references"}]`` of ``table``; SQLError if unknown."""

    async def schema(self) -> dict[str, list[dict[str, Any]]]:
        """Every table's columns."""
        return {table: await self.columns(table) for table in await self.tables()}


class SQLiteDatabase(Database):
    """A SQLite file, opened read-only for every query (a connection per call, in a worker thread)."""

    dialect = "sqlite"

    def __init__(self, path: str | Path, *, max_rows: int = 200, timeout_s: float = 5.0) -> None:
        super().__init__(max_rows=max_rows, timeout_s=timeout_s)
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no SQLite database at {self.path}")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self.timeout_s)
        conn.execute("PRAGMA query_only = ON")
        return conn

    def _run(self, sql: str, params: tuple[Any, ...], max_rows: int) -> QueryResult:
        conn = self._connect()
        deadline = time.monotonic() + self.timeout_s
        # Returning non-zero aborts the statement ("interrupted").
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchmany(max_rows + 1)
            columns = [d[0] for d in cursor.description or ()]
        except sqlite3.Error as exc:
            text = str(exc)
            if "readonly" in text or "read-only" in text or "query_only" in text:
                raise ReadOnlyViolation(
                    f"the database is read-only; only SELECT queries are allowed ({text})"
                ) from None
            if text == "interrupted":
                raise SQLError(f"the query ran longer than {self.timeout_s} s and was stopped") from None
            raise SQLError(f"{type(exc).__name__}: {text}") from None
        finally:
            conn.close()
        return QueryResult(columns, [[_plain(v) for v in row] for row in rows[:max_rows]], len(rows) > max_rows)

    async def query(self, sql: str, *, max_rows: int | None = None) -> QueryResult:
        cap = self.max_rows if max_rows is None else max_rows
        return await anyio.to_thread.run_sync(self._run, sql, (), cap)

    async def tables(self) -> list[str]:
        result = await anyio.to_thread.run_sync(
            self._run,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            (),
            10_000,
        )
        return [row[0] for row in result.rows]

    async def columns(self, table: str) -> list[dict[str, Any]]:
        info = await anyio.to_thread.run_sync(self._run, "SELECT * FROM pragma_table_info(?)", (table,), 10_000)
        if not info.rows:
            raise SQLError(f"no table {table!r}; tables: {', '.join(await self.tables())}")
        fks = await anyio.to_thread.run_sync(
            self._run, 'SELECT "from", "table", "to" FROM pragma_foreign_key_list(?)', (table,), 10_000
        )
        references = {row[0]: f"{row[1]}.{row[2]}" for row in fks.rows}
        # pragma_table_info: cid, name, type, notnull, dflt_value, pk
        return [
            {
                "name": row[1],
                "type": row[2],
                "nullable": not row[3] and not row[5],
                "primary_key": bool(row[5]),
                "references": references.get(row[1]),
            }
            for row in info.rows
        ]


class PostgresDatabase(Database):
    """A PostgreSQL database reached with psycopg 3 (a connection per call).

    ``conninfo`` is a libpq connection string or URL.  The role should be
    read-only too; the session settings make writes fail even when it is not.
    """

    dialect = "postgresql"

    def __init__(self, conninfo: str, *, max_rows: int = 200, timeout_s: float = 5.0) -> None:
        super().__init__(max_rows=max_rows, timeout_s=timeout_s)
        self.conninfo = conninfo

    async def _run(self, sql: str, params: tuple[Any, ...] | None, max_rows: int) -> QueryResult:
        import psycopg

        timeout_ms = max(1, round(self.timeout_s * 1000))
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo,
                options=f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}",
                connect_timeout=max(1, round(self.timeout_s)),
            )
        except psycopg.Error as exc:
            raise SQLError(f"cannot connect to PostgreSQL: {exc}") from None
        try:
            await conn.set_read_only(True)
            async with conn.cursor() as cursor:
                await cursor.execute(sql, params, prepare=True)
                rows = await cursor.fetchmany(max_rows + 1) if cursor.description else []
                columns = [d.name for d in cursor.description or ()]
            await conn.rollback()
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise ReadOnlyViolation(f"the database is read-only; only SELECT queries are allowed ({exc})") from None
        except psycopg.errors.QueryCanceled:
            raise SQLError(f"the query ran longer than {self.timeout_s} s and was stopped") from None
        except psycopg.Error as exc:
            raise SQLError(f"{type(exc).__name__}: {str(exc).strip()}") from None
        finally:
            await conn.close()
        return QueryResult(columns, [[_plain(v) for v in row] for row in rows[:max_rows]], len(rows) > max_rows)

    async def query(self, sql: str, *, max_rows: int | None = None) -> QueryResult:
        return await self._run(sql, None, self.max_rows if max_rows is None else max_rows)

    async def tables(self) -> list[str]:
        result = await self._run(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name",
            None,
            10_000,
        )
        return [row[0] for row in result.rows]

    async def columns(self, table: str) -> list[dict[str, Any]]:
        info = await self._run(
            "SELECT c.column_name, c.data_type, c.is_nullable = 'YES', "
            "  EXISTS (SELECT 1 FROM information_schema.table_constraints tc "
            "    JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name) "
            "    WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_name = c.table_name "
            "      AND k.column_name = c.column_name), "
            "  (SELECT ccu.table_name || '.' || ccu.column_name "
            "     FROM information_schema.table_constraints tc "
            "     JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name) "
            "     JOIN information_schema.constraint_column_usage ccu USING (constraint_schema, constraint_name) "
            "    WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_name = c.table_name "
            "      AND k.column_name = c.column_name LIMIT 1) "
            "FROM information_schema.columns c "
            "WHERE c.table_schema = 'public' AND c.table_name = %s ORDER BY c.ordinal_position",
            (table,),
            10_000,
        )
        if not info.rows:
            raise SQLError(f"no table {table!r}; tables: {', '.join(await self.tables())}")
        return [
            {"name": r[0], "type": r[1], "nullable": r[2], "primary_key": r[3], "references": r[4]} for r in info.rows
        ]


def sql_tools(db: Database, *, prefix: str = "") -> list[Tool]:
    """``sql_query``, ``list_tables`` and ``describe_table`` tools over ``db`` (names get ``prefix``).

    They run inline (I/O only; the database enforces timeout and read-only).
    SQL errors come back to the model as errors of kind ``exception`` with
    the database's message, so it can repair its query.
    """

    async def sql_query(
        sql: Annotated[str, Field(description="one read-only SELECT statement", max_length=4000)],
    ) -> dict[str, Any]:
        result = await db.query(sql)
        return result.as_dict()

    async def list_tables() -> list[str]:
        return await db.tables()

    async def describe_table(table: Annotated[str, Field(max_length=128)]) -> list[dict[str, Any]]:
        return await db.columns(table)

    return [
        Tool(
            sql_query,
            name=f"{prefix}sql_query",
            description=(
                f"Run one read-only SQL query on the {db.dialect} database; returns columns and "
                f"at most {db.max_rows} rows."
            ),
        ),
        Tool(list_tables, name=f"{prefix}list_tables", description="List the tables of the database."),
        Tool(
            describe_table,
            name=f"{prefix}describe_table",
            description="Columns of one table: name, type, nullable, primary key, foreign-key reference.",
        ),
    ]
