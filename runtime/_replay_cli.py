"""``agentrt replay`` and ``agentrt calibrate``: the command-line side of trace replay.

agentrt replay TRACE.jsonl --engine vllm|sim --engines N --policy NAME --out RESULT.json
               [--model M] [--kv-blocks B] [--seed S] [--profile P]
agentrt calibrate [--model M] [--out PROFILE.json]

The trace is loaded and checked before any engine starts.  ``--engine vllm``
replays on in-process vLLM engines (real time); ``--engine sim`` on simulated
engines priced by a cost profile, in virtual time.
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
    from ._engines._inprocess import InProcessEngine

__all__ = ["add_parsers", "run_calibrate", "run_replay"]


#: Context limit (tokens) of real engines in replays, and of the engine ``agentrt calibrate`` measures.
REPLAY_MAX_MODEL_LEN = 16384


def profiles_dir() -> Path:
    """Where ``agentrt calibrate`` writes profiles by default: ``.cache/profiles`` beside the models."""
    from ._models import models_dir

    return models_dir().parent / "profiles"


def add_parsers(sub: Any) -> None:
    """Add the ``replay`` and ``calibrate`` subcommands to the ``agentrt`` parser."""
    from ._policy import policy_names

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
        "--max-model-len", type=int, default=REPLAY_MAX_MODEL_LEN, help="context limit of real engines (tokens)"
    )
    replay.add_argument("--max-num-seqs", type=int, help="sequences per engine step (default: the engine's)")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    replay.add_argument("-v", "--verbose", action="store_true", help="show vLLM's own logs")

    calibrate = sub.add_parser("calibrate", help="measure a real engine and write a cost profile for the simulator")
    calibrate.add_argument("--model", default="tiny", help="model under .cache/models or a path (default: tiny)")
    calibrate.add_argument("--out", type=Path, help="profile to write (default: .cache/profiles/MODEL.json)")
    calibrate.add_argument("--kv-blocks", type=int, help="KV blocks to record in the profile (default: the engine's)")
    calibrate.add_argument("--repeats", type=int, default=3, help="runs per measurement (medians are kept)")
    calibrate.add_argument("-v", "--verbose", action="store_true", help="show vLLM's own logs")


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

    from ._engines._base import Engine
    from ._engines._inprocess import InProcessEngine
    from ._errors import AgentRuntimeError
    from ._models import resolve_model
    from ._replay import longest_context
    from ._tokens import model_vocabulary

    try:
        model_dir = resolve_model(args.model)
    except AgentRuntimeError as exc:
        return _usage_error(str(exc))
    too_long = longest_context(programs)
    if too_long[0] > args.max_model_len:
        return _usage_error(
            f"program {too_long[1]} call {too_long[2]} needs {too_long[0]} tokens of context, more than "
            f"--max-model-len {args.max_model_len}: raise it or generate the trace with a smaller --scale"
        )
    vocabulary = model_vocabulary(model_dir)
    engines: list[Engine] = [
        InProcessEngine(
            model_dir,
            name=f"vllm-{i}",
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            num_kv_blocks=args.kv_blocks,
        )
        for i in range(args.engines)
    ]

    async def main() -> int:
        return await _replay_and_report(args, programs, engines, vocabulary, model=model_dir.name, profile=None)

    return anyio.run(main, backend="asyncio")


def _replay_sim(args: argparse.Namespace, programs: list[Any]) -> int:
    from ._engines._base import Engine
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
    sims = [
        SimEngine(profile, name=f"sim-{i}", kv_blocks=args.kv_blocks, max_num_seqs=args.max_num_seqs, seed=args.seed)
        for i in range(args.engines)
    ]
    engines: list[Engine] = list(sims)
    vocabulary = Vocabulary(sims[0].vocab_size, frozenset(range(sims[0].first_token_id)))

    async def main() -> int:
        return await _replay_and_report(args, programs, engines, vocabulary, model=profile.model, profile=profile.name)

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
) -> int:
    from ._replay import replay_trace
    from ._results import ReplayResult, format_summary, summarize
    from ._runtime import Runtime

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


def calibration_engine(
    model_dir: Path, *, name: str = "calibrate", kv_cache_gib: int = 1, kv_blocks: int | None = None
) -> InProcessEngine:
    """The in-process engine ``agentrt calibrate`` measures, not started."""
    from ._engines._inprocess import InProcessEngine

    return InProcessEngine(
        model_dir,
        name=name,
        kv_cache_gib=kv_cache_gib,
        # The replay's default limit: the prefill curve then reaches every context a replay may use.
        max_model_len=REPLAY_MAX_MODEL_LEN,
        num_kv_blocks=kv_blocks,
    )


def run_calibrate(args: argparse.Namespace) -> int:
    import json

    import anyio

    from ._calibrate import CPU_BLOCK_SIZE, calibrate_engine, kv_bytes_per_token
    from ._errors import AgentRuntimeError
    from ._models import resolve_model
    from ._tokens import model_vocabulary

    try:
        model_dir = resolve_model(args.model)
    except AgentRuntimeError as exc:
        return _usage_error(str(exc))
    out: Path = args.out or profiles_dir() / f"{model_dir.name}.json"
    kv_cache_gib = 1
    kv_blocks = args.kv_blocks or (kv_cache_gib << 30) // (kv_bytes_per_token(model_dir) * CPU_BLOCK_SIZE)
    engine = calibration_engine(model_dir, kv_cache_gib=kv_cache_gib, kv_blocks=args.kv_blocks)

    def say(what: str) -> None:
        print(f"calibrate: {what}", file=sys.stderr, flush=True)

    async def main() -> dict[str, Any]:
        say(f"starting an in-process engine for {model_dir.name}")
        async with engine:
            return await calibrate_engine(
                engine,
                name=f"{model_dir.name}-cpu",
                vocabulary=model_vocabulary(model_dir),
                kv_blocks=kv_blocks,
                repeats=args.repeats,
                progress=say,
            )

    profile = anyio.run(main, backend="asyncio")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=2) + "\n")
    print(json.dumps(profile, indent=2))
    print(f"profile written to {out}")
    return 0


def _usage_error(message: str) -> int:
    print(f"agentrt: error: {message}", file=sys.stderr)
    return 2
