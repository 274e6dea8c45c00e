"""``agentrt calibrate``: measure a real engine and write the simulator's cost profile.

The simulator (:mod:`runtime._sim`) prices each engine step from a profile:
a fixed step overhead, prefill throughput as a function of the context a chunk
attends to, and decode step time as a function of batch size (plus a per
context token term).  This module measures exactly those quantities on an
:class:`InProcessEngine`, through the engine API the runtime uses:

- decode: ``b`` concurrent requests with cached ``c``-token prompts
  generating ``n`` tokens; step time = (e2e - TTFT) / (n - 1), median over
  requests and repeats, on a grid of ``b`` and ``c``, fitted to
  overhead + per_sequence * b + per_context * b * c (least squares);
- request latency: time to first token of a prompt the prefix cache holds in
  full (one near-empty step) minus the step overhead: the frontend and
  inter-process path every request pays once;
- prefill: a prompt of ``c`` cached tokens (warmed first, a multiple of the
  block size) plus ``chunk`` fresh ones; throughput = chunk / (its TTFT -
  the fully cached TTFT);

Times are medians over ``repeats`` runs, each on fresh random tokens.
"""

from __future__ import annotations

import json
import os
import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from ._engines._base import Completion, GenerateRequest, SamplingOptions, TokenPrompt
from ._engines._inprocess import InProcessEngine
from ._tokens import Vocabulary

__all__ = ["calibrate_engine", "kv_bytes_per_token"]

#: vLLM's KV block size on the CPU backend (tokens).
CPU_BLOCK_SIZE = 128


def kv_bytes_per_token(model_dir: Path, dtype_bytes: int = 2) -> int:
    """KV-cache bytes one token takes for the model in ``model_dir`` (from its config.json)."""
    config = json.loads((model_dir / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return int(2 * config["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes)


class _Prober:
    def __init__(self, engine: InProcessEngine, vocabulary: Vocabulary, seed: int) -> None:
        self.engine = engine
        self.vocabulary = vocabulary
        self.rng = random.Random(seed)
        self._ids = 0

    def tokens(self, n: int) -> list[int]:
        return self.vocabulary.draw(self.rng, n)

    async def run(self, prompt: Sequence[int], max_tokens: int) -> Completion:
        self._ids += 1
        request = GenerateRequest(
            f"calibrate-{self._ids}",
            TokenPrompt(tuple(prompt)),
            SamplingOptions(max_tokens=max_tokens, ignore_eos=True),
        )
        return await self.engine.generate(request)

    async def ttft(self, prompt: Sequence[int]) -> float:
        done = await self.run(prompt, 1)
        assert done.ttft_s is not None
        return done.ttft_s

    async def decode_steps(self, batch: int, context: int, n: int) -> list[float]:
        """Per-request decode step times of ``batch`` concurrent requests at ``context`` tokens."""
        prompts = [self.tokens(context) for _ in range(batch)]
        if context > CPU_BLOCK_SIZE:
            # Cache the prompts first: otherwise the first requests' decode
            # steps also carry the later ones' prefill chunks.
            for prompt in prompts:
                await self.run(prompt, 1)
        steps: list[float] = []

        async def one(prompt: list[int]) -> None:
            done = await self.run(prompt, n)
            assert done.ttft_s is not None
            steps.append((done.e2e_s - done.ttft_s) / (n - 1))

        async with anyio.create_task_group() as tg:
            for prompt in prompts:
                tg.start_soon(one, prompt)
        return steps


async def calibrate_engine(
    engine: InProcessEngine,
    *,
    name: str,
    vocabulary: Vocabulary,
    kv_blocks: int,
    contexts: Sequence[int] = (0, 512, 1024, 2048, 3072),
    chunk: int = 512,
    batches: Sequence[int] = (1, 2, 4, 8, 16),
    decode_tokens: int = 32,
    long_context: int = 2048,
    repeats: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure ``engine`` (started) and return a cost profile document for the simulator."""
    probe = _Prober(engine, vocabulary, seed)
    await probe.run(probe.tokens(64), 4)  # warm-up: first-step costs are not representative

    # Decode steps over a grid of batch sizes and contexts, fitted by least
    # squares to  step = overhead + per_sequence * b + per_context * b * context:
    # single points are noisy on a busy machine, and attention's share
    # only shows at long contexts and large batches.
    rows: list[tuple[int, int, float]] = []
    for context in sorted({16, long_context // 2, long_context}):
        for batch in batches:
            progress(f"decode of {batch} sequences at context {context}")
            steps: list[float] = []
            for _ in range(repeats):
                steps += await probe.decode_steps(batch, context, decode_tokens)
            rows.append((batch, context, statistics.median(steps)))
    overhead, per_sequence, per_context = _fit_decode(rows)
    decode = [[batch, round(per_sequence * batch, 7)] for batch in batches]

    progress("request latency")
    cached: list[float] = []
    for _ in range(repeats):
        prompt = probe.tokens(2 * CPU_BLOCK_SIZE)
        await probe.run(prompt, 1)
        cached.append(await probe.ttft(prompt))  # all cached: one near-empty step
    ttft_cached = statistics.median(cached)

    prefill: list[list[float]] = []
    for context in contexts:
        progress(f"prefill at context {context}")
        if context % CPU_BLOCK_SIZE:
            raise ValueError(f"contexts must be multiples of {CPU_BLOCK_SIZE} tokens, got {context}")
        times = []
        for _ in range(repeats):
            prefix = probe.tokens(context)
            if context:
                await probe.run(prefix, 1)
            times.append(await probe.ttft(prefix + probe.tokens(chunk)))
        seconds = max(statistics.median(times) - ttft_cached, 1e-6)
        prefill.append([context + chunk / 2, round(chunk / seconds, 1)])

    scheduler = engine.vllm.vllm_config.scheduler_config
    return {
        "name": name,
        "model": engine.model,
        "device": "cpu",
        "source": (
            f"measured by `agentrt calibrate` with vLLM {_vllm_version()} on this machine "
            f"({os.cpu_count()} CPUs), medians of {repeats} runs"
        ),
        "block_size": CPU_BLOCK_SIZE,
        "kv_blocks": kv_blocks,
        "max_num_seqs": scheduler.max_num_seqs,
        "max_num_batched_tokens": scheduler.max_num_batched_tokens,
        "step_overhead_s": round(overhead, 6),
        "request_latency_s": round(max(ttft_cached - overhead, 0.0), 6),
        "prefill_tokens_per_s": prefill,
        "decode_step_s": decode,
        "decode_s_per_context_token": per_context,
    }


def _fit_decode(rows: Sequence[tuple[int, int, float]]) -> tuple[float, float, float]:
    """Least-squares ``(overhead, per_sequence, per_context)`` of decode steps; each kept physical (> 0)."""
    import numpy as np

    batch = np.array([b for b, _, _ in rows], dtype=float)
    context = np.array([c for _, c, _ in rows], dtype=float)
    seconds = np.array([s for _, _, s in rows], dtype=float)
    design = np.column_stack([np.ones_like(batch), batch, batch * context])
    (overhead, per_sequence, per_context), *_ = np.linalg.lstsq(design, seconds, rcond=None)
    return max(float(overhead), 1e-4), max(float(per_sequence), 1e-7), max(float(per_context), 0.0)


def _vllm_version() -> str:
    try:
        import vllm

        return str(vllm.__version__)
    except Exception:  # pragma: no cover - the version string is cosmetic
        return "?"
