"""``agentrt demo``: the demo agent answers a question, then Text-to-SQL answers one on Chinook.

agentrt demo [--model M] [--question "..."] [--no-sql] [-v]

The agent is :mod:`._demo_agent`; the Text-to-SQL workflow is the example
``examples/text2sql.py`` of a source checkout (skipped, with a line saying
so, where there is none).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ._common import build_runtime, engine_options, load_workflow, traced
from ._demo_agent import DEMO_QUESTION, demo_workflow, describe_demo
from ._quiet import started
from ._report import program_report

__all__ = ["add_demo_command"]

#: The Text-to-SQL example, run by ``agentrt demo`` from a source checkout.
TEXT2SQL_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "text2sql.py"

#: What the Text-to-SQL part can expect of each local model, for its closing line (measured, not hoped).
_SQL_NOTES = {
    "smollm2-135m": (
        "smollm2-135m copies the shape of the prompt's one example (SELECT COUNT(*) FROM book) onto the table "
        "the question names, and the reply's grammar lets it name only a linked table: it counts a table's rows. "
        "It does not filter, look up or join reliably: asked how many customers live in Brazil it counts all 59, "
        "asked for an album's tracks it counts albums."
    ),
    **{
        name: f"{name} has random weights: its SQL is noise; the demo shows the DAG (linking, candidates, repair, "
        "vote) only."
        for name in ("tiny", "llama-49m")
    },
}


def add_demo_command(sub: Any, default_model: str) -> None:
    """Add ``demo`` to the ``agentrt`` subcommands."""
    demo = sub.add_parser("demo", help="an agent with tools answers a question on the demo model")
    engine_options(demo, default_model)
    demo.add_argument("--question", default=DEMO_QUESTION)
    demo.add_argument("--no-sql", action="store_true", help="skip the Text-to-SQL part of the demo")
    demo.set_defaults(handler=traced(_run_demo))


async def _run_demo(args: argparse.Namespace) -> int:
    began = time.monotonic()
    async with started(build_runtime(args), verbose=args.verbose) as rt:
        print(f"engines ready in {time.monotonic() - began:.1f} s: {', '.join(e.name for e in rt.engines)}")
        print(f"question: {args.question}")
        handle = rt.submit(demo_workflow, question=args.question)
        print(describe_demo(await handle))
        print()
        print(program_report(handle.program))
        if not args.no_sql:
            await _run_text2sql_demo(rt)
    return 0


async def _run_text2sql_demo(rt: Any) -> None:
    if not TEXT2SQL_EXAMPLE.is_file():
        print(f"\n(Text-to-SQL demo skipped: {TEXT2SQL_EXAMPLE} is part of the source checkout)")
        return
    wf = load_workflow(f"{TEXT2SQL_EXAMPLE}:text2sql")
    example = sys.modules[TEXT2SQL_EXAMPLE.stem]
    print("\n--- Text-to-SQL on Chinook (SQLite, read-only) ---")
    handle = rt.submit(wf, question=example.DEMO_QUESTION)
    out = await handle
    print(example.describe_result(out))
    print(await example.check_against_reference(out, example.DEMO_REFERENCE_SQL))
    note = _SQL_NOTES.get(rt.engines[0].model)
    if note:
        print(f"note: {note}")
    print()
    print(program_report(handle.program))
