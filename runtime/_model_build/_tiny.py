"""The ``tiny`` model: a BPE tokenizer trained on stdlib sources and a random-weight Llama.

Everything comes from this machine: the tokenizer's corpus is the Python
standard library's own ``.py``/``.txt`` files, the weights are drawn from a
fixed seed. The build is deterministic for given Python, torch, transformers
and tokenizers versions.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import ModelPreparationError
from ._common import (
    CHATML_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    SPECIAL_TOKENS,
    _special_token_ids,
    _state_dict_sha256,
    _transformers,
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


def _build_tiny(out: Path, scratch: Path) -> dict[str, Any]:
    """Write the tiny random-weight Llama and its tokenizer into ``out``."""
    del scratch  # nothing to download
    import torch

    tf = _transformers()

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
    ids = _special_token_ids(tokenizer)
    if ids != {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}:
        raise ModelPreparationError(f"unexpected special token ids in the tiny tokenizer: {ids}")
    tokenizer.save_pretrained(str(out))

    config = tf.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,  # vLLM's CPU attention needs head_dim >= 32
        # Long enough for tests that keep a request decoding for minutes:
        # positions past this index out of vLLM's rotary cache and kill the engine.
        max_position_embeddings=32768,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        tie_word_embeddings=False,
    )
    # fork_rng: seed for reproducible weights without disturbing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = tf.LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16  # recorded in config.json for vLLM's dtype="auto"
    model.generation_config = tf.GenerationConfig(
        bos_token_id=ids[ENDOFTEXT], eos_token_id=ids[IM_END], pad_token_id=ids[ENDOFTEXT]
    )
    model.save_pretrained(str(out))
    return {
        "corpus": "python stdlib .py/.txt, sorted",
        "corpus_bytes": sum(len(d.encode("utf-8")) for d in docs),
        "corpus_sha256": corpus_sha,
        "vocab_size": len(tokenizer),
        "seed": TINY_SEED,
        "weights_sha256": _state_dict_sha256(model.state_dict()),
    }
