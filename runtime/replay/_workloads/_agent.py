"""``agent``: a coding agent shaped like AgentCgroup's sessions (and SWE-agent's outputs)."""

from __future__ import annotations

import math

from .._trace import TraceCall, TraceProgram
from ._draw import Z90, Z99, Draw, ToolShape

__all__ = ["AGENT_SYSTEM_TOKENS", "AGENT_TOOLS", "agent_program", "sigma_bash"]


#: LLM requests per session: median 25.5, p90 60 (AgentCgroup).  Fitted as a
#: lognormal through both; clipped to [AGENT_MIN_CALLS, AGENT_MAX_CALLS] (our choice).
AGENT_CALLS_MEDIAN = 25.5
AGENT_CALLS_P90 = 60.0
AGENT_MIN_CALLS = 2
AGENT_MAX_CALLS = 200
#: Output tokens per call, uniform over 110-227 (SWE-agent on SWE-Bench Pro: 110-227 output tokens/call).
AGENT_OUTPUT_TOKENS = (110, 227)
#: Shared system prompt of the coding-agent app (instructions + tool schemas).
#: Not published: our choice, sized so that, with the turn growth below, the
#: context per request lands on AgentCgroup's median 33K / p90 58K tokens.
AGENT_SYSTEM_TOKENS = 18_000
#: Fresh tokens of the first turn (the task: issue text, repository notes):
#: lognormal, median 3,000, sigma 0.5.  Our choice (see AGENT_SYSTEM_TOKENS).
AGENT_TASK_TOKENS_MEDIAN = 3_000
AGENT_TASK_TOKENS_SIGMA = 0.5
#: Fresh tokens of later turns (tool-result framing, reminders), uniform.  Our
#: choice, fitted with the tool outputs so that the context grows ~720 tokens a
#: turn and lands on the published 33K median / 58K p90 context per request.
AGENT_TURN_NEW_TOKENS = (20, 120)


def sigma_bash() -> float:
    # Least-squares lognormal fit in log space through AgentCgroup's Bash
    # p90 8.4 s and p99 30 s around the p50 1.08 s (one sigma cannot hit both:
    # p90 alone gives 1.60, p99 alone 1.43; the fit gives 1.47).
    a, b = math.log(8.4 / 1.08), math.log(30 / 1.08)
    return (Z90 * a + Z99 * b) / (Z90**2 + Z99**2)


#: The agent's tool mix.  Durations: AgentCgroup (Bash p50 1.08 s / p90 8.4 s /
#: p99 30 s; Read p50 0.03 s; Grep 0.04 s; Edit 0.03 s; sub-agent Task ~66 s).
#: Bash is capped at 120 s (Claude Code's default Bash timeout).  The spreads
#: of Read/Grep/Edit/Task, the mix weights and the output sizes are not
#: published: our choices (file reads are the largest outputs, sub-agents rare).
AGENT_TOOLS: tuple[ToolShape, ...] = (
    ToolShape("bash", 0.42, 1.08, sigma_bash(), 120.0, 250, 1.0, 8_000),
    ToolShape("read", 0.26, 0.03, 0.5, 2.0, 700, 0.8, 8_000),
    ToolShape("grep", 0.13, 0.04, 0.5, 2.0, 200, 0.8, 4_000),
    ToolShape("edit", 0.17, 0.03, 0.5, 2.0, 100, 0.5, 1_000),
    ToolShape("task", 0.02, 66.0, 0.3, 300.0, 600, 0.5, 4_000),
)


def agent_program(pid: str, arrival: float, d: Draw) -> TraceProgram:
    sigma = math.log(AGENT_CALLS_P90 / AGENT_CALLS_MEDIAN) / Z90
    n = round(d.lognormal(AGENT_CALLS_MEDIAN, sigma))
    n = min(AGENT_MAX_CALLS, max(AGENT_MIN_CALLS, n))
    weights = [t.weight for t in AGENT_TOOLS]
    calls = []
    for k in range(1, n + 1):
        if k == 1:
            fresh = d.lognormal(AGENT_TASK_TOKENS_MEDIAN, AGENT_TASK_TOKENS_SIGMA)
        else:
            fresh = d.uniform_int(AGENT_TURN_NEW_TOKENS)
        output = d.uniform_int(AGENT_OUTPUT_TOKENS)
        tool: str | None = None
        tool_s, tool_out = 0.0, 0
        if k < n:  # the last turn answers; every other turn runs a tool
            shape = d.rng.choices(AGENT_TOOLS, weights)[0]
            tool = shape.name
            tool_s = d.seconds(min(shape.max_s, d.lognormal(shape.median_s, shape.sigma_s)))
            tool_out = d.tokens(min(shape.output_max, d.lognormal(shape.output_median, shape.output_sigma)), at_least=0)
        calls.append(
            TraceCall(
                id=f"t{k}",
                new_tokens=d.tokens(fresh),
                output_tokens=d.tokens(output),
                tool=tool,
                tool_s=tool_s,
                tool_output_tokens=tool_out,
                stage="turn",
            )
        )
    return TraceProgram(
        id=pid,
        arrival_s=arrival,
        app="coding-agent",
        system_tokens=d.tokens(AGENT_SYSTEM_TOKENS, at_least=0),
        calls=calls,
    )
