"""``agentrt run`` and ``agentrt resume``: one workflow, its result as JSON on stdout, its report on stderr.

agentrt run MODULE:WORKFLOW --input k=v ... [--program-id ID] [--no-journal]
agentrt resume PROGRAM_ID [--workflow MODULE:WORKFLOW]

``run`` journals the program (``--journal``, default ``$AGENTRT_JOURNAL`` or
``.agentrt/runs.db``); a program that did not succeed can be finished by
``resume``, which does not redo its journaled steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import build_runtime, engine_options, load_workflow, traced
from ._quiet import started
from ._report import program_report
from ._runs import add_journal_option, default_journal

__all__ = ["add_resume_command", "add_run_command"]


def add_run_command(sub: Any, default_model: str) -> None:
    """Add ``run`` to the ``agentrt`` subcommands."""
    run = sub.add_parser("run", help="run a workflow once: agentrt run MODULE:WORKFLOW --input k=v")
    run.add_argument("target", help="MODULE:WORKFLOW or path/to/file.py:WORKFLOW")
    run.add_argument("--input", action="append", type=_parse_input, metavar="KEY=VALUE", help="JSON or plain text")
    run.add_argument("--program-id", help="the program's id (default: a fresh prog-... id)")
    engine_options(run, default_model)
    add_journal_option(run)
    run.add_argument("--no-journal", action="store_true", help="do not journal the program (it cannot be resumed)")
    run.set_defaults(handler=traced(_run_workflow))


def add_resume_command(sub: Any, default_model: str) -> None:
    """Add ``resume`` to the ``agentrt`` subcommands."""
    resume = sub.add_parser(
        "resume", help="finish a journaled program (after a crash, a signal, a failure): journaled steps are not redone"
    )
    resume.add_argument("program_id")
    resume.add_argument(
        "--workflow", metavar="MODULE:WORKFLOW", help="where the workflow is (default: where the journal says)"
    )
    engine_options(resume, default_model)
    add_journal_option(resume)
    resume.set_defaults(handler=traced(_resume_workflow), no_journal=False)


def _parse_input(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--input expects key=value, got {item!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # plain strings need no JSON quotes
    return key, value


async def _run_workflow(args: argparse.Namespace) -> int:
    wf = load_workflow(args.target)
    inputs = dict(args.input or [])
    values = wf.validate_inputs(**inputs)  # fail before starting engines
    handle = None
    try:
        async with started(build_runtime(args), verbose=args.verbose) as rt:
            handle = rt.start_program(wf, values, program_id=args.program_id)
            try:
                result = await handle
            finally:
                print(program_report(handle.program), file=sys.stderr)
    finally:
        if handle is not None:  # once the runtime has closed: an interrupted program is journaled as such
            _say_resumable(args, handle)
    print(json.dumps(result, default=_jsonable, indent=2))
    return 0


def _say_resumable(args: argparse.Namespace, handle: Any) -> None:
    """After a journaled program that did not succeed: how to pick it up again."""
    from .._program import ProgramState

    if args.no_journal or not handle.done or handle.state is ProgramState.SUCCEEDED:
        return
    where = "" if args.journal == default_journal() else f" --journal {args.journal}"
    print(
        f"agentrt: program {handle.id} is journaled; to finish it: agentrt resume {handle.id}{where}", file=sys.stderr
    )


async def _resume_workflow(args: argparse.Namespace) -> int:
    from .._journal import journal_from

    # Look before starting engines: a wrong id or journal fails in a moment, not after the engines' start.
    async with journal_from(args.journal) as journal:
        record = await journal.program(args.program_id)
    if record is None:
        from .._errors import ProgramNotFoundError

        raise ProgramNotFoundError(f"no program {args.program_id!r} in the journal {args.journal}")
    workflow = load_workflow(args.workflow) if args.workflow else None
    handle = None
    try:
        async with started(build_runtime(args), verbose=args.verbose) as rt:
            handle = await rt.resume(args.program_id, workflow=workflow)
            try:
                result = await handle
            finally:
                print(program_report(handle.program), file=sys.stderr)
    finally:
        if handle is not None:
            _say_resumable(args, handle)
    print(json.dumps(result, default=_jsonable, indent=2))
    return 0


def _jsonable(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return str(value)
