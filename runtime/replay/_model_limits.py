"""How long a context a model holds, and the context limit a replay's engines get.

vLLM refuses a ``max_model_len`` above the model's own limit (its
``max_position_embeddings``) with a traceback once the engine starts; the
replay and calibration commands read the limit first, so that the engine is
sized to fit or the command says in one line why it cannot run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["model_context_limit", "sized_context_limit"]

# RoPE scalings whose `factor` vLLM does not apply to max_position_embeddings
# (the config's value is already the scaled one): vLLM's _get_and_verify_max_len.
_UNSCALED_ROPE = frozenset({"default", "su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"})


def model_context_limit(model_dir: Path) -> int | None:
    """The longest context (tokens) the model in ``model_dir`` holds, or ``None`` where its config.json says none.

    Its ``max_position_embeddings`` (the text model's, for a multimodal
    config), times the RoPE scaling factor where vLLM applies one (linear,
    dynamic): the limit vLLM derives for these configs.
    """
    try:
        config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text_config = config.get("text_config")
    for part in (text_config, config) if isinstance(text_config, dict) else (config,):
        positions = part.get("max_position_embeddings")
        if isinstance(positions, int) and positions > 0:
            rope = part.get("rope_scaling") or part.get("rope_parameters")
            if isinstance(rope, dict):
                factor = rope.get("factor")
                kind = rope.get("rope_type", rope.get("type", "default"))
                if kind not in _UNSCALED_ROPE and isinstance(factor, int | float) and factor > 0:
                    return int(positions * factor)
            return positions
    return None


def sized_context_limit(needed: int, model_limit: int | None, block_size: int) -> int:
    """The context limit of engines that must hold ``needed`` tokens: a block of margin, whole blocks.

    ``needed`` rounded up to a multiple of ``block_size``, plus one block,
    and at most ``model_limit``.  The caller checks that ``needed`` fits the
    model first.
    """
    limit = -(-max(needed, 1) // block_size) * block_size + block_size
    return limit if model_limit is None else min(limit, model_limit)
