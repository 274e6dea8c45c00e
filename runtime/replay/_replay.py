"""Trace replay: drive a :class:`Runtime` with the programs of a workload trace.

Each program of the trace (``../shared/TRACE_FORMAT.md``) becomes a real
program of the runtime, submitted at its arrival time with its id, SLO and
user priority, and runs the same path a user's workflow takes: the policy
chooses priority and engine, the dispatcher streams from the engine (failing
over if it dies), and tool pauses are tool calls through ``toolbridge``
(inline tools that sleep for the traced duration, so the per-tool duration
predictor learns them).  Nothing here talks to an engine directly.

Prompts are token ids.  A call's prompt is the app's shared prefix, then the
full context of the call it continues (that call's prompt, the tokens the
engine generated for it, and its tool's output tokens), then fresh tokens.
Fresh and tool-output tokens come from generators seeded by (seed, program
id, call id), so a replay is repeatable and prefix-cache hits are real.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from runtime import ProgramHandle, Runtime
from toolbridge import Tool, tool
from workflows import Context, ToolCall, Workflow, workflow

from ._results import CallResult, ProgramResult
from ._tokens import Vocabulary
from ._trace import TraceCall, TraceProgram, prompt_lengths, topological_order

__all__ = ["ReplayRun", "longest_context", "replay_trace"]

#: The runtime's clock (the event loop's, virtual under run_virtual): programs are submitted on it.
_now = anyio.current_time


def longest_context(programs: Sequence[TraceProgram]) -> tuple[int, str, str]:
    """The largest prompt + output of any call, in tokens, with its program and call ids.

    Checked before a replay, so that a trace too long for the engines fails
    before anything runs.
    """
    best = (0, "", "")
    for program in programs:
        lengths = prompt_lengths(program)
        for call in program.calls:
            best = max(best, (lengths[call.id] + call.output_tokens, program.id, call.id))
    return best


@dataclass(slots=True)
class ReplayRun:
    """What one replay produced: a result per program and the engines' final statistics."""

    programs: list[ProgramResult]
    engine_stats: list[dict[str, Any]]
    started_at: float
    wall_s: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)


