"""The per-tool duration predictor: exact small cases and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolbridge import DurationPredictor, run_tool, tool

durations_s = st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=80)


def test_empty_and_cold_start() -> None:
    p = DurationPredictor(window=4)
    assert p.cdf("grep", 1.0) is None and p.quantile("grep", 0.5) is None and p.mean("grep") is None
    p.observe("bash", 2.0)
    # A tool never seen borrows the distribution of all tools.
    assert p.mean("grep") == 2.0 and p.count("grep") == 0 and p.count("bash") == 1
    with pytest.raises(ValueError):
        p.observe("bash", -1.0)
    with pytest.raises(ValueError):
        p.observe("bash", math.nan)
    with pytest.raises(ValueError):
        p.quantile("bash", 1.5)


def test_window_forgets_oldest() -> None:
    p = DurationPredictor(window=3)
    for d in (100.0, 1.0, 2.0, 3.0):
        p.observe("t", d)
    assert p.count("t") == 3 and p.quantile("t", 1.0) == 3.0 and p.mean("t") == 2.0
    assert p.cdf("t", 1.5) == pytest.approx(1 / 3)


@settings(max_examples=200, deadline=None)
@given(durations_s, st.integers(min_value=1, max_value=50))
def test_matches_the_window(values: list[float], window: int) -> None:
    p = DurationPredictor(window=window)
    for v in values:
        p.observe("tool", v)
    kept = sorted(values[-window:])
    assert p.count("tool") == len(kept)
    assert p.mean("tool") == pytest.approx(math.fsum(kept) / len(kept))
    assert p.quantile("tool", 0.0) == kept[0] and p.quantile("tool", 1.0) == kept[-1]
    assert p.cdf("tool", kept[-1]) == 1.0
    assert p.cdf("tool", -1.0) == 0.0


@settings(max_examples=200, deadline=None)
@given(durations_s, st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1))
def test_quantile_and_cdf_agree_and_are_monotone(values: list[float], q1: float, q2: float) -> None:
    p = DurationPredictor()
    for v in values:
        p.observe("tool", v)
    lo, hi = sorted((q1, q2))
    a, b = p.quantile("tool", lo), p.quantile("tool", hi)
    assert a is not None and b is not None and a <= b
    # The q-quantile is the smallest observation whose CDF reaches q.
    cdf_b = p.cdf("tool", b)
    assert cdf_b is not None and cdf_b >= hi
    assert p.cdf("tool", a) >= lo  # type: ignore[operator]


async def test_run_tool_records_wall_times() -> None:
    @tool
    def quick() -> int:
        return 1

    p = DurationPredictor()
    await run_tool(quick, {}, predictor=p)
    await run_tool(quick, {}, predictor=p)
    assert p.count("quick") == 2 and p.tools() == ["quick"]
