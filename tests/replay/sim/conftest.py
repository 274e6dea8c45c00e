"""Fixtures of the simulator tests: a small cost profile with round numbers."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.replay._sim import CostProfile


def profile_data(**overrides: Any) -> dict[str, Any]:
    """A CPU-like profile: block 128, 1 ms overhead, 10k tokens/s prefill, 10 ms decode steps."""
    data: dict[str, Any] = {
        "name": "tiny-cpu",
        "model": "tiny",
        "device": "cpu",
        "source": "made-up round numbers for tests",
        "block_size": 128,
        "kv_blocks": 2048,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 2048,
        "step_overhead_s": 0.001,
        "prefill_tokens_per_s": [[0, 10000.0], [10000, 5000.0]],
        "decode_step_s": [[1, 0.010], [11, 0.020]],
        "decode_s_per_context_token": 0.0,
    }
    data.update(overrides)
    return data


@pytest.fixture
def profile() -> CostProfile:
    return CostProfile.model_validate(profile_data())
