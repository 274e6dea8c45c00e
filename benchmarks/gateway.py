"""The gateway: what it costs per request over vLLM's own server, and what it gains on an agent trace.

Two parts (``--part overhead|gain|both``), each in child processes of this
script (one engine set alive at a time; a fresh ``Runtime`` per run):

- **overhead**: one ``vllm serve`` on ``--overhead-model`` (default
  ``tiny``), launched by :class:`runtime.ServerEngine`, with a
  :class:`runtime.Runtime` over that one server (``--overhead-policy``,
  default ``agentrt``, the default of ``agentrt serve``) and a
  :class:`runtime.Gateway` in front of it.  One aiohttp client (one
  connection pool, keep-alive, requests one at a time) sends ``--requests``
  non-streamed ``/v1/chat/completions`` requests (``max_tokens`` 1,
  ``temperature`` 0) to the server directly and as many through the
  gateway, in pairs, alternating which side goes first (direct first in even
  pairs, gateway first in odd ones) so both see the same conditions, after
  ``--warmup`` pairs that are not counted.  Every request has a prompt of
  its own of the same shape (``"Request NNNNNN: ..."``, one user message):
  no request is a full prefix-cache hit, and both sides share the same
  common prefix (the chat template and the words before the number).  Then
  ``--stream-requests`` streamed pairs the same way (``max_tokens`` 4,
  ``ignore_eos``) for the time to first token: from sending the request to
  the first chunk with text (the gateway sends its role chunk at once,
  before the engine answers, so the first byte would flatter it).  Reported:
  p50/p90/p99 latency of each side, the gateway's added latency at p50 and
  p90 (gateway percentile minus direct percentile) and the median of the
  per-pair differences; the same for TTFT.  Goal: < 2 ms added at p50
  (printed beside the figure, never asserted).
- **gain**: a multi-turn agent trace (``generate_workload("agent")``,
  ``--programs`` 8 at ``--rate`` 0.5/s, seed ``--seed`` 41, tokens x
  ``--scale`` 0.05, tools x ``--tool-scale`` 0.3, like the real agent
  replays of benchmarks/urgency.py) sent through the gateway by an HTTP
  client, once per policy of ``--policies`` (default ``vllm,agentrt``),
  each on a freshly started runtime over ``--engines`` 2 in-process vLLM
  engines serving ``--model`` (default ``llama-49m``) with ``--kv-blocks``
  64 KV blocks each (the small cache of benchmarks/kv_pinning.py's real
  setting, so contexts compete for it and pins matter; 0: the engine's
  default 1 GiB) and a context limit sized from the trace as ``agentrt
  replay`` sizes it.  The client starts each program at its arrival time;
  for each call it POSTs ``/v1/completions`` with the call's prompt as
  token ids, ``max_tokens`` = the call's output length, ``ignore_eos``,
  header ``X-Session-ID: <program id>``, ``expected_tool`` = the tool that
  follows (if any) and ``last_turn`` on the program's last request; then it
  waits the tool's traced duration.  Calls start when their ``after``
  calls (and tools) are done, so a DAG runs its parallel branches as
  concurrent requests of one session (agent traces are chains).  Prompts
  are built as the replay lab builds them (docs/replay.md): the app's shared
  prefix, then the full context of the call continued, then fresh ids,
  drawn from the model's vocabulary by ``random.Random`` seeded as the lab
  seeds them, so the gateway run sends the same prompts as ``agentrt
  replay --seed 0`` would: a context is continued with the ids the engine
  generated (vLLM's ``return_token_ids``, which the gateway answers).
  With ``--library`` the same trace is also replayed by
  :func:`runtime.replay.replay_trace` (the library path: programs of the
  runtime, not HTTP) on the same engines and policies, so gateway and
  library show side by side.  Reported per run: JCT mean/P50/P95/P99 (from
  :func:`runtime.replay.summarize`, JCT measured by the client from the
  program's arrival to its last answer and tool), the cached-token ratio
  of the calls, and the engines' pin counters; for gateway runs also the
  gateway's ``/metrics`` (engine prompt/cached tokens, pins, pin hits) as
  they changed during the run.  Each run writes a result document of the
  replay format (``agentrt bench compare`` reads it).

Usage::

    .venv/bin/python benchmarks/gateway.py                       # both parts (overhead ~3 min, gain ~10 min)
    .venv/bin/python benchmarks/gateway.py --part overhead --requests 300
    .venv/bin/python benchmarks/gateway.py --part gain --programs 8 --rate 0.5 --library
    .venv/bin/python benchmarks/gateway.py --quick               # smoke: 20 requests; 2 programs, tiny, 1 engine

Writes ``gateway.json`` and ``gateway.png`` into ``--out-dir`` (default
``benchmarks/results``; ``--quick``: ``gateway_quick.*``), with the gain's
trace (``gateway_gain.jsonl``) and one result document per run
(``gateway_gain_<mode>_<policy>.json``) beside them.  A part not run is
kept from an earlier ``gateway.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402 - after the path set-up above
import anyio  # noqa: E402
from _machine import machine  # noqa: E402

from runtime import Gateway, InProcessEngine, Runtime, ServerEngine, resolve_model  # noqa: E402
from runtime.replay import (  # noqa: E402
    CPU_BLOCK_SIZE,
    CallResult,
    ProgramResult,
    ReplayResult,
    TraceCall,
    TraceProgram,
    Vocabulary,
    dump_trace,
    generate_workload,
    load_trace,
    longest_context,
    model_context_limit,
    model_vocabulary,
    percentile,
    replay_trace,
    summarize,
    topological_order,
)

GOAL_ADDED_P50_MS = 2.0
#: Counters of the gateway's /metrics reported per gain run (their change over the run).
METRICS = (
    "agentrt_engine_prompt_tokens",
    "agentrt_engine_cached_tokens",
    "agentrt_engine_completion_tokens",
    "agentrt_engine_requests",
    "agentrt_engine_preemptions",
    "agentrt_engine_pins",
    "agentrt_engine_pin_hits",
    "agentrt_engine_pins_expired",
    "agentrt_engine_pins_released_pressure",
    "agentrt_gateway_programs_ended",
)
#: Engine counters a replay result sums over engines (the replay format's summary).
COUNTERS = ("preemptions", "pins", "pin_hits", "pins_expired", "pins_released_pressure")
FILLER = "Summarise the state of the build in one short sentence and name the next step."


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {f"p{q}_ms": round(1000 * percentile(values, q), 3) for q in (50, 90, 99)} | {
        "mean_ms": round(1000 * statistics.fmean(values), 3)
    }


# -- overhead: direct vs gateway on one vllm serve -----------------------------------------------


def _chat_body(model: str, i: int, *, stream: bool, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": f"Request {i:06d}: {FILLER}"}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
        body["ignore_eos"] = True
    return body


async def _plain(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {raw[:300]!r}")
    elapsed = time.perf_counter() - started
    json.loads(raw)  # a whole, valid answer (not timed: both sides' clients parse alike)
    return elapsed


async def _streamed(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[float, float, bool]:
    """(seconds to the first chunk with text, seconds to [DONE], whether a chunk had text)."""
    started = time.perf_counter()
    first: float | None = None
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            if first is None:
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"{url}: error event {chunk['error']}")
                choices = chunk.get("choices") or ()
                if any((c.get("delta") or {}).get("content") for c in choices):
                    first = time.perf_counter() - started
    total = time.perf_counter() - started
    return (first if first is not None else total), total, first is not None


async def _measure_overhead(cfg: dict[str, Any]) -> dict[str, Any]:
    model_dir = resolve_model(cfg["model"])
    server = ServerEngine(model_dir, kv_cache_gib=1, max_model_len=4096, dtype=cfg["dtype"])
    async with Runtime([server], policy=cfg["policy"]) as rt, Gateway(rt, port=0) as gw:
        sides = {"direct": (server.base_url, server.model), "gateway": (gw.url, gw.model_name)}
        plain: dict[str, list[float]] = {"direct": [], "gateway": []}
        ttft: dict[str, list[float]] = {"direct": [], "gateway": []}
        stream_total: dict[str, list[float]] = {"direct": [], "gateway": []}
        textless = {"direct": 0, "gateway": 0}
        connector = aiohttp.TCPConnector(limit=8)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            warmup, n, n_stream = cfg["warmup"], cfg["requests"], cfg["stream_requests"]
            counter = 0
            for i in range(warmup + n):
                order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
                for side in order:
                    url, model = sides[side]
                    counter += 1
                    body = _chat_body(model, counter, stream=False, max_tokens=cfg["max_tokens"])
                    elapsed = await _plain(http, url, body)
                    if i >= warmup:
                        plain[side].append(elapsed)
            for i in range(warmup + n_stream):
                order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
                for side in order:
                    url, model = sides[side]
                    counter += 1
                    body = _chat_body(model, counter, stream=True, max_tokens=cfg["stream_max_tokens"])
                    first, total, had_text = await _streamed(http, url, body)
                    if i >= warmup:
                        ttft[side].append(first)
                        stream_total[side].append(total)
                        textless[side] += not had_text
        gateway_requests = gw.metrics.requests  # counted by the gateway itself: a check that none went astray
        served = sum(s.value for m in gateway_requests.collect() for s in m.samples if s.name.endswith("_total"))
    paired = [g - d for d, g in zip(plain["direct"], plain["gateway"], strict=True)]
    paired_ttft = [g - d for d, g in zip(ttft["direct"], ttft["gateway"], strict=True)]
    report: dict[str, Any] = {
        "model": model_dir.name,
        "policy": cfg["policy"],
        "dtype": server.dtype,
        "requests_per_side": n,
        "stream_requests_per_side": n_stream,
        "warmup_pairs": warmup,
        "max_tokens": cfg["max_tokens"],
        "stream_max_tokens": cfg["stream_max_tokens"],
        "gateway_requests_counted": int(served),
        "plain": {side: _ms(v) for side, v in plain.items()},
        "ttft": {side: _ms(v) for side, v in ttft.items()},
        "stream_total": {side: _ms(v) for side, v in stream_total.items()},
        "streams_without_text": textless,
        "samples_s": {"plain": plain, "ttft": ttft},
    }
    for key, paired_values in (("plain", paired), ("ttft", paired_ttft)):
        d, g = report[key]["direct"], report[key]["gateway"]
        report[key]["added_ms"] = {
            "p50": round(g["p50_ms"] - d["p50_ms"], 3),
            "p90": round(g["p90_ms"] - d["p90_ms"], 3),
            "paired_median": round(1000 * statistics.median(paired_values), 3),
        }
    return report


# -- gain: an agent trace through the gateway -----------------------------------------------------


class Prompts:
    """The token prompts of a trace's calls, built as :func:`runtime.replay.replay_trace` builds them.

    The app's shared prefix (the same ids for every program of an app, drawn
    as the lab draws them), then the full context of the call continued
    (its prompt, its output, its tool's output), then fresh ids.  Fresh and
    tool ids come from ``random.Random(f"{seed}/{program}/{call}/prompt")``
    and ``.../tool``, as in the lab; the output is the engine's own ids.
    """

    def __init__(self, vocabulary: Vocabulary, seed: int) -> None:
        self.vocabulary = vocabulary
        self.seed = seed
        self._prefixes: dict[str | None, list[int]] = {}

    def app_prefix(self, app: str | None, n: int) -> list[int]:
        # As the lab: drawn once per app at the longest length asked so far, in program start order.
        if app not in self._prefixes or len(self._prefixes[app]) < n:
            self._prefixes[app] = self.vocabulary.draw(random.Random(f"{self.seed}/app/{app}"), n)
        return self._prefixes[app][:n]

    def fresh(self, program: str, call: str, what: str, n: int) -> list[int]:
        return self.vocabulary.draw(random.Random(f"{self.seed}/{program}/{call}/{what}"), n)


class _ProgramClient:
    """One trace program, sent through the gateway as one session."""

    def __init__(
        self,
        spec: TraceProgram,
        *,
        http: aiohttp.ClientSession,
        url: str,
        model: str,
        prompts: Prompts,
        prefix: list[int],
        engine_index: dict[str, int],
        t0: float,
    ) -> None:
        self.spec = spec
        self.http = http
        self.url = url
        self.model = model
        self.prompts = prompts
        self._prefix = prefix
        self.engine_index = engine_index
        self.t0 = t0
        self.calls: dict[str, CallResult] = {}
        self._contexts: dict[str, list[int]] = {}
        self._done: dict[str, anyio.Event] = {c.id: anyio.Event() for c in spec.calls}
        self._unsent = len(spec.calls)
        self.error: str | None = None

    async def run(self) -> ProgramResult:
        spec = self.spec
        delay = self.t0 + spec.arrival_s - anyio.current_time()
        if delay > 0:
            await anyio.sleep(delay)
        try:
            async with anyio.create_task_group() as tg:
                for call in topological_order(spec):
                    tg.start_soon(self._call, call)
        except Exception as exc:  # recorded in the result, as the lab records a failed program
            leaves = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
            self.error = "; ".join(f"{type(e).__name__}: {e}" for e in leaves)
        finish = anyio.current_time() - self.t0
        ok = self.error is None
        jct = finish - spec.arrival_s if ok else None
        return ProgramResult(
            id=spec.id,
            arrival_s=spec.arrival_s,
            finish_s=finish if ok else None,
            jct_s=jct,
            slo_s=spec.slo_s,
            slo_met=None if spec.slo_s is None else (ok and jct is not None and jct <= spec.slo_s),
            calls=[self.calls[c.id] for c in spec.calls if c.id in self.calls],
            error=self.error,
        )

    async def _call(self, call: TraceCall) -> None:
        for parent in call.parents:
            await self._done[parent].wait()
        spec = self.spec
        head = self._contexts[call.context] if call.context is not None else self._prefix
        prompt = head + self.prompts.fresh(spec.id, call.id, "prompt", call.new_tokens)
        self._unsent -= 1
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": call.output_tokens,
            "ignore_eos": True,
            "temperature": 0,
            # vLLM's return_token_ids: the next turn continues the ids the engine generated, as the lab does.
            "return_token_ids": True,
        }
        if call.tool is not None:
            body["expected_tool"] = call.tool
        if self._unsent == 0:
            body["last_turn"] = True
        if spec.priority:
            body["priority"] = spec.priority
        if spec.slo_s is not None:
            body["deadline_s"] = spec.slo_s
        sent = anyio.current_time()
        async with self.http.post(f"{self.url}/v1/completions", json=body, headers={"X-Session-ID": spec.id}) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"call {call.id}: HTTP {resp.status}: {raw[:300]!r}")
            engine = resp.headers.get("X-Agentrt-Engine", "")
        e2e = anyio.current_time() - sent
        answer = json.loads(raw)
        usage = answer.get("usage") or {}
        if usage.get("completion_tokens") != call.output_tokens:
            raise RuntimeError(f"call {call.id}: {usage.get('completion_tokens')} tokens, not {call.output_tokens}")
        self.calls[call.id] = CallResult(
            id=call.id,
            engine=self.engine_index.get(engine, 0),
            e2e_s=e2e,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        )
        tool_output: list[int] = []
        if call.tool is not None:
            await anyio.sleep(call.tool_s)
            tool_output = self.prompts.fresh(spec.id, call.id, "tool", call.tool_output_tokens)
        if any(c.context == call.id for c in spec.calls):
            output = [int(i) for i in answer["choices"][0]["token_ids"]]
            self._contexts[call.id] = prompt + output + tool_output
        self._done[call.id].set()


def _scrape(text: str) -> dict[str, float]:
    """The engine counters of a /metrics page, summed over engines."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in METRICS:
            found[family.name] = sum(s.value for s in family.samples if not s.name.endswith("_created"))
    return found


async def _metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(f"{url}/metrics") as resp:
        return _scrape(await resp.text())


def _context_limit(programs: list[TraceProgram], model_dir: Path) -> int:
    """The engines' context limit as ``agentrt replay`` sizes it: the longest call, whole blocks, one more."""
    needed, program, call = longest_context(programs)
    limit = model_context_limit(model_dir)
    if limit is not None and needed > limit:
        raise SystemExit(f"program {program} call {call} needs {needed} tokens, more than {model_dir.name} holds")
    sized = -(-max(needed, 1) // CPU_BLOCK_SIZE) * CPU_BLOCK_SIZE + CPU_BLOCK_SIZE
    return sized if limit is None else min(sized, limit)


async def _gain_run(cfg: dict[str, Any]) -> dict[str, Any]:
    programs = load_trace(cfg["trace"])
    model_dir = resolve_model(cfg["model"])
    vocabulary = model_vocabulary(model_dir)
    engines = [
        InProcessEngine(
            model_dir,
            name=f"vllm-{i}",
            max_model_len=_context_limit(programs, model_dir),
            max_num_seqs=cfg["max_num_seqs"],
            num_kv_blocks=cfg["kv_blocks"] or None,
            dtype=cfg["dtype"],
        )
        for i in range(cfg["engines"])
    ]
    row: dict[str, Any] = {"mode": cfg["mode"], "policy": cfg["policy"]}
    started = time.perf_counter()
    async with Runtime(engines, policy=cfg["policy"]) as rt:
        if cfg["mode"] == "library":
            run = await replay_trace(programs, rt, vocabulary=vocabulary, seed=cfg["token_seed"])
            results, totals = run.programs, run.totals
        else:
            async with Gateway(rt, port=0) as gw:
                results, totals, metrics = await _gateway_replay(
                    programs, rt, gw, Prompts(vocabulary, cfg["token_seed"])
                )
            row["metrics"] = metrics
    result = ReplayResult(
        policy=cfg["policy"],
        engine="vllm",
        engines=cfg["engines"],
        trace=Path(cfg["trace"]).name,
        summary=summarize(results, **totals),
        programs=results,
        model=model_dir.name,
        seed=cfg["token_seed"],
        wall_s=round(time.perf_counter() - started, 3),
        dtype=engines[0].dtype,
        via=cfg["mode"],  # ours: gateway (an HTTP client) or library (replay_trace)
    )
    result.write(cfg["out"])
    s = result.summary
    row.update(
        {k: getattr(s, k) for k in ("programs", "completed", "failed", "jct_mean_s", "jct_p50_s", "jct_p95_s")},
        jct_p99_s=s.jct_p99_s,
        makespan_s=s.makespan_s,
        prompt_tokens=s.prompt_tokens,
        cached_prompt_tokens=s.cached_prompt_tokens,
        cached_token_ratio=s.cached_token_ratio,
        **{k: getattr(s, k) for k in COUNTERS},
        errors=sorted({p.error for p in results if p.error})[:3],
        wall_s=result.wall_s,
        result=Path(cfg["out"]).name,
        dtype=result.dtype,
    )
    return row


async def _gateway_replay(
    programs: list[TraceProgram], rt: Runtime, gw: Gateway, prompts: Prompts
) -> tuple[list[ProgramResult], dict[str, int], dict[str, Any]]:
    engine_index = {e.name: i for i, e in enumerate(rt.engines)}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        before_stats = [asdict(s) for s in await rt.stats()]
        before = await _metrics(http, gw.url)
        t0 = anyio.current_time()
        results: list[ProgramResult] = []

        async def one(spec: TraceProgram, prefix: list[int]) -> None:
            client = _ProgramClient(
                spec,
                http=http,
                url=gw.url,
                model=gw.model_name,
                prompts=prompts,
                prefix=prefix,
                engine_index=engine_index,
                t0=t0,
            )
            results.append(await client.run())

        async with anyio.create_task_group() as tg:
            # App prefixes drawn in arrival order, as the lab draws them; each program waits for its arrival.
            for spec in sorted(programs, key=lambda p: p.arrival_s):
                tg.start_soon(one, spec, prompts.app_prefix(spec.app, spec.system_tokens))
        # Programs end on the server after their last turn: give the pins a moment to be released and counted.
        await anyio.sleep(0.5)
        after = await _metrics(http, gw.url)
        after_stats = [asdict(s) for s in await rt.stats()]
    order = {p.id: i for i, p in enumerate(programs)}
    results.sort(key=lambda r: order[r.id])
    totals = {
        key: sum(int(a.get(key) or 0) - int(b.get(key) or 0) for a, b in zip(after_stats, before_stats, strict=True))
        for key in COUNTERS
    }
    delta = {
        name.removeprefix("agentrt_engine_").removeprefix("agentrt_"): after.get(name, 0) - before.get(name, 0)
        for name in METRICS
    }
    prompt = delta.get("prompt_tokens") or 0
    metrics = {
        **{k: int(v) for k, v in delta.items()},
        "cached_token_ratio": (delta.get("cached_tokens") or 0) / prompt if prompt else None,
        "programs_started": gw.sessions.started,
        "programs_ended": dict(gw.sessions.ended),
    }
    return results, totals, metrics


# -- the parent: children, table, plot ------------------------------------------------------------


def run_child(config: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (its engines die with it); its JSON report."""
    with tempfile.NamedTemporaryFile("w+", suffix=".json", prefix="agentrt-gateway-") as out:
        env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
        argv = [sys.executable, __file__, "--child", json.dumps(config), "--child-out", out.name]
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {**config, "error": f"timed out after {timeout_s:.0f} s"}
        if proc.returncode != 0:
            tail = (err or "").strip().splitlines()[-5:]
            return {**config, "error": f"exit code {proc.returncode}: {' | '.join(tail)[-1500:]}"}
        report: dict[str, Any] = json.loads(Path(out.name).read_text())
        return report


def child(config: dict[str, Any], out: Path) -> None:
    work = _measure_overhead if config["part"] == "overhead" else _gain_run
    report = anyio.run(work, config, backend="asyncio")
    out.write_text(json.dumps(report))


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    config = {
        "part": "overhead",
        "model": args.overhead_model,
        "policy": args.overhead_policy,
        "dtype": args.dtype,
        "requests": args.requests,
        "stream_requests": args.stream_requests,
        "warmup": args.warmup,
        "max_tokens": 1,
        "stream_max_tokens": 4,
    }
    print(f"overhead: {args.requests} + {args.stream_requests} streamed requests per side on {args.overhead_model}")
    return run_child(config, timeout_s=args.timeout_s)


def gain(args: argparse.Namespace, out_dir: Path, stem: str) -> dict[str, Any]:
    programs = generate_workload(
        "agent", programs=args.programs, rate=args.rate, seed=args.seed, scale=args.scale, tool_scale=args.tool_scale
    )
    trace = dump_trace(programs, out_dir / f"{stem}_gain.jsonl")
    calls = sum(len(p.calls) for p in programs)
    policies = [p for p in args.policies.split(",") if p]
    modes = ["gateway", "library"] if args.library else ["gateway"]
    report: dict[str, Any] = {
        "workload": "agent",
        "programs": args.programs,
        "calls": calls,
        "rate": args.rate,
        "seed": args.seed,
        "token_seed": args.token_seed,
        "scale": args.scale,
        "tool_scale": args.tool_scale,
        "model": args.model,
        "engines": args.engines,
        "kv_blocks": args.kv_blocks or None,
        "trace": trace.name,
        "runs": [],
    }
    print(f"gain: {len(programs)} agent programs ({calls} calls), {args.engines} x {args.model}; {policies} x {modes}")
    for mode in modes:
        for policy in policies:
            config = {
                "part": "gain",
                "mode": mode,
                "policy": policy,
                "trace": str(trace),
                "model": args.model,
                "engines": args.engines,
                "kv_blocks": args.kv_blocks,
                "max_num_seqs": args.max_num_seqs,
                "dtype": args.dtype,
                "token_seed": args.token_seed,
                "out": str(out_dir / f"{stem}_gain_{mode}_{policy}.json"),
            }
            started = time.perf_counter()
            row = run_child(config, timeout_s=args.timeout_s)
            row["took_s"] = round(time.perf_counter() - started, 1)
            print(f"  {mode:<8} {policy:<8} {_gain_line(row)} ({row['took_s']} s)", flush=True)
            report["runs"].append(row)
    return report


def _f(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None else f"{value:{fmt}}"


def _gain_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"failed: {row['error'][:200]}"
    return (
        f"JCT mean {_f(row['jct_mean_s'])} p50 {_f(row['jct_p50_s'])} p95 {_f(row['jct_p95_s'])} s, "
        f"cached {_f(row['cached_token_ratio'], '.1%')}, pins {row['pins']} ({row['pin_hits']} hit), "
        f"failed {row['failed']}"
    )


def table(report: dict[str, Any]) -> str:
    lines: list[str] = []
    o = report.get("overhead")
    if o and "error" not in o:
        lines += [
            f"overhead: {o['requests_per_side']} requests per side, {o['model']} ({o['dtype']}), "
            f"policy {o['policy']} (goal: p50 added < {GOAL_ADDED_P50_MS} ms)",
            f"{'ms':<34}{'direct':>10}{'gateway':>10}{'added':>10}",
        ]
        for key, label in (("plain", "chat (max_tokens 1)"), ("ttft", "streamed, time to first token")):
            d, g = o[key]["direct"], o[key]["gateway"]
            for q in (50, 90, 99):
                added = o[key]["added_ms"].get(f"p{q}", g[f"p{q}_ms"] - d[f"p{q}_ms"])
                lines.append(f"{f'{label} p{q}':<34}{d[f'p{q}_ms']:>10.2f}{g[f'p{q}_ms']:>10.2f}{added:>10.2f}")
            lines.append(f"{'  median of pair differences':<34}{'':>20}{o[key]['added_ms']['paired_median']:>10.2f}")
    elif o:
        lines.append(f"overhead failed: {o['error'][:300]}")
    g = report.get("gain")
    if g:
        lines += [
            f"gain: {g['programs']} agent programs ({g['calls']} calls) at {g['rate']}/s, seed {g['seed']}, "
            f"{g['engines']} x {g['model']}, kv blocks {g['kv_blocks'] or 'default'}",
            f"{'path':<9}{'policy':<9}{'JCT mean':>9}{'p50':>8}{'p95':>8}{'cached':>8}{'pins':>6}{'hits':>6}"
            f"{'failed':>7}",
        ]
        for r in g["runs"]:
            if "error" in r:
                lines.append(f"{r['mode']:<9}{r['policy']:<9} failed: {r['error'][:200]}")
                continue
            lines.append(
                f"{r['mode']:<9}{r['policy']:<9}{_f(r['jct_mean_s']):>9}{_f(r['jct_p50_s']):>8}"
                f"{_f(r['jct_p95_s']):>8}{_f(r['cached_token_ratio'], '.1%'):>8}{r['pins']:>6}{r['pin_hits']:>6}"
                f"{r['failed']:>7}"
            )
    return "\n".join(lines)


def plot(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    o = report.get("overhead")
    colors = {"direct": "tab:gray", "gateway": "tab:green"}
    if o and "error" not in o:
        for ax, key, title in ((axes[0], "plain", "chat, max_tokens 1"), (axes[1], "ttft", "streamed, TTFT")):
            for side, values in o["samples_s"][key].items():
                xs = sorted(1000 * v for v in values)
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.plot(xs, ys, label=f"{side} (p50 {o[key][side]['p50_ms']:.2f} ms)", color=colors[side])
            ax.set(
                title=f"{title}: added p50 {o[key]['added_ms']['p50']:.2f} ms ({o['model']})",
                xlabel="latency (ms)",
                ylabel="fraction of requests",
            )
            ax.legend(fontsize=8)
    g = report.get("gain")
    if g:
        runs = [r for r in g["runs"] if "error" not in r]
        ax = axes[2]
        xs = list(range(len(runs)))
        for offset, key, label in ((-0.25, "jct_mean_s", "mean"), (0, "jct_p50_s", "P50"), (0.25, "jct_p95_s", "P95")):
            ax.bar([x + offset for x in xs], [r[key] or 0 for r in runs], 0.25, label=label)
        ax.set_xticks(xs, [f"{r['policy']}\n{r['mode']}" for r in runs])
        ax.set(title=f"agent trace, {g['programs']} programs, {g['engines']} x {g['model']}", ylabel="JCT (s)")
        ax.legend(fontsize=8)
    for ax in axes:
        if not ax.has_data():
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--part", choices=("overhead", "gain", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="smoke sizes: 20 requests; 2 programs, tiny, 1 engine")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--dtype", default="auto", help="engines' number format (default auto)")
    parser.add_argument("--timeout-s", type=float, default=1500, help="bound on each child run (default 1500 s)")
    over = parser.add_argument_group("overhead")
    over.add_argument("--overhead-model", default="tiny")
    over.add_argument("--overhead-policy", default="agentrt")
    over.add_argument("--requests", type=int, help="non-streamed requests per side (default 300; --quick 20)")
    over.add_argument("--stream-requests", type=int, help="streamed requests per side (default 100; --quick 10)")
    over.add_argument("--warmup", type=int, help="uncounted pairs first (default 20; --quick 3)")
    g = parser.add_argument_group("gain")
    g.add_argument("--model", help="model of the gain's engines (default llama-49m; --quick tiny)")
    g.add_argument("--engines", type=int, help="in-process engines (default 2; --quick 1)")
    g.add_argument("--programs", type=int, help="agent programs (default 8; --quick 2)")
    g.add_argument("--rate", type=float, default=0.5, help="program arrivals per second (default 0.5)")
    g.add_argument("--seed", type=int, default=41, help="workload seed (default 41)")
    g.add_argument("--token-seed", type=int, default=0, help="seed of the prompts' token ids (agentrt replay --seed)")
    g.add_argument("--scale", type=float, default=0.05, help="token-count scale (default 0.05)")
    g.add_argument("--tool-scale", type=float, default=0.3, help="tool-duration scale (default 0.3)")
    g.add_argument("--kv-blocks", type=int, default=64, help="KV blocks per engine (default 64; 0: engine default)")
    g.add_argument("--max-num-seqs", type=int, default=None)
    g.add_argument("--policies", default="vllm,agentrt")
    g.add_argument("--library", action="store_true", help="also replay the trace with the library (replay_trace)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child), args.child_out)
        return 0
    quick = args.quick
    defaults = {
        "requests": (300, 20),
        "stream_requests": (100, 10),
        "warmup": (20, 3),
        "model": ("llama-49m", "tiny"),
        "engines": (2, 1),
        "programs": (8, 2),
    }
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "gateway_quick" if quick else "gateway"
    path = out_dir / f"{stem}.json"
    report: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    report.update(
        benchmark="gateway",
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        quick=quick,
        machine=machine(),
        goals={"overhead_added_p50_ms": f"< {GOAL_ADDED_P50_MS}"},
    )
    if args.part in ("overhead", "both"):
        report["overhead"] = overhead(args)
    if args.part in ("gain", "both"):
        report["gain"] = gain(args, out_dir, stem)
    path.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, path.with_suffix(".png"))
    print(table(report))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
