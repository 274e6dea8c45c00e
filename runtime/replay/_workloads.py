"""Synthetic workload generators: traces shaped like published agent workloads.

``generate_workload(kind, ...)`` returns programs in the trace format
(:mod:`runtime.replay._trace`) for three kinds of application:

``agent``     a coding agent: one long sequential conversation per program, a
              tool between turns (AgentCgroup, SWE-agent statistics);
``text2sql``  a CHESS-style Text-to-SQL pipeline: a DAG of stages with
              parallel candidates (HEXGEN-TEXT2SQL statistics);
``bfcl``      multi-turn function calling (BFCL, Autellix statistics).

Every number below cites its source; where no source publishes a number we
say that it is our choice.  The sources are summarised in ``DESIGN.md``
("Published workload statistics") and ``docs/workloads.md``.

Arrivals are a Poisson process: gaps are exponential with mean ``1/rate``,
drawn from ``random.Random(seed)``, and the first program arrives after the
first gap (not at 0), so every gap has the same distribution.  Everything is
drawn from that one generator in a fixed order, so one seed gives the same
programs (and, through :func:`~runtime.replay.dump_trace`, the same bytes).

``scale`` multiplies every token count (rounded; at least 1 for fresh prompt
and output tokens) so that a trace at published sizes (33K-token agent
contexts) can be shrunk to what a CPU engine serves.  Tool durations are not
token counts and are not scaled by it; ``tool_scale`` multiplies them
separately (a replay on a slow engine may want shorter or longer tools
relative to inference).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from ._trace import TraceCall, TraceProgram, topological_order

__all__ = [
    "DECODE_S_PER_TOKEN",
    "PREFILL_S_PER_TOKEN",
    "WorkloadKind",
    "estimate_unloaded_s",
    "generate_workload",
    "workload_kinds",
]

WorkloadKind = Literal["agent", "text2sql", "bfcl"]

#: z-scores of the standard normal at the 90th and 99th percentiles (lognormal fits).
_Z90 = 1.2815515655446004
_Z99 = 2.3263478740408408

# --- SLO estimate ---------------------------------------------------------------------------------

#: Seconds per uncached prompt token in the unloaded-duration estimate: the
#: 49M random Llama on this machine prefills 1,500 cold tokens in 1.28 s
#: (DESIGN.md, "Measured here").
PREFILL_S_PER_TOKEN = 1.28 / 1500
#: Seconds per generated token in the unloaded-duration estimate: that
#: model's decode step at batch 8, 31 ms (DESIGN.md, "Measured here").
DECODE_S_PER_TOKEN = 0.031

# --- agent: a coding agent (AgentCgroup traces of 78 sessions; SWE-agent on SWE-Bench Pro) -------

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


@dataclass(frozen=True)
class _ToolShape:
    """A tool of the agent's mix: probability, lognormal duration (s) and output (tokens)."""

    name: str
    weight: float
    median_s: float
    sigma_s: float
    max_s: float
    output_median: float
    output_sigma: float
    output_max: int


def _sigma_bash() -> float:
    # Least-squares lognormal fit in log space through AgentCgroup's Bash
    # p90 8.4 s and p99 30 s around the p50 1.08 s (one sigma cannot hit both:
    # p90 alone gives 1.60, p99 alone 1.43; the fit gives 1.47).
    a, b = math.log(8.4 / 1.08), math.log(30 / 1.08)
    return (_Z90 * a + _Z99 * b) / (_Z90**2 + _Z99**2)


#: The agent's tool mix.  Durations: AgentCgroup (Bash p50 1.08 s / p90 8.4 s /
#: p99 30 s; Read p50 0.03 s; Grep 0.04 s; Edit 0.03 s; sub-agent Task ~66 s).
#: Bash is capped at 120 s (Claude Code's default Bash timeout).  The spreads
#: of Read/Grep/Edit/Task, the mix weights and the output sizes are not
#: published: our choices (file reads are the largest outputs, sub-agents rare).
AGENT_TOOLS: tuple[_ToolShape, ...] = (
    _ToolShape("bash", 0.42, 1.08, _sigma_bash(), 120.0, 250, 1.0, 8_000),
    _ToolShape("read", 0.26, 0.03, 0.5, 2.0, 700, 0.8, 8_000),
    _ToolShape("grep", 0.13, 0.04, 0.5, 2.0, 200, 0.8, 4_000),
    _ToolShape("edit", 0.17, 0.03, 0.5, 2.0, 100, 0.5, 1_000),
    _ToolShape("task", 0.02, 66.0, 0.3, 300.0, 600, 0.5, 4_000),
)

# --- text2sql: CHESS-style pipeline (HEXGEN-TEXT2SQL traces) ---------------------------------------

