"""The lab's ``agentrt`` subcommands: replay, calibrate, workload, bench compare.

agentrt replay TRACE.jsonl --engine vllm|sim --engines N --policy NAME --out RESULT.json
               [--model M] [--kv-blocks B] [--seed S] [--profile P] [--dtype D] [--max-model-len L]
agentrt calibrate [--model M] [--out PROFILE.json] [--dtype D]
agentrt workload agent|text2sql|bfcl|coding --programs N --rate R --seed S --out TRACE.jsonl
agentrt bench compare A.json B.json ... [--png compare.png]

The core command line (:mod:`runtime._cli`) does not know these: it loads
every ``agentrt.commands`` entry point, and this package's
(``pyproject.toml``) is :func:`register`.

The trace is loaded and checked before any engine starts.  ``--engine vllm``
replays on in-process vLLM engines (real time); ``--engine sim`` on simulated
engines priced by a cost profile, in virtual time.  The real engines' context
limit is sized from the trace and the model (:mod:`._model_limits`); a trace
the model cannot hold is refused in one line, before any engine starts.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime import Engine

__all__ = ["register"]

_DTYPE_HELP = (
    "(default auto: bfloat16 on GPUs and on CPUs with native bfloat16, AVX-512 BF16 or AMX; else float32, "
    "several times faster there); or any vLLM --dtype: bfloat16, float16, float32 ..."
)


def profiles_dir() -> Path:
    """Where ``agentrt calibrate`` writes profiles by default: ``.cache/profiles`` beside the models."""
    from runtime import models_dir

    return models_dir().parent / "profiles"


def register(sub: Any) -> None:
    """Add the lab's subcommands to the ``agentrt`` parser (``sub``: its subparsers).

    Each sets ``handler``, the function that runs it and returns the exit code.
    """
    from runtime import policy_names

    from ._workloads import workload_kinds

    replay = sub.add_parser(
        "replay",
        help="replay a workload trace on real engines or the simulator and write a result document",
    )
    replay.add_argument("trace", type=Path, help="trace file (JSON Lines, see docs/replay.md)")
    replay.add_argument("--engine", choices=("vllm", "sim"), default="vllm", help="real in-process vLLM, or simulator")
    replay.add_argument("--engines", type=int, default=1, help="number of engines (default 1)")
    replay.add_argument("--policy", default="vllm", choices=policy_names())
    replay.add_argument("--out", type=Path, required=True, help="result document (JSON) to write")
    replay.add_argument("--model", default="tiny", help="model under .cache/models or a path (default: tiny)")
    replay.add_argument("--kv-blocks", type=int, help="KV blocks per engine (default: the engine's or profile's)")
    replay.add_argument("--seed", type=int, default=0, help="seed of the synthetic tokens (default 0)")
    replay.add_argument(
        "--profile",
        help="simulator cost profile: a JSON file or a bundled name (h100-llama3-8b); "
        "default: .cache/profiles/MODEL.json written by `agentrt calibrate`",
    )
    replay.add_argument(
        "--max-model-len",
        type=int,
        help="context limit of real engines, tokens (default: what the trace's longest call needs, "
        "in whole 128-token blocks plus one, at most the model's max_position_embeddings)",
    )
    replay.add_argument(
        "--dtype",
        default="auto",
        help="number format of the real engines " + _DTYPE_HELP + "; recorded in the result "
        "(--engine sim simulates the profile's format and records that)",
    )
    replay.add_argument("--max-num-seqs", type=int, help="sequences per engine step (default: the engine's)")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    replay.add_argument("-v", "--verbose", action="store_true", help="show vLLM's own logs")
    replay.set_defaults(handler=_interruptible(run_replay))

    calibrate = sub.add_parser("calibrate", help="measure a real engine and write a cost profile for the simulator")
    calibrate.add_argument("--model", default="tiny", help="model under .cache/models or a path (default: tiny)")
    calibrate.add_argument("--out", type=Path, help="profile to write (default: .cache/profiles/MODEL.json)")
    calibrate.add_argument("--kv-blocks", type=int, help="KV blocks to record in the profile (default: the engine's)")
    calibrate.add_argument("--repeats", type=int, default=3, help="runs per measurement (medians are kept)")
    calibrate.add_argument(
        "--dtype",
        default="auto",
        help="number format of the engine measured " + _DTYPE_HELP + "; recorded in the profile",
    )
    calibrate.add_argument("-v", "--verbose", action="store_true", help="show vLLM's own logs")
    calibrate.set_defaults(handler=_interruptible(run_calibrate))

    workload = sub.add_parser("workload", help="write a synthetic workload trace (JSON Lines)")
    workload.add_argument("kind", choices=workload_kinds())
    workload.add_argument("--programs", type=int, required=True, help="number of programs")
    workload.add_argument("--rate", type=float, required=True, help="Poisson arrival rate, programs/s")
    workload.add_argument("--seed", type=int, required=True)
    workload.add_argument("--scale", type=float, default=1.0, help="multiply every token count (default 1)")
    workload.add_argument("--tool-scale", type=float, default=1.0, help="multiply every tool duration (default 1)")
    workload.add_argument("--slo-scale", type=float, help="give each program slo_s = F x its unloaded duration")
    workload.add_argument("--out", type=Path, required=True, metavar="TRACE.jsonl")
    workload.set_defaults(handler=_offline(_workload))

    bench = sub.add_parser("bench", help="compare replay results")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    compare = bench_sub.add_parser("compare", help="a table of results side by side, and a plot")
    compare.add_argument("results", nargs="+", type=Path, metavar="RESULT.json")
    compare.add_argument("--png", type=Path, help="plot file (default: compare.png beside the first result)")
    compare.set_defaults(handler=_offline(_bench_compare))


def _interruptible(command: Any) -> Any:
    """``command`` for the parser: Ctrl-C is exit code 130, not a traceback.

    While engines run, the ``Runtime`` they run under handles SIGINT and
    SIGTERM itself (programs cancelled, engines closed, ``SystemExit(130)``
    or ``SystemExit(143)``); this covers the rest (loading a trace, a model's
    tokenizer).
    """

    def handler(args: argparse.Namespace) -> int:
        try:
            code: int = command(args)
        except KeyboardInterrupt:
            return 130
        return code

    return handler


# -- workload and bench: no engine -------------------------------------------


def _offline(command: Any) -> Any:
    """``command`` for the parser: bad input is a message and exit code 2, not a traceback (nor is Ctrl-C)."""

    @_interruptible
    def handler(args: argparse.Namespace) -> int:
        from ._results import ResultError
        from ._trace import TraceError

        try:
            code: int = command(args)
        except (TraceError, ResultError, ValueError, RuntimeError, OSError) as exc:
            print(f"agentrt {args.command}: error: {exc}", file=sys.stderr)
            return 2
        return code

    return handler


def _workload(args: argparse.Namespace) -> int:
    from ._trace import dump_trace, prompt_lengths
    from ._workloads import generate_workload

    programs = generate_workload(
        args.kind,
        programs=args.programs,
        rate=args.rate,
        seed=args.seed,
        scale=args.scale,
        tool_scale=args.tool_scale,
        slo_scale=args.slo_scale,
    )
    path = dump_trace(programs, args.out)
    calls = [c for p in programs for c in p.calls]
    print(
        f"{path}: {len(programs)} {args.kind} programs, {len(calls)} calls, "
        f"{sum(sum(prompt_lengths(p).values()) for p in programs)} prompt tokens, "
        f"{sum(c.output_tokens for c in calls)} output tokens, "
        f"arrivals {programs[0].arrival_s:.3f}-{programs[-1].arrival_s:.3f} s"
    )
    return 0


def _bench_compare(args: argparse.Namespace) -> int:
    from ._bench import compare

    png = args.png if args.png is not None else args.results[0].parent / "compare.png"
    print(compare(args.results, png=png))
    print(f"plot: {png}", file=sys.stderr)
    return 0


# -- replay ------------------------------------------------------------------


def run_replay(args: argparse.Namespace) -> int:
    from ._trace import TraceError, load_trace

    if args.engines < 1:
        return _usage_error(f"--engines must be >= 1, got {args.engines}")
    try:
        programs = load_trace(args.trace)
    except TraceError as exc:
        return _usage_error(str(exc))
    except OSError as exc:
        return _usage_error(f"cannot read trace {args.trace}: {exc}")
    if args.engine == "sim":
        return _replay_sim(args, programs)
    return _replay_vllm(args, programs)


def _replay_vllm(args: argparse.Namespace, programs: list[Any]) -> int:
    import anyio

    from runtime import AgentRuntimeError, InProcessEngine, resolve_model

    from ._calibrate import CPU_BLOCK_SIZE
    from ._model_limits import model_context_limit, sized_context_limit
    from ._replay import longest_context
    from ._tokens import model_vocabulary

    if (bad := _bad_dtype(args.dtype)) is not None:
        return _usage_error(bad)
    try:
        model_dir = resolve_model(args.model)
    except AgentRuntimeError as exc:
        return _usage_error(str(exc))
    # Checked here, not by vLLM: an engine asked for more context than the
    # model holds dies with a traceback once it starts.
    model_limit = model_context_limit(model_dir)
    needed, program, call = longest_context(programs)
    max_model_len: int | None = args.max_model_len
    if max_model_len is not None:
        if model_limit is not None and max_model_len > model_limit:
            return _usage_error(
                f"--max-model-len {max_model_len} is more than model {model_dir.name} holds "
                f"({model_limit} tokens, its config.json): lower it, or leave it out to size it from the trace"
            )
        if needed > max_model_len:
            return _usage_error(
                f"program {program} call {call} needs {needed} tokens of context, more than "
                f"--max-model-len {max_model_len}: raise it or generate the trace with a smaller --scale"
            )
    elif model_limit is not None and needed > model_limit:
        return _usage_error(
            f"program {program} call {call} needs {needed} tokens of context, more than model {model_dir.name} "
            f"holds ({model_limit} tokens, its config.json): generate the trace with a smaller --scale"
        )
    else:
        max_model_len = sized_context_limit(needed, model_limit, CPU_BLOCK_SIZE)
    vocabulary = model_vocabulary(model_dir)
    real = [
        InProcessEngine(
            model_dir,
            name=f"vllm-{i}",
            max_model_len=max_model_len,
            max_num_seqs=args.max_num_seqs,
            num_kv_blocks=args.kv_blocks,
            dtype=args.dtype,
        )
        for i in range(args.engines)
    ]
    engines: list[Engine] = list(real)

    async def main() -> int:
        return await _replay_and_report(
            args, programs, engines, vocabulary, model=model_dir.name, profile=None, dtype=real[0].dtype
        )

    return anyio.run(main, backend="asyncio")


def _replay_sim(args: argparse.Namespace, programs: list[Any]) -> int:
    from ._sim import CostProfile, ProfileError, SimEngine
    from ._tokens import Vocabulary
    from ._vclock import run_virtual

    source = args.profile or profiles_dir() / f"{Path(args.model).name}.json"
    if args.profile is None and not Path(source).is_file():
        return _usage_error(
            f"no cost profile for model {args.model!r} at {source}: run `agentrt calibrate --model {args.model}` "
            "first, or pass --profile (a JSON file, or the bundled h100-llama3-8b)"
        )
    try:
        profile = CostProfile.load(source)
    except (ProfileError, OSError) as exc:
        return _usage_error(str(exc))
    if args.dtype != "auto" and args.dtype != profile.dtype:
        print(
            f"agentrt replay: note: --dtype {args.dtype} does not apply to --engine sim: it simulates the format "
            f"profile {profile.name} was measured in ({profile.dtype or 'not recorded'})",
            file=sys.stderr,
        )
    sims = [
        SimEngine(profile, name=f"sim-{i}", kv_blocks=args.kv_blocks, max_num_seqs=args.max_num_seqs, seed=args.seed)
        for i in range(args.engines)
    ]
    engines: list[Engine] = list(sims)
    vocabulary = Vocabulary(sims[0].vocab_size, frozenset(range(sims[0].first_token_id)))

    async def main() -> int:
        return await _replay_and_report(
            args, programs, engines, vocabulary, model=profile.model, profile=profile.name, dtype=profile.dtype
        )

    with _young_collections_every(50_000):
        return run_virtual(main)


@contextlib.contextmanager
def _young_collections_every(allocations: int) -> Iterator[None]:
    """Run the cyclic garbage collector's youngest pass every ``allocations`` allocations, not CPython's 700.

    A simulated replay allocates millions of short-lived objects beside
    token lists thousands of ids long, which every pass walks while they are
    young: at the default thresholds the collector took a fifth of a
    1,000-program replay (measured: 9-11 s of 41-54 s, against 1.8 s at
    50,000).  Older generations keep their ratios, so full passes become
    rare too; objects in cycles are still collected.
    """
    old = gc.get_threshold()
    gc.set_threshold(allocations, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


async def _replay_and_report(
    args: argparse.Namespace,
    programs: list[Any],
    engines: list[Any],
    vocabulary: Any,
    *,
    model: str,
    profile: str | None,
    dtype: str | None,
) -> int:
    from runtime import Runtime

    from ._replay import replay_trace
    from ._results import ReplayResult, format_summary, summarize

    calls = sum(len(p.calls) for p in programs)
    started = time.perf_counter()
    async with Runtime(engines, policy=args.policy) as rt:
        with _progress(len(programs), calls, enabled=not args.no_progress) as advance:
            run = await replay_trace(programs, rt, vocabulary=vocabulary, seed=args.seed, on_program_done=advance)
    result = ReplayResult(
        policy=args.policy,
        engine=args.engine,
        engines=args.engines,
        trace=args.trace.name,
        summary=summarize(run.programs, **run.totals),
        programs=run.programs,
        model=model,
        seed=args.seed,
        wall_s=round(time.perf_counter() - started, 3),
        profile=profile,
        dtype=dtype,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.write(args.out)
    print(format_summary(result))
    print(f"result written to {args.out}")
    return 0 if result.summary.failed == 0 else 1


class _progress:
    """A rich progress bar on stderr counting finished programs; a no-op when disabled or not a terminal."""

    def __init__(self, programs: int, calls: int, *, enabled: bool) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._programs = programs
        self._calls = calls
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Any:
        if not self._enabled:
            return lambda _result: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("programs ({task.fields[failed]} failed)"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("replay", total=self._programs, failed=0)
        failed = 0

        def advance(result: Any) -> None:
            nonlocal failed
            failed += result.error is not None
            self._bar.update(self._task, advance=1, failed=failed)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


# -- calibrate ---------------------------------------------------------------


def run_calibrate(args: argparse.Namespace) -> int:
    import json

    import anyio

    from runtime import DTYPE_BYTES, AgentRuntimeError, Runtime, resolve_model

    from ._calibrate import CPU_BLOCK_SIZE, calibrate_engine, calibration_engine, kv_bytes_per_token
    from ._tokens import model_vocabulary

    if (bad := _bad_dtype(args.dtype)) is not None:
        return _usage_error(bad)
    try:
        model_dir = resolve_model(args.model)
    except AgentRuntimeError as exc:
        return _usage_error(str(exc))
    out: Path = args.out or profiles_dir() / f"{model_dir.name}.json"
    kv_cache_gib = 1
    engine = calibration_engine(model_dir, kv_cache_gib=kv_cache_gib, kv_blocks=args.kv_blocks, dtype=args.dtype)
    # The KV cache holds the engine's format: 4 bytes per element in float32, not bfloat16's 2.
    bytes_per_token = kv_bytes_per_token(model_dir, DTYPE_BYTES[engine.dtype])
    kv_blocks = args.kv_blocks or (kv_cache_gib << 30) // (bytes_per_token * CPU_BLOCK_SIZE)

    def say(what: str) -> None:
        print(f"calibrate: {what}", file=sys.stderr, flush=True)

    async def main() -> dict[str, Any]:
        say(f"starting an in-process engine for {model_dir.name} in {engine.dtype}")
        # Under a Runtime (no programs) for its signal handling: SIGINT and SIGTERM close the engine, then exit.
        async with Runtime([engine]):
            return await calibrate_engine(
                engine,
                name=f"{model_dir.name}-cpu",
                vocabulary=model_vocabulary(model_dir),
                kv_blocks=kv_blocks,
                repeats=args.repeats,
                progress=say,
            )

    try:
        profile = anyio.run(main, backend="asyncio")
    except ValueError as exc:  # the engine cannot hold the grid (calibrate_engine says why)
        print(f"agentrt calibrate: error: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=2) + "\n")
    print(json.dumps(profile, indent=2))
    print(f"profile written to {out}")
    return 0


def _bad_dtype(dtype: str) -> str | None:
    """Why ``dtype`` is not a number format vLLM takes (``auto`` or a name of ``runtime.DTYPE_BYTES``), or ``None``."""
    from runtime import DTYPE_BYTES

    if dtype == "auto" or dtype in DTYPE_BYTES:
        return None
    return f"--dtype {dtype!r} is not a number format vLLM knows: auto, {', '.join(sorted(DTYPE_BYTES))}"


def _usage_error(message: str) -> int:
    print(f"agentrt: error: {message}", file=sys.stderr)
    return 2
