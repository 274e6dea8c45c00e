"""The engine's number format: ``dtype="auto"`` follows the machine (pure logic on cpuinfo text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import InProcessEngine, ServerEngine, resolve_dtype
from runtime._engines import _dtype

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
WITH_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
WITH_AMX = "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n"


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert not _dtype.cpu_has_native_bf16(AVX2_ONLY)
    assert _dtype.cpu_has_native_bf16(WITH_BF16)
    assert _dtype.cpu_has_native_bf16(WITH_AMX)
    assert not _dtype.cpu_has_native_bf16("")  # unreadable or empty: the safe side


def test_auto_is_float32_on_a_cpu_without_bf16_and_bfloat16_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dtype, "engine_build", lambda: "cpu")
    monkeypatch.setattr(_dtype, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    assert resolve_dtype("auto") == "float32"
    monkeypatch.setattr(_dtype, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    assert resolve_dtype("auto") == "bfloat16"
    monkeypatch.setattr(_dtype, "engine_build", lambda: "gpu")
    monkeypatch.setattr(_dtype, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    assert resolve_dtype("auto") == "bfloat16"
    assert resolve_dtype("float16") == "float16"  # an explicit format is kept


async def test_engines_resolve_auto_for_this_machine(tiny_model: Path) -> None:
    here = resolve_dtype("auto")
    assert here == ("bfloat16" if _dtype.cpu_has_native_bf16() or _dtype.engine_build() == "gpu" else "float32")
    assert InProcessEngine(tiny_model).dtype == here
    assert InProcessEngine(tiny_model, dtype="bfloat16").dtype == "bfloat16"
    server = ServerEngine(tiny_model)  # never started: only its command line
    command = server.command()
    await server.aclose()  # removes its log file
    assert command[command.index("--dtype") + 1] == here == server.dtype
