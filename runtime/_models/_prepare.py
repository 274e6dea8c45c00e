"""Preparing a model: build into scratch, lock, marker, swap-in, up-to-date check.

:func:`prepare_model` is what :func:`runtime._models.prepare_model` calls. It
builds a recipe from :mod:`._recipes` in a temporary directory beside the
target, writes the marker file last (recipe version, software versions, build
details) and renames the result into place, under a lock file so that
concurrent processes do not build the same model twice.  :func:`build_lock`
and :func:`swap_in` serve :mod:`._tiny_tools` too; :func:`model_status` is
what ``agentrt models list`` shows.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._errors import ModelPreparationError
from ._locate import KNOWN_MODELS, MARKER_NAME, has_config, models_dir, read_marker
from ._recipes import RECIPES, Recipe

__all__ = ["ModelStatus", "build_lock", "is_current", "model_status", "prepare_model", "swap_in"]


def prepare_model(name: str, *, dest_dir: Path | None = None, force: bool = False) -> Path:
    """Build the known model ``name`` unless it is already built; return its directory.

    The implementation of :func:`runtime._models.prepare_model`, which
    documents the arguments and errors.
    """
    recipe = RECIPES.get(name)
    if recipe is None:
        raise ModelPreparationError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    target = (Path(dest_dir) if dest_dir is not None else models_dir() / name).expanduser().absolute()
    if not force and is_current(target, recipe):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with build_lock(target):
            # Another process may have finished the same build while we waited.
            if not force and is_current(target, recipe):
                return target
            _remove_leftovers(target)
            # Never delete what someone else put there (an empty directory is fine).
            foreign = target.exists() and read_marker(target) is None
            if foreign and not force and (not target.is_dir() or any(target.iterdir())):
                raise ModelPreparationError(
                    f"{target} exists and was not prepared by agentrt; remove it, "
                    f"choose another dest_dir, or pass force=True to replace it"
                )
            _build_into(recipe, target)
    except OSError as exc:  # creating the directory, the lock or the temp dirs
        raise ModelPreparationError(f"cannot prepare model {name!r} at {target}: {exc}") from exc
    return target


def _build_into(recipe: Recipe, target: Path) -> None:
    """Build ``recipe`` beside ``target`` and swap it in; caller holds the lock."""
    build_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.scratch-", dir=target.parent))
    try:
        started = time.monotonic()
        details = recipe.build(build_dir, scratch)
        marker = {
            "name": recipe.name,
            "recipe_version": recipe.version,
            "prepared_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "build_seconds": round(time.monotonic() - started, 3),
            "software": _software_versions(),
            "details": details,
        }
        # Written last: its presence is what makes the directory "complete".
        (build_dir / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        # mkdtemp makes the directory private (0700), and transformers writes
        # the weights 0600; a model is no secret and may be read by another
        # user (a server, CI).
        build_dir.chmod(0o755)
        for path in build_dir.iterdir():
            if path.is_file():
                path.chmod(0o644)
        swap_in(build_dir, target)
    except ModelPreparationError:
        raise
    except Exception as exc:
        raise ModelPreparationError(f"preparing model {recipe.name!r} into {target} failed: {exc}") from exc
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, replacing whatever was there.

    A directory cannot be replaced by one rename, so the old one is first
    renamed aside. A crash between the two renames leaves no target (and a
    leftover that the next build removes), never a mixed one.
    """
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        target.rename(old)
    new.rename(target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _remove_leftovers(target: Path) -> None:
    """Delete temporary directories left by builds of ``target`` that were killed.

    Safe only under the build lock: no other process is using them then.
    """
    for pattern in (".build-*", ".scratch-*", ".old-*"):
        for leftover in target.parent.glob(f".{target.name}{pattern}"):
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock for building ``target`` (blocks until free).

    The lock file is left behind: deleting it while another process waits on it
    would let a third process lock a different inode.
    """
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def is_current(model_dir: Path, recipe: Recipe) -> bool:
    marker = read_marker(model_dir)
    return (
        marker is not None
        and marker.get("name") == recipe.name
        and marker.get("recipe_version") == recipe.version
        and has_config(model_dir)
    )


@dataclass(frozen=True)
class ModelStatus:
    """A known model at a directory: ``state`` is ``prepared``, ``not prepared`` or ``outdated (recipe vN)``."""

    name: str
    path: Path
    state: str
    #: What the recipe builds, one line.
    description: str


def model_status(name: str, model_dir: Path | None = None) -> ModelStatus:
    """The state of the known model ``name`` at ``model_dir`` (default ``models_dir() / name``); reads files only."""
    recipe = RECIPES.get(name)
    if recipe is None:
        raise ModelPreparationError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    path = (Path(model_dir) if model_dir is not None else models_dir() / name).expanduser().absolute()
    marker = read_marker(path)
    if marker is None or not has_config(path):
        state = "not prepared"
    elif is_current(path, recipe):
        state = "prepared"
    else:
        state = f"outdated (recipe v{marker.get('recipe_version')})"
    return ModelStatus(name, path, state, recipe.description)


def _software_versions() -> dict[str, str]:
    """Versions of what built the model, recorded for reproducibility."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for dist in ("torch", "transformers", "tokenizers", "gguf", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions
