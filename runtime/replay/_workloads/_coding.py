"""``coding``: long-context coding agents (Claude Code / Codex sessions), with sub-agents and compaction.

One program is one session.  It opens with the app prefix and the user's
task; each turn appends the model's output and its tool's output, so the
context grows toward the published ~142K-token median (a context's first
turns mostly read files, later ones edit and test: contexts fill early and
most requests sit near the top of the window); when a turn's prompt
would pass :data:`CODING_COMPACT_AT`, a ``compact`` call summarises the
context and the turn starts a fresh one (``"context": null``: app prefix +
summary).  A sub-agent is a branch of the same program (the trace format has
no child programs): its first call continues the parent's spawning call (so
it shares the parent's prefix), it runs turns of its own, and the parent's
next call waits for it (``after`` = the spawning call and every sub-agent's
last call) and continues the spawning call with the sub-agents' reports as
fresh tokens.  A human's next message is a tool named ``human`` whose
duration is the think time and whose output is the message, placed between
episodes of the parent's conversation.

The figures and their sources:

* vLLM RFC #57103 (its "AgentX" analysis of coding-agent sessions): median 43
  turns (LLM calls) per session, median 142K input tokens per request, over
  96% prefix-cache hits, sub-agents in 44% of sessions;
* TraceLab (arXiv 2606.30560; 357,161 LLM rounds and 432,510 tool calls of
  Claude Code and Codex): about 154K input tokens per round on average;
* vllm-project/router RFC #285: 86% of an agent's follow-up requests arrive
  within 1 s of the previous reply, 95% within 10 s;
* AgentCgroup (the ``agent`` kind's source): tool durations (Bash p50 1.08 s,
  p90 8.4 s, p99 30 s; Read 0.03 s, Grep 0.04 s, Edit 0.03 s), reused here.

Every other number is our choice and says so.  Structure (which calls exist,
their ``after`` and ``context``) is decided on unscaled token counts, so
``scale`` shrinks tokens without changing the shape of a program.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

from .._trace import TraceCall, TraceProgram
from ._agent import AGENT_TOOLS
from ._draw import Draw, ToolShape

__all__ = [
    "CODING_CALLS_MEDIAN",
    "CODING_COMPACT_AT",
    "CODING_SUBAGENT_SHARE",
    "CODING_SYSTEM_TOKENS",
    "CODING_TOOLS",
    "coding_program",
]

#: LLM calls per session, the program's turns and its sub-agents' together:
#: lognormal, median 43 (RFC #57103).  The spread is not published: sigma 1.0
#: is our choice (p90 ~155 calls; interactive sessions run longer tails than
#: AgentCgroup's SWE-bench tasks, sigma 0.668), clipped to
#: [CODING_MIN_CALLS, CODING_MAX_CALLS].  Compaction calls come on top.
CODING_CALLS_MEDIAN = 43.0
CODING_CALLS_SIGMA = 1.0
CODING_MIN_CALLS = 4
CODING_MAX_CALLS = 500
#: The app prefix: Claude Code's system prompt and tool definitions.  Not
#: published: our choice (its system prompt plus ~20 tool schemas is ~15-25K tokens).
CODING_SYSTEM_TOKENS = 20_000
#: The user's task in the first call (the request, CLAUDE.md-style notes, git
#: status): lognormal median 3,000, sigma 0.7, at most 30,000.  Our choice.
CODING_TASK_TOKENS = (3_000.0, 0.7, 30_000.0)
#: Output per turn ("a few hundred tokens": reasoning, a tool call, an edit's
#: text): lognormal median 250, sigma 0.8, at most 8,000.  Our choice.
CODING_OUTPUT_TOKENS = (250.0, 0.8, 8_000.0)
#: Fresh tokens of a later turn (tool-result framing, system reminders), uniform.  Our choice.
CODING_TURN_NEW_TOKENS = (20, 200)

#: Compaction: a turn whose prompt would pass this many tokens is preceded by
#: a ``compact`` call.  Our choice.  Claude Code compacts near ~80% of a
#: 200K-token window (~160K), but the published median (142K per request,
#: RFC #57103) and mean (~154K per round, TraceLab) leave no room for that:
#: a context restarts near 30K after each compaction and must grow again, so
#: with everything else below a 160K threshold gives a median of ~100K and
#: 200K gives ~125K.  The sessions behind those figures ran with larger
#: windows too (Codex's 272K, 1M-token Claude models); at 240K the generated
#: median lands on ~142K.
CODING_COMPACT_AT = 240_000
#: The compaction request appended to the full context (instructions): our choice.
CODING_COMPACT_PROMPT_TOKENS = 300
#: The summary the ``compact`` call writes, then the fresh start of the next
#: turn: lognormal median 4,000, sigma 0.3, at most 10,000.  Our choice.
CODING_SUMMARY_TOKENS = (4_000.0, 0.3, 10_000.0)
#: What the agent re-attaches after a compaction besides the summary
#: (recently read files, the to-do list), uniform.  Our choice.
CODING_RESUME_TOKENS = (1_000, 5_000)

#: Share of sessions with sub-agents: 44% (RFC #57103).
CODING_SUBAGENT_SHARE = 0.44
#: Spawns per session that has sub-agents, and sub-agents run in parallel per
#: spawn, as (value, probability).  Our choice (mostly one at a time).
CODING_SPAWNS = ((1, 0.6), (2, 0.25), (3, 0.15))
CODING_PARALLEL = ((1, 0.7), (2, 0.2), (3, 0.1))
#: Turns of one sub-agent ("a few to tens"): lognormal median 8, sigma 0.7,
#: clipped to 2-40.  Our choice.  All sub-agents together take at most half
#: of a session's calls (the parent keeps the rest).
CODING_SUBAGENT_TURNS = (8.0, 0.7)
CODING_SUBAGENT_MIN_TURNS = 2
CODING_SUBAGENT_MAX_TURNS = 40
#: The task the parent hands a sub-agent (its first call's fresh tokens), uniform.  Our choice.
CODING_SUBAGENT_TASK_TOKENS = (300, 1_500)
#: A sub-agent's report: its last call's output, which the parent then reads
#: as fresh tokens: lognormal median 1,000, sigma 0.6, at most 8,000.  Our choice.
CODING_SUBAGENT_REPORT_TOKENS = (1_000.0, 0.6, 8_000.0)

#: User messages per session (episodes of the parent's conversation), as
#: (value, probability): 1-4, mean 1.9.  Our choice.
CODING_USER_MESSAGES = ((1, 0.5), (2, 0.25), (3, 0.125), (4, 0.125))
#: The ``human`` tool between episodes: think time lognormal median 30 s,
#: sigma 1.2, at most 30 minutes; its output is the next message (lognormal
#: median 150 tokens, sigma 1.0, at most 5,000).  Our choice.
CODING_HUMAN = ToolShape("human", 0.0, 30.0, 1.2, 1_800.0, 150, 1.0, 5_000)


def _agentcgroup(name: str) -> ToolShape:
    return next(t for t in AGENT_TOOLS if t.name == name)


#: The tool mix of a turn.  Durations: AgentCgroup's fits, as in the ``agent``
#: kind (``bash``: p50 1.08 s, sigma 1.47, capped at 120 s; ``read`` 0.03 s,
#: ``grep`` 0.04 s, ``edit`` 0.03 s), and ``test`` (builds and test runs:
#: lognormal median 30 s, sigma 0.8, capped at Claude Code's 10-minute Bash
#: limit; our choice).  Weights: our choice, fitted so that the gaps between a
#: reply and the next request reproduce RFC #285 (86% < 1 s, 95% < 10 s);
#: ``read`` and ``edit`` share one weight that shifts with the phase (below).
#: Outputs (tokens, lognormal): our choice, file reads the largest: a
#: ``read`` turn stands for the turn's reads (often several files at once;
#: Claude Code's Read returns at most 25,000 tokens), median 10,000 tokens.
CODING_TOOLS: tuple[ToolShape, ...] = (
    replace(_agentcgroup("read"), weight=0.32, output_median=10_000, output_sigma=1.0, output_max=25_000),
    replace(_agentcgroup("edit"), weight=0.32, output_median=150, output_sigma=0.5, output_max=2_000),
    replace(_agentcgroup("grep"), weight=0.14, output_median=400, output_sigma=1.0, output_max=10_000),
    replace(_agentcgroup("bash"), weight=0.19, output_median=300, output_sigma=1.2, output_max=8_000),
    ToolShape("test", 0.03, 30.0, 0.8, 600.0, 1_500, 1.0, 20_000),
)
#: Explore, then edit: a context's first turns mostly read files, later ones
#: mostly edit and test.  The share of ``read`` in the read+edit weight is
#: ``late + (early - late) * exp(-(age - 1) / turns)``, where ``age`` counts the
#: turns since the context began (a session, a sub-agent, a compaction).  Our
#: choice, fitted so that contexts fill early and then grow slowly, which puts
#: the median request near the top of the window (RFC #57103: 142K median).
CODING_EXPLORE = (1.0, 0.05, 15.0)

#: A tool as drawn: name, seconds and output tokens (both unscaled).
_Tool = tuple[str, float, float]


def _capped(d: Draw, shape: tuple[float, float, float]) -> float:
    median, sigma, cap = shape
    return min(cap, d.lognormal(median, sigma))


def _draw_tool(d: Draw, shape: ToolShape) -> _Tool:
    seconds = min(shape.max_s, d.lognormal(shape.median_s, shape.sigma_s))
    return shape.name, seconds, min(shape.output_max, d.lognormal(shape.output_median, shape.output_sigma))


def _tool(d: Draw, age: int) -> _Tool:
    """A tool of the mix for a turn ``age`` turns into its context."""
    early, late, turns = CODING_EXPLORE
    read_share = late + (early - late) * math.exp(-(age - 1) / turns)
    read, edit, *rest = CODING_TOOLS
    both = read.weight + edit.weight
    weights = [both * read_share, both * (1 - read_share), *(t.weight for t in rest)]
    return _draw_tool(d, d.rng.choices(CODING_TOOLS, weights)[0])


class _Session:
    """The calls of one session as they are drawn, and each call's full context in unscaled tokens."""

    def __init__(self, d: Draw) -> None:
        self.d = d
        self.calls: list[TraceCall] = []
        self.full: dict[str, float] = {}
        self.age: dict[str, int] = {}

    def call(
        self,
        cid: str,
        *,
        after: list[str],
        context: str | None,
        fresh: float,
        output: float,
        tool: _Tool | None,
        stage: str,
        age: int,
    ) -> str:
        """Append one call (``fresh``, ``output`` and the tool's output unscaled) and return its id."""
        name, seconds, tool_out = tool if tool is not None else (None, 0.0, 0.0)
        base = self.full[context] if context is not None else CODING_SYSTEM_TOKENS
        self.full[cid] = base + fresh + output + tool_out
        self.age[cid] = age
        d = self.d
        self.calls.append(
            TraceCall(
                id=cid,
                after=after,
                context=context,
                new_tokens=d.tokens(fresh),
                output_tokens=d.tokens(output),
                tool=name,
                tool_s=d.seconds(seconds),
                tool_output_tokens=d.tokens(tool_out, at_least=0),
                stage=stage,
            )
        )
        return cid

    def turn(
        self,
        cid: str,
        *,
        after: list[str],
        context: str | None,
        fresh: float,
        tool: Literal["mix", "human"] | None,
        stage: str,
        begins: bool = False,
        output: float | None = None,
    ) -> str:
        """A turn (``begins``: a new task's first), preceded by a compaction where its prompt would pass the limit.

        ``tool`` is drawn from :data:`CODING_TOOLS` (``"mix"``), is the
        ``human`` (:data:`CODING_HUMAN`) or none.
        """
        age = 1 if begins or context is None else self.age[context] + 1
        if context is not None and self.full[context] + fresh > CODING_COMPACT_AT:
            summary = _capped(self.d, CODING_SUMMARY_TOKENS)
            compact = self.call(
                f"{cid}.compact",
                after=after,
                context=context,
                fresh=CODING_COMPACT_PROMPT_TOKENS,
                output=summary,
                tool=None,
                stage="compact",
                age=age,
            )
            after, context, age = [compact], None, 1
            fresh += summary + self.d.uniform_int(CODING_RESUME_TOKENS)
        if output is None:
            output = _capped(self.d, CODING_OUTPUT_TOKENS)
        drawn = _tool(self.d, age) if tool == "mix" else _draw_tool(self.d, CODING_HUMAN) if tool == "human" else None
        return self.call(
            cid, after=after, context=context, fresh=fresh, output=output, tool=drawn, stage=stage, age=age
        )


