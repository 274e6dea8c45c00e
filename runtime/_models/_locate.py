"""Finding prepared models: the models directory, a name resolved to a model directory, the marker.

Standard library only: resolving a name never loads torch or transformers,
and nothing here builds (that is :mod:`._prepare`).

Resolution order for a name: an existing directory of that (relative) path
first, as transformers and vLLM do, then ``models_dir() / name``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._errors import ModelNotFoundError

__all__ = [
    "KNOWN_MODELS",
    "MARKER_NAME",
    "MODELS_DIR_ENV",
    "has_config",
    "models_dir",
    "read_marker",
    "resolve_model",
]

#: Environment variable that overrides :func:`models_dir`.
MODELS_DIR_ENV = "AGENTRT_MODELS_DIR"

#: File written into a model directory once it is complete (JSON).
MARKER_NAME = ".agentrt-prepared"

#: Names that :func:`~runtime._models.prepare_model` can build. A plain tuple,
#: not derived from the recipes, so that it is known without importing the
#: builders; the recipe table in :mod:`._recipes` checks that it matches.
KNOWN_MODELS: tuple[str, ...] = ("tiny", "smollm2-135m", "llama-49m")


def models_dir() -> Path:
    """Directory that holds prepared models, one sub-directory per name.

    ``$AGENTRT_MODELS_DIR`` if set, else ``<repo root>/.cache/models`` where the
    repo root is the directory that contains the ``runtime`` package. The
    directory need not exist yet.
    """
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override).expanduser().absolute()
    return Path(__file__).resolve().parents[2] / ".cache" / "models"


def has_config(path: Path) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` (what vLLM and transformers load)."""
    return path.is_dir() and (path / "config.json").is_file()


def read_marker(model_dir: Path) -> dict[str, Any] | None:
    """The content of ``model_dir``'s marker file, or None if absent or unreadable."""
    try:
        data = json.loads((model_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """Return the model directory for a model name or a directory path.

    A path to an existing directory with ``config.json`` is returned as is
    (made absolute). Otherwise a bare name is looked up as
    ``models_dir() / name``. Nothing is downloaded or built here.

    Raises:
        ModelNotFoundError: neither exists; the message lists the places
            looked at and the command that prepares the model.
    """
    raw = os.fspath(name_or_path)
    if not raw:
        raise ModelNotFoundError("empty model name or path")
    looked: list[str] = []
    as_path = Path(raw).expanduser()
    if has_config(as_path):
        return as_path.resolve()
    looked.append(_describe(as_path))
    # Only a bare name can live under models_dir(); "a/b" is a path only.
    if os.sep not in raw and (os.altsep is None or os.altsep not in raw):
        named = models_dir() / raw
        if has_config(named):
            return named.resolve()
        if named.absolute() != as_path.absolute():
            looked.append(_describe(named))
    if raw in KNOWN_MODELS:
        hint = f"prepare it with `agentrt models prepare {raw}`"
    else:
        known = ", ".join(KNOWN_MODELS)
        hint = f"pass a model directory, or one of the models that `agentrt models prepare NAME` builds: {known}"
    raise ModelNotFoundError(
        f"model {raw!r} not found (looked for a directory with config.json at: {'; '.join(looked)}); {hint}"
    )


def _describe(path: Path) -> str:
    """A looked-at place, with why it did not qualify."""
    where = str(path.absolute())
    if not path.exists():
        return f"{where} (does not exist)"
    if not path.is_dir():
        return f"{where} (not a directory)"
    return f"{where} (no config.json)"
