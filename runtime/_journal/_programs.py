"""A program's record in the journal: created when it starts, reopened when it resumes, closed when it ends.

The runtime calls these around a program's run (the work in between is
:class:`~runtime._journal.ProgramJournal`'s).  A record names its owner,
``host:pid`` of the runtime that runs it, so that a program still running
in a live process is not resumed twice.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from .._errors import JournalError, ProgramIdInUseError, ProgramNotFoundError
from ._base import Journal, JournalState, ProgramRecord
from ._codec import dump_value, load_value
from ._recorder import ProgramJournal

__all__ = ["check_owner_gone", "find_program", "new_program", "owner", "record_program_end", "resume_program"]

logger = logging.getLogger("runtime")


def owner() -> str:
    """Who runs a program, as the journal records it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def new_program(
    journal: Journal,
    program_id: str,
    *,
    workflow: str,
    workflow_ref: str | None,
    inputs: dict[str, Any],
    deadline_s: float | None,
    priority: int,
) -> ProgramJournal:
    """Journal a new program, running and owned by this process; the recorder of its first run.

    Raises :class:`~runtime.JournalError` when its inputs cannot be stored,
    :class:`~runtime.ProgramIdInUseError` when its id is in the journal.
    """
    at = time.time()
    record = ProgramRecord(
        id=program_id,
        workflow=workflow,
        workflow_ref=workflow_ref,
        inputs=dump_value(inputs, f"the inputs of program {program_id}"),
        deadline_s=deadline_s,
        priority=priority,
        state=JournalState.RUNNING,
        created_at=at,
        updated_at=at,
        owner=owner(),
    )
    await journal.create_program(record)
    return ProgramJournal(journal, program_id, run=1, stored=set())


async def find_program(journal: Journal, program_id: str) -> ProgramRecord:
    """The journaled program ``program_id``; :class:`~runtime.ProgramNotFoundError` if there is none."""
    record = await journal.program(program_id)
    if record is None:
        raise ProgramNotFoundError(f"no program {program_id!r} in the journal {journal.location}")
    return record


def check_owner_gone(record: ProgramRecord) -> None:
    """Refuse to resume a program the journal says runs in a process that is still alive."""
    if record.state is not JournalState.RUNNING or not record.owner:
        return
    host, _, pid_text = record.owner.rpartition(":")
    if host != socket.gethostname():
        raise ProgramIdInUseError(
            f"program {record.id} is marked running by {record.owner}, another host; "
            "resume it there, or once that runtime is gone"
        )
    import psutil

    if pid_text.isdigit() and int(pid_text) != os.getpid() and psutil.pid_exists(int(pid_text)):
        raise ProgramIdInUseError(
            f"program {record.id} is running in process {pid_text} on this host; stop that process first"
        )


async def resume_program(journal: Journal, record: ProgramRecord) -> tuple[dict[str, Any], ProgramJournal]:
    """Start the next run of a journaled program (owned by this process): its inputs, and its run's recorder.

    The recorder replays the steps the journal holds.  Check the owner
    first (:func:`check_owner_gone`).
    """
    program_id = record.id
    inputs: dict[str, Any] = load_value(record.inputs, f"the inputs of program {program_id}")
    run = await journal.start_run(program_id, owner(), time.time())
    recorder = ProgramJournal(
        journal,
        program_id,
        run=run,
        recorded=await journal.steps(program_id),
        stored=await journal.stored_blobs(program_id),
    )
    return inputs, recorder


async def record_program_end(
    recorder: ProgramJournal, state: JournalState, *, error: str | None, result: object = None
) -> None:
    """Record how the program ended (``result``: a succeeded one's); a journal that fails here is logged.

    The program's outcome stands whatever the journal does: a result that
    cannot be stored is left out (resuming the program replays every step
    and returns it again).
    """
    program_id = recorder.program_id
    data: bytes | None = None
    if state is JournalState.SUCCEEDED:
        try:
            data = dump_value(result, f"the result of program {program_id}")
        except JournalError as exc:
            logger.warning("program %s: result not journaled: %s", program_id, exc)
    try:
        await recorder.journal.finish_program(program_id, state, time.time(), error=error, result=data)
    except JournalError as exc:
        logger.warning("program %s: its end (%s) was not journaled: %s", program_id, state.value, exc)
