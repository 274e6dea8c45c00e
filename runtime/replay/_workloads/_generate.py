"""``generate_workload``: the generators by name, Poisson arrivals, and the unloaded-duration estimate behind SLOs."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Literal, get_args

from .._trace import TraceProgram, topological_order
from ._agent import agent_program
from ._bfcl import bfcl_program
from ._coding import coding_program
from ._draw import Draw
from ._text2sql import T2S_CANDIDATES, text2sql_program

__all__ = [
    "DECODE_S_PER_TOKEN",
    "PREFILL_S_PER_TOKEN",
    "WorkloadKind",
    "estimate_unloaded_s",
    "generate_workload",
    "workload_kinds",
]

WorkloadKind = Literal["agent", "text2sql", "bfcl", "coding"]

# --- SLO estimate ---------------------------------------------------------------------------------

#: Seconds per uncached prompt token in the unloaded-duration estimate: the
#: 49M random Llama on this machine prefills 1,500 cold tokens in 1.28 s
#: (DESIGN.md, "Measured here").
PREFILL_S_PER_TOKEN = 1.28 / 1500
#: Seconds per generated token in the unloaded-duration estimate: that
#: model's decode step at batch 8, 31 ms (DESIGN.md, "Measured here").
DECODE_S_PER_TOKEN = 0.031


def workload_kinds() -> tuple[str, ...]:
    """The generator names ``generate_workload`` accepts."""
    return get_args(WorkloadKind)


def estimate_unloaded_s(
    program: TraceProgram,
    *,
    prefill_s_per_token: float = PREFILL_S_PER_TOKEN,
    decode_s_per_token: float = DECODE_S_PER_TOKEN,
) -> float:
    """Seconds the program takes alone on an idle engine, roughly: its critical path.

    A call costs ``prefill_s_per_token`` per uncached prompt token (its fresh
    tokens plus the inherited context's tool output; the app prefix and the
    inherited conversation are assumed cached), ``decode_s_per_token`` per
    output token, then its tool's ``tool_s``.
    """
    by_id = {c.id: c for c in program.calls}
    done: dict[str, float] = {}
    for call in topological_order(program):
        start = max((done[a] for a in call.parents), default=0.0)
        uncached = call.new_tokens + (by_id[call.context].tool_output_tokens if call.context else 0)
        done[call.id] = start + uncached * prefill_s_per_token + call.output_tokens * decode_s_per_token + call.tool_s
    return max(done.values())


def generate_workload(
    kind: WorkloadKind,
    *,
    programs: int,
    rate: float,
    seed: int,
    scale: float = 1.0,
    tool_scale: float = 1.0,
    slo_scale: float | None = None,
    candidates: int = T2S_CANDIDATES,
    prefill_s_per_token: float = PREFILL_S_PER_TOKEN,
    decode_s_per_token: float = DECODE_S_PER_TOKEN,
) -> list[TraceProgram]:
    """``programs`` programs of one kind with Poisson arrivals at ``rate`` programs/s.

    ``scale`` multiplies token counts, ``tool_scale`` tool durations (see the
    module doc).  With ``slo_scale``, each program gets ``slo_s = slo_scale x``
    :func:`estimate_unloaded_s` (with the given per-token costs); without it,
    no deadline.  ``candidates`` is the number of parallel SQL candidates of
    ``text2sql``.  Raises ``ValueError`` on a bad parameter.
    """
    if kind not in workload_kinds():
        raise ValueError(f"unknown workload {kind!r} (choose from {', '.join(workload_kinds())})")
    if programs < 1:
        raise ValueError(f"programs must be >= 1, got {programs}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be > 0 programs/s, got {rate}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be > 0, got {scale}")
    if not (math.isfinite(tool_scale) and tool_scale >= 0):
        raise ValueError(f"tool_scale must be >= 0, got {tool_scale}")
    if slo_scale is not None and not (math.isfinite(slo_scale) and slo_scale > 0):
        raise ValueError(f"slo_scale must be > 0, got {slo_scale}")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    rng = random.Random(seed)
    draw = Draw(rng, scale, tool_scale)
    build: Callable[[str, float, Draw], TraceProgram]
    if kind == "agent":
        build = agent_program
    elif kind == "text2sql":
        build = lambda pid, t, d: text2sql_program(pid, t, d, candidates)  # noqa: E731
    elif kind == "bfcl":
        build = bfcl_program
    else:
        build = coding_program
    width = max(4, len(str(programs - 1)))
    out = []
    clock = 0.0
    for i in range(programs):
        clock += rng.expovariate(rate)
        program = build(f"{kind}-{i:0{width}d}", round(clock, 3), draw)
        if slo_scale is not None:
            estimate = estimate_unloaded_s(
                program, prefill_s_per_token=prefill_s_per_token, decode_s_per_token=decode_s_per_token
            )
            program.slo_s = max(0.001, round(slo_scale * estimate, 3))
        out.append(program)
    return out
