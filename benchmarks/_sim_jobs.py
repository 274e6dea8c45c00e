"""Simulated replays as benchmark jobs: the engines, one replay in virtual time, a pool of workers, a row of figures.

``memory_bound.py`` and ``urgency.py`` sweep policies over generated traces:
each replay is a job, a dict of plain values that crosses into a worker
process of a :func:`spawn_pool`, where the trace is generated, the engines
(:func:`sim_engines`) and the policy are built, and :func:`replay_in_sim`
replays it through the runtime.  The row a job returns takes the figures it
reports from the replay's summary with :func:`summary_fields` (so does
``kv_pinning.py``, from a result document of ``agentrt replay``).
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.pool
import time
from collections.abc import Iterable, Sequence
from typing import Any

from runtime import Policy, Runtime
from runtime.replay import CostProfile, ReplayRun, SimEngine, TraceProgram, Vocabulary, replay_trace, run_virtual

__all__ = ["GC_THRESHOLD", "replay_in_sim", "sim_engines", "spawn_pool", "summary_fields"]

#: The garbage collector's thresholds in a worker while it replays (``gc.set_threshold``): a replay keeps
#: many small objects alive for its whole length, and the default thresholds scan them again and again.
GC_THRESHOLD = (50_000, 10, 10)


def sim_engines(profile: CostProfile, count: int, **options: Any) -> list[SimEngine]:
    """``count`` simulated engines ``sim-0``, ``sim-1``, ... priced by ``profile``; ``options``: of ``SimEngine``."""
    return [SimEngine(profile, name=f"sim-{i}", **options) for i in range(count)]


def replay_in_sim(
    trace: Sequence[TraceProgram], engines: Sequence[SimEngine], policy: Policy
) -> tuple[ReplayRun, float]:
    """Replay ``trace`` in virtual time through a runtime on ``engines``: the run and its wall-clock seconds (0.1 s).

    The vocabulary is the first engine's; sets the process's :data:`GC_THRESHOLD` (meant for a worker process).
    """
    vocabulary = Vocabulary(engines[0].vocab_size, frozenset(range(engines[0].first_token_id)))

    async def main() -> ReplayRun:
        async with Runtime(list(engines), policy=policy) as rt:
            return await replay_trace(trace, rt, vocabulary=vocabulary)

    gc.set_threshold(*GC_THRESHOLD)
    started = time.perf_counter()
    run = run_virtual(main)
    return run, round(time.perf_counter() - started, 1)


def spawn_pool(workers: int) -> multiprocessing.pool.Pool:
    """A pool of ``workers`` processes started fresh (``spawn``), not forked from a parent holding engines or loops."""
    return multiprocessing.get_context("spawn").Pool(workers)


def summary_fields(summary: object, keys: Iterable[str]) -> dict[str, Any]:
    """The summary's attributes named by ``keys``, in that order (a row's figures, for its JSON)."""
    return {key: getattr(summary, key) for key in keys}
