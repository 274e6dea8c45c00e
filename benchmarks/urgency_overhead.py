"""Scheduling overhead of the policies: decision time and memory with 10,000 live programs, and per call on vLLM.

The issue's goals are printed beside the measured figures, never asserted.

- **decision** (goal: p50 < 100 us).  Per policy (``vllm``, ``hexgen``, ``autellix``,
  ``agentrt``) and pool (8 and 64 :class:`runtime.replay.SimEngine` priced by
  ``h100-llama3-8b``, started by a :class:`runtime.Runtime`, which binds the policy,
  under :func:`runtime.replay.run_virtual`), 10,000 programs are made live: one
  LLM call each (one of 4 workflows' 256-token system prompt, then 64 tokens of
  its own; half the programs have a 30-300 s deadline), routed by the policy and
  reported finished (``on_call_finished``, a made-up 64-token completion); no
  program finishes.  Then N calls (20,000; quick 2,000) of random live programs,
  each prompt continuing the program's last prompt and output (context affinity),
  1 ms of virtual time apart (the last call's pin has expired);
  ``time.perf_counter_ns`` times ``policy.route`` alone and ``on_call_finished``
  alone.  ``autellix`` and ``agentrt`` run with ``max_waiting=None`` (no
  admission gate) so every call is routed; engines get no requests (idle load).
  Then ``policy.held_order`` of 1,000 held calls (``autellix`` and ``agentrt``
  sort them; the others return them as they are).
- **memory**.  ``tracemalloc``: bytes the policy allocates and still holds (after
  ``gc.collect()``) from before the first route to after the last
  ``on_call_finished`` of the 10,000 programs' set-up (pool of 8), per program.
  Programs, nodes, calls (prefix keys computed) and completions are made before
  tracing and kept alive: only the policy's own state counts.
- **percall** (goal: overhead p50 < 1 ms), the tiny model on the CPU.  Raw: a
  vLLM ``AsyncLLM`` from vLLM's public API with InProcessEngine's engine
  arguments (dtype, priority scheduling, prefix caching, 1 GiB KV cache,
  max_model_len 2048, max_num_seqs 4, eager); after warm-up (30; quick 10), M
  sequential requests (300; quick 50) of one 32-token prompt, max_tokens=1, each
  timed from the call to its final output.  Runtime: ``await rt.run(wf)`` on
  ``Runtime([InProcessEngine(...)], policy=P)``, P = ``vllm`` and ``agentrt``
  (the engine runs agentrt's pinning scheduler plug-in, its default), and
  ``vllm`` with ``pins=False`` (vLLM's scheduler: the raw side's configuration).
  The runtime's own time: rt.run's wall time less the completion's ``e2e_s``
  (the workflow returns ``reply.latency_s``).  Engines start one at a time.

Usage::

    .venv/bin/python benchmarks/urgency_overhead.py                  # all parts (~6 min on 2 cores)
    .venv/bin/python benchmarks/urgency_overhead.py --only decision,memory
    .venv/bin/python benchmarks/urgency_overhead.py --quick          # smoke: N=2,000, M=50

Writes ``urgency_overhead.json`` and ``.png`` into ``--out-dir`` (default
``benchmarks/results``; ``--quick``: ``urgency_overhead_quick.*``), parts run only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import gc
import json
import os
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM logs every engine step at INFO

from _machine import machine  # noqa: E402

from runtime import (  # noqa: E402 - after the path set-up above
    AgentrtPolicy,
    AutellixPolicy,
    CallFinished,
    CallInfo,
    Completion,
    Engine,
    InProcessEngine,
    NodeKind,
    Policy,
    Program,
    Route,
    Runtime,
    SamplingOptions,
    TokenPrompt,
    get_policy,
    prepare_model,
    resolve_dtype,
)
from runtime.replay import CostProfile, SimEngine, percentile, run_virtual  # noqa: E402
from workflows import Context, workflow  # noqa: E402

POLICIES = ("vllm", "hexgen", "autellix", "agentrt")
POOLS = (8, 64)
PARTS = ("decision", "memory", "percall")
GOALS = {"decision_p50_us": 100.0, "percall_overhead_p50_ms": 1.0}
PROFILE = "h100-llama3-8b"
WORKFLOWS, SYSTEM_TOKENS, USER_TOKENS, OUTPUT_TOKENS = 4, 256, 64, 64
STAGES = ("s1", "s2", "s3")
VOCAB = range(3, 32000)
STEP_S = 0.001  # virtual seconds between two timed decisions
PROMPT = tuple(range(100, 132))  # the per-call part's fixed 32-token prompt
RAW = "raw AsyncLLM"
ENGINE_OPTIONS: dict[str, Any] = {"max_model_len": 2048, "max_num_seqs": 4, "kv_cache_gib": 1}


@dataclass(frozen=True)
class Sizes:
    programs: int
    decisions: int  # N
    held: int
    held_reps: int
    calls: int  # M
    warmup: int


FULL = Sizes(programs=10_000, decisions=20_000, held=1_000, held_reps=50, calls=300, warmup=30)
QUICK = Sizes(programs=10_000, decisions=2_000, held=1_000, held_reps=10, calls=50, warmup=10)


def make_policy(name: str) -> Policy:
    """The policy ``name``; ``autellix`` and ``agentrt`` with the admission gate off (every call routed)."""
    if name == "agentrt":
        return AgentrtPolicy(max_waiting=None)
    if name == "autellix":
        return AutellixPolicy(max_waiting=None)
    return get_policy(name)


def checked(route: Route | None, policy: Policy) -> Route:
    if route is None:
        raise RuntimeError(f"{policy.name} held a call with max_waiting=None")
    return route


def stats(values: Sequence[float], scale: float) -> dict[str, float]:
    """p50, p90, p99 and mean of ``values`` times ``scale``."""
    return {f"p{q}": percentile(values, q) * scale for q in (50, 90, 99)} | {"mean": sum(values) / len(values) * scale}


# -- the workload: live programs and their calls -----------------------------------------------


@dataclass
class Live:
    program: Program
    context: tuple[int, ...]  # the last call's prompt and output
    cached: int = SYSTEM_TOKENS  # of the next prompt, in the engine's cache: the context it continues
    last_node: str | None = None
    calls: int = 0


class Workload:
    """Programs and calls for one policy; created on the running loop (programs read its clock)."""

    def __init__(self, policy: Policy, seed: int) -> None:
        self.policy = policy
        self.rng = random.Random(seed)
        self.systems = [self.tokens(SYSTEM_TOKENS) for _ in range(WORKFLOWS)]

    def tokens(self, n: int) -> tuple[int, ...]:
        return tuple(self.rng.choices(VOCAB, k=n))

    def program(self, i: int) -> Live:
        deadline = self.rng.uniform(30.0, 300.0) if i % 2 == 0 else None
        program = Program(f"wf-{i % WORKFLOWS}", {}, deadline_s=deadline, priority=0)
        return Live(program, self.systems[i % WORKFLOWS])

    def call(self, live: Live) -> CallInfo:
        """The program's next call: its previous context, then new user tokens."""
        program = live.program
        after = () if live.last_node is None else (live.last_node,)
        node = program.add_node(NodeKind.LLM, "chat", parent=None, after=after)
        live.last_node = node.id
        live.cached = len(live.context)
        live.context += self.tokens(USER_TOKENS if live.calls == 0 else USER_TOKENS // 2)  # then a tool result
        stage = STAGES[min(live.calls, len(STAGES) - 1)]
        live.calls += 1
        return CallInfo(
            program,
            node,
            TokenPrompt(live.context),
            SamplingOptions(max_tokens=OUTPUT_TOKENS),
            stage=stage,
            requested_priority=None,
            arrived_s=self.policy.host.now(),
        )

    def completion(self, live: Live, call: CallInfo, engine: str) -> Completion:
        """A made-up completion of ``call``; its output joins the program's context."""
        prompt, cached = len(live.context), live.cached
        output = self.tokens(OUTPUT_TOKENS)
        live.context += output
        ttft = 0.005 + 2e-5 * (prompt - cached)
        return Completion(
            request_id=f"{call.program.id}-{call.node.id}",
            engine=engine,
            model=PROFILE,
            text="",
            token_ids=output,
            finish_reason="length",
            prompt_tokens=prompt,
            completion_tokens=OUTPUT_TOKENS,
            cached_tokens=cached,
            ttft_s=ttft,
            e2e_s=ttft + 0.01 * OUTPUT_TOKENS,
            queued_s=0.002,
        )


async def populate(
    policy: Policy, engines: Sequence[Engine], sizes: Sizes, seed: int
) -> tuple[Workload, list[Live], int]:
    """Make the programs live in ``policy``: one call each, routed and finished; and the bytes the policy keeps."""
    work = Workload(policy, seed)
    lives = [work.program(i) for i in range(sizes.programs)]
    calls = [work.call(live) for live in lives]
    for call in calls:
        _ = call.prefix_key  # cached on the CallInfo: the call's, not the policy's
    completions = [work.completion(live, call, "") for live, call in zip(lives, calls, strict=True)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for call, completion in zip(calls, completions, strict=True):
            route = checked(policy.route(call, engines), policy)
            await policy.on_call_finished(CallFinished(call, route.engine.name, completion))
        del route
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return work, lives, held


async def _decision(name: str, pool: int, sizes: Sizes, seed: int, *, timed: bool = True) -> dict[str, Any]:
    """Make the programs live (their memory), then, if ``timed``, time N decisions and ``held_order``."""
    policy = make_policy(name)
    profile = CostProfile.load(PROFILE)
    engines: list[Engine] = [SimEngine(profile, name=f"sim-{i}") for i in range(pool)]
    async with Runtime(engines, policy=policy):
        work, lives, held_bytes = await populate(policy, engines, sizes, seed)
        result: dict[str, Any] = {"bytes_per_program": held_bytes / sizes.programs, "bytes_total": held_bytes}
        if not timed:
            return result
        await asyncio.sleep(2.0)  # virtual: the set-up calls' provisional pins expire
        route_ns: list[int] = []
        finish_ns: list[int] = []
        clock = time.perf_counter_ns
        for _ in range(sizes.decisions):
            await asyncio.sleep(STEP_S)
            live = work.rng.choice(lives)
            call = work.call(live)
            t0 = clock()
            choice = policy.route(call, engines)
            t1 = clock()
            route = checked(choice, policy)
            event = CallFinished(call, route.engine.name, work.completion(live, call, route.engine.name))
            t2 = clock()
            await policy.on_call_finished(event)
            t3 = clock()
            route_ns.append(t1 - t0)
            finish_ns.append(t3 - t2)
        held = [work.call(work.rng.choice(lives)) for _ in range(sizes.held)]
        held_ns: list[int] = []
        for _ in range(sizes.held_reps):
            t0 = clock()
            policy.held_order(held)
            held_ns.append(clock() - t0)
    samples = {"route_us": route_ns, "on_call_finished_us": finish_ns, "held_order_us": held_ns}
    return result | {key: stats(ns, 1e-3) for key, ns in samples.items()}


# -- per call: raw AsyncLLM against the runtime ------------------------------------------------


async def _raw_vllm(path: Path, sizes: Sizes) -> dict[str, Any]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(ENGINE_OPTIONS["kv_cache_gib"])  # as InProcessEngine
    options: dict[str, Any] = {  # InProcessEngine's arguments (less its scheduler plug-in)
        "model": str(path),
        "served_model_name": [path.name],
        "dtype": resolve_dtype("auto"),
        "max_model_len": ENGINE_OPTIONS["max_model_len"],
        "max_num_seqs": ENGINE_OPTIONS["max_num_seqs"],
        "scheduling_policy": "priority",
        "enable_prefix_caching": True,
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        "disable_log_stats": True,
        "enforce_eager": True,
    }
    args = AsyncEngineArgs(**options)
    llm = AsyncLLM.from_engine_args(args)
    try:
        params = SamplingParams(max_tokens=1, temperature=0.0, output_kind=RequestOutputKind.DELTA)
        wall: list[float] = []
        for i in range(sizes.warmup + sizes.calls):
            t0 = time.perf_counter()
            async for _ in llm.generate({"prompt_token_ids": list(PROMPT)}, params, f"raw-{i}", priority=0):
                pass  # the stream ends with the final output
            wall.append(time.perf_counter() - t0)
    finally:
        llm.shutdown()
        del llm
        gc.collect()  # AsyncLLM.__del__ shuts down again: now, not at interpreter exit (where it fails)
    return {"wall_ms": stats(wall[sizes.warmup :], 1e3)}


@workflow
async def one_call(ctx: Context, prompt: list[int]) -> float:
    reply = await ctx.llm_tokens(prompt, max_tokens=1)
    return reply.latency_s


async def _runtime_calls(path: Path, policy: str, pins: bool, sizes: Sizes) -> dict[str, Any]:
    engine = InProcessEngine(path, pins=pins, engine_args={"enforce_eager": True}, **ENGINE_OPTIONS)
    wall: list[float] = []
    own: list[float] = []
    async with Runtime([engine], policy=policy) as rt:
        for _ in range(sizes.warmup + sizes.calls):
            t0 = time.perf_counter()
            e2e = await rt.run(one_call, prompt=list(PROMPT))
            wall.append(time.perf_counter() - t0)
            own.append(wall[-1] - e2e)
    return {"wall_ms": stats(wall[sizes.warmup :], 1e3), "own_ms": stats(own[sizes.warmup :], 1e3)}


def run_percall(sizes: Sizes) -> dict[str, Any]:
    """Raw AsyncLLM, then the runtime with each policy: one engine at a time; a failed run is recorded."""
    path = prepare_model("tiny")
    runs: dict[str, Callable[[], Coroutine[Any, Any, dict[str, Any]]]] = {
        RAW: functools.partial(_raw_vllm, path, sizes),
        "runtime vllm": functools.partial(_runtime_calls, path, "vllm", True, sizes),
        "runtime agentrt": functools.partial(_runtime_calls, path, "agentrt", True, sizes),
        "runtime vllm pins=False": functools.partial(_runtime_calls, path, "vllm", False, sizes),
    }
    out: dict[str, Any] = {}
    for label, run in runs.items():
        print(f"  percall: {label} ...", flush=True)
        try:
            out[label] = asyncio.run(run())
        except Exception as exc:  # recorded; the other runs still go
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
    raw = out[RAW].get("wall_ms")
    for label, r in out.items():
        if label != RAW and raw is not None and "wall_ms" in r:
            r["overhead_p50_ms"] = r["wall_ms"]["p50"] - raw["p50"]
    return out


# -- report ------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    lines: list[str] = []
    if "decision" in report:
        goal = GOALS["decision_p50_us"]
        lines.append(f"decision time, {report['sizes']['programs']:,} live programs (us; goal p50 < {goal:g})")
        lines.append(f"{'policy':<10}{'pool':>5}{'route p50':>11}{'p90':>9}{'p99':>9}{'finish p50':>12}{'p99':>9}")
        for name, pools in report["decision"].items():
            for pool, r in pools.items():
                ru, fu = r["route_us"], r["on_call_finished_us"]
                lines.append(
                    f"{name:<10}{pool:>5}{ru['p50']:>11.1f}{ru['p90']:>9.1f}{ru['p99']:>9.1f}"
                    f"{fu['p50']:>12.1f}{fu['p99']:>9.1f}"
                )
        held = [f"{n} {p[str(POOLS[0])]['held_order_us']['p50']:.1f}" for n, p in report["decision"].items()]
        lines.append(f"held_order p50, {report['sizes']['held']:,} held calls (us): {', '.join(held)}")
    if "memory" in report:
        memory = [f"{n} {m['bytes_per_program']:.0f}" for n, m in report["memory"].items()]
        lines.append(f"policy memory per live program (bytes): {', '.join(memory)}")
    if "percall" in report:
        goal = GOALS["percall_overhead_p50_ms"]
        lines.append(f"per call, tiny model on the CPU (ms; goal overhead p50 < {goal:g})")
        lines.append(f"{'':<24}{'p50':>8}{'p90':>8}{'overhead p50':>14}{'own p50':>9}")
        for label, r in report["percall"].items():
            if "error" in r:
                lines.append(f"{label:<24} failed: {r['error'][:80]}")
                continue
            over = f"{r['overhead_p50_ms']:>14.3f}" if "overhead_p50_ms" in r else f"{'':>14}"
            own = f"{r['own_ms']['p50']:>9.3f}" if "own_ms" in r else ""
            lines.append(f"{label:<24}{r['wall_ms']['p50']:>8.3f}{r['wall_ms']['p90']:>8.3f}{over}{own}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5))
    width = 0.2
    if "decision" in report:
        names = list(report["decision"])
        top = GOALS["decision_p50_us"]
        for k, (pool, q) in enumerate([(p, q) for p in POOLS for q in ("p50", "p99")]):
            values = [report["decision"][n][str(pool)]["route_us"][q] for n in names]
            ax1.bar([i + (k - 1.5) * width for i in range(len(names))], values, width, label=f"{pool} engines {q}")
            top = max(top, *values)
        ax1.axhline(GOALS["decision_p50_us"], color="red", linestyle="--", label="goal p50")
        ax1.set_xticks(range(len(names)), names)
        ax1.set_yscale("log")
        ax1.set_ylim(top=top * 10)  # room for the legend
        ax1.legend(fontsize=8, ncols=3, loc="upper left")
    ax1.set_title(f"route() time, {report['sizes']['programs']:,} live programs (us)")
    if "memory" in report:
        names = list(report["memory"])
        bars = ax2.bar(names, [report["memory"][n]["bytes_per_program"] for n in names], color="tab:green")
        ax2.bar_label(bars, fmt="%.0f")
    ax2.set_title("policy memory per live program (bytes)")
    if "percall" in report:
        labels = [k for k, v in report["percall"].items() if "wall_ms" in v]
        for k, q in enumerate(("p50", "p90")):
            values = [report["percall"][label]["wall_ms"][q] for label in labels]
            ax3.bar([i + (k - 0.5) * width * 2 for i in range(len(labels))], values, width * 2, label=q)
        ax3.set_xticks(range(len(labels)), [label.replace("runtime ", "runtime\n") for label in labels], fontsize=8)
        ax3.legend(fontsize=8)
    ax3.set_title("per-call latency, tiny model, max_tokens=1 (ms)")
    for ax in (ax1, ax2, ax3):
        if not ax.has_data():
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of parts: {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=2,000 decisions, M=50 calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    sizes = QUICK if args.quick else FULL
    report: dict[str, Any] = {
        "benchmark": "urgency_overhead",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "parts": parts,
        "machine": machine(),
        "sizes": asdict(sizes)
        | {"pools": list(POOLS), "profile": PROFILE, "virtual_step_s": STEP_S}
        | {"percall_model": "tiny", "percall_prompt_tokens": len(PROMPT), "percall_max_tokens": 1},
        "goals": GOALS,
        "notes": [
            "autellix and agentrt built with max_waiting=None (admission gate off): every call routed, none held",
            "simulated engines receive no requests: the policies' own bookkeeping carries the state",
            "held_order timed after the decisions (table: pool of 8); vllm and hexgen return held calls unsorted",
        ],
    }
    if "decision" in parts:
        report["decision"] = {}
        for name in POLICIES:
            report["decision"][name] = {}
            for pool in POOLS:
                print(f"  decision: {name}, {pool} engines ...", flush=True)
                run = functools.partial(_decision, name, pool, sizes, args.seed)
                report["decision"][name][str(pool)] = run_virtual(run)
    if "memory" in parts:
        report["memory"] = {}
        for name in POLICIES:
            result = report.get("decision", {}).get(name, {}).get(str(POOLS[0]))
            if result is None:
                print(f"  memory: {name} ...", flush=True)
                result = run_virtual(functools.partial(_decision, name, POOLS[0], sizes, args.seed, timed=False))
            report["memory"][name] = {k: result[k] for k in ("bytes_per_program", "bytes_total")}
    if "percall" in parts:
        report["percall"] = run_percall(sizes)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / ("urgency_overhead_quick" if args.quick else "urgency_overhead")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, stem.with_suffix(".png"))
    print(table(report))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
