"""The ``agentrt`` parser, assembled from the command modules and the ``agentrt.commands`` entry points."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence
from typing import Any

from ._demo import add_demo_command
from ._models import add_models_command
from ._quiet import quiet_vllm
from ._run import add_resume_command, add_run_command
from ._runs import add_runs_command
from ._serve import add_serve_command

__all__ = ["COMMANDS_ENTRY_POINT_GROUP", "main"]

#: Entry-point group of packages that add ``agentrt`` subcommands.
COMMANDS_ENTRY_POINT_GROUP = "agentrt.commands"


def _parser() -> argparse.ArgumentParser:
    from .._runtime import default_model

    parser = argparse.ArgumentParser(prog="agentrt", description="Run LLM agent workflows on vLLM engines.")
    sub = parser.add_subparsers(dest="command", required=True)
    model = default_model()
    add_demo_command(sub, model)
    add_run_command(sub, model)
    add_resume_command(sub, model)
    add_runs_command(sub)
    add_serve_command(sub, model)
    add_models_command(sub)
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """Let every ``agentrt.commands`` entry point add its subcommands; a broken one is reported, not fatal."""
    for entry_point in importlib.metadata.entry_points(group=COMMANDS_ENTRY_POINT_GROUP):
        try:
            entry_point.load()(sub)
        except Exception as exc:
            print(f"agentrt: commands of {entry_point.value} are unavailable: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``agentrt`` with ``argv`` (default: the process's arguments); the exit status."""
    args = _parser().parse_args(argv)
    quiet_vllm(getattr(args, "verbose", False))
    code: int = args.handler(args)
    return code
