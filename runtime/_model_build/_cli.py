"""The ``agentrt models prepare|list`` command: build the known models, or list them.

``agentrt models ...`` passes its arguments to :func:`main`; the same command
runs without the console script as::

    python -m runtime._model_build._cli prepare tiny llama-49m smollm2-135m   # idempotent
    python -m runtime._model_build._cli list
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .._errors import ModelPreparationError
from .._models import KNOWN_MODELS, MODELS_DIR_ENV, _has_config, models_dir
from ._prepare import _is_current, _read_marker, prepare_model
from ._recipes import _RECIPES


def main(argv: list[str] | None = None) -> int:
    """``prepare NAME...`` builds models; ``list`` shows which are prepared.

    Returns the process exit status: 0 on success, 1 if a model failed.
    """
    parser = argparse.ArgumentParser(
        prog="python -m runtime._model_build._cli", description="Prepare local models offline."
    )
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
            path = base / name
            marker = _read_marker(path)
            if marker is None or not _has_config(path):
                state = "not prepared"
            elif _is_current(path, _RECIPES[name]):
                state = "prepared"
            else:
                state = f"outdated (recipe v{marker.get('recipe_version')})"
            print(f"{name:<14} {state:<24} {path}  - {_RECIPES[name].description}")
        return 0

    status = 0
    for name in args.names:
        started = time.monotonic()
        try:
            path = prepare_model(name, dest_dir=base / name, force=args.force)
        except ModelPreparationError as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{name}: {path} ({time.monotonic() - started:.1f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
