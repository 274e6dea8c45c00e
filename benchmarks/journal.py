"""The journal's cost: time per LLM call and per step, and its size on a long agent run.

The issue's goals are printed beside the measured figures, never asserted.

- **overhead** (goal: < 1 ms p50 per LLM call and per step, SQLite in WAL
  mode).  A :class:`runtime.Runtime` over one
  :class:`runtime.testing.ScriptedEngine` (instant replies: only the
  runtime's own time is left) runs a workflow that makes N LLM calls (500;
  quick 100) in one growing conversation (a 2,000-token system prompt, ~50
  tokens added per turn), then N steps (each returns a small dict).  Each
  call and step is timed in the workflow (``time.perf_counter``).  Journals:
  none, SQLite (``synchronous=normal``, the default; and ``full``), and
  PostgreSQL when a server answers at ``$AGENTRT_TEST_PG_DSN`` (default: the
  one ``.ci/run`` starts), with its default commits and with
  ``synchronous_commit=False``.  Overhead = journaled p50 - unjournaled p50.
- **size** ("journal size per 100 turns of a 30K-token agent").  An agent
  conversation of 100 turns whose context starts at 30,000 tokens (a
  120,000-character system prompt, ~4 characters a token) and grows by a
  ~200-token tool result and the ~100-token reply per turn, on SQLite.  The
  journal's bytes (file plus write-ahead log) after each turn, beside what
  storing each call's whole prompt would take.  Bytes are the database's
  pages in use (``SQLiteJournal.size_bytes``), the write-ahead log's
  committed pages included.

Usage::

    .venv/bin/python benchmarks/journal.py            # ~1 min
    .venv/bin/python benchmarks/journal.py --quick

Writes ``journal.json`` and ``journal.png`` into ``--out-dir`` (default
``benchmarks/results``; ``--quick``: ``journal_quick.*``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
from _machine import machine  # noqa: E402

from runtime import Journal, PostgresJournal, Runtime, SQLiteJournal  # noqa: E402
from runtime.testing import ScriptedEngine  # noqa: E402
from workflows import Context, step, workflow  # noqa: E402

GOAL_MS = 1.0
PG_DSN = os.environ.get("AGENTRT_TEST_PG_DSN", "postgresql://agentrt:agentrt@127.0.0.1:5432/chinook")
CHARS_PER_TOKEN = 4
WORDS = ("the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "it")


def text(tokens: int, rng: random.Random) -> str:
    """About ``tokens`` tokens of words."""
    out: list[str] = []
    size = 0
    while size < tokens * CHARS_PER_TOKEN:
        word = rng.choice(WORDS) + str(rng.randrange(1000))
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


@step
async def small_step(ctx: Context, i: int) -> dict[str, int]:
    return {"i": i, "square": i * i}


@workflow
async def timed_calls(ctx: Context, calls: int, system_tokens: int, seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    messages: list[dict[str, str]] = [{"role": "system", "content": text(system_tokens, rng)}]
    llm_s: list[float] = []
    for _turn in range(calls):
        messages.append({"role": "user", "content": text(50, rng)})
        t0 = time.perf_counter()
        reply = await ctx.llm(messages, max_tokens=8)
        llm_s.append(time.perf_counter() - t0)
        messages.append({"role": "assistant", "content": reply.text})
    step_s: list[float] = []
    for i in range(calls):
        t0 = time.perf_counter()
        await small_step(ctx, i)
        step_s.append(time.perf_counter() - t0)
    return {"llm": llm_s, "step": step_s}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": statistics.median(ordered) * 1e3,
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1e3,
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }


async def pg_available() -> bool:
    try:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(PG_DSN, connect_timeout=3)
        await conn.close()
        return True
    except Exception:
        return False


async def overhead(calls: int, workdir: Path) -> dict[str, Any]:
    journals: dict[str, Journal | None] = {
        "none": None,
        "sqlite": SQLiteJournal(workdir / "overhead.db"),
        "sqlite-full": SQLiteJournal(workdir / "overhead-full.db", synchronous="full"),
    }
    schema = f"journal_bench_{uuid.uuid4().hex[:8]}"
    if await pg_available():
        journals["postgresql"] = PostgresJournal(PG_DSN, schema=schema)
        journals["pg-async-commit"] = PostgresJournal(PG_DSN, schema=schema + "_async", synchronous_commit=False)
    results: dict[str, Any] = {}
    try:
        for name, journal in journals.items():
            async with Runtime([ScriptedEngine("scripted", text="ok " * 3)], journal=journal) as rt:
                await rt.run(timed_calls, calls=20, system_tokens=2000, seed=1)  # warm-up
                times = await rt.run(timed_calls, calls=calls, system_tokens=2000, seed=2)
            results[name] = {"llm": summary(times["llm"]), "step": summary(times["step"])}
            print(
                f"  {name:<12} llm p50 {results[name]['llm']['p50_ms']:.3f} ms  "
                f"step p50 {results[name]['step']['p50_ms']:.3f} ms"
            )
    finally:
        if "postgresql" in journals:
            import psycopg

            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_async" CASCADE')
    base = results["none"]
    for name, row in results.items():
        if name != "none":
            row["overhead_p50_ms"] = {k: row[k]["p50_ms"] - base[k]["p50_ms"] for k in ("llm", "step")}
    return results


#: The runtime's journal while `long_agent` runs (the workflow reads its size after each turn).
MEASURED: list[Journal] = []


@workflow
async def long_agent(ctx: Context, turns: int, context_tokens: int, sizes_file: str) -> int:
    rng = random.Random(7)
    messages: list[dict[str, str]] = [{"role": "system", "content": text(context_tokens, rng)}]
    (journal,) = MEASURED
    sizes: list[dict[str, int]] = []
    prompt_bytes = 0
    for _turn in range(turns):
        messages.append({"role": "user", "content": text(200, rng)})  # the last tool result
        prompt_bytes += sum(len(json.dumps(m)) for m in messages)
        reply = await ctx.llm(messages, max_tokens=128)
        messages.append({"role": "assistant", "content": reply.text})
        sizes.append({"journal_bytes": await journal.size_bytes(), "whole_prompts_bytes": prompt_bytes})
    await anyio.Path(sizes_file + ".sizes.json").write_text(json.dumps(sizes))
    return len(messages)


async def size(turns: int, workdir: Path) -> dict[str, Any]:
    db = workdir / "size.db"
    reply = text(100, random.Random(3))
    async with Runtime([ScriptedEngine("scripted", text=reply)], journal=db) as rt:
        assert rt.journal is not None
        MEASURED[:] = [rt.journal]
        before = await rt.journal.size_bytes()
        await rt.run(long_agent, turns=turns, context_tokens=30_000, sizes_file=str(db))
    sizes = json.loads(await anyio.Path(str(db) + ".sizes.json").read_text())
    final = sizes[-1]
    out = {
        "turns": turns,
        "context_tokens_start": 30_000,
        "tokens_added_per_turn": 300,
        "empty_journal_bytes": before,
        "journal_bytes": final["journal_bytes"],
        "whole_prompts_bytes": final["whole_prompts_bytes"],
        "per_turn": sizes,
    }
    out["journal_bytes_per_100_turns"] = (final["journal_bytes"] - before) * 100 / turns
    print(
        f"  {turns} turns from a 30K-token context: journal {final['journal_bytes'] / 1e6:.2f} MB; "
        f"each call's whole prompt would be {final['whole_prompts_bytes'] / 1e6:.1f} MB"
    )
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(result["overhead"])
    x = range(len(names))
    for offset, kind in ((-0.2, "llm"), (0.2, "step")):
        values = [result["overhead"][n][kind]["p50_ms"] for n in names]
        left.bar([i + offset for i in x], values, width=0.4, label=f"per {'LLM call' if kind == 'llm' else 'step'}")
    left.axhline(GOAL_MS, color="red", linestyle="--", linewidth=1, label="goal: +1 ms")
    left.set_xticks(list(x), names)
    left.set_ylabel("p50 wall time (ms), instant engine")
    left.set_title("Runtime time per call / step, by journal")
    left.legend()
    per_turn = result["size"]["per_turn"]
    turns = range(1, len(per_turn) + 1)
    right.plot(turns, [s["journal_bytes"] / 1e6 for s in per_turn], label="agentrt journal (content-addressed)")
    right.plot(turns, [s["whole_prompts_bytes"] / 1e6 for s in per_turn], label="each call's whole prompt", ls="--")
    right.set_xlabel("agent turn (30K-token context, +300 tokens per turn)")
    right.set_ylabel("MB")
    right.set_yscale("log")
    right.set_title("Journal size on a long agent run (SQLite)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    calls, turns = (100, 100) if args.quick else (500, 100)
    with tempfile.TemporaryDirectory(prefix="agentrt-journal-bench-") as tmp:
        workdir = Path(tmp)
        print("overhead (instant scripted engine; time per call and per step):")
        over = await overhead(calls, workdir)
        print("size:")
        grown = await size(turns, workdir)
    return {
        "benchmark": "journal",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "calls": calls,
        "goal_overhead_p50_ms": GOAL_MS,
        "overhead": over,
        "size": grown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    result = anyio.run(main_async, args, backend="asyncio")
    stem = "journal_quick" if args.quick else "journal"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out_dir / f"{stem}.png")
    for name, row in result["overhead"].items():
        if name != "none":
            o = row["overhead_p50_ms"]
            print(f"{name:<12} overhead p50: llm {o['llm']:+.3f} ms, step {o['step']:+.3f} ms (goal < {GOAL_MS} ms)")
    size_mb = result["size"]["journal_bytes_per_100_turns"] / 1e6
    print(f"journal size per 100 turns of a 30K-token agent: {size_mb:.2f} MB")
    print(f"wrote {args.out_dir / stem}.json and .png")


if __name__ == "__main__":
    main()
