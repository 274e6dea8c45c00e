"""Stand-ins shared by the tests of the policies that route by the engines' cache (``llm-d``, ``dynamo``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime import CachedPrefix, CallInfo, ChatPrompt, Node, NodeKind, Program, SamplingOptions, TokenPrompt
from runtime.testing import ScriptedEngine


class FixedEngine(ScriptedEngine):
    """A scripted engine that reports fixed figures: its cached blocks of any prompt, queue, KV usage, block size."""

    def __init__(
        self, name: str, *, cached_blocks: int, waiting: int = 0, kv_usage: float = 0.0, block_size: int = 16
    ) -> None:
        super().__init__(name)
        self._started = True
        self.cached_blocks = cached_blocks
        self.waiting = waiting
        self.kv_usage = kv_usage
        self.block_size = block_size

    @property
    def reports_cached_prefix(self) -> bool:
        return True

    def _cached_prefix(self, token_ids: Sequence[int]) -> CachedPrefix:
        full = len(token_ids) // self.block_size
        return CachedPrefix(min(self.cached_blocks, full), full, self.block_size)

    def _load_figures(self) -> dict[str, Any]:
        return {"waiting": self.waiting, "running": 0, "kv_usage": self.kv_usage, "block_size": self.block_size}


def call_info(prompt: TokenPrompt | ChatPrompt, program_id: str = "w") -> CallInfo:
    """The one LLM call of a fresh best-effort program ``program_id``."""
    program = Program(program_id, {}, deadline_s=None, priority=3)
    node: Node = program.add_node(NodeKind.LLM, "llm", parent=None, after=())
    sampling = SamplingOptions(max_tokens=8)
    return CallInfo(program, node, prompt, sampling, stage=None, requested_priority=2, arrived_s=0.0)
