"""One program's journal while it runs: replay what is journaled, record what is new.

The runtime's context asks :meth:`ProgramJournal.look_up` (an LLM call:
:meth:`~ProgramJournal.look_up_llm`) before it runs a piece of work (a
step, an agent run, an LLM call, a tool call) under its step key.  The
:class:`Lookup` it gets holds the journaled result, returned instead of
running the work again, after checking that the work at that position is
still the same (kind, name, inputs' fingerprint); otherwise the work runs
and :meth:`Lookup.record` stores its result before the workflow sees it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import JournalDivergenceError
from ._base import Journal, StepRecord
from ._codec import Blob, PromptChain, dump_value, fingerprint, load_value, sampling_json

if TYPE_CHECKING:
    from .._engines import Prompt, SamplingOptions

__all__ = ["NOT_JOURNALED", "Lookup", "ProgramJournal", "StepEntry"]


class StepEntry:
    """A piece of work about to run: its key, identity and inputs, and the blobs its inputs need."""

    __slots__ = ("blobs", "fingerprint", "idempotency_key", "input_ref", "key", "kind", "name")

    def __init__(
        self,
        key: str,
        kind: str,
        name: str,
        fingerprint: str,
        *,
        input_ref: str | None = None,
        blobs: Sequence[Blob] = (),
        idempotency_key: str | None = None,
    ) -> None:
        self.key = key
        self.kind = kind
        self.name = name
        self.fingerprint = fingerprint
        self.input_ref = input_ref
        self.blobs = blobs
        self.idempotency_key = idempotency_key

    def describe(self) -> str:
        return f"{self.kind} {self.name!r} at step {self.key}"


class ProgramJournal:
    """The journal of one program run: ``recorded`` holds its journaled steps by key (empty for a new program)."""

    def __init__(
        self, journal: Journal, program_id: str, *, run: int, recorded: Sequence[StepRecord] = (), stored: set[str]
    ) -> None:
        self.journal = journal
        self.program_id = program_id
        self.run = run
        self._recorded = {r.key: r for r in recorded}
        self.prompts = PromptChain(stored)
        #: Steps served from the journal in this run, and steps recorded by it.
        self.replayed_count = 0
        self.recorded_count = 0

    @property
    def resumed(self) -> bool:
        return self.run > 1

    def look_up(self, key: str, kind: str, name: str, *inputs: object, idempotency_key: str | None = None) -> Lookup:
        """The journaled result of the ``kind`` work ``name`` at step ``key`` on ``inputs``, or where to record it.

        Each input is fingerprinted as canonical JSON (a string as it is).
        Raises :class:`~runtime.JournalDivergenceError` when the journal holds
        different work at that position.
        """
        entry = StepEntry(key, kind, name, fingerprint(kind, name, *inputs), idempotency_key=idempotency_key)
        return self._look_up(entry)

    def look_up_llm(self, key: str, kind: str, name: str, prompt: Prompt, sampling: SamplingOptions) -> Lookup:
        """:meth:`look_up` for an LLM call: its inputs are its prompt (a chain of stored blobs) and sampling options."""
        link, blobs = self.prompts.link(prompt)
        entry = StepEntry(
            key,
            kind,
            name,
            fingerprint(kind, name, link, sampling_json(sampling).decode()),
            input_ref=link,
            blobs=blobs,
        )
        return self._look_up(entry)

    def _look_up(self, entry: StepEntry) -> Lookup:
        found, value = self.replayed(entry)
        return Lookup(found, value, self, None if found else entry)

    def replayed(self, entry: StepEntry) -> tuple[bool, Any]:
        """``(True, value)`` if ``entry``'s work is journaled, else ``(False, None)``.

        Raises :class:`~runtime.JournalDivergenceError` when the journal holds
        different work at that position.
        """
        record = self._recorded.get(entry.key)
        if record is None:
            return False, None
        if (record.kind, record.name) != (entry.kind, entry.name):
            raise JournalDivergenceError(
                f"program {self.program_id}: replay diverged at step {entry.key}: the journal holds "
                f"{record.kind} {record.name!r} there, the workflow now runs {entry.kind} {entry.name!r}. "
                "Its code changed since the program was journaled; resume it with the code it ran, "
                "or start a new program"
            )
        if record.fingerprint != entry.fingerprint:
            raise JournalDivergenceError(
                f"program {self.program_id}: replay diverged at {entry.describe()}: its inputs differ from the "
                f"journaled ones ({_short(record.fingerprint)} journaled, {_short(entry.fingerprint)} now). "
                "The workflow's code, or something it reads that is not journaled (the clock, random numbers, "
                "files, the environment), changed; make that a step so its value is journaled, or start a new program"
            )
        self.replayed_count += 1
        return True, load_value(record.output, entry.describe())

    async def record(self, entry: StepEntry, value: Any) -> None:
        """Journal ``value`` as the result of ``entry`` (before the workflow sees it)."""
        output = dump_value(value, f"the result of {entry.describe()} of program {self.program_id}")
        step = StepRecord(
            key=entry.key,
            kind=entry.kind,
            name=entry.name,
            fingerprint=entry.fingerprint,
            output=output,
            run=self.run,
            recorded_at=time.time(),
            input_ref=entry.input_ref,
            idempotency_key=entry.idempotency_key,
        )
        await self.journal.record_step(self.program_id, step, entry.blobs)
        self.prompts.mark_stored(entry.blobs)
        self._recorded[entry.key] = step
        self.recorded_count += 1


class Lookup:
    """What the journal holds for one piece of work: its result (``found``, ``value``), or where to record it."""

    __slots__ = ("_entry", "_journal", "found", "value")

    def __init__(self, found: bool, value: Any, journal: ProgramJournal | None, entry: StepEntry | None) -> None:
        self.found = found
        self.value = value
        self._journal = journal
        self._entry = entry

    async def record(self, value: Any) -> None:
        """Journal ``value`` as the work's result, before the workflow sees it (nothing to do without a journal).

        Shielded from cancellation: the work is done, and its result must
        not be lost to a cancel.
        """
        if self._journal is not None and self._entry is not None:
            with anyio.CancelScope(shield=True):
                await self._journal.record(self._entry, value)


#: The lookup of work in a program that is not journaled: nothing found, nothing recorded.
NOT_JOURNALED = Lookup(False, None, None, None)


def _short(digest: str) -> str:
    return digest[:12]
