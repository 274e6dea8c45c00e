"""The ``llm-d`` policy: llm-d's precise prefix-cache-aware routing, the baseline a vLLM user deploys for agents.

What it reproduces, from llm-d's public configuration and code (read
2026-12-07; llm-d-inference-scheduler at commit 520af47 of 2026-05-17,
llm-d-kv-cache at 7be76e1 of 2026-06-12):

- **The well-lit path.** llm-d's guide "precise prefix cache aware"
  (``llm-d/llm-d``: ``guides/precise-prefix-cache-aware/scheduler/
  precise-prefix-cache-aware.values.yaml``) and the scheduler's sample
  (``llm-d/llm-d-inference-scheduler``:
  ``deploy/config/epp-precise-prefix-cache-config.yaml``) configure one
  scheduling profile: ``decode-filter`` (every pod when prefill and decode
  are not split), then ``precise-prefix-cache-scorer`` weight 2.0,
  ``kv-cache-utilization-scorer`` weight 1.0, ``queue-scorer`` weight 1.0,
  and ``max-score-picker``.  Nothing else: no session affinity
  (``session-affinity-scorer`` is a separate sample), no load-aware
  threshold scorer, speculative indexing off (its default), no flow
  control.  vLLM runs with its defaults: FCFS scheduling, LRU eviction of
  cached free blocks, no pins.
- **The weighted sum.** The scheduler profile adds ``weight x score`` per
  scorer, each score clamped to [0, 1]
  (``pkg/epp/scheduling/scheduler_profile.go``).
- **precise-prefix-cache-scorer**
  (``pkg/epp/framework/plugins/scheduling/scorer/preciseprefixcache/``):
  the index of every pod's KV blocks, kept from vLLM's KV events
  (``--kv-events-config``: BlockStored / BlockRemoved over ZMQ), is asked
  for the request's block keys; the raw score of a pod is the number of
  consecutive blocks from the first that it holds (``LongestPrefixScorer``
  in llm-d-kv-cache ``pkg/kvcache/kvblock_scorer.go``; weight 1 per block
  on the GPU tier); the score is that over the request's full blocks
  (``floor(tokens / blockSize)``), clipped to [0, 1] (``utils.go``,
  ``absoluteScoredPods``).
- **queue-scorer** (``scorer/queuedepth/queue.go``): ``(max - waiting) /
  (max - min)`` over the candidates' waiting-queue lengths (vLLM's
  ``num_requests_waiting``); 1 for every pod when all are equal.
- **kv-cache-utilization-scorer** (``scorer/kvcacheutilization/``):
  ``1 - kv_usage`` (vLLM's ``kv_cache_usage_perc``, a fraction).
- **max-score-picker** (``picker/maxscore/picker.go``): the highest total
  score; candidates are shuffled first, so ties are broken at random.

Here: every call is routed at once (the EPP holds nothing), with the
caller's priority ignored (vLLM's default FCFS); the engine's cached prefix
comes from :meth:`~runtime.Engine.cached_prefix`, which the simulator
answers from its block manager (exact and current, as the index is once
the events have arrived), and the waiting queue and KV usage from
:meth:`~runtime.Engine.load` (the simulator's are current; llm-d scrapes
``/metrics`` every 50 ms).  An engine that cannot report its cache is
refused when the runtime starts (:meth:`LlmdPolicy.bind`), never scored as
empty.

Deviations, all written here and in docs/scheduling.md:

- A chat prompt is templated in the engine, so its tokens are unknown
  here; llm-d renders it in the scheduler.  Its prefix score is then 1 on
  the engine its :attr:`~runtime.CallInfo.prefix_key` (its system
  message) hashes highest to (rendezvous hashing over engine names) and
  0 elsewhere, counted in :attr:`LlmdPolicy.chat_fallbacks`.
  Today no engine that reports its cache takes chat prompts.
- Ties are broken by a seeded generator (``seed``), so a replay is
  repeatable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from .._engines import ChatPrompt, Engine
from ._base import CallInfo, Policy, PolicyHost, Route
from ._placement import hash_home, require_cache_reports

__all__ = [
    "DEFAULT_LLMD_KV_WEIGHT",
    "DEFAULT_LLMD_PREFIX_WEIGHT",
    "DEFAULT_LLMD_QUEUE_WEIGHT",
    "LlmdPolicy",
    "kv_utilization_score",
    "queue_scores",
]

#: Weight of the precise-prefix-cache-scorer in llm-d's guide.
DEFAULT_LLMD_PREFIX_WEIGHT = 2.0
#: Weight of the kv-cache-utilization-scorer in llm-d's guide.
DEFAULT_LLMD_KV_WEIGHT = 1.0
#: Weight of the queue-scorer in llm-d's guide.
DEFAULT_LLMD_QUEUE_WEIGHT = 1.0


def queue_scores(waiting: Sequence[int]) -> list[float]:
    """llm-d's queue-scorer: ``(max - w) / (max - min)`` per engine's waiting requests ``w``; all 1 when equal."""
    low, high = min(waiting), max(waiting)
    if high == low:
        return [1.0] * len(waiting)
    return [(high - w) / (high - low) for w in waiting]


def kv_utilization_score(kv_usage: float) -> float:
    """llm-d's kv-cache-utilization-scorer: ``1 - kv_usage`` (a fraction), clamped to [0, 1]."""
    return _clamp(1.0 - kv_usage)


