"""``agentrt calibrate``: measure a real engine and write the simulator's cost profile.

The simulator (:mod:`runtime.replay._sim`) prices each engine step from a profile:
a fixed step overhead, prefill throughput as a function of the context a chunk
attends to, and decode step time as a function of batch size (plus a per
context token term).  This module measures exactly those quantities on an
:class:`InProcessEngine`, through the engine API the runtime uses:

- decode: ``b`` concurrent requests with cached ``c``-token prompts
  generating ``n`` tokens; step time = (e2e - TTFT) / (n - 1), median over
  requests and repeats, on a grid of ``b`` (up to the engine's
  ``max_num_seqs``) and ``c``.  The prompts are distinct (shared blocks
  would make attention look cheap: they stay in the CPU's caches), computed
  once per context and reused across batch sizes and repeats.  Each batch
  size's steps are fitted by least squares to ``f(b) + per_context(b) * b *
  c``: on a CPU neither part is linear in the batch (threads are idle at
  small batches); the step overhead is the intercept of ``f`` extrapolated
  to an empty batch;
- request latency: time to first token of a prompt the prefix cache holds in
  full (one near-empty step) minus the step overhead: the frontend and
  inter-process path every request pays once;
- prefill: a prompt of ``c`` cached tokens (warmed first, a multiple of the
  block size) plus ``chunk`` fresh ones; its TTFT minus the fully cached TTFT
  is fitted over all contexts to ``chunk * (a + k * mean_context)`` (attention
  grows linearly with the context), and the profile stores the fitted
  throughput at each measured context: single points are noisy.

Times are medians over ``repeats`` runs, each on fresh random tokens.
Measure on a quiet machine: other work on the CPUs slows every step, and the
simulator then over-prices everything; :func:`calibrate_engine` reports the
load average it saw.
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

from runtime import Completion, GenerateRequest, InProcessEngine, SamplingOptions, TokenPrompt

from ._model_limits import model_context_limit
from ._tokens import Vocabulary

__all__ = [
    "CPU_BLOCK_SIZE",
    "KV_HEADROOM",
    "REPLAY_MAX_MODEL_LEN",
    "CalibrationProbe",
    "cached_prompt_length",
    "calibrate_engine",
    "calibration_engine",
    "fitting_decode_points",
    "fitting_prefill_contexts",
    "kv_bytes_per_token",
]

#: vLLM's KV block size on the CPU backend (tokens).
CPU_BLOCK_SIZE = 128

#: Context limit (tokens) of the engine ``agentrt calibrate`` measures (at most the model's own).
REPLAY_MAX_MODEL_LEN = 16384

#: Share of the engine's KV blocks a calibration point may fill.  A point
#: whose sequences fill the cache measures preemption, not decoding (float32
#: on the 1 GiB cache: 32 sequences at 4,096 tokens took 3.77 s per step
#: against 0.16 s for 16), and vLLM needs some blocks beyond the sequences'
#: own (the block a step's new token opens, the warm-up and probe requests
#: still cached), so the last tenth stays free.
KV_HEADROOM = 0.9


def kv_bytes_per_token(model_dir: Path, dtype_bytes: int) -> int:
    """KV-cache bytes one token takes for the model in ``model_dir`` (from its config.json).

    ``dtype_bytes``: bytes per element of the engine's format
    (``runtime.DTYPE_BYTES[engine.dtype]``: 4 in float32, 2 in bfloat16).
    """
    config = json.loads((model_dir / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return int(2 * config["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes)


def calibration_engine(
    model_dir: Path,
    *,
    name: str = "calibrate",
    kv_cache_gib: int = 1,
    kv_blocks: int | None = None,
    dtype: str = "auto",
) -> InProcessEngine:
    """The in-process engine ``agentrt calibrate`` measures, not started.

    Its context limit is :data:`REPLAY_MAX_MODEL_LEN`, or the model's own,
    or what ``kv_blocks`` blocks hold less one, whichever is smallest;
    ``dtype`` is the number format (``"auto"``: the faster one for this
    machine, see :func:`runtime.resolve_dtype`).
    """
    limits = [REPLAY_MAX_MODEL_LEN]  # long: the prefill curve then reaches the contexts replays use
    model_limit = model_context_limit(model_dir)
    if model_limit is not None:
        limits.append(model_limit)
    if kv_blocks is not None:
        # vLLM refuses to start unless one sequence of the context limit fits the cache with a block to spare.
        limits.append((kv_blocks - 1) * CPU_BLOCK_SIZE)
    return InProcessEngine(
        model_dir,
        name=name,
        kv_cache_gib=kv_cache_gib,
        max_model_len=min(limits),
        num_kv_blocks=kv_blocks,
        dtype=dtype,
    )


def _blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def _misfit(sequences: int, tokens: int, kv_blocks: int, block_size: int, max_model_len: int | None) -> str | None:
    """Why ``sequences`` sequences of ``tokens`` tokens cannot be a calibration point; ``None`` if they can.

    The one rule: each fits ``max_model_len``, and together they take at most
    :data:`KV_HEADROOM` of the ``kv_blocks`` blocks.
    """
    if max_model_len is not None and tokens > max_model_len:
        return f"{tokens} tokens per sequence exceed the engine's context limit of {max_model_len}"
    usable = int(kv_blocks * KV_HEADROOM)
    needed = sequences * _blocks(tokens, block_size)
    if needed > usable:
        return f"{needed} KV blocks exceed {usable}, {KV_HEADROOM:.0%} of the engine's {kv_blocks}"
    return None


def fitting_decode_points(
    batches: Sequence[int],
    contexts: Sequence[int],
    decode_tokens: int,
    kv_blocks: int,
    block_size: int = CPU_BLOCK_SIZE,
    max_model_len: int | None = None,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Which decode points ``(batch, context)`` calibration can measure, and which it leaves out.

    A point fits when ``batch`` sequences of its prompt
    (:func:`cached_prompt_length` of the context) plus ``decode_tokens``
    take at most :data:`KV_HEADROOM` of the ``kv_blocks`` blocks, and one
    sequence fits ``max_model_len``.  Returns ``(fitting, left_out)``, each
    sorted by context, then batch.
    """
    fitting: list[tuple[int, int]] = []
    left_out: list[tuple[int, int]] = []
    for context in sorted(set(contexts)):
        tokens = cached_prompt_length(context) + decode_tokens
        for batch in sorted(set(batches)):
            fits = _misfit(batch, tokens, kv_blocks, block_size, max_model_len) is None
            (fitting if fits else left_out).append((batch, context))
    return fitting, left_out


