"""Replay results: the document ``agentrt replay`` writes and ``agentrt bench compare`` reads.

The shape follows ``TRACE_FORMAT.md`` ("Result: one JSON document").  Times
are seconds measured from the replay's start; token counts are tokens.  A few
fields are our additions to the contract and say so in their docstrings; every
consumer of the contract can ignore them.  Unknown fields in a document are
kept (a result written by a newer version still loads and compares).

:func:`summarize` is the one place the summary statistics are computed, so
the replay driver and the simulator report the same numbers the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._errors import ReplayError

__all__ = [
    "CallResult",
    "ProgramResult",
    "ReplayResult",
    "ResultError",
    "Summary",
    "format_summary",
    "load_result",
    "percentile",
    "summarize",
]


class ResultError(ReplayError, ValueError):
    """A result document that cannot be read (missing file, invalid JSON, wrong shape)."""


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class CallResult(_Doc):
    """One LLM call as it ran: where (engine index), how long (seconds; ``None`` if unknown), and its tokens."""

    id: str
    engine: int = Field(ge=0)
    queued_s: float | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    prompt_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)


class ProgramResult(_Doc):
    """One program: arrival and finish (seconds from replay start), JCT, whether it met its deadline.

    ``finish_s`` and ``jct_s`` are ``None`` when the program failed.
    ``slo_met`` is ``None`` when the program has no deadline and ``False``
    when it failed.  Our additions: ``slo_s`` (the trace's deadline, seconds
    after arrival, so SLO attainment can be recomputed at other scales) and
    ``error`` (why it failed).
    """

    id: str
    arrival_s: float
    finish_s: float | None = None
    jct_s: float | None = None
    slo_met: bool | None = None
    calls: list[CallResult] = Field(default_factory=list)
    slo_s: float | None = None
    error: str | None = None

    @property
    def completed(self) -> bool:
        return self.jct_s is not None


class Summary(_Doc):
    """Aggregates over one replay (see :func:`summarize` for how each is computed).

    Our additions, 0 in documents written before them and where no engine
    reports them: ``recomputed_tokens`` (computed tokens thrown away by
    preemptions), and the host-memory KV tier's ``bytes_offloaded`` (device
    to host), ``bytes_loaded`` (host to device) and ``host_hit_tokens``
    (prompt tokens loaded from host memory instead of recomputed; they also
    count in the cached tokens, as vLLM counts KV-connector hits).
    """

    programs: int
    completed: int
    failed: int
    jct_mean_s: float | None
    jct_p50_s: float | None
    jct_p95_s: float | None
    jct_p99_s: float | None
    slo_attainment: float | None
    programs_per_s: float | None
    makespan_s: float | None
    prompt_tokens: int
    cached_prompt_tokens: int
    cached_token_ratio: float | None
    preemptions: int
    pins: int
    pin_hits: int
    pins_expired: int
    pins_released_pressure: int
    recomputed_tokens: int = 0
    bytes_offloaded: int = 0
    bytes_loaded: int = 0
    host_hit_tokens: int = 0


class ReplayResult(_Doc):
    """The result document of one replay.

    ``policy``, ``engine`` (``"vllm"`` or ``"sim"``), ``engines`` (count),
    ``trace`` (file name), ``summary`` and ``programs`` are the contract's.
    Our additions: ``model`` (name or path served), ``seed``, ``wall_s``
    (wall-clock seconds the replay took), ``profile`` (the simulator's
    calibration profile) and ``dtype`` (the number format: the real
    engines', or the one the simulator's profile was measured in; ``None``
    where unknown, as in documents written before it was recorded).
    """

    policy: str
    engine: Literal["vllm", "sim"]
    engines: int = Field(ge=1)
    trace: str
    summary: Summary
    programs: list[ProgramResult]
    model: str | None = None
    seed: int | None = None
    wall_s: float | None = None
    profile: str | None = None
    dtype: str | None = None

    def write(self, path: str | Path) -> Path:
        """Write the document as indented JSON; returns the path."""
        path = Path(path)
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @property
    def label(self) -> str:
        """``policy/engine``, how plots and tables name this result."""
        return f"{self.policy}/{self.engine}"


def load_result(path: str | Path) -> ReplayResult:
    """Read a result document; :class:`ResultError` says what is wrong with it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultError(f"{path}: cannot read result: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ResultError(f"{path}: not a JSON document: {exc}") from None
    try:
        return ReplayResult.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}" for e in exc.errors()[:10]
        )
        raise ResultError(f"{path}: not a replay result document: {details}") from None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def summarize(
    programs: Sequence[ProgramResult],
    *,
    preemptions: int = 0,
    pins: int = 0,
    pin_hits: int = 0,
    pins_expired: int = 0,
    pins_released_pressure: int = 0,
    recomputed_tokens: int = 0,
    bytes_offloaded: int = 0,
    bytes_loaded: int = 0,
    host_hit_tokens: int = 0,
) -> Summary:
    """The summary of a replay's programs.

    * JCT statistics are over completed programs; all ``None`` when none completed.
    * ``slo_attainment``: met / programs with a deadline (``slo_met`` not
      ``None``); a failed program with a deadline counts as not met;
      ``None`` when no program has a deadline.
    * ``makespan_s``: last finish minus first arrival; ``programs_per_s`` =
      completed / makespan.  Both ``None`` when nothing completed.
    * ``cached_token_ratio``: cached / prompt tokens over every call
      (failed programs included), ``None`` without prompt tokens.
    """
    jcts = [p.jct_s for p in programs if p.jct_s is not None]
    completed = len(jcts)
    with_slo = [p for p in programs if p.slo_met is not None]
    finishes = [p.finish_s for p in programs if p.finish_s is not None and p.jct_s is not None]
    makespan = max(finishes) - min(p.arrival_s for p in programs) if finishes else None
    prompt = sum(c.prompt_tokens for p in programs for c in p.calls)
    cached = sum(c.cached_tokens for p in programs for c in p.calls)
    return Summary(
        programs=len(programs),
        completed=completed,
        failed=len(programs) - completed,
        jct_mean_s=sum(jcts) / completed if jcts else None,
        jct_p50_s=percentile(jcts, 50) if jcts else None,
        jct_p95_s=percentile(jcts, 95) if jcts else None,
        jct_p99_s=percentile(jcts, 99) if jcts else None,
        slo_attainment=sum(1 for p in with_slo if p.slo_met and p.completed) / len(with_slo) if with_slo else None,
        programs_per_s=completed / makespan if makespan else None,
        makespan_s=makespan,
        prompt_tokens=prompt,
        cached_prompt_tokens=cached,
        cached_token_ratio=cached / prompt if prompt else None,
        preemptions=preemptions,
        pins=pins,
        pin_hits=pin_hits,
        pins_expired=pins_expired,
        pins_released_pressure=pins_released_pressure,
        recomputed_tokens=recomputed_tokens,
        bytes_offloaded=bytes_offloaded,
        bytes_loaded=bytes_loaded,
        host_hit_tokens=host_hit_tokens,
    )


