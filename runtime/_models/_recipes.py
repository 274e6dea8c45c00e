"""The known models' recipes: name, version, description and build function.

:data:`._locate.KNOWN_MODELS` lists the same names without importing
this module; the check at the bottom keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RECIPES", "Recipe"]

from ._locate import KNOWN_MODELS
from ._smollm2 import SMOLLM2_REQUIREMENT, build_smollm2
from ._tiny import LLAMA_49M, build_llama_49m, build_tiny


@dataclass(frozen=True)
class Recipe:
    """How to build one known model.

    ``build(out, scratch)`` writes the model files into ``out`` (an empty
    directory) and may use ``scratch`` for downloads; it returns details that
    are recorded in the marker file. Bump ``version`` whenever the output
    changes, so that prepared copies are rebuilt.
    """

    name: str
    version: int
    description: str
    build: Callable[[Path, Path], dict[str, Any]]


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "tiny",
            version=2,
            description="random-weight Llama, 2 layers, hidden 128, local BPE tokenizer",
            build=build_tiny,
        ),
        Recipe(
            "smollm2-135m",
            version=1,
            description=f"SmolLM2-135M-Instruct (bf16) from the GGUF in {SMOLLM2_REQUIREMENT}",
            build=build_smollm2,
        ),
        Recipe(
            "llama-49m",
            version=1,
            description=(
                f"random-weight Llama, {LLAMA_49M.layers} layers, hidden {LLAMA_49M.hidden}, "
                "tiny's tokenizer: prefill costs real time on a CPU"
            ),
            build=build_llama_49m,
        ),
    )
}

# Fails at import, so that a recipe added or renamed here without updating
# KNOWN_MODELS (or the other way round) cannot go unnoticed.
if tuple(RECIPES) != KNOWN_MODELS:
    raise RuntimeError(f"recipes {tuple(RECIPES)} do not match KNOWN_MODELS {KNOWN_MODELS}")
