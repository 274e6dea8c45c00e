"""Anchor measurements: how fast the real CPU engine is right now, against a calibrated profile.

On a shared virtual machine the engine's speed drifts by tens of percent
within an hour, so a profile calibrated at one time mis-prices a replay run at
another.  This script starts the tiny model's engine as ``agentrt calibrate``
does and measures two anchors with the calibration's own probes:

- ``decode``: the per-request step time of 16 sequences decoding together at
  a context of 2,049 tokens (cached, distinct prompts);
- ``prefill``: the time to prefill 512 tokens after 2,048 cached ones (first
  token latency minus that of a fully cached prompt).

It prints one JSON object: the measured times, the profile's predictions for
the same steps, and their ratios (measured / predicted: above 1, the engine is
slower now than when calibrated).  ``benchmarks/sim_fidelity.py`` runs it
before and after each real replay.

Usage::

    .venv/bin/python benchmarks/engine_anchors.py --profile .cache/profiles/tiny.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.replay import (  # noqa: E402 - after the path set-up above
    CalibrationProbe,
    CostProfile,
    cached_prompt_length,
    calibration_engine,
)

DECODE_BATCH = 16
DECODE_CONTEXT = 2048
DECODE_TOKENS = 32
PREFILL_BEFORE = 2048
PREFILL_CHUNK = 512


async def measure(model: str, repeats: int) -> dict[str, float]:
    from runtime import resolve_model
    from runtime.replay import model_vocabulary

    model_dir = resolve_model(model)
    async with calibration_engine(model_dir, name="anchors") as engine:
        probe = CalibrationProbe(engine, model_vocabulary(model_dir), seed=1)
        await probe.run(probe.tokens(64), 4)  # warm-up, as in calibration
        pool = await probe.cached_prompts(DECODE_BATCH, DECODE_CONTEXT)
        steps: list[float] = []
        for _ in range(repeats):
            steps += await probe.decode_steps(pool, DECODE_TOKENS)
        cached: list[float] = []
        chunks: list[float] = []
        for _ in range(repeats):
            cached.append(await probe.cached_ttft())
            chunks.append(await probe.chunk_ttft(PREFILL_BEFORE, PREFILL_CHUNK))
    return {
        "decode_step_s": statistics.median(steps),
        "prefill_chunk_s": max(statistics.median(chunks) - statistics.median(cached), 1e-6),
    }


def predicted(profile: CostProfile) -> dict[str, float]:
    """The profile's price for the anchor steps, measured the way calibration measures them."""
    # Decoding DECODE_TOKENS tokens adds half of them to the context on average.
    context = cached_prompt_length(DECODE_CONTEXT) + DECODE_TOKENS // 2
    return {
        "decode_step_s": profile.step_time([], DECODE_BATCH, DECODE_BATCH * context),
        "prefill_chunk_s": profile.prefill_chunk_time(PREFILL_BEFORE, PREFILL_CHUNK),
    }


def main() -> None:
    import anyio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True, help="calibrated cost profile (JSON)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    profile = CostProfile.load(args.profile)

    async def run() -> dict[str, float]:
        return await measure(args.model, args.repeats)

    measured = anyio.run(run, backend="asyncio")
    expected = predicted(profile)
    report: dict[str, Any] = {
        "measured": measured,
        "predicted": expected,
        "ratio": {key: measured[key] / expected[key] for key in measured},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
