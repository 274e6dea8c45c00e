"""``agentrt runs``: the programs in a journal, one program's steps, and pruning old runs.

agentrt runs [--state S ...] [--limit N] [--json]     list programs, newest first
agentrt runs show ID [--json]                        one program and its journaled steps
agentrt runs prune --older-than 7d [--state S ...]   delete finished runs older than that

These read and write only the journal (``--journal``, default
``$AGENTRT_JOURNAL`` or ``.agentrt/runs.db``); no engine starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from typing import Any

__all__ = ["DEFAULT_JOURNAL", "add_journal_option", "add_runs_command", "default_journal", "parse_duration"]

#: Where ``agentrt run`` journals programs when neither ``--journal`` nor ``$AGENTRT_JOURNAL`` says.
DEFAULT_JOURNAL = ".agentrt/runs.db"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def default_journal() -> str:
    return os.environ.get("AGENTRT_JOURNAL") or DEFAULT_JOURNAL


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 30m, 12h, 7d or 2w, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def add_journal_option(parser: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """``--journal``; ``nested``: on a subcommand of a parser that has it too (the outer one gives the default)."""
    parser.add_argument(
        "--journal",
        # A sub-parser's own default would overwrite what was given to the outer one.
        default=argparse.SUPPRESS if nested else default_journal(),
        metavar="PATH|DSN",
        help="the journal: a SQLite file or a postgresql:// DSN (default: $AGENTRT_JOURNAL, else %(default)s)",
    )


def add_runs_command(sub: Any) -> None:
    """Add ``runs`` (with ``show`` and ``prune``) to the ``agentrt`` subcommands."""
    from .._journal import JournalState

    states = [s.value for s in JournalState]
    runs = sub.add_parser("runs", help="list journaled programs; `runs show ID`, `runs prune --older-than 7d`")
    add_journal_option(runs)
    runs.add_argument("--state", action="append", choices=states, help="only programs in this state (repeatable)")
    runs.add_argument("--limit", type=int, default=50, help="at most this many, newest first (default %(default)s)")
    runs.add_argument("--json", action="store_true", help="one JSON object per program")
    runs.set_defaults(handler=_list)
    actions = runs.add_subparsers(dest="runs_command")
    show = actions.add_parser("show", help="one program and its journaled steps")
    show.add_argument("program_id")
    add_journal_option(show, nested=True)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)
    prune = actions.add_parser("prune", help="delete finished runs last updated before a given age")
    add_journal_option(prune, nested=True)
    prune.add_argument("--older-than", type=parse_duration, required=True, metavar="AGE", help="e.g. 7d, 12h, 30m")
    prune.add_argument(
        "--state",
        action="append",
        choices=states,
        help="states to prune (repeatable; default: succeeded, failed, cancelled; "
        "interrupted and running ones are kept unless named)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    prune.set_defaults(handler=_prune)


def _run(coro_fn: Any, args: argparse.Namespace) -> int:
    import anyio

    from .._errors import JournalError

    try:
        code: int = anyio.run(coro_fn, args, backend="asyncio")
    except JournalError as exc:
        print(f"agentrt: error: {exc}", file=sys.stderr)
        return 1
    return code


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _state(record: Any) -> str:
    """The state, saying when a ``running`` program's process is gone (it died: resume it)."""
    import psutil

    state: str = record.state.value
    if state == "running" and record.owner:
        host, _, pid = str(record.owner).rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            return "running (owner gone)"
    return state


def _list(args: argparse.Namespace) -> int:
    return _run(_list_async, args)


async def _list_async(args: argparse.Namespace) -> int:
    from .._journal import JournalState, journal_from

    async with journal_from(args.journal) as journal:
        states = [JournalState(s) for s in args.state] if args.state else None
        records = await journal.programs(states=states, limit=args.limit)
    if args.json:
        for r in records:
            row = {
                "id": r.id,
                "workflow": r.workflow,
                "state": _state(r),
                "steps": r.steps,
                "runs": r.runs,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
                "error": r.error,
            }
            print(json.dumps(row))
        return 0
    if not records:
        print(f"no programs in {args.journal}")
        return 0
    print(f"{'PROGRAM':<22} {'WORKFLOW':<20} {'STATE':<22} {'STEPS':>5} {'RUNS':>4}  UPDATED")
    for r in records:
        print(f"{r.id:<22} {r.workflow[:20]:<20} {_state(r):<22} {r.steps:>5} {r.runs:>4}  {_when(r.updated_at)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    return _run(_show_async, args)


async def _show_async(args: argparse.Namespace) -> int:
    from .._journal import journal_from

    async with journal_from(args.journal) as journal:
        record = await journal.program(args.program_id)
        if record is None:
            print(f"agentrt: error: no program {args.program_id!r} in {args.journal}", file=sys.stderr)
            return 1
        steps = await journal.steps(args.program_id)
    if args.json:
        out = {
            "id": record.id,
            "workflow": record.workflow,
            "workflow_ref": record.workflow_ref,
            "state": _state(record),
            "runs": record.runs,
            "error": record.error,
            "steps": [
                {"key": s.key, "kind": s.kind, "name": s.name, "run": s.run, "bytes": len(s.output)} for s in steps
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"program   {record.id}")
    print(f"workflow  {record.workflow} ({record.workflow_ref or 'not importable'})")
    print(f"state     {_state(record)}  runs {record.runs}  owner {record.owner or '-'}")
    print(f"created   {_when(record.created_at)}  updated {_when(record.updated_at)}")
    if record.error:
        print(f"error     {record.error}")
    print(f"\n{'STEP':<28} {'KIND':<6} {'NAME':<24} {'RUN':>3} {'BYTES':>8}")
    for s in steps:
        print(f"{s.key[:28]:<28} {s.kind:<6} {s.name[:24]:<24} {s.run:>3} {len(s.output):>8}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    return _run(_prune_async, args)


async def _prune_async(args: argparse.Namespace) -> int:
    from .._journal import JournalState, journal_from

    states = (
        [JournalState(s) for s in args.state]
        if args.state
        else [JournalState.SUCCEEDED, JournalState.FAILED, JournalState.CANCELLED]
    )
    cutoff = time.time() - args.older_than
    async with journal_from(args.journal) as journal:
        if args.dry_run:
            old = [r for r in await journal.programs(states=states) if r.updated_at < cutoff]
            print(f"would delete {len(old)} program(s) last updated before {_when(cutoff)}")
            return 0
        report = await journal.prune(updated_before=cutoff, states=states)
    print(f"deleted {report.programs} program(s), {report.steps} step(s), {report.blobs} blob(s)")
    return 0
