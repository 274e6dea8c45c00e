"""The PostgreSQL journal, for runtimes on several machines sharing one database (psycopg 3).

One asynchronous connection per journal; statements of one transaction run
under a lock, so that the programs of a runtime, which share the
connection, never interleave inside each other's transactions.
``schema`` puts the tables in a schema of their own (created if missing).

Each commit waits for the server to flush its log to disk (PostgreSQL's
default), a few milliseconds on an ordinary disk.  ``synchronous_commit=False``
sets ``synchronous_commit = off`` for the journal's session: commits return
before the flush, as the SQLite journal's default does; a crash of *our*
process loses nothing committed, a crash of the database server may lose
its last fraction of a second of commits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import JournalError
from ._sql import Dialect, SQLJournal

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresJournal"]

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _redacted(dsn: str) -> str:
    """``dsn`` without its password, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", re.sub(r"password=\S+", "password=***", dsn))


class PostgresJournal(SQLJournal):
    """A journal in the PostgreSQL database at ``dsn`` (``postgresql://user:pass@host/db``)."""

    dialect = Dialect(placeholder="%s", blob="BYTEA", real="DOUBLE PRECISION")

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        synchronous_commit: bool = True,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema must be a plain SQL identifier, got {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self.location = _redacted(dsn) + (f" (schema {schema})" if schema else "")
        self._connect_timeout_s = connect_timeout_s
        self._synchronous_commit = synchronous_commit
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = anyio.Lock()

    async def open(self) -> None:
        if self._conn is not None:
            return
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(self._connect_timeout_s))
            )
        except psycopg.Error as exc:
            raise JournalError(f"cannot connect to the journal {self.location}: {str(exc).strip()}") from exc
        try:
            if not self._synchronous_commit:
                await conn.execute("SET synchronous_commit = off")
            if self.schema is not None:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(f'SET search_path TO "{self.schema}"')
            self._conn = conn
            await self._create_schema()
        except BaseException as exc:
            self._conn = None
            await conn.close()
            if isinstance(exc, psycopg.Error):
                raise JournalError(f"journal {self.location}: {str(exc).strip()}") from exc
            raise

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _require(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None:
            raise JournalError(f"the journal {self.location} is not open")
        return self._conn

    async def _transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        import psycopg

        conn = self._require()
        counts: list[int] = []
        async with self._lock:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    for statement, params in statements:
                        await cur.execute(statement, tuple(params))
                        counts.append(cur.rowcount)
            except psycopg.errors.UniqueViolation:
                raise
            except psycopg.Error as exc:
                raise JournalError(f"journal {self.location}: {str(exc).strip()}") from exc
        return counts

    async def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        conn = self._require()
        async with self._lock:
            try:
                async with conn.cursor() as cur:
                    await cur.execute(statement, tuple(params))
                    return list(await cur.fetchall())
            except psycopg.Error as exc:
                raise JournalError(f"journal {self.location}: {str(exc).strip()}") from exc

    def _is_unique_violation(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.errors.UniqueViolation)

    async def size_bytes(self) -> int:
        rows = await self._query(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND c.relname LIKE 'agentrt\\_%%' AND n.nspname = current_schema()"
        )
        return int(rows[0][0])

    def __repr__(self) -> str:
        return f"<PostgresJournal {self.location}>"