def _num(value: float | None, fmt: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def format_summary(result: ReplayResult) -> str:
    """A compact human-readable table of one result (seconds, tokens, ratios as percent)."""
    s = result.summary
    rows = [
        ("policy / engine", f"{result.policy} / {result.engine} x{result.engines}"),
        ("trace", result.trace + (f" (seed {result.seed})" if result.seed is not None else "")),
        ("programs", f"{s.programs} ({s.completed} completed, {s.failed} failed)"),
        (
            "JCT s (mean/p50/p95/p99)",
            " / ".join(_num(v) for v in (s.jct_mean_s, s.jct_p50_s, s.jct_p95_s, s.jct_p99_s)),
        ),
        ("SLO attainment", _num(None if s.slo_attainment is None else 100 * s.slo_attainment, ".1f", "%")),
        ("throughput", f"{_num(s.programs_per_s, '.3f')} programs/s over {_num(s.makespan_s, '.1f')} s"),
        (
            "prompt tokens",
            f"{s.prompt_tokens} ({s.cached_prompt_tokens} cached, "
            f"{_num(None if s.cached_token_ratio is None else 100 * s.cached_token_ratio, '.1f', '%')})",
        ),
        ("preemptions", f"{s.preemptions} ({s.recomputed_tokens} computed tokens thrown away)"),
        (
            "pins",
            f"{s.pins} ({s.pin_hits} hit, {s.pins_expired} expired, {s.pins_released_pressure} released on pressure)",
        ),
    ]
    if s.bytes_offloaded or s.bytes_loaded:
        rows.append(
            (
                "host KV tier",
                f"{s.bytes_offloaded / 1e9:.2f} GB offloaded, {s.bytes_loaded / 1e9:.2f} GB loaded, "
                f"{s.host_hit_tokens} prompt tokens loaded",
            )
        )
    if result.model is not None or result.dtype is not None:
        model = result.model if result.model is not None else "-"
        rows.insert(1, ("model", model + (f" ({result.dtype})" if result.dtype is not None else "")))
    if result.wall_s is not None:
        rows.append(("wall time", f"{result.wall_s:.1f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
