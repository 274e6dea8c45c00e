"""A vLLM stat logger that keeps the latest scheduler figures for the runtime.

vLLM calls ``record()`` from its output-handler task after every engine step;
we keep the last scheduler snapshot (queue depths, KV usage) and a running
count of preemptions.  ``StatLoggerBase`` is documented by vLLM as an
extension point, though ``SchedulerStats`` fields are not promised stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SchedulerSnapshot", "make_stat_logger_factory"]


@dataclass(slots=True)
class SchedulerSnapshot:
    """Latest figures reported by one engine's scheduler."""

    waiting: int | None = None
    running: int | None = None
    kv_usage: float | None = None
    preemptions: int = 0
    updates: int = 0

    def as_stats(self) -> dict[str, Any]:
        return {
            "waiting": self.waiting,
            "running": self.running,
            "kv_usage": self.kv_usage,
            "preemptions": self.preemptions,
        }


def make_stat_logger_factory(snapshot: SchedulerSnapshot) -> Any:
    """Return a vLLM ``StatLoggerFactory`` whose loggers write into ``snapshot``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _SnapshotStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self._snapshot = snapshot

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            snap = self._snapshot
            if scheduler_stats is not None:
                snap.waiting = int(scheduler_stats.num_waiting_reqs)
                snap.running = int(scheduler_stats.num_running_reqs)
                snap.kv_usage = float(scheduler_stats.kv_cache_usage)
                snap.updates += 1
            if iteration_stats is not None:
                snap.preemptions += int(iteration_stats.num_preempted_reqs)

        def log_engine_initialized(self) -> None:
            pass

    return _SnapshotStatLogger
