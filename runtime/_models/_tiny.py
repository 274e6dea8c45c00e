"""The random-weight models ``tiny`` and ``llama-49m``: a local BPE tokenizer and random Llamas.

Everything comes from this machine: the tokenizer's corpus is the Python
standard library's own ``.py``/``.txt`` files, the weights are drawn from a
fixed seed. Both models share the tokenizer (:func:`_local_tokenizer`), the
chat template and the builder (:func:`_build_random_llama`); they differ only
in their :class:`RandomLlama` shape. The build is deterministic for given
Python, torch, transformers and tokenizers versions.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ModelPreparationError
from ._common import (
    CHATML_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    SPECIAL_TOKENS,
    import_transformers,
    special_token_ids,
    state_dict_sha256,
)

# --- tiny recipe parameters ------------------------------------------------
TINY_SEED = 0
TINY_VOCAB_SIZE = 4096  # tokens, the three special tokens included
TINY_CORPUS_MAX_BYTES = 4 << 20  # UTF-8 bytes: ~1 s of BPE training on 2 cores
TINY_CORPUS_MAX_FILE_BYTES = 16 << 10  # per file, so no single file dominates
# Directories of the standard library that are skipped: tests are large and
# full of odd encodings, ``encodings`` is mostly code-page tables.
_CORPUS_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}
)


def _stdlib_corpus() -> list[str]:
    """Documents for tokenizer training: standard-library ``.py``/``.txt`` files.

    Files are read in sorted relative-path order, each cut to
    ``TINY_CORPUS_MAX_FILE_BYTES`` characters, until ``TINY_CORPUS_MAX_BYTES``
    UTF-8 bytes, so the corpus is fixed for a given Python version. Python
    code with English docstrings is close to what agents exchange (code, JSON,
    prose).
    """
    root = Path(sysconfig.get_path("stdlib"))
    paths: list[tuple[str, Path]] = []
    # os.walk, pruned in place: the stdlib directory often holds a large
    # site-packages (~1 GB here) that rglob would walk for nothing.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _CORPUS_SKIP_DIRS]
        for filename in filenames:
            if filename.endswith((".py", ".txt")):
                path = Path(dirpath, filename)
                paths.append((path.relative_to(root).as_posix(), path))
    paths.sort()
    docs: list[str] = []
    total = 0
    for _, path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a few files are Latin-1 on purpose; skipping them is deterministic
        text = text[:TINY_CORPUS_MAX_FILE_BYTES]
        docs.append(text)
        total += len(text.encode("utf-8"))
        if total >= TINY_CORPUS_MAX_BYTES:
            break
    if total < TINY_CORPUS_MAX_BYTES // 8:
        raise ModelPreparationError(
            f"only {total} bytes of Python sources found under {root}; the tiny "
            f"model's tokenizer is trained on the standard library's sources"
        )
    return docs


def _train_tiny_tokenizer(docs: Sequence[str]) -> Any:
    """Train a byte-level BPE (``tokenizers.Tokenizer``) on ``docs``.

    Byte-level means every string round-trips, whatever the corpus lacked.
    Training is deterministic for a given corpus and tokenizers version.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer


@dataclass(frozen=True)
class RandomLlama:
    """The shape of a random-weight ``LlamaForCausalLM`` on the local tokenizer.

    ``head_dim`` is ``hidden // heads`` (vLLM's CPU attention needs it in
    {32, 64, 80, ...}); key/value heads equal ``heads`` (no grouped-query
    attention). Weights are drawn from ``seed`` and saved in bfloat16.
    """

    layers: int
    hidden: int
    heads: int
    intermediate: int
    #: ``max_position_embeddings``: the longest context, tokens.
    max_positions: int
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


#: ``tiny``: cheap enough for every test; its output is noise.  Its 32K positions are for
#: tests that keep a request decoding for minutes: positions past the limit index out of
#: vLLM's rotary cache and kill the engine.
TINY = RandomLlama(layers=2, hidden=128, heads=2, intermediate=256, max_positions=32768, seed=TINY_SEED)
#: ``llama-49m``: the 8-layer, hidden-512 random Llama of DESIGN.md's measurements (a 1,500-token
#: prefill costs seconds on a CPU, not tiny's 80 ms), on tiny's tokenizer: 29.9M parameters,
#: 25.7M of them in the layers (the compute), 4.2M in the embeddings and the LM head.  8K
#: positions: on 2 cores a prefill of 12K tokens takes over a minute (attention grows with the
#: context), and `agentrt calibrate` measures up to the model's limit.
LLAMA_49M = RandomLlama(layers=8, hidden=512, heads=8, intermediate=1408, max_positions=8192, seed=0)


def _local_tokenizer() -> tuple[Any, dict[str, Any]]:
    """The local BPE tokenizer every random-weight model uses, and what it was trained on.

    A ``PreTrainedTokenizerFast`` with the ChatML special tokens at ids 0-2
    and the ChatML template; the details (corpus size and hash, vocabulary
    size) go into the model's marker file.
    """
    tf = import_transformers()
    docs = _stdlib_corpus()
    corpus_sha = hashlib.sha256("\0".join(docs).encode("utf-8")).hexdigest()
    raw_tokenizer = _train_tiny_tokenizer(docs)
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=raw_tokenizer,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHATML_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    ids = special_token_ids(tokenizer)
    if ids != {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}:
        raise ModelPreparationError(f"unexpected special token ids in the local tokenizer: {ids}")
    details = {
        "corpus": "python stdlib .py/.txt, sorted",
        "corpus_bytes": sum(len(d.encode("utf-8")) for d in docs),
        "corpus_sha256": corpus_sha,
        "vocab_size": len(tokenizer),
    }
    return tokenizer, details


def _build_random_llama(out: Path, shape: RandomLlama) -> dict[str, Any]:
    """Write a random-weight Llama of ``shape`` and the local tokenizer into ``out``."""
    import torch

    tf = import_transformers()

    tokenizer, details = _local_tokenizer()
    ids = special_token_ids(tokenizer)
    tokenizer.save_pretrained(str(out))

    config = tf.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_positions,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        tie_word_embeddings=False,
    )
    # fork_rng: seed for reproducible weights without disturbing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shape.seed)
        model = tf.LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16  # recorded in config.json for vLLM's dtype="auto"
    model.generation_config = tf.GenerationConfig(
        bos_token_id=ids[ENDOFTEXT], eos_token_id=ids[IM_END], pad_token_id=ids[ENDOFTEXT]
    )
    model.save_pretrained(str(out))
    return {
        **details,
        "seed": shape.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": state_dict_sha256(model.state_dict()),
    }


def build_tiny(out: Path, scratch: Path) -> dict[str, Any]:
    """Write the tiny random-weight Llama and its tokenizer into ``out``."""
    del scratch  # nothing to download
    return _build_random_llama(out, TINY)


def build_llama_49m(out: Path, scratch: Path) -> dict[str, Any]:
    """Write ``llama-49m`` (8 layers, hidden 512) on the tiny model's tokenizer into ``out``."""
    del scratch  # nothing to download
    return _build_random_llama(out, LLAMA_49M)
