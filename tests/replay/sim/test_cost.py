"""The cost model: exact step times from known curves, loading and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.replay._sim import CostProfile, ProfileError, bundled_profiles

from .conftest import profile_data


def test_interpolation_clamps_prefill_and_extrapolates_decode(profile: CostProfile) -> None:
    assert profile.prefill_rate(0) == 10000.0
    assert profile.prefill_rate(5000) == pytest.approx(7500.0)
    assert profile.prefill_rate(50000) == 5000.0  # clamped past the last point
    assert profile.decode_time(1) == pytest.approx(0.010)
    assert profile.decode_time(6) == pytest.approx(0.015)
    assert profile.decode_time(21) == pytest.approx(0.030)  # extrapolated along the last segment


def test_step_time_is_overhead_plus_prefill_chunks_plus_decode() -> None:
    p = CostProfile.model_validate(profile_data(decode_s_per_context_token=1e-6))
    # Chunk of 2000 tokens after 0 computed: mean context 1000 -> 9500 tokens/s.
    # Chunk of 1000 after 9000: mean context 9500 -> 5250 tokens/s.
    # Decode of 6 sequences attending 3000 tokens: 0.015 + 0.003.
    expected = 0.001 + 2000 / 9500 + 1000 / 5250 + 0.015 + 0.003
    assert p.step_time([(0, 2000), (9000, 1000)], 6, 3000) == pytest.approx(expected)
    assert p.step_time([], 0, 0) == pytest.approx(0.001)


def test_bundled_profile_loads_by_name() -> None:
    assert "h100-llama3-8b" in bundled_profiles()
    p = CostProfile.load("h100-llama3-8b")
    assert p.block_size == 16
    assert p.max_num_batched_tokens == 8192
    assert p.kv_blocks == 26674
    assert "approximation" in p.source
    assert 0.005 < p.decode_time(1) < p.decode_time(64) < p.decode_time(256)


def test_load_from_path(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile_data(name="mine")))
    assert CostProfile.load(path).name == "mine"
    assert CostProfile.load(str(path)).name == "mine"


def test_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(profile_data(block_size=0, surprise=1)))
    with pytest.raises(ProfileError) as info:
        CostProfile.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "field block_size" in message
    assert "field surprise" in message

    path.write_text(json.dumps(profile_data(decode_step_s=[[8, 0.01], [4, 0.02]])))
    with pytest.raises(ProfileError, match=r"decode_step_s.*increasing"):
        CostProfile.load(path)
    with pytest.raises(ProfileError, match="unknown cost profile 'nope'"):
        CostProfile.load("nope")
    with pytest.raises(ProfileError, match="cannot read"):
        CostProfile.load(tmp_path / "missing.json")


def test_decode_fit_recovers_per_batch_lines() -> None:
    from runtime.replay._calibrate import _fit_decode

    # Steps built from a known model: a fixed part and a per-context-token
    # cost that both depend on the batch size, as on a CPU.
    fixed = {1: 0.003, 2: 0.0036, 4: 0.0045, 8: 0.0065}
    per_token = {1: 4e-7, 2: 3e-7, 4: 2e-7, 8: 1.5e-7}
    rows = [(b, c, fixed[b] + per_token[b] * b * c) for b in fixed for c in (16, 1024, 2048, 4096)]
    overhead, per_batch, per_context = _fit_decode(rows)
    assert 0 < overhead < min(fixed.values())
    for (b, rest), (b2, k) in zip(per_batch, per_context, strict=True):
        assert b == b2
        assert overhead + rest == pytest.approx(fixed[b], rel=1e-6)
        assert k == pytest.approx(per_token[b], rel=1e-6)
    profile = CostProfile.model_validate(
        {
            "name": "fit",
            "model": "m",
            "device": "cpu",
            "source": "synthetic",
            "block_size": 128,
            "kv_blocks": 100,
            "max_num_seqs": 8,
            "max_num_batched_tokens": 2048,
            "step_overhead_s": overhead,
            "prefill_tokens_per_s": [[0, 1000.0]],
            "decode_step_s": per_batch,
            "decode_s_per_context_token": per_context,
        }
    )
    # The profile prices every measured step as measured.
    for b, c, seconds in rows:
        assert profile.step_time([], b, b * c) == pytest.approx(seconds, rel=1e-6)


def test_the_number_format_is_optional(tmp_path: Path) -> None:
    assert CostProfile.load("h100-llama3-8b").dtype == "bfloat16"
    assert CostProfile.model_validate(profile_data()).dtype is None  # a profile from before the field
    path = tmp_path / "p.json"
    skipped = {"decode": [[1, 16, 0.01]], "prefill": [[256, 0.05]], "skipped_decode": [[32, 4096]]}
    path.write_text(json.dumps(profile_data(dtype="float32", measurements={**skipped, "skipped_prefill": []})))
    loaded = CostProfile.load(path)
    assert loaded.dtype == "float32"
    assert loaded.measurements is not None and loaded.measurements["skipped_decode"] == [[32, 4096]]
