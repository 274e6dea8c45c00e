"""Limits parsing and declaring isolated tools."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolbridge import Limits, ToolDefinitionError, tool
from toolbridge._limits import parse_bytes


def test_sizes() -> None:
    assert parse_bytes("64M") == 64 << 20
    assert parse_bytes("1.5G") == 3 << 29
    assert parse_bytes("512k") == 512 << 10
    assert parse_bytes("2MiB") == 2 << 20
    assert parse_bytes(4096) == 4096
    for bad in ("", "lots", "-1M", "0", 0, True):
        with pytest.raises(ValueError):
            parse_bytes(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=1 << 40), st.sampled_from(["", "k", "M", "G"]))
def test_sizes_property(n: int, unit: str) -> None:
    scale = {"": 1, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    assert parse_bytes(f"{n}{unit}") == n * scale


def test_limits_validation() -> None:
    limits = Limits(memory="64M", cpu=0.5, pids=32, timeout_s=10)
    assert limits.memory_bytes == 64 << 20 and limits.memory_high_bytes is None
    for kwargs in ({"cpu": 0}, {"pids": 0}, {"pids": 1.5}, {"timeout_s": -1}, {"memory": "x"}):
        with pytest.raises(ValueError):
            Limits(**kwargs)  # type: ignore[arg-type]


def test_declaring_isolated_tools() -> None:
    def f(n: int) -> int:
        return n

    t = tool(limits=Limits(memory="64M", timeout_s=3), isolation="process")(f)
    assert t.isolation == "process" and t.timeout_s == 3 and t.limits.memory_bytes == 64 << 20
    assert tool(f).isolation == "inline" and tool(f).limits == Limits()
    # timeout_s alone becomes the limits' timeout, so both kinds of isolation honour it.
    assert tool(timeout_s=2, isolation="process")(f).limits.timeout_s == 2
    with pytest.raises(ToolDefinitionError, match="isolation"):
        tool(isolation="thread")(f)  # type: ignore[call-overload]
    with pytest.raises(ToolDefinitionError, match="timeout once"):
        tool(timeout_s=2, limits=Limits(timeout_s=3))(f)