#: Mean (prompt, output) tokens per stage (HEXGEN-TEXT2SQL's CHESS traces).
T2S_RETRIEVAL = (308, 5)
T2S_KEYWORDS = (667, 45)
T2S_CANDIDATE = (11_748, 678)
T2S_REVISE = (5_963, 79)
T2S_UNIT_TEST = (1_109, 103)
T2S_EVALUATE = (961, 22)
#: LLM calls per query: 16-22 (HEXGEN); revise rounds per candidate 0-5 (HEXGEN).
T2S_CALLS = (16, 22)
T2S_MAX_REVISE = 5
#: Parallel SQL candidates (CHESS generates several; 3 makes 16-22 calls reachable).
T2S_CANDIDATES = 3
#: Executing a candidate or revision ("sql" tool): uniform seconds, result tokens.
#: Not published: our choice (a read-only query on a benchmark database).
T2S_SQL_S = (0.05, 0.5)
T2S_SQL_OUTPUT_TOKENS = (20, 200)
#: Retrieval's tool (schema/value lookup) after the retrieval call: our choice.
T2S_RETRIEVE_S = (0.05, 0.3)
T2S_RETRIEVE_OUTPUT_TOKENS = (20, 80)
#: Fresh tokens of a revise round that continues the previous round's
#: conversation (the execution feedback framing): our choice.
T2S_REVISE_FOLLOWUP_TOKENS = 60
#: Multiplicative spread (lognormal sigma, mean 1) of prompt and output sizes around the stage means: our choice.
T2S_PROMPT_SIGMA = 0.2
T2S_OUTPUT_SIGMA = 0.3

# --- bfcl: multi-turn function calling (BFCL; Autellix) -------------------------------------------

#: User turns per conversation: 3, 4 or 5 with probabilities 1/4, 1/2, 1/4 (mean 4; BFCL multi-turn ~4).
BFCL_TURNS = ((3, 0.25), (4, 0.5), (5, 0.25))
#: LLM calls per user turn: 1, 2 or 3 with probabilities 0.5, 0.4, 0.1 (mean 1.6; BFCL ~1.6 calls/turn).
BFCL_CALLS_PER_TURN = ((1, 0.5), (2, 0.4), (3, 0.1))
#: Output tokens per call: mean 34 (Autellix), uniform 20-48 (spread: our choice).
BFCL_OUTPUT_TOKENS = (20, 48)
#: Function-call duration, uniform seconds (short tool calls; our choice 0.1-0.5 s).
BFCL_TOOL_S = (0.1, 0.5)
#: Function result tokens, uniform (our choice).
BFCL_TOOL_OUTPUT_TOKENS = (30, 90)
#: Fresh tokens: the first call carries the function docs and first question,
#: later user turns a short message.  Our choice, fitted so the mean prompt
#: per call (with the inherited conversation) is ~735 tokens (Autellix).
BFCL_FIRST_TOKENS = (400, 560)
BFCL_USER_TOKENS = (20, 60)


def workload_kinds() -> tuple[str, ...]:
    """The generator names ``generate_workload`` accepts."""
    return get_args(WorkloadKind)


class _Draw:
    """Random draws and token scaling for one workload."""

    def __init__(self, rng: random.Random, scale: float, tool_scale: float) -> None:
        self.rng, self.scale, self.tool_scale = rng, scale, tool_scale

    def tokens(self, n: float, *, at_least: int = 1) -> int:
        """``n`` tokens scaled (rounded, at least ``at_least``)."""
        return max(at_least, round(n * self.scale))

    def seconds(self, s: float) -> float:
        return round(s * self.tool_scale, 3)

    def uniform_int(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(*bounds)

    def uniform(self, bounds: tuple[float, float]) -> float:
        return self.rng.uniform(*bounds)

    def lognormal(self, median: float, sigma: float) -> float:
        return self.rng.lognormvariate(math.log(median), sigma)

    def around(self, mean: float, sigma: float) -> float:
        """A lognormal draw whose *mean* is ``mean`` (spread ``sigma``)."""
        return self.rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)

    def choice(self, weighted: Sequence[tuple[int, float]]) -> int:
        values = [v for v, _ in weighted]
        weights = [w for _, w in weighted]
        value: int = self.rng.choices(values, weights)[0]
        return value


def _agent(pid: str, arrival: float, d: _Draw) -> TraceProgram:
    sigma = math.log(AGENT_CALLS_P90 / AGENT_CALLS_MEDIAN) / _Z90
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


def _spread_revisions(total: int, candidates: int, d: _Draw) -> list[int]:
    """``total`` revise rounds spread at random over the candidates, at most T2S_MAX_REVISE each."""
    rounds = [0] * candidates
    for _ in range(total):
        open_ = [i for i, r in enumerate(rounds) if r < T2S_MAX_REVISE]
        rounds[d.rng.choice(open_)] += 1
    return rounds


