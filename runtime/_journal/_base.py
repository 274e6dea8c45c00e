"""The journal's interface: what a backend stores for programs and their steps.

A :class:`Journal` keeps, per program, one :class:`ProgramRecord` (identity,
inputs, state, result) and one :class:`StepRecord` per finished piece of work
(a step, an agent run, an LLM call, a tool call) under its *step key*, its
position in the program's DAG.  Prompt contents live in content-addressed
blobs (:mod:`._codec`), referenced per program so that pruning a program
frees what only it used.

Backends (:class:`~runtime.SQLiteJournal`, :class:`~runtime.PostgresJournal`)
implement the ``_``-free abstract methods below; every method is atomic.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from ._codec import Blob

__all__ = ["Journal", "JournalState", "ProgramRecord", "PruneReport", "StepRecord"]


class JournalState(enum.StrEnum):
    """A program's state as the journal knows it.

    ``interrupted``: the runtime shut down (a signal, ``aclose``) while the
    program ran; ``running`` with an owner process that no longer exists means
    the runtime died.  Both can be resumed, and so can ``failed`` and
    ``cancelled`` ones (their journaled steps are not redone).
    """

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self in (JournalState.SUCCEEDED, JournalState.FAILED, JournalState.CANCELLED)


@dataclass(frozen=True, slots=True)
class ProgramRecord:
    """One program in the journal.

    ``workflow_ref`` says where its function lives (``module:qualname`` or
    ``path/to/file.py:qualname``) so that ``agentrt resume`` can import it;
    ``inputs`` and ``result`` are pickled; ``owner`` is
    ``host:pid`` of the runtime that runs (or last ran) it; ``runs`` counts
    its starts (1 + resumes).  Times are Unix seconds.
    """

    id: str
    workflow: str
    workflow_ref: str | None
    inputs: bytes
    deadline_s: float | None
    priority: int
    state: JournalState
    created_at: float
    updated_at: float
    finished_at: float | None = None
    error: str | None = None
    result: bytes | None = None
    owner: str | None = None
    runs: int = 1
    steps: int = 0


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One finished piece of work: where it ran (``key``), what it was, its inputs' fingerprint, its output.

    ``kind`` is a node kind (``step``, ``agent``, ``llm``, ``tool``);
    ``input_ref`` names the blob chain of an LLM call's prompt; ``output``
    is the pickled value the workflow received; ``run`` is the program run
    (1, 2, ... for resumes) that recorded it.
    """

    key: str
    kind: str
    name: str
    fingerprint: str
    output: bytes
    run: int
    recorded_at: float
    input_ref: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What ``prune`` removed: programs, their steps, and blobs no program refers to any more."""

    programs: int
    steps: int
    blobs: int


class Journal(ABC):
    """Abstract base of journal backends; an async context manager (``open`` / ``aclose``)."""

    #: What the journal is, for messages (a path or a DSN without its password).
    location: str

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the tables if needed; idempotent."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the connection; idempotent."""

    @abstractmethod
    async def create_program(self, record: ProgramRecord) -> None:
        """Add a new program; :class:`~runtime.ProgramIdInUseError` if its id is in the journal already."""

    @abstractmethod
    async def start_run(self, program_id: str, owner: str, at: float) -> int:
        """Mark a journaled program running again under ``owner``; returns the run's number (2, 3, ...)."""

    @abstractmethod
    async def finish_program(
        self, program_id: str, state: JournalState, at: float, *, error: str | None, result: bytes | None
    ) -> None:
        """Record how the program ended (``state`` is not ``running``)."""

    @abstractmethod
    async def record_step(self, program_id: str, step: StepRecord, blobs: Sequence[Blob]) -> None:
        """Store ``blobs`` (those not stored yet), refer ``program_id`` to them, and add ``step``; one transaction."""

    @abstractmethod
    async def program(self, program_id: str) -> ProgramRecord | None:
        """The program's record (with its ``steps`` count), or None."""

    @abstractmethod
    async def steps(self, program_id: str) -> list[StepRecord]:
        """Every step journaled for the program, in the order they were recorded."""

    @abstractmethod
    async def stored_blobs(self, program_id: str) -> set[str]:
        """Digests of the blobs the program refers to."""

    @abstractmethod
    async def blob(self, blob_digest: str) -> tuple[str, bytes] | None:
        """A blob's kind and data, or None."""

    @abstractmethod
    async def programs(
        self, *, states: Sequence[JournalState] | None = None, limit: int | None = None
    ) -> list[ProgramRecord]:
        """Programs newest first (by last update), without inputs and results, with their step counts."""

    @abstractmethod
    async def prune(self, *, updated_before: float, states: Sequence[JournalState]) -> PruneReport:
        """Delete programs in ``states`` last updated before ``updated_before``, their steps, and orphaned blobs."""

    @abstractmethod
    async def size_bytes(self) -> int:
        """The bytes the journal occupies (file size, or the tables' size in the database)."""