def _clamp(score: float) -> float:
    return 0.0 if score < 0.0 else 1.0 if score > 1.0 else score


class LlmdPolicy(Policy):
    """llm-d's precise prefix-cache-aware routing: a weighted sum of scorers, the highest wins (module docstring).

    Per candidate engine: ``prefix_weight x`` its cached leading blocks over
    the prompt's full blocks, ``+ kv_weight x (1 - KV usage)``, ``+
    queue_weight x`` its waiting queue min-max normalised (fewest waiting:
    1).  Ties are broken at random (``seed``).  Every call goes out at once
    at priority 0 (vLLM's FCFS); no pins.  Every engine must report its
    cached prefixes (:attr:`~runtime.Engine.reports_cached_prefix`).
    """

    name = "llm-d"
    recheck_s: ClassVar[float | None] = None  # never holds a call

    def __init__(
        self,
        *,
        prefix_weight: float = DEFAULT_LLMD_PREFIX_WEIGHT,
        kv_weight: float = DEFAULT_LLMD_KV_WEIGHT,
        queue_weight: float = DEFAULT_LLMD_QUEUE_WEIGHT,
        seed: int = 0,
    ) -> None:
        if min(prefix_weight, kv_weight, queue_weight) < 0:
            raise ValueError("scorer weights must be >= 0")
        self.prefix_weight = prefix_weight
        self.kv_weight = kv_weight
        self.queue_weight = queue_weight
        self._rng = random.Random(seed)
        #: Chat prompts routed by their prefix key's hash home instead of the engines' caches.
        self.chat_fallbacks = 0

    def bind(self, host: PolicyHost) -> None:
        """Refuse a runtime whose engines cannot report their cached prefixes."""
        require_cache_reports(self.name, host.engines)
        super().bind(host)

    def scores(self, call: CallInfo, engines: Sequence[Engine]) -> list[float]:
        """Each engine's total score for ``call``, in the order of ``engines``."""
        loads = [e.load() for e in engines]
        prefix = self._prefix_scores(call, engines)
        queue = queue_scores([load.waiting or 0 for load in loads])
        return [
            self.prefix_weight * p + self.kv_weight * kv_utilization_score(load.kv_usage or 0.0) + self.queue_weight * q
            for p, load, q in zip(prefix, loads, queue, strict=True)
        ]

    def _prefix_scores(self, call: CallInfo, engines: Sequence[Engine]) -> list[float]:
        prompt = call.prompt
        if isinstance(prompt, ChatPrompt):
            self.chat_fallbacks += 1
            home = hash_home(call.prefix_key, engines)
            return [1.0 if e is home else 0.0 for e in engines]
        tokens = prompt.token_ids
        return [_clamp(e.cached_prefix(tokens).ratio) for e in engines]

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route:
        scores = self.scores(call, engines)
        best = max(scores)
        tied = [e for e, s in zip(engines, scores, strict=True) if s == best]
        engine = tied[0] if len(tied) == 1 else self._rng.choice(tied)
        return Route(engine, 0)
