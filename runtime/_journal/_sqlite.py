"""The SQLite journal: one file, write-ahead log, the default.

Statements run on the event loop's thread.  In WAL mode a commit with
``synchronous=NORMAL`` appends to the log without waiting for the disk
(tens of microseconds), which is what keeps the journal's cost per step
well under a millisecond; a killed process loses nothing that was
committed, a power cut may lose the last commits.  ``synchronous="full"``
makes every commit wait for the disk.  A thread per write would cost more
than the write itself.

Steps recorded at the same moment (the programs of a busy runtime) share
one commit (*group commit*): a step waits one turn of the event loop for
others, then they are written in one transaction, each in a savepoint of
its own so that one step's failure is its own.  A commit costs about as
much for one step as for fifty.

Other processes may read the file while a runtime writes it (``agentrt
runs``); two runtimes writing one file wait for each other's commits up to
``busy_timeout_s``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from .._errors import JournalError
from ._base import StepRecord
from ._codec import Blob
from ._sql import Dialect, SQLJournal

__all__ = ["SQLiteJournal"]


class SQLiteJournal(SQLJournal):
    """A journal in the SQLite file ``path`` (created with its directory if missing)."""

    dialect = Dialect(placeholder="?", blob="BLOB", real="REAL")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["normal", "full"] = "normal",
        busy_timeout_s: float = 30.0,
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        self.path = Path(path)
        self.location = str(self.path)
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        # Steps waiting for the next group commit: their statements and who waits for them.
        self._pending: list[tuple[list[tuple[str, Sequence[Any]]], asyncio.Future[None], str, StepRecord]] = []

    async def open(self) -> None:
        if self._db is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from exc
        self._db = db
        try:
            await self._create_schema()
        except sqlite3.DatabaseError as exc:
            self._db = None
            db.close()
            raise JournalError(f"{self.path} is not a usable agentrt journal: {exc}") from exc
        except BaseException:
            self._db = None
            db.close()
            raise

    async def aclose(self) -> None:
        if self._pending:
            self._commit_pending()
        db, self._db = self._db, None
        if db is not None:
            db.close()

    async def record_step(self, program_id: str, step: StepRecord, blobs: Sequence[Blob]) -> None:
        self._require()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((self._step_statements(program_id, step, blobs), waiter, program_id, step))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._commit_pending)
        await waiter

    def _commit_pending(self) -> None:
        """Write every pending step in one transaction, each in its own savepoint; wake their waiters."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        outcomes: list[BaseException | None] = []
        try:
            db = self._require()
            db.execute("BEGIN IMMEDIATE")
            try:
                for statements, _waiter, program_id, step in pending:
                    db.execute("SAVEPOINT step")
                    try:
                        for statement, params in statements:
                            db.execute(statement, tuple(params))
                    except sqlite3.Error as exc:
                        db.execute("ROLLBACK TO step")
                        failure: BaseException = (
                            self._recorded_twice(program_id, step)
                            if isinstance(exc, sqlite3.IntegrityError)
                            else JournalError(f"journal {self.path}: {exc}")
                        )
                        outcomes.append(failure)
                    else:
                        outcomes.append(None)
                    db.execute("RELEASE step")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, JournalError) as exc:
            error = exc if isinstance(exc, JournalError) else JournalError(f"journal {self.path}: {exc}")
            outcomes = [error] * len(pending)
        for (_statements, waiter, _program_id, _step), outcome in zip(pending, outcomes, strict=True):
            if waiter.done():
                continue
            if outcome is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(outcome)

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"the journal {self.path} is not open")
        return self._db

    async def _transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        db = self._require()
        counts: list[int] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement, params in statements:
                    counts.append(db.execute(statement, tuple(params)).rowcount)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        return counts

    async def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._require().execute(statement, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    async def size_bytes(self) -> int:
        """The bytes the journal's data occupies: its pages in use, committed ones in the write-ahead log included.

        (The files themselves are larger: the log grows until a checkpoint
        copies it into the database, and freed pages stay in the file.)
        Without an open connection, the sizes of the files.
        """
        if self._db is None:
            return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
        (pages,) = self._db.execute("PRAGMA page_count").fetchone()
        (free,) = self._db.execute("PRAGMA freelist_count").fetchone()
        return int(page_size) * (int(pages) - int(free))

    def __repr__(self) -> str:
        return f"<SQLiteJournal {self.path}>"