def fitting_prefill_contexts(
    contexts: Sequence[int],
    chunk: int,
    kv_blocks: int,
    block_size: int = CPU_BLOCK_SIZE,
    max_model_len: int | None = None,
) -> tuple[list[int], list[int]]:
    """Which prefill contexts calibration can measure (``context`` cached tokens, then ``chunk`` fresh ones).

    The rule of :func:`fitting_decode_points` for one sequence of
    ``context + chunk`` tokens and its one output token.  Returns
    ``(fitting, left_out)`` in the given order.
    """
    fitting: list[int] = []
    left_out: list[int] = []
    for context in contexts:
        fits = _misfit(1, context + chunk + 1, kv_blocks, block_size, max_model_len) is None
        (fitting if fits else left_out).append(context)
    return fitting, left_out


def cached_prompt_length(context: int) -> int:
    """The length calibration gives a decode prompt of ``context`` tokens.

    See :meth:`CalibrationProbe.cached_prompts`.
    """
    return context if context < CPU_BLOCK_SIZE else context // CPU_BLOCK_SIZE * CPU_BLOCK_SIZE + 1


class CalibrationProbe:
    """Timed probes of one started engine, on fresh random prompts (also used by the fidelity benchmark's anchors)."""

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

    async def cached_ttft(self) -> float:
        """Time to first token of a prompt the prefix cache holds in full: one near-empty step."""
        prompt = self.tokens(2 * CPU_BLOCK_SIZE)
        await self.run(prompt, 1)
        return await self.ttft(prompt)

    async def chunk_ttft(self, context: int, chunk: int) -> float:
        """Time to first token of ``chunk`` fresh tokens after ``context`` cached ones."""
        prefix = self.tokens(context)
        if context:
            await self.run(prefix, 1)
        return await self.ttft(prefix + self.tokens(chunk))

    async def cached_prompts(self, count: int, context: int) -> list[list[int]]:
        """``count`` distinct prompts of ``context`` tokens, computed once so the prefix cache holds them.

        A prompt of a block or more is cut to one token past a block
        boundary: a request for it then computes a single token before
        decoding (vLLM never serves a prompt's last token from the cache), so
        a batch's first steps carry almost no prefill.  A shorter one has
        nothing to cache and keeps its length.
        """
        length = cached_prompt_length(context)
        prompts = [self.tokens(length) for _ in range(count)]
        if length > CPU_BLOCK_SIZE:
            async with anyio.create_task_group() as tg:
                for prompt in prompts:
                    tg.start_soon(self.run, prompt, 1)
        return prompts

    async def decode_steps(self, prompts: Sequence[Sequence[int]], n: int) -> list[float]:
        """Per-request decode step times of one request per prompt, all at once, each generating ``n`` tokens."""
        steps: list[float] = []

        async def one(prompt: Sequence[int]) -> None:
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
    contexts: Sequence[int] = (0, 2048, 4096, 8192, 12288),
    chunk: int = 512,
    batches: Sequence[int] = (1, 2, 4, 8, 16, 32),
    decode_contexts: Sequence[int] = (16, 1024, 4096, 8192),
    pool_tokens: int = 1 << 17,
    decode_tokens: int = 32,
    repeats: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure ``engine`` (started) and return a cost profile document for the simulator.

    Batch sizes past the engine's ``max_num_seqs`` are left out (they would
    not run as one batch), and so are those whose prompts at a context would
    exceed ``pool_tokens`` in all (computing them would take minutes).  No
    point may exceed the KV cache: decode points and prefill contexts that
    :func:`fitting_decode_points` and :func:`fitting_prefill_contexts` leave
    out for the engine's real cache (vLLM's block count once started;
    ``kv_blocks``, the figure the profile records, where vLLM has none) and
    context limit are reported through ``progress`` and recorded in the
    profile's ``measurements`` (``skipped_decode``: ``[batch, context]``,
    ``skipped_prefill``: ``[context, chunk]``); a batch size with no point
    left is absent from the fit.  :class:`ValueError` when not even the
    smallest batch at the smallest context, or no prefill context, fits.
    The prefill curve is stored at the measured contexts and, from the fitted
    line, at the engine's context limit: the simulator does not extrapolate
    it, and replays reach contexts calibration does not measure.  The
    profile's ``dtype`` is the engine's number format.
    """
    scheduler = engine.vllm.vllm_config.scheduler_config
    cache = engine.vllm.vllm_config.cache_config
    max_model_len = int(engine.vllm.vllm_config.model_config.max_model_len)
    batches = sorted({b for b in batches if b <= scheduler.max_num_seqs} or {scheduler.max_num_seqs})
    for context in contexts:
        if context % CPU_BLOCK_SIZE:
            raise ValueError(f"prefill contexts must be multiples of {CPU_BLOCK_SIZE} tokens, got {context}")
    cache_blocks = int(cache.num_gpu_blocks or kv_blocks)
    block_size = int(cache.block_size or CPU_BLOCK_SIZE)

    def too_big(sequences: int, tokens: int) -> str | None:
        return _misfit(sequences, tokens, cache_blocks, block_size, max_model_len)

    decode_points, decode_left_out = fitting_decode_points(
        batches, decode_contexts, decode_tokens, cache_blocks, block_size, max_model_len
    )
    smallest = (batches[0], min(decode_contexts))
    if smallest not in decode_points:
        raise ValueError(
            f"the KV cache is too small to calibrate: even {smallest[0]} sequence(s) at context {smallest[1]} do "
            f"not fit ({too_big(smallest[0], cached_prompt_length(smallest[1]) + decode_tokens)}); "
            "give the engine more KV cache"
        )
    prefill_contexts, prefill_left_out = fitting_prefill_contexts(
        contexts, chunk, cache_blocks, block_size, max_model_len
    )
    if not prefill_contexts:
        raise ValueError(
            f"the KV cache is too small to calibrate: no prefill of {chunk} tokens after "
            f"{', '.join(map(str, contexts))} fits ({too_big(1, min(contexts) + chunk + 1)})"
        )
    for batch, context in decode_left_out:
        progress(
            f"decode of {batch} sequences at context {context} left out: "
            f"{too_big(batch, cached_prompt_length(context) + decode_tokens)}"
        )
    for context in prefill_left_out:
        progress(f"prefill of {chunk} tokens after {context} left out: {too_big(1, context + chunk + 1)}")
    batches_at: dict[int, list[int]] = {}
    for batch, context in decode_points:
        batches_at.setdefault(context, []).append(batch)

    load_before = _load()
    probe = CalibrationProbe(engine, vocabulary, seed)
    await probe.run(probe.tokens(64), 4)  # warm-up: first-step costs are not representative

    rows: list[tuple[int, int, float]] = []
    for context, measurable in sorted(batches_at.items()):
        fitting = [b for b in measurable if b * context <= pool_tokens] or measurable[:1]
        progress(f"computing {fitting[-1]} prompts of {context} tokens for decode")
        # Distinct prompts: sequences sharing cached blocks would read the
        # same KV from the CPU caches, and attention would look cheaper
        # than it is for a batch of different programs.
        pool = await probe.cached_prompts(fitting[-1], context)
        for batch in fitting:
            steps: list[float] = []
            for _ in range(repeats):
                steps += await probe.decode_steps(pool[:batch], decode_tokens)
            rows.append((batch, context, statistics.median(steps)))
            progress(f"decode of {batch} sequences at context {context}: {rows[-1][2] * 1e3:.2f} ms per step")
    overhead, per_batch, per_context = _fit_decode(rows)

    progress("request latency")
    cached: list[float] = []
    for _ in range(repeats):
        cached.append(await probe.cached_ttft())
    ttft_cached = statistics.median(cached)

    prefill_rows: list[tuple[float, float]] = []
    for context in prefill_contexts:
        times = []
        for _ in range(repeats):
            times.append(await probe.chunk_ttft(context, chunk))
        prefill_rows.append((context + chunk / 2, max(statistics.median(times) - ttft_cached, 1e-6)))
        progress(f"prefill of {chunk} tokens after {context}: {prefill_rows[-1][1] * 1e3:.1f} ms")
    last = max(c for c, _ in prefill_rows)
    reach = [float(max_model_len)] if max_model_len > last else []
    prefill = [[c, round(rate, 1)] for c, rate in _fit_prefill(prefill_rows, chunk, extend_to=reach)]

    load_after = _load()
    return {
        "name": name,
        "model": engine.model,
        "device": "cpu",
        "dtype": engine.dtype,
        "source": (
            f"measured by `agentrt calibrate` with vLLM {_vllm_version()} on this machine "
            f"({os.cpu_count()} CPUs, load average {load_before:.1f} before, {load_after:.1f} after), "
            f"medians of {repeats} runs"
        ),
        "block_size": CPU_BLOCK_SIZE,
        "kv_blocks": kv_blocks,
        "max_num_seqs": scheduler.max_num_seqs,
        "max_num_batched_tokens": scheduler.max_num_batched_tokens,
        "step_overhead_s": round(overhead, 6),
        "request_latency_s": round(max(ttft_cached - overhead, 0.0), 6),
        "prefill_tokens_per_s": prefill,
        "decode_step_s": [[batch, round(seconds, 7)] for batch, seconds in per_batch],
        "decode_s_per_context_token": [[batch, float(f"{k:.4g}")] for batch, k in per_context],
        "measurements": {
            "decode": [[batch, context, round(seconds, 7)] for batch, context, seconds in rows],
            "prefill": [[context, round(seconds, 7)] for context, seconds in prefill_rows],
            "skipped_decode": [[batch, context] for batch, context in decode_left_out],
            "skipped_prefill": [[context, chunk] for context in prefill_left_out],
        },
    }


def _load() -> float:
    """The 1-minute load average, or 0 where the platform has none."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on Linux
        return 0.0


