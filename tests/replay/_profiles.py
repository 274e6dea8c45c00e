"""Simulator cost profiles shared by the replay tests."""

from __future__ import annotations

from typing import Any

#: A small CPU-like profile with round numbers: 10 ms per step plus 1 ms per
#: decoding sequence, 10,000 prefill tokens/s, 20 ms of request latency.
ROUND_PROFILE: dict[str, Any] = {
    "name": "test-cpu",
    "model": "test-model",
    "device": "cpu",
    "dtype": "float32",
    "source": "round numbers for tests",
    "block_size": 128,
    "kv_blocks": 512,
    "max_num_seqs": 16,
    "max_num_batched_tokens": 2048,
    "step_overhead_s": 0.01,
    "request_latency_s": 0.02,
    "prefill_tokens_per_s": [[0, 10000.0]],
    "decode_step_s": [[1, 0.001], [16, 0.016]],
    "decode_s_per_context_token": 0.0,
}
