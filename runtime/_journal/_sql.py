"""The journal's tables and queries, shared by the SQLite and PostgreSQL backends.

Statements are written once with ``?`` placeholders and ``{blob}``/``{real}``
column types; a backend supplies its dialect (:class:`Dialect`) and two
primitives, :meth:`SQLJournal._transaction` (statements in one transaction)
and :meth:`SQLJournal._query` (rows of one query).

Tables (prefixed ``agentrt_``): ``programs`` (one row per program),
``steps`` (one per journaled step, keyed by program and step key),
``blobs`` (content-addressed prompt parts, stored once for all programs)
and ``blob_refs`` (which program refers to which blob, for pruning), and
``meta`` (the schema version).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import JournalError
from ._base import Journal, JournalState, ProgramRecord, PruneReport, StepRecord
from ._codec import Blob

__all__ = ["SCHEMA_VERSION", "Dialect", "SQLJournal"]

SCHEMA_VERSION = 1

#: Rows per multi-row INSERT (SQLite allows 32,766 parameters per statement).
_ROWS_PER_INSERT = 200


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one database spells placeholders and column types."""

    placeholder: str
    blob: str
    real: str

    def sql(self, statement: str) -> str:
        return statement.replace("?", self.placeholder).format(blob=self.blob, real=self.real)


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS agentrt_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS agentrt_programs (
        id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        workflow_ref TEXT,
        inputs {blob} NOT NULL,
        deadline_s {real},
        priority INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL,
        finished_at {real},
        error TEXT,
        result {blob},
        owner TEXT,
        runs INTEGER NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS agentrt_programs_by_update ON agentrt_programs (updated_at)""",
    """CREATE TABLE IF NOT EXISTS agentrt_steps (
        program_id TEXT NOT NULL,
        key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        input_ref TEXT,
        output {blob} NOT NULL,
        run INTEGER NOT NULL,
        recorded_at {real} NOT NULL,
        idempotency_key TEXT,
        PRIMARY KEY (program_id, key)
    )""",
    """CREATE TABLE IF NOT EXISTS agentrt_blobs (hash TEXT PRIMARY KEY, kind TEXT NOT NULL, data {blob} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS agentrt_blob_refs (
        program_id TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (program_id, hash)
    )""",
)

_PROGRAM_COLUMNS = (
    "id, workflow, workflow_ref, inputs, deadline_s, priority, state, created_at, updated_at, "
    "finished_at, error, result, owner, runs"
)
_STEP_COLUMNS = "key, kind, name, fingerprint, output, run, recorded_at, input_ref, idempotency_key"


class SQLJournal(Journal):
    """A journal in a SQL database; subclasses connect and run statements."""

    dialect: Dialect

    # -- primitives a backend provides -------------------------------------------

    @abstractmethod
    async def _transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run ``statements`` (already in the dialect) in one transaction; the rows each changed."""

    @abstractmethod
    async def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query (already in the dialect)."""

    @abstractmethod
    def _is_unique_violation(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database refusing a duplicate primary key."""

    def _q(self, statement: str) -> str:
        return self.dialect.sql(statement)

    async def _create_schema(self) -> None:
        await self._transaction([(self._q(s), ()) for s in _SCHEMA])
        rows = await self._query(self._q("SELECT value FROM agentrt_meta WHERE key = 'schema'"))
        if not rows:
            await self._transaction(
                [(self._q("INSERT INTO agentrt_meta (key, value) VALUES ('schema', ?)"), (str(SCHEMA_VERSION),))]
            )
        elif int(rows[0][0]) != SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.location} has schema version {rows[0][0]}; this agentrt reads version {SCHEMA_VERSION}"
            )

    # -- programs ------------------------------------------------------------------

    async def create_program(self, record: ProgramRecord) -> None:
        from .._errors import ProgramIdInUseError

        values = (
            record.id,
            record.workflow,
            record.workflow_ref,
            record.inputs,
            record.deadline_s,
            record.priority,
            record.state.value,
            record.created_at,
            record.updated_at,
            record.finished_at,
            record.error,
            record.result,
            record.owner,
            record.runs,
        )
        marks = ", ".join("?" * len(values))
        try:
            await self._transaction(
                [(self._q(f"INSERT INTO agentrt_programs ({_PROGRAM_COLUMNS}) VALUES ({marks})"), values)]
            )
        except Exception as exc:
            if self._is_unique_violation(exc):
                raise ProgramIdInUseError(
                    f"program id {record.id!r} is already in the journal {self.location}; "
                    "resume it (rt.resume / agentrt resume) or start the program under another id"
                ) from None
            raise

    async def start_run(self, program_id: str, owner: str, at: float) -> int:
        (changed,) = await self._transaction(
            [
                (
                    self._q(
                        "UPDATE agentrt_programs SET state = ?, owner = ?, updated_at = ?, finished_at = NULL, "
                        "error = NULL, runs = runs + 1 WHERE id = ?"
                    ),
                    (JournalState.RUNNING.value, owner, at, program_id),
                )
            ]
        )
        rows = await self._query(self._q("SELECT runs FROM agentrt_programs WHERE id = ?"), (program_id,))
        if not changed or not rows:
            from .._errors import ProgramNotFoundError

            raise ProgramNotFoundError(f"no program {program_id!r} in the journal {self.location}")
        return int(rows[0][0])

    async def finish_program(
        self, program_id: str, state: JournalState, at: float, *, error: str | None, result: bytes | None
    ) -> None:
        await self._transaction(
            [
                (
                    self._q(
                        "UPDATE agentrt_programs SET state = ?, updated_at = ?, finished_at = ?, error = ?, result = ? "
                        "WHERE id = ?"
                    ),
                    (state.value, at, at if state.finished else None, error, result, program_id),
                )
            ]
        )

    async def program(self, program_id: str) -> ProgramRecord | None:
        rows = await self._query(
            self._q(
                f"SELECT {_PROGRAM_COLUMNS}, (SELECT COUNT(*) FROM agentrt_steps s WHERE s.program_id = p.id) "
                "FROM agentrt_programs p WHERE id = ?"
            ),
            (program_id,),
        )
        return _program(rows[0]) if rows else None

    async def programs(
        self, *, states: Sequence[JournalState] | None = None, limit: int | None = None
    ) -> list[ProgramRecord]:
        where, params = "", []
        if states:
            where = f"WHERE state IN ({', '.join('?' * len(states))})"
            params = [s.value for s in states]
        columns = _PROGRAM_COLUMNS.replace("inputs", "NULL").replace("result", "NULL")
        statement = (
            f"SELECT {columns}, (SELECT COUNT(*) FROM agentrt_steps s WHERE s.program_id = p.id) "
            f"FROM agentrt_programs p {where} ORDER BY updated_at DESC"
        )
        if limit is not None:
            statement += f" LIMIT {int(limit)}"
        return [_program(row) for row in await self._query(self._q(statement), params)]

    # -- steps and blobs -------------------------------------------------------------

    async def record_step(self, program_id: str, step: StepRecord, blobs: Sequence[Blob]) -> None:
        try:
            await self._transaction(self._step_statements(program_id, step, blobs))
        except Exception as exc:
            if self._is_unique_violation(exc):
                raise self._recorded_twice(program_id, step) from None
            raise

    def _recorded_twice(self, program_id: str, step: StepRecord) -> JournalError:
        return JournalError(
            f"program {program_id}: step {step.key} ({step.kind} {step.name!r}) is journaled already; "
            "is the program running in two runtimes at once?"
        )

    def _step_statements(
        self, program_id: str, step: StepRecord, blobs: Sequence[Blob]
    ) -> list[tuple[str, Sequence[Any]]]:
        """The statements that store ``blobs``, refer the program to them, and add ``step``."""
        statements: list[tuple[str, Sequence[Any]]] = []
        # Multi-row inserts: one statement per table, not one per blob (each costs a round through SQLite).
        for start in range(0, len(blobs), _ROWS_PER_INSERT):
            chunk = blobs[start : start + _ROWS_PER_INSERT]
            rows = ", ".join(["(?, ?, ?)"] * len(chunk))
            statements.append(
                (
                    self._q(f"INSERT INTO agentrt_blobs (hash, kind, data) VALUES {rows} ON CONFLICT DO NOTHING"),
                    [v for blob in chunk for v in blob],
                )
            )
            refs = ", ".join(["(?, ?)"] * len(chunk))
            statements.append(
                (
                    self._q(f"INSERT INTO agentrt_blob_refs (program_id, hash) VALUES {refs} ON CONFLICT DO NOTHING"),
                    [v for blob in chunk for v in (program_id, blob[0])],
                )
            )
        statements.append(
            (
                self._q(
                    "INSERT INTO agentrt_steps (program_id, key, seq, kind, name, fingerprint, input_ref, output, run, "
                    "recorded_at, idempotency_key) VALUES (?, ?, "
                    "(SELECT COUNT(*) FROM agentrt_steps WHERE program_id = ?), ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                (
                    program_id,
                    step.key,
                    program_id,
                    step.kind,
                    step.name,
                    step.fingerprint,
                    step.input_ref,
                    step.output,
                    step.run,
                    step.recorded_at,
                    step.idempotency_key,
                ),
            )
        )
        return statements

    async def steps(self, program_id: str) -> list[StepRecord]:
        rows = await self._query(
            self._q(f"SELECT {_STEP_COLUMNS} FROM agentrt_steps WHERE program_id = ? ORDER BY seq"), (program_id,)
        )
        return [
            StepRecord(
                key=r[0],
                kind=r[1],
                name=r[2],
                fingerprint=r[3],
                output=bytes(r[4]),
                run=int(r[5]),
                recorded_at=float(r[6]),
                input_ref=r[7],
                idempotency_key=r[8],
            )
            for r in rows
        ]

    async def stored_blobs(self, program_id: str) -> set[str]:
        rows = await self._query(self._q("SELECT hash FROM agentrt_blob_refs WHERE program_id = ?"), (program_id,))
        return {r[0] for r in rows}

    async def blob(self, blob_digest: str) -> tuple[str, bytes] | None:
        rows = await self._query(self._q("SELECT kind, data FROM agentrt_blobs WHERE hash = ?"), (blob_digest,))
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    # -- housekeeping -------------------------------------------------------------------

    async def prune(self, *, updated_before: float, states: Sequence[JournalState]) -> PruneReport:
        if not states:
            return PruneReport(0, 0, 0)
        marks = ", ".join("?" * len(states))
        chosen = f"SELECT id FROM agentrt_programs WHERE updated_at < ? AND state IN ({marks})"
        params = (updated_before, *(s.value for s in states))
        counts = await self._transaction(
            [
                (self._q(f"DELETE FROM agentrt_steps WHERE program_id IN ({chosen})"), params),
                (self._q(f"DELETE FROM agentrt_blob_refs WHERE program_id IN ({chosen})"), params),
                (self._q(f"DELETE FROM agentrt_programs WHERE id IN ({chosen})"), params),
                (
                    self._q(
                        "DELETE FROM agentrt_blobs WHERE NOT EXISTS "
                        "(SELECT 1 FROM agentrt_blob_refs r WHERE r.hash = agentrt_blobs.hash)"
                    ),
                    (),
                ),
            ]
        )
        return PruneReport(programs=counts[2], steps=counts[0], blobs=counts[3])


def _program(row: Sequence[Any]) -> ProgramRecord:
    return ProgramRecord(
        id=row[0],
        workflow=row[1],
        workflow_ref=row[2],
        inputs=bytes(row[3]) if row[3] is not None else b"",
        deadline_s=row[4],
        priority=int(row[5]),
        state=JournalState(row[6]),
        created_at=float(row[7]),
        updated_at=float(row[8]),
        finished_at=row[9],
        error=row[10],
        result=bytes(row[11]) if row[11] is not None else None,
        owner=row[12],
        runs=int(row[13]),
        steps=int(row[14]),
    )
