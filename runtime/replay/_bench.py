"""Comparing replay results: a side-by-side table and a plot (``agentrt bench compare``).

The table shows one row per result document with the numbers a scheduling
comparison is judged on (JCT percentiles, SLO attainment, cached-token
ratio, throughput, preemptions).  The plot has a JCT CDF per result and,
when the results carry deadlines, SLO attainment recomputed at deadline
scales 0.25x-4x (a program meets the scaled deadline when
``jct_s <= scale x slo_s``), the curve HEXGEN-TEXT2SQL reports.

matplotlib is imported only when a plot is asked for: it is a ``dev`` extra,
not a runtime dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._results import ReplayResult, load_result

__all__ = ["SLO_SCALES", "compare", "slo_attainment_at"]

#: Deadline scale factors of the SLO-attainment panel (x the trace's slo_s).
SLO_SCALES: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)


def slo_attainment_at(result: ReplayResult, scale: float) -> float | None:
    """Fraction of programs with a deadline that finished within ``scale x slo_s`` (failed = missed).

    ``None`` when no program of the result has ``slo_s``.
    """
    with_slo = [p for p in result.programs if p.slo_s is not None]
    if not with_slo:
        return None
    met = sum(1 for p in with_slo if p.jct_s is not None and p.slo_s is not None and p.jct_s <= scale * p.slo_s)
    return met / len(with_slo)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(results: Sequence[tuple[Path, ReplayResult]]) -> str:
    header = (
        "file",
        "policy",
        "engine",
        "engines",
        "programs",
        "completed",
        "jct_mean_s",
        "jct_p50_s",
        "jct_p95_s",
        "jct_p99_s",
        "slo_attain",
        "cached",
        "programs/s",
        "preemptions",
    )
    rows = [header]
    for path, r in results:
        s = r.summary
        rows.append(
            (
                path.name,
                r.policy,
                r.engine,
                str(r.engines),
                str(s.programs),
                str(s.completed),
                _fmt(s.jct_mean_s, ".2f"),
                _fmt(s.jct_p50_s, ".2f"),
                _fmt(s.jct_p95_s, ".2f"),
                _fmt(s.jct_p99_s, ".2f"),
                _fmt(None if s.slo_attainment is None else 100 * s.slo_attainment, ".1f")
                + "%" * (s.slo_attainment is not None),
                _fmt(None if s.cached_token_ratio is None else 100 * s.cached_token_ratio, ".1f")
                + "%" * (s.cached_token_ratio is not None),
                _fmt(s.programs_per_s, ".3f"),
                str(s.preemptions),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # Text columns left-aligned, numbers right-aligned.
    lines = []
    for row in rows:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    traces = sorted({r.trace for _, r in results})
    if len(traces) > 1:
        lines.append("")
        lines.append(f"WARNING: results come from different traces ({', '.join(traces)}); rows are not comparable")
    return "\n".join(lines)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(
            "writing the comparison plot needs matplotlib: pip install matplotlib (or agentrt[dev]), or pass no --png"
        ) from None
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_labels(results: Sequence[tuple[Path, ReplayResult]]) -> list[str]:
    """How the plot names each result: ``policy/engine``, plus the file name where that is not unique.

    Results that share policy and engine (two profiles, two seeds) would
    otherwise get legend entries with the same text.
    """
    labels = [r.label for _, r in results]
    return [
        f"{label} ({path.stem})" if labels.count(label) > 1 else label
        for label, (path, _) in zip(labels, results, strict=True)
    ]


def _plot(results: Sequence[tuple[Path, ReplayResult]], png: Path) -> None:
    plt = _pyplot()
    with_slo = any(p.slo_s is not None for _, r in results for p in r.programs)
    fig, axes = plt.subplots(1, 2 if with_slo else 1, figsize=(12 if with_slo else 6.5, 4.5), squeeze=False)
    labels = plot_labels(results)
    try:
        ax = axes[0][0]
        for label, (_, r) in zip(labels, results, strict=True):
            jcts = sorted(p.jct_s for p in r.programs if p.jct_s is not None)
            if not jcts:
                continue
            # The CDF counts failed programs in the denominator, so it tops out at the completed fraction.
            total = len(r.programs)
            ax.step(jcts, [(i + 1) / total for i in range(len(jcts))], where="post", label=label)
        ax.set_xlabel("job completion time (s)")
        ax.set_ylabel("fraction of programs")
        ax.set_title("JCT CDF")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        if with_slo:
            ax = axes[0][1]
            for label, (_, r) in zip(labels, results, strict=True):
                points = [(s, slo_attainment_at(r, s)) for s in SLO_SCALES]
                xs = [s for s, a in points if a is not None]
                ys = [a for _, a in points if a is not None]
                if xs:
                    ax.plot(xs, ys, marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(SLO_SCALES), [f"{s:g}" for s in SLO_SCALES])
            ax.set_xlabel("SLO scale (x the trace's slo_s)")
            ax.set_ylabel("SLO attainment")
            ax.set_title("SLO attainment vs SLO scale")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(png, dpi=110)
    finally:
        plt.close(fig)


def compare(paths: Sequence[Path], *, png: Path | None) -> str:
    """Load result documents and return a side-by-side table; with ``png``, also write the plot there.

    Raises :class:`~runtime.replay.ResultError` for an unreadable document
    and ``RuntimeError`` when a plot is asked for without matplotlib.
    """
    if not paths:
        raise ValueError("compare needs at least one result file")
    results = [(Path(p), load_result(p)) for p in paths]
    table = _table(results)
    if png is not None:
        _plot(results, Path(png))
    return table
