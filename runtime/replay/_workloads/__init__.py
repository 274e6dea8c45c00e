"""Synthetic workload generators: traces shaped like published agent workloads.

``generate_workload(kind, ...)`` returns programs in the trace format
(:mod:`runtime.replay._trace`) for four kinds of application, one module each:

``agent``     a coding agent: one long sequential conversation per program, a
              tool between turns (AgentCgroup, SWE-agent statistics; ``_agent``);
``text2sql``  a CHESS-style Text-to-SQL pipeline: a DAG of stages with
              parallel candidates (HEXGEN-TEXT2SQL statistics; ``_text2sql``);
``bfcl``      multi-turn function calling (BFCL, Autellix statistics; ``_bfcl``);
``coding``    long-context coding agents (Claude Code / Codex sessions): ~142K-token
              contexts, sub-agent branches, context compaction, human think
              time (vLLM RFC #57103, TraceLab, router RFC #285; ``_coding``).

``_draw`` holds the seeded draws they share; ``_generate`` picks a generator
by name, draws the arrivals and prices the SLO estimate.  Every number in the
generators cites its source; where no source publishes a number we say that
it is our choice.  The sources are summarised in ``DESIGN.md``
("Published workload statistics") and ``docs/workloads.md``.

Arrivals are a Poisson process: gaps are exponential with mean ``1/rate``,
drawn from ``random.Random(seed)``, and the first program arrives after the
first gap (not at 0), so every gap has the same distribution.  Everything is
drawn from that one generator in a fixed order, so one seed gives the same
programs (and, through :func:`~runtime.replay.dump_trace`, the same bytes).

``scale`` multiplies every token count (rounded; at least 1 for fresh prompt
and output tokens) so that a trace at published sizes (33K-token agent
contexts, 142K-token coding contexts) can be shrunk to what a CPU engine serves.  Tool durations are not
token counts and are not scaled by it; ``tool_scale`` multiplies them
separately (a replay on a slow engine may want shorter or longer tools
relative to inference).
"""

from __future__ import annotations

from ._agent import AGENT_SYSTEM_TOKENS
from ._coding import CODING_COMPACT_AT, CODING_SYSTEM_TOKENS
from ._generate import (
    DECODE_S_PER_TOKEN,
    PREFILL_S_PER_TOKEN,
    WorkloadKind,
    estimate_unloaded_s,
    generate_workload,
    workload_kinds,
)

__all__ = [
    "AGENT_SYSTEM_TOKENS",
    "CODING_COMPACT_AT",
    "CODING_SYSTEM_TOKENS",
    "DECODE_S_PER_TOKEN",
    "PREFILL_S_PER_TOKEN",
    "WorkloadKind",
    "estimate_unloaded_s",
    "generate_workload",
    "workload_kinds",
]
