"""The ``dynamo`` policy: NVIDIA Dynamo's KV-aware router (``--router-mode kv``) at its shipped defaults.

What it reproduces, from Dynamo's public code and docs (``ai-dynamo/dynamo``,
read 2026-12-07: ``lib/kv-router/src/scheduling/selector.rs`` at commit
01690d42e3b9, ``lib/kv-router/src/scheduling/config.rs`` at 0243c51bb6e8,
``lib/kv-router/src/sequences/single.rs`` at 7caca0669db3 (ActiveSequences)
and ``docs/router/README.md`` at 17ecc2dd7ae6):

- **The cost of a worker** (``DefaultWorkerSelector::worker_logit``, "the
  Python _cost_function"; lower is better)::

      logit = overlap_score_weight x potential_prefill_blocks + potential_active_blocks

  ``potential_prefill_blocks`` is the worker's prompt tokens routed and not
  yet prefilled plus this request's uncached tokens (``isl - overlap x
  block_size``), over the block size; ``potential_active_blocks`` is the
  worker's active blocks plus this request's prompt blocks that are not
  among them.  In today's code the weight is ``prefill_load_scale`` after an
  ``overlap_score_credit`` (both 1.0) is subtracted from the raw prefill
  blocks; with ``overlap_score_credit_decay`` 0, ``decode_active_request_weight``
  0, no host/disk tiers and no shared cache (all defaults) that is the
  formula above, which the docs give.
- **Overlap** (``indexer.rs``: the radix tree kept from the workers' KV
  events, ``use_kv_events`` true by default): the request's leading full
  blocks that the worker's cache holds, counted up to the first it lacks.
- **Active blocks** (``ActiveSequences``, ``router_track_active_blocks``
  true, ``router_assume_kv_reuse`` true, ``router_track_output_blocks``
  false): per worker, the distinct hashed full prompt blocks of the requests
  the router sent there and that have not finished (blocks shared by two
  requests count once); a request's prompt tokens it did not find cached
  count as prefill load until its prefill is done (``mark_prefill_completed``).
- **The pick** (``softmax_sample``): at ``router_temperature`` 0 (the
  default) the lowest logit; at T > 0 a softmax over the logits negated and
  rescaled to ``[-1/T, 0]`` (uniform when all are equal), sampled once.
- **Defaults a user gets** with ``python -m dynamo.frontend --router-mode kv``:
  ``--kv-overlap-score-weight`` 1.0, ``--router-temperature`` 0.0, KV
  events on, no busy thresholds (``--active-decode-blocks-threshold`` and
  ``--active-prefill-tokens-threshold`` unset).  vLLM behind it runs with
  its defaults: FCFS, LRU eviction of cached free blocks, no pins.
- **Session affinity.**  ``--router-mode kv`` has no sticky sessions: a
  program's next turn returns to its engine only because the overlap makes
  that engine cheapest.  A request may name its worker (the selector's
  pinned-worker path, ``backend_instance_id``), and newer code has opt-in
  session-aware queue policies (``scheduling/policy_queue/session*.rs``);
  neither is on by default, and neither is reproduced here.

Here: every call is routed at once, at priority 0 (the caller's priority is
ignored: vLLM's FCFS).  The overlap comes from
:meth:`~runtime.Engine.cached_prefix` (the simulator answers from its block
manager: exact and current, as the radix tree is once the events have
arrived); the block size from :meth:`~runtime.Engine.load` (else the
cached-prefix answer's); the active blocks and prefill tokens from what this
policy routed (:meth:`DynamoPolicy.route`) and heard finish
(:meth:`DynamoPolicy.on_call_finished`).  An engine that cannot report its
cache is refused when the runtime starts (:meth:`DynamoPolicy.bind`).

Deviations, all written here and in docs/scheduling.md:

- **Prefill completion.**  Dynamo drops a request's prefill tokens from the
  worker's load at its first output token; a policy hears only of a call's
  end, so here they count until the call finishes (the prefill term
  overstates a worker decoding long outputs).
- **Ties** at temperature 0: Dynamo prefers, among the lowest logits, the
  worker whose radix tree holds the fewest blocks, then picks at random;
  engines do not report that count, so ties are broken at random here, by a
  seeded generator (``seed``), as is the sampling at T > 0, so a replay is
  repeatable.
- **The router queue.**  Recent Dynamo releases hold requests in the router
  (``router_queue_threshold``, default 16 in config.rs at 0243c51: when
  every worker's pending prefill tokens exceed 16 x its
  ``max_num_batched_tokens``).  Not reproduced: every call is routed at once.
- **Block hashes** are Python hashes of each full block's tokens chained to
  the previous block's hash (Dynamo: its own 64-bit hash over the same
  chain), one chain per block size.
- A **chat prompt** is templated in the engine, so its tokens are unknown
  here (Dynamo tokenizes in the frontend): its overlap is all its estimated
  blocks on the engine its :attr:`~runtime.CallInfo.prefix_key` hashes
  highest to (rendezvous hashing over engine names) and none elsewhere, and
  its blocks count as active without sharing; counted in
  :attr:`DynamoPolicy.chat_fallbacks`.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from .._engines import ChatPrompt, Engine
from ._base import CallFinished, CallInfo, Policy, PolicyHost, Route
from ._placement import hash_home, require_cache_reports

__all__ = [
    "DEFAULT_DYNAMO_OVERLAP_SCORE_WEIGHT",
    "DEFAULT_DYNAMO_TEMPERATURE",
    "DynamoPolicy",
    "block_keys",
    "dynamo_logit",
    "softmax_pick",
]

#: ``--kv-overlap-score-weight`` as Dynamo ships it (today ``prefill_load_scale``).
DEFAULT_DYNAMO_OVERLAP_SCORE_WEIGHT = 1.0
#: ``--router-temperature`` as Dynamo ships it: the lowest cost, deterministically.
DEFAULT_DYNAMO_TEMPERATURE = 0.0


def dynamo_logit(prefill_tokens: int, active_blocks: int, block_size: int, overlap_score_weight: float) -> float:
    """Dynamo's cost of a worker: ``weight x prefill_tokens / block_size + active_blocks`` (lower is better).

    ``prefill_tokens``: the worker's pending prefill tokens plus this
    request's uncached ones; ``active_blocks``: its active blocks plus this
    request's blocks not among them.
    """
    return overlap_score_weight * prefill_tokens / block_size + active_blocks


def softmax_pick(logits: Sequence[float], temperature: float, sample: float) -> int:
    """Dynamo's ``softmax_sample`` at ``temperature > 0``: the index drawn by ``sample`` (in [0, 1)).

    The logits are negated and rescaled to ``[-1/T, 0]`` (the lowest cost
    gets the highest probability), or all equally likely when equal.
    """
    if not logits:
        raise ValueError("no logits to sample from")
    if temperature <= 0:
        raise ValueError("softmax_pick needs a temperature > 0; at 0 Dynamo takes the lowest logit")
    low, high = min(logits), max(logits)
    if high == low:
        weights = [1.0] * len(logits)
    else:
        scale = -1.0 / ((high - low) * temperature)
        weights = [math.exp((v - low) * scale) for v in logits]
    total = sum(weights)
    cumulative = 0.0
    for index, weight in enumerate(weights):
        cumulative += weight / total
        if sample <= cumulative:
            return index
    return len(logits) - 1


def block_keys(token_ids: Sequence[int], block_size: int) -> list[int]:
    """A key per full block of ``token_ids``: the block's tokens chained to the previous block's key."""
    keys: list[int] = []
    previous = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        previous = hash((previous, tuple(token_ids[start : start + block_size])))
        keys.append(previous)
    return keys


@dataclass(slots=True)
class _Booking:
    """One routed call that has not finished: where it went, its prompt blocks and pending prefill tokens."""

    engine: str
    blocks: list[int]
    prefill_tokens: int


class _ActiveSequences:
    """Dynamo's ActiveSequences for one engine: the distinct blocks of its active requests, and their prefill."""

    __slots__ = ("blocks", "prefill_tokens")

    def __init__(self) -> None:
        self.blocks: Counter[int] = Counter()
        self.prefill_tokens = 0

    def new_blocks(self, keys: Sequence[int]) -> int:
        blocks = self.blocks
        return sum(1 for key in keys if key not in blocks)

    def add(self, booking: _Booking) -> None:
        self.blocks.update(booking.blocks)
        self.prefill_tokens += booking.prefill_tokens

    def remove(self, booking: _Booking) -> None:
        blocks = self.blocks
        for key in booking.blocks:
            left = blocks[key] - 1
            if left > 0:
                blocks[key] = left
            else:
                del blocks[key]
        self.prefill_tokens -= booking.prefill_tokens