def _text2sql(pid: str, arrival: float, d: _Draw, candidates: int) -> TraceProgram:
    calls: list[TraceCall] = []

    def llm(
        cid: str,
        stage: str,
        mean: tuple[float, float],
        after: list[str],
        *,
        context: str | None = None,
        fresh: float | None = None,
        tool: tuple[str, tuple[float, float], tuple[int, int]] | None = None,
    ) -> str:
        prompt = d.around(mean[0], T2S_PROMPT_SIGMA) if fresh is None else fresh
        name, tool_s, tool_out = None, 0.0, 0
        if tool is not None:
            name = tool[0]
            tool_s = d.seconds(d.uniform(tool[1]))
            tool_out = d.tokens(d.uniform_int(tool[2]), at_least=0)
        calls.append(
            TraceCall(
                id=cid,
                after=after,
                context=context,
                new_tokens=d.tokens(prompt),
                output_tokens=d.tokens(d.around(mean[1], T2S_OUTPUT_SIGMA)),
                tool=name,
                tool_s=tool_s,
                tool_output_tokens=tool_out,
                stage=stage,
            )
        )
        return cid

    sql = ("sql", T2S_SQL_S, T2S_SQL_OUTPUT_TOKENS)
    # Fixed calls: retrieval, keywords, the candidates, unit-test generation, one evaluation per candidate.
    fixed = 3 + 2 * candidates
    target = d.uniform_int(T2S_CALLS)
    revisions = _spread_revisions(min(candidates * T2S_MAX_REVISE, max(0, target - fixed)), candidates, d)
    # Round r > 1 continues round r-1's conversation, so its prompt is the
    # previous round's plus ~(output + result + follow-up) tokens; the first
    # round's fresh prompt is lowered so the mean over rounds is the published 5,963.
    growth = T2S_REVISE[1] + sum(T2S_SQL_OUTPUT_TOKENS) / 2 + T2S_REVISE_FOLLOWUP_TOKENS
    weights = [T2S_MAX_REVISE + 1 - r for r in range(1, T2S_MAX_REVISE + 1)]  # P(rounds >= r), uniform 0-5
    mean_extra = growth * sum((r - 1) * w for r, w in enumerate(weights, 1)) / sum(weights)
    first_revise = (T2S_REVISE[0] - mean_extra, T2S_REVISE[1])

    retrieval = llm(
        "retrieval", "retrieval", T2S_RETRIEVAL, [], tool=("retrieve", T2S_RETRIEVE_S, T2S_RETRIEVE_OUTPUT_TOKENS)
    )
    # Stages use their own prompt templates: no inherited context unless a stage continues one.
    keywords = llm("keywords", "keywords", T2S_KEYWORDS, [retrieval])
    ends = []
    for c in range(1, candidates + 1):
        last = llm(f"cand{c}", "candidate", T2S_CANDIDATE, [keywords], tool=sql)
        for r in range(1, revisions[c - 1] + 1):
            if r == 1:
                last = llm(f"cand{c}.rev1", "revise", first_revise, [last], tool=sql)
            else:
                fresh = d.uniform(
                    (T2S_REVISE_FOLLOWUP_TOKENS / 2, T2S_REVISE_FOLLOWUP_TOKENS * 3 / 2)
                )  # mean T2S_REVISE_FOLLOWUP_TOKENS
                last = llm(f"cand{c}.rev{r}", "revise", T2S_REVISE, [last], context=last, fresh=fresh, tool=sql)
        ends.append(last)
    unit_tests = llm("unit_tests", "unit_test", T2S_UNIT_TEST, ends)
    for c in range(1, candidates + 1):
        llm(f"eval{c}", "evaluate", T2S_EVALUATE, [unit_tests])
    return TraceProgram(id=pid, arrival_s=arrival, app="text2sql", calls=calls)


def _bfcl(pid: str, arrival: float, d: _Draw) -> TraceProgram:
    turns = d.choice(BFCL_TURNS)
    calls: list[TraceCall] = []
    for t in range(1, turns + 1):
        per_turn = d.choice(BFCL_CALLS_PER_TURN)
        for k in range(1, per_turn + 1):
            if k == 1:
                fresh = d.uniform_int(BFCL_FIRST_TOKENS if t == 1 else BFCL_USER_TOKENS)
            else:
                fresh = d.uniform_int((5, 15))  # the function-result framing before the model continues
            # Within a turn the model calls functions until its last call, which answers the user.
            has_tool = k < per_turn
            calls.append(
                TraceCall(
                    id=f"u{t}.c{k}",
                    new_tokens=d.tokens(fresh),
                    output_tokens=d.tokens(d.uniform_int(BFCL_OUTPUT_TOKENS)),
                    tool="function" if has_tool else None,
                    tool_s=d.seconds(d.uniform(BFCL_TOOL_S)) if has_tool else 0.0,
                    tool_output_tokens=d.tokens(d.uniform_int(BFCL_TOOL_OUTPUT_TOKENS), at_least=0) if has_tool else 0,
                    stage=f"turn{t}",
                )
            )
    return TraceProgram(id=pid, arrival_s=arrival, app="bfcl", calls=calls)


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
    draw = _Draw(rng, scale, tool_scale)
    build: Callable[[str, float, _Draw], TraceProgram]
    if kind == "agent":
        build = _agent
    elif kind == "text2sql":
        build = lambda pid, t, d: _text2sql(pid, t, d, candidates)  # noqa: E731
    else:
        build = _bfcl
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