def _fit_decode(
    rows: Sequence[tuple[int, int, float]],
) -> tuple[float, list[tuple[int, float]], list[tuple[int, float]]]:
    """Least-squares fit of decode steps to ``f(batch) + per_context(batch) * batch * context``.

    Each batch size gets its own line over the context its sequences attend
    to (a step's fixed part and its cost per context token).  Returns
    ``(overhead, [(batch, f(batch) - overhead), ...], [(batch, per_context), ...])``:
    the overhead is the intercept of a line through the ``f`` values (what a
    step costs with nothing to decode); every value is kept physical.  A
    batch size measured at one context only (the others did not fit the KV
    cache) says nothing about its cost per context token: it takes the
    nearest batch size's, where one was measured at several contexts.
    """
    import numpy as np

    batches = sorted({b for b, _, _ in rows})
    fixed: list[float] = []
    per_context: list[float] = []
    lone: list[int] = []  # indexes of the batch sizes measured at a single context
    for batch in batches:
        mine = [(b * c, s) for b, c, s in rows if b == batch]
        tokens = np.array([t for t, _ in mine], dtype=float)
        seconds = np.array([s for _, s in mine], dtype=float)
        if len(mine) > 1 and np.ptp(tokens) > 0:
            slope, intercept = np.polyfit(tokens, seconds, 1)
            slope = max(float(slope), 0.0)
            if slope == 0.0:
                intercept = float(seconds.mean())
        else:
            slope, intercept = 0.0, float(seconds.mean())
            lone.append(len(fixed))
        fixed.append(max(float(intercept), 1e-6))
        per_context.append(slope)
    fitted = [i for i in range(len(batches)) if i not in lone]
    for i in lone if fitted else []:
        nearest = min(fitted, key=lambda j: (abs(batches[j] - batches[i]), batches[j]))
        slope = per_context[nearest]
        mine = [(b * c, s) for b, c, s in rows if b == batches[i]]
        per_context[i] = slope
        fixed[i] = max(float(np.mean([s - slope * t for t, s in mine])), 1e-6)
    if len(batches) > 1:
        _slope, intercept = np.polyfit(np.array(batches, dtype=float), np.array(fixed), 1)
        overhead = min(max(float(intercept), 1e-4), min(fixed) * 0.9)
    else:
        overhead = fixed[0] / 2
    overhead = max(overhead, 1e-5)
    return (
        overhead,
        [(b, max(v - overhead, 1e-7)) for b, v in zip(batches, fixed, strict=True)],
        list(zip(batches, per_context, strict=True)),
    )


def _fit_prefill(
    rows: Sequence[tuple[float, float]], chunk: int, extend_to: Sequence[float] = ()
) -> list[tuple[float, float]]:
    """Prefill throughput at each row's mean context and at ``extend_to``.

    From a least-squares fit of ``seconds = chunk * (a + k * context)``.
    """
    import numpy as np

    context = np.array([c for c, _ in rows], dtype=float)
    per_token = np.array([s / chunk for _, s in rows], dtype=float)
    if len(rows) > 1:
        k, a = np.polyfit(context, per_token, 1)
        k = max(float(k), 0.0)
        a = float(a)
        if a <= 0:  # a line through noisy points may dip below zero at context 0
            a, k = float(per_token.mean()), 0.0
    else:
        a, k = float(per_token[0]), 0.0
    return [(float(c), 1.0 / (a + k * c)) for c in [*context.tolist(), *extend_to]]


def _vllm_version() -> str:
    try:
        import vllm

        return str(vllm.__version__)
    except Exception:  # pragma: no cover - the version string is cosmetic
        return "?"