def _sub_agent(s: _Session, prefix: str, spawn: str, turns: int) -> tuple[str, float]:
    """One sub-agent's turns after ``spawn``; returns its last call and its report's tokens (unscaled)."""
    d = s.d
    after, context = [spawn], spawn
    fresh: float = d.uniform_int(CODING_SUBAGENT_TASK_TOKENS)
    report = 0.0
    for i in range(1, turns + 1):
        last = i == turns
        report = _capped(d, CODING_SUBAGENT_REPORT_TOKENS) if last else 0.0
        cid = s.turn(
            f"{prefix}.t{i}",
            after=after,
            context=context,
            fresh=fresh,
            tool=None if last else "mix",
            stage="subagent",
            begins=i == 1,
            output=report if last else None,
        )
        after, context = [cid], cid
        fresh = d.uniform_int(CODING_TURN_NEW_TOKENS)
    return after[0], report


def coding_program(pid: str, arrival: float, d: Draw) -> TraceProgram:
    """One coding session (see the module doc)."""
    n = round(d.lognormal(CODING_CALLS_MEDIAN, CODING_CALLS_SIGMA))
    n = min(CODING_MAX_CALLS, max(CODING_MIN_CALLS, n))
    # Sub-agents first: each spawn runs one or more in parallel, all within half the session's calls.
    spawns: list[list[int]] = []
    if d.rng.random() < CODING_SUBAGENT_SHARE:
        budget = n // 2
        for _ in range(d.choice(CODING_SPAWNS)):
            group = []
            for _ in range(d.choice(CODING_PARALLEL)):
                turns = round(d.lognormal(*CODING_SUBAGENT_TURNS))
                turns = min(CODING_SUBAGENT_MAX_TURNS, max(CODING_SUBAGENT_MIN_TURNS, turns), budget)
                if turns >= CODING_SUBAGENT_MIN_TURNS:
                    group.append(turns)
                    budget -= turns
            if group:
                spawns.append(group)
    parent = n - sum(map(sum, spawns))
    users = d.choice(CODING_USER_MESSAGES)
    # Spawns and human messages happen after distinct parent turns, never the last (which answers).
    slots = d.rng.sample(range(1, parent), min(parent - 1, len(spawns) + users - 1))
    spawn_at = dict(zip(slots, spawns, strict=False))
    human_at = set(slots[len(spawns) :])

    s = _Session(d)
    after: list[str] = []
    context: str | None = None
    fresh = _capped(d, CODING_TASK_TOKENS)
    for k in range(1, parent + 1):
        tool: Literal["mix", "human"] | None = None
        if k in human_at:
            tool = "human"
        elif k < parent and k not in spawn_at:
            tool = "mix"
        cid = s.turn(f"t{k}", after=after, context=context, fresh=fresh, tool=tool, stage="turn")
        after, context = [cid], cid
        fresh = d.uniform_int(CODING_TURN_NEW_TOKENS)
        if k in spawn_at:
            for j, turns in enumerate(spawn_at[k], 1):
                last, report = _sub_agent(s, f"{cid}.a{j}", cid, turns)
                after.append(last)
                fresh += report
    return TraceProgram(
        id=pid,
        arrival_s=arrival,
        app="coding",
        system_tokens=d.tokens(CODING_SYSTEM_TOKENS, at_least=0),
        calls=s.calls,
    )
