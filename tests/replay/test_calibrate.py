"""Calibration without an engine: which grid points fit the KV cache, the fit on fewer rows, model limits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runtime import DTYPE_BYTES, resolve_dtype
from runtime.replay._calibrate import (
    CPU_BLOCK_SIZE,
    REPLAY_MAX_MODEL_LEN,
    _fit_decode,
    calibration_engine,
    fitting_decode_points,
    fitting_prefill_contexts,
    kv_bytes_per_token,
)
from runtime.replay._model_limits import model_context_limit, sized_context_limit

BATCHES = (1, 2, 4, 8, 16, 32)


def short_model(tiny_model: Path, where: Path, **config: object) -> Path:
    """A copy of the tiny model whose config.json has ``config`` changed."""
    copy = where / "tiny-short"
    shutil.copytree(tiny_model, copy)
    data = json.loads((copy / "config.json").read_text())
    data.update(config)
    (copy / "config.json").write_text(json.dumps(data))
    return copy


def test_decode_points_that_would_fill_the_cache_are_left_out() -> None:
    # The case: a 1 GiB cache of 1,024 blocks of 128 tokens.  At
    # context 4096 a sequence takes 33 blocks (4,097 prompt + 32 decoded
    # tokens): 16 of them take 528 blocks, 32 take 1,056, more than the cache.
    fitting, left_out = fitting_decode_points(BATCHES, (16, 1024, 4096, 8192), 32, kv_blocks=1024)
    assert left_out == [(32, 4096), (16, 8192), (32, 8192)]
    assert (16, 4096) in fitting and (8, 8192) in fitting
    assert len(fitting) + len(left_out) == 6 * 4
    # At most 90% of the blocks: 8 sequences of 9 blocks at context 1024
    # (72 blocks) would fit a cache of 79, but not its usable 71.
    fitting, left_out = fitting_decode_points(BATCHES, (1024,), 32, kv_blocks=79)
    assert fitting == [(1, 1024), (2, 1024), (4, 1024)] and left_out == [(8, 1024), (16, 1024), (32, 1024)]
    # Sorted by context, then batch, whatever order they came in.
    fitting, _ = fitting_decode_points((4, 1), (1024, 16), 32, kv_blocks=10_000)
    assert fitting == [(1, 16), (4, 16), (1, 1024), (4, 1024)]


def test_decode_points_past_the_context_limit_are_left_out() -> None:
    # 8,193 prompt tokens + 32 decoded do not fit an 8,192-token engine, however large its cache.
    fitting, left_out = fitting_decode_points((1, 2), (4096, 8192), 32, kv_blocks=1 << 20, max_model_len=8192)
    assert fitting == [(1, 4096), (2, 4096)] and left_out == [(1, 8192), (2, 8192)]


def test_prefill_contexts_that_would_not_fit_are_left_out() -> None:
    contexts = (0, 2048, 4096, 8192, 12288)
    # 90 usable blocks: 12,288 + 512 + 1 tokens need 101, 8,192 + 513 need 69.
    assert fitting_prefill_contexts(contexts, 512, kv_blocks=100) == ([0, 2048, 4096, 8192], [12288])
    assert fitting_prefill_contexts(contexts, 512, kv_blocks=10_000, max_model_len=8192) == (
        [0, 2048, 4096],
        [8192, 12288],
    )


def test_decode_fit_with_fewer_rows() -> None:
    # Batch 32 fits only the shortest context, batch 16 two of three: the
    # fit keeps every batch measured, and batch 32 takes batch 16's cost per
    # context token (one point has no slope).
    fixed = {1: 0.003, 4: 0.0045, 16: 0.008, 32: 0.012}
    per_token = {1: 4e-7, 4: 2e-7, 16: 1.5e-7, 32: 1.5e-7}
    contexts = {1: (16, 1024, 4096), 4: (16, 1024, 4096), 16: (16, 1024), 32: (16,)}
    rows = [(b, c, fixed[b] + per_token[b] * b * c) for b in fixed for c in contexts[b]]
    overhead, per_batch, per_context = _fit_decode(rows)
    assert [b for b, _ in per_batch] == [b for b, _ in per_context] == [1, 4, 16, 32]
    for (b, rest), (_, k) in zip(per_batch, per_context, strict=True):
        assert k == pytest.approx(per_token[b], rel=1e-6)
        assert overhead + rest == pytest.approx(fixed[b], rel=1e-6)
    # One batch size alone still fits (no slope to borrow: all of it is the fixed part).
    overhead, per_batch, per_context = _fit_decode([(1, 16, 0.004)])
    assert per_context == [(1, 0.0)] and overhead + per_batch[0][1] == pytest.approx(0.004)


def test_kv_bytes_follow_the_format(tiny_model: Path) -> None:
    # tiny: 2 layers x 2 KV heads x 64 dims, keys and values.
    assert kv_bytes_per_token(tiny_model, DTYPE_BYTES["float32"]) == 2 * 2 * 2 * 64 * 4
    assert kv_bytes_per_token(tiny_model, DTYPE_BYTES["bfloat16"]) == 2 * 2 * 2 * 64 * 2


def test_model_context_limit_reads_config_json(tiny_model: Path, tmp_path: Path) -> None:
    assert json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"] == 32768
    assert model_context_limit(tiny_model) == 32768
    assert model_context_limit(short_model(tiny_model, tmp_path, max_position_embeddings=1024)) == 1024
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"hidden_size": 8}))
    assert model_context_limit(bare) is None  # no key: no cap
    (bare / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 2048}}))
    assert model_context_limit(bare) == 2048
    linear = {"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    (bare / "config.json").write_text(json.dumps(linear))
    assert model_context_limit(bare) == 16384  # vLLM applies a linear scaling's factor
    llama3 = {"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    (bare / "config.json").write_text(json.dumps(llama3))
    assert model_context_limit(bare) == 131072  # and not llama3's


def test_sized_context_limit_is_whole_blocks_with_a_margin_under_the_model() -> None:
    assert sized_context_limit(5010, None, 128) == 5248  # 40 blocks hold 5,010; one more
    assert sized_context_limit(5120, None, 128) == 5248
    assert sized_context_limit(5010, 32768, 128) == 5248
    assert sized_context_limit(5010, 5100, 128) == 5100  # the model's limit caps it
    assert sized_context_limit(0, None, 128) == 256


def test_calibration_engine_follows_the_model_and_the_format(tiny_model: Path, tmp_path: Path) -> None:
    # Not started: the engine's arguments are what vLLM would be given.
    engine = calibration_engine(tiny_model)
    assert engine.dtype == resolve_dtype("auto") and engine._args["max_model_len"] == REPLAY_MAX_MODEL_LEN
    assert calibration_engine(tiny_model, dtype="bfloat16").dtype == "bfloat16"
    short = short_model(tiny_model, tmp_path, max_position_embeddings=1024)
    assert calibration_engine(short)._args["max_model_len"] == 1024
    # A small cache: vLLM starts only if one sequence of the context limit fits with a block to spare.
    assert calibration_engine(tiny_model, kv_blocks=64)._args["max_model_len"] == 63 * CPU_BLOCK_SIZE
    assert calibration_engine(short, kv_blocks=64)._args["max_model_len"] == 1024
