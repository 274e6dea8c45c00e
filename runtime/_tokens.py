"""Token ids for synthetic prompts: a model's vocabulary without its special tokens.

Trace replay and calibration build prompts from pseudo-random token ids; an
id the tokenizer reserves (BOS, EOS, padding, chat markers) would change how
the engine treats the prompt, and one past the embedding table is rejected.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Vocabulary", "model_vocabulary"]


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The token ids a replay may draw: ``[0, size)`` minus ``special``."""

    size: int
    special: frozenset[int] = frozenset()
    # The drawable ids in increasing order, built once: a replay draws
    # millions of tokens, and one ``choices`` call over this is far cheaper
    # than a ``randrange`` per token with rejection of the special ids.
    _allowed: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.size - len(self.special) < 2:
            raise ValueError(f"a vocabulary of {self.size} ids with {len(self.special)} special ones is too small")
        object.__setattr__(self, "_allowed", tuple(i for i in range(self.size) if i not in self.special))

    def draw(self, rng: random.Random, n: int) -> list[int]:
        """``n`` pseudo-random non-special ids from ``rng`` (uniform, with replacement)."""
        return rng.choices(self._allowed, k=n)


def model_vocabulary(model_dir: str | os.PathLike[str]) -> Vocabulary:
    """The replayable ids of a local model: its tokenizer's vocabulary minus special tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.fspath(model_dir))
    size = len(tokenizer)
    config = Path(model_dir) / "config.json"
    if config.is_file():
        # Ids past the embedding table would be rejected by the engine.
        size = min(size, int(json.loads(config.read_text()).get("vocab_size", size)))
    return Vocabulary(size, frozenset(int(i) for i in tokenizer.all_special_ids))
