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

import numpy as np

__all__ = ["Vocabulary", "model_vocabulary"]


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The token ids a replay may draw: ``[0, size)`` minus ``special``."""

    size: int
    special: frozenset[int] = frozenset()
    # The drawable ids in increasing order, built once: a replay draws
    # millions of tokens (a billion at published agent sizes), so they are
    # drawn as indices into this array by numpy rather than one at a time.
    _allowed: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.size - len(self.special) < 2:
            raise ValueError(f"a vocabulary of {self.size} ids with {len(self.special)} special ones is too small")
        allowed = np.setdiff1d(np.arange(self.size, dtype=np.int64), np.fromiter(self.special, dtype=np.int64))
        object.__setattr__(self, "_allowed", allowed)

    def draw(self, rng: random.Random, n: int) -> list[int]:
        """``n`` pseudo-random non-special ids, determined by the state of ``rng`` (which advances).

        Uniform with replacement (short draws up to a bias below
        ``size / 2**32``: a 32-bit random number modulo the number of ids).
        """
        picks: np.ndarray
        if n < 1024:
            # Few ids: a numpy generator costs more to set up than to use.
            picks = np.frombuffer(rng.randbytes(4 * n), dtype=np.uint32) % self._allowed.size
        else:
            picks = np.random.Generator(np.random.PCG64(rng.getrandbits(64))).integers(0, self._allowed.size, n)
        return self._allowed[picks].tolist()  # type: ignore[no-any-return]


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