def _pause_tool(name: str) -> Tool:
    """An inline tool called ``name`` that pauses for the traced duration."""

    async def pause(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "ok"

    return tool(name=name, description=f"replayed {name} call: waits for its traced duration")(pause)


class _ProgramReplayer:
    """Runs the calls of one trace program through a runtime context, recording per-call results."""

    def __init__(
        self,
        spec: TraceProgram,
        *,
        vocabulary: Vocabulary,
        seed: int,
        app_prefix: Callable[[str | None, int], list[int]],
        tools: Callable[[str], Tool],
        engine_index: Mapping[str, int],
    ) -> None:
        self.spec = spec
        self._vocabulary = vocabulary
        self._seed = seed
        self._app_prefix = app_prefix
        self._tools = tools
        self._engine_index = engine_index
        self.calls: dict[str, CallResult] = {}
        # The full context of each finished call (prompt + output + tool
        # output), kept only until the last call that continues it has
        # started: at published sizes a context is ~40K ids, and keeping
        # every call's would hold gigabytes over a long replay.
        # (Kept as the prompt and what followed it, joined once into the next
        # prompt: copying 40K ids twice per call showed in simulator profiles.)
        self._contexts: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._readers: dict[str, int] = {}
        for c in spec.calls:
            if c.context is not None:
                self._readers[c.context] = self._readers.get(c.context, 0) + 1
        # Calls still waiting on a parent, and which calls each one unblocks.
        self._waiting_on: dict[str, int] = {c.id: len(c.parents) for c in spec.calls}
        self._unblocks: dict[str, list[TraceCall]] = {c.id: [] for c in spec.calls}
        order = topological_order(spec)
        for c in order:
            for parent in c.parents:
                self._unblocks[parent].append(c)
        self._roots = [c for c in order if not c.parents]

    def _fresh(self, call_id: str, what: str, n: int) -> list[int]:
        rng = random.Random(f"{self._seed}/{self.spec.id}/{call_id}/{what}")
        return self._vocabulary.draw(rng, n)

    async def run(self, ctx: Context) -> None:
        await self._run_branches(ctx, self._roots)

    async def _run_branches(self, ctx: Context, calls: list[TraceCall]) -> None:
        if len(calls) == 1:
            await self._run_branch(ctx, calls[0])
        else:
            await ctx.gather(*(self._run_branch(ctx, call) for call in calls))

    async def _run_branch(self, ctx: Context, call: TraceCall) -> None:
        """Run ``call``, then the calls it was the last parent of: one in this task, several in parallel.

        A call starts as soon as its last parent finishes, as with one task
        per call waiting on its parents, but a chain of calls (an agent's
        turns) runs in one task: a task per call showed in replay profiles.
        """
        while True:
            await self._run_call(ctx, call)
            ready = []
            for child in self._unblocks[call.id]:
                self._waiting_on[child.id] -= 1
                if not self._waiting_on[child.id]:
                    ready.append(child)
            if len(ready) != 1:
                break
            call = ready[0]
        if ready:
            await self._run_branches(ctx, ready)

    async def _run_call(self, ctx: Context, call: TraceCall) -> None:
        if call.context is not None:
            inherited = self._contexts[call.context]  # begins with the app prefix already
            self._readers[call.context] -= 1
            if not self._readers[call.context]:
                del self._contexts[call.context]
        else:
            inherited = (tuple(self._app_prefix(self.spec.app, self.spec.system_tokens)), ())
        head, tail = inherited
        prompt = head + (tail + tuple(self._fresh(call.id, "prompt", call.new_tokens)))
        reply = await ctx.llm_tokens(prompt, max_tokens=call.output_tokens, ignore_eos=True, stage=call.stage)
        tool_output: tuple[int, ...] = ()
        if call.tool is not None:
            message = await ctx.call_tool(
                ToolCall(f"{call.id}-tool", call.tool, {"seconds": call.tool_s}), [self._tools(call.tool)]
            )
            if not message.ok:
                raise RuntimeError(f"replayed tool {call.tool} of call {call.id} failed: {message.content}")
            tool_output = tuple(self._fresh(call.id, "tool", call.tool_output_tokens))
        if self._readers.get(call.id):
            self._contexts[call.id] = (prompt, reply.token_ids + tool_output)
        self.calls[call.id] = CallResult(
            id=call.id,
            engine=self._engine_index[reply.engine],
            queued_s=reply.queued_s,
            ttft_s=reply.ttft_s,
            e2e_s=reply.latency_s,
            prompt_tokens=reply.usage.prompt_tokens,
            cached_tokens=reply.usage.cached_tokens,
        )


async def _run_traced(ctx: Context, replayer: _ProgramReplayer) -> None:
    """One traced program: its calls, in dependency order, with their tool pauses."""
    await replayer.run(ctx)


_ReplayWorkflow = Workflow[[_ProgramReplayer], None]


def _app_workflow(app: str | None, cache: dict[str | None, _ReplayWorkflow]) -> _ReplayWorkflow:
    """The workflow an app's programs run as (``trace-replay/APP``, or ``trace-replay``): a profile per workflow."""
    found = cache.get(app)
    if found is None:
        found = cache[app] = workflow(name="trace-replay" if app is None else f"trace-replay/{app}")(_run_traced)
    return found


async def replay_trace(
    programs: Sequence[TraceProgram],
    rt: Runtime,
    *,
    vocabulary: Vocabulary,
    seed: int = 0,
    on_program_done: Callable[[ProgramResult], None] | None = None,
) -> ReplayRun:
    """Replay ``programs`` on the running runtime ``rt``; returns per-program results.

    Programs are submitted to ``rt`` (its engines and policy) at ``arrival_s``
    seconds after the call (the replay's time zero); times in the results are
    seconds from then.  A program that fails is reported with its error and
    no finish time.  Engine counters (preemptions, recomputed tokens, pins,
    the host-memory tier's bytes and tokens) in the run's totals are what
    changed during the replay (0 where no engine reports one).
    """
    prefixes: dict[str | None, list[int]] = {}

    def app_prefix(app: str | None, n: int) -> list[int]:
        # Identical for every program of an app (the shared system prompt);
        # a program without an app gets a prefix of its own.
        key = app
        if key not in prefixes or len(prefixes[key]) < n:
            prefixes[key] = vocabulary.draw(random.Random(f"{seed}/app/{app}"), n)
        return prefixes[key][:n]

    tool_cache: dict[str, Tool] = {}

    def tools(name: str) -> Tool:
        if name not in tool_cache:
            tool_cache[name] = _pause_tool(name)
        return tool_cache[name]

    workflows: dict[str | None, _ReplayWorkflow] = {}
    results: list[ProgramResult] = []
    before = [asdict(s) for s in await rt.stats()]
    engine_index = {e.name: i for i, e in enumerate(rt.engines)}
    t0 = _now()

    async def follow(spec: TraceProgram, replayer: _ProgramReplayer, handle: ProgramHandle[None]) -> None:
        error: str | None = None
        try:
            await handle.result()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finished_at = handle.program.finished_at
        finish = (finished_at if finished_at is not None else _now()) - t0
        ok = error is None
        jct = finish - spec.arrival_s if ok else None
        result = ProgramResult(
            id=spec.id,
            arrival_s=spec.arrival_s,
            finish_s=finish if ok else None,
            jct_s=jct,
            slo_s=spec.slo_s,
            slo_met=None if spec.slo_s is None else (ok and jct is not None and jct <= spec.slo_s),
            calls=[replayer.calls[c.id] for c in spec.calls if c.id in replayer.calls],
            error=error,
        )
        results.append(result)
        if on_program_done is not None:
            on_program_done(result)

    async with anyio.create_task_group() as followers:
        for spec in sorted(programs, key=lambda p: p.arrival_s):
            delay = t0 + spec.arrival_s - _now()
            if delay > 0:
                await anyio.sleep(delay)
            replayer = _ProgramReplayer(
                spec,
                vocabulary=vocabulary,
                seed=seed,
                app_prefix=app_prefix,
                tools=tools,
                engine_index=engine_index,
            )
            handle: ProgramHandle[None] = rt.start_program(
                _app_workflow(spec.app, workflows),
                {"replayer": replayer},
                program_id=spec.id,
                deadline_s=spec.slo_s,
                priority=spec.priority,
            )
            followers.start_soon(follow, spec, replayer, handle)
    after = [asdict(s) for s in await rt.stats()]
    wall = _now() - t0
    order = {p.id: i for i, p in enumerate(programs)}
    results.sort(key=lambda r: order[r.id])
    totals = {
        key: sum(int(a.get(key) or 0) - int(b.get(key) or 0) for a, b in zip(after, before, strict=True))
        for key in _COUNTERS
    }
    return ReplayRun(programs=results, engine_stats=after, started_at=t0, wall_s=wall, totals=totals)


#: Engine counters a replay result sums over engines (see the result contract).
_COUNTERS = (
    "preemptions",
    "pins",
    "pin_hits",
    "pins_expired",
    "pins_released_pressure",
    "recomputed_tokens",
    "bytes_offloaded",
    "bytes_loaded",
    "host_hit_tokens",
)
