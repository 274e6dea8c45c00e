"""``agentrt models prepare|list``: build the known models, or list them.

``agentrt models ...`` passes its arguments to :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .._errors import ModelPreparationError
from .._models import KNOWN_MODELS, MODELS_DIR_ENV, model_status, models_dir, prepare_model

__all__ = ["add_models_command", "main"]


def add_models_command(sub: Any) -> None:
    """Add ``models`` to the ``agentrt`` subcommands: its arguments go to :func:`main` as they are."""
    models = sub.add_parser(
        "models",
        help="prepare or list the local models",
        description="agentrt models [--models-dir DIR] {prepare NAME... [--force] | list}",
    )
    models.add_argument("models_args", nargs=argparse.REMAINDER)
    models.set_defaults(handler=lambda args: main(args.models_args))


def main(argv: list[str] | None = None) -> int:
    """``prepare NAME...`` builds models; ``list`` shows which are prepared.

    Returns the process exit status: 0 on success, 1 if a model failed.
    """
    parser = argparse.ArgumentParser(prog="agentrt models", description="Prepare local models offline.")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help=f"where models live (default: ${MODELS_DIR_ENV} or <repo>/.cache/models)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build models unless already built")
    prep.add_argument("names", nargs="+", choices=KNOWN_MODELS, metavar="NAME")
    prep.add_argument("--force", action="store_true", help="rebuild even if prepared")
    sub.add_parser("list", help="show known models and whether they are prepared")
    args = parser.parse_args(argv)
    base: Path = args.models_dir if args.models_dir is not None else models_dir()

    if args.command == "list":
        for name in KNOWN_MODELS:
            status = model_status(name, base / name)
            print(f"{name:<14} {status.state:<24} {base / name}  - {status.description}")
        return 0

    code = 0
    for name in args.names:
        started = time.monotonic()
        try:
            path = prepare_model(name, dest_dir=base / name, force=args.force)
        except ModelPreparationError as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            code = 1
            continue
        print(f"{name}: {path} ({time.monotonic() - started:.1f} s)")
    return code