class DynamoPolicy(Policy):
    """Dynamo's KV router: the lowest ``weight x prefill blocks + active blocks`` wins (module docstring).

    Per candidate engine: its pending prefill tokens plus the call's tokens
    its cache lacks, over the block size, times ``overlap_score_weight``;
    plus the distinct prompt blocks of the calls routed there and not
    finished, plus the call's blocks not among them.  ``temperature`` 0:
    the lowest cost (ties at random, ``seed``); above 0, softmax sampling.
    Every call goes out at once at priority 0 (vLLM's FCFS); no pins.  Every
    engine must report its cached prefixes
    (:attr:`~runtime.Engine.reports_cached_prefix`).
    """

    name = "dynamo"
    recheck_s: ClassVar[float | None] = None  # never holds a call

    def __init__(
        self,
        *,
        overlap_score_weight: float = DEFAULT_DYNAMO_OVERLAP_SCORE_WEIGHT,
        temperature: float = DEFAULT_DYNAMO_TEMPERATURE,
        seed: int = 0,
    ) -> None:
        if overlap_score_weight < 0:
            raise ValueError("overlap_score_weight must be >= 0")
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        self.overlap_score_weight = overlap_score_weight
        self.temperature = temperature
        self._rng = random.Random(seed)
        self._active: dict[str, _ActiveSequences] = {}
        self._bookings: dict[CallInfo, _Booking] = {}
        #: Chat prompts whose overlap was taken from their prefix key's hash home instead of the engines' caches.
        self.chat_fallbacks = 0

    def bind(self, host: PolicyHost) -> None:
        """Refuse a runtime whose engines cannot report their cached prefixes."""
        require_cache_reports(self.name, host.engines)
        super().bind(host)

    def active_blocks(self, engine: str) -> int:
        """The distinct prompt blocks of the calls routed to ``engine`` and not finished."""
        sequences = self._active.get(engine)
        return 0 if sequences is None else len(sequences.blocks)

    def pending_prefill_tokens(self, engine: str) -> int:
        """The uncached prompt tokens of the calls routed to ``engine`` and not finished."""
        sequences = self._active.get(engine)
        return 0 if sequences is None else sequences.prefill_tokens

    def logits(self, call: CallInfo, engines: Sequence[Engine]) -> list[float]:
        """Each engine's cost for ``call``, in the order of ``engines`` (lower is better)."""
        return [logit for logit, _ in self._evaluate(call, engines)]

    def _evaluate(self, call: CallInfo, engines: Sequence[Engine]) -> list[tuple[float, _Booking]]:
        prompt = call.prompt
        chat = isinstance(prompt, ChatPrompt)
        home: Engine | None = None
        if chat:
            self.chat_fallbacks += 1
            home = hash_home(call.prefix_key, engines)
        isl = call.prompt_tokens
        keys_by_size: dict[int, list[int]] = {}
        out: list[tuple[float, _Booking]] = []
        for engine in engines:
            sequences = self._active.setdefault(engine.name, _ActiveSequences())
            if isinstance(prompt, ChatPrompt):
                block_size = engine.load().block_size or 16
                full = isl // block_size
                overlap = full if engine is home else 0
                # Unknown tokens: blocks of their own, never shared with another call's.
                keys = [hash((id(call), i)) for i in range(full)]
            else:
                tokens = prompt.token_ids
                cached = engine.cached_prefix(tokens)
                block_size = engine.load().block_size or cached.block_size
                overlap = cached.blocks
                if block_size not in keys_by_size:
                    keys_by_size[block_size] = block_keys(tokens, block_size)
                keys = keys_by_size[block_size]
            new_tokens = max(0, isl - overlap * block_size)
            logit = dynamo_logit(
                sequences.prefill_tokens + new_tokens,
                len(sequences.blocks) + sequences.new_blocks(keys),
                block_size,
                self.overlap_score_weight,
            )
            out.append((logit, _Booking(engine.name, keys, new_tokens)))
        return out

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route:
        evaluated = self._evaluate(call, engines)
        logits = [logit for logit, _ in evaluated]
        if self.temperature == 0:
            best = min(logits)
            tied = [i for i, logit in enumerate(logits) if logit == best]
            index = tied[0] if len(tied) == 1 else self._rng.choice(tied)
        else:
            index = softmax_pick(logits, self.temperature, self._rng.random())
        self._release(call)  # a call routed again after a failed attempt leaves its old engine
        booking = evaluated[index][1]
        self._bookings[call] = booking
        self._active[booking.engine].add(booking)
        return Route(engines[index], 0)

    async def on_call_finished(self, event: CallFinished) -> None:
        """The call's blocks and pending prefill leave its engine's books (also after a failed attempt)."""
        self._release(event.call)

    def _release(self, call: CallInfo) -> None:
        booking = self._bookings.pop(call, None)
        if booking is not None:
            self._active[booking.engine].remove(booking)
