"""A discrete-event model of one vLLM v1 engine's scheduler.

Each step follows vLLM v1's ``Scheduler.schedule``: running requests first
(a decoding request computes one token, a request still in chunked prefill
takes what is left of the token budget), then waiting requests in queue order
while ``max_num_seqs`` and the per-step token budget allow, skipping prompt
tokens found in the prefix cache.  When a running request needs a block and
none is free even after releasing pins, the lowest-priority running request
(largest ``(priority, arrival)``, or the last admitted under FCFS; among those
of the highest ``preempt_rank`` when requests carry one) is preempted
by recompute: its blocks go back to the cache, its computed tokens reset to 0,
and it returns to the waiting queue.  No waiting request is admitted in a step
that preempted.  Pins are released under pressure least valuable first, then
the latest program's (programs ranked by when a request of theirs first
reached this scheduler).

Time is the caller's: :meth:`Scheduler.schedule` plans a step and prices it
with the :class:`~._cost.CostProfile`; the caller lets that much time pass and
calls :meth:`Scheduler.complete`, which applies the step and reports first
tokens and finished requests.  Output token ids are known up front (the
simulated requests ignore EOS and generate exactly ``max_tokens``), so the
blocks they fill are hash-chained like prompt blocks and the next turn of a
program hits them.

With a host-memory tier (:mod:`._host`; off unless ``host_tier`` is given),
a waiting request whose GPU prefix hit stops where host memory continues it
leaves the queue while those blocks are copied back (holding them and its
first chunk's blocks), and is admitted ahead of the queue once they have
arrived; :meth:`Scheduler.offload` and :meth:`Scheduler.prefetch` move a
program's context.  Copies end between steps and are applied when the next
step is planned (:meth:`Scheduler.settle`); :meth:`Scheduler.next_event` says
when the next one that matters ends.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ._continuum import continuum_pick, continuum_victim
from ._cost import CostProfile
from ._host import HostTier, HostTierMode
from ._kv import BlockManager, ChainHashCache, PrefixMemo

__all__ = ["DecodeRun", "QueueOrder", "Scheduler", "SimRequest", "Step", "StepResult", "output_ids"]

#: How the waiting queue is ordered: ``"priority"`` (lower value first, then arrival; vLLM's
#: ``--scheduling-policy priority``) or ``"fcfs"`` (arrival).  Not to be confused with the
#: runtime's scheduling *policies* (:class:`runtime.Policy`), which decide those priorities.
QueueOrder = Literal["fcfs", "priority"]

# Shared by every scheduler of the process: a program's next call may go to
# another engine, and the hashes of a token sequence do not depend on one.
_CHAIN_HASHES = ChainHashCache()


class _LastPrompt:
    """The last prompt whose hashes a router asked for, and them: a router asks each engine about one prompt in turn."""

    tokens: Sequence[int] | None = None
    block_size = 0
    hashes: list[int] = []  # noqa: RUF012 - replaced, never mutated


_LAST_PROMPT = _LastPrompt()


def output_ids(seed: int, request_id: str, count: int, first_id: int, vocab_size: int) -> list[int]:
    """``count`` deterministic pseudo-random token ids in ``[first_id, vocab_size)`` for one request."""
    rng = random.Random(f"{seed}:{request_id}")
    # A 32-bit draw per id, reduced modulo the range (bias below range / 2**32):
    # random.choices cost a tenth of a replay's time.
    picks = np.frombuffer(rng.randbytes(4 * count), dtype=np.uint32) % (vocab_size - first_id)
    return (picks + first_id).tolist()  # type: ignore[no-any-return]


@dataclass(slots=True, eq=False)
class SimRequest:
    """One request inside the simulator; times are the scheduler's clock (seconds)."""

    request_id: str
    prompt_len: int
    tokens: list[int]
    max_tokens: int
    arrival: float
    priority: int = 0
    program_id: str | None = None
    pin_ttl_s: float | None = None
    #: Its rank as a preemption victim (higher first; metadata ``preempt_rank``), before the queue order's rule.
    preempt_rank: int = 0
    hashes: list[int] = field(default_factory=list)
    #: The cached prefix found while waiting, kept between steps (see :class:`PrefixMemo`).
    prefix: PrefixMemo = field(default_factory=PrefixMemo)
    blocks: list[int] = field(default_factory=list)
    num_registered: int = 0
    num_computed: int = 0
    generated: int = 0
    cached_tokens: int | None = None
    first_scheduled: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    preemptions: int = 0
    aborted: bool = False
    seq: int = 0
    #: The program's rank when the request was added (Continuum's job order; 0 without a program).
    job_rank: int = 0
    #: Prompt tokens plus the output tokens generated so far.
    num_tokens: int = 0
    #: Leading blocks stored to host memory or found cached (write-through host tier).
    num_stored: int = 0
    #: Whether it waits for KV blocks on their way from host memory (out of the waiting queue meanwhile).
    loading: bool = False
    #: The state in which a load from host memory was last found impossible (see Scheduler._load_from_host).
    host_memo: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        self.num_tokens = self.prompt_len + self.generated

    @property
    def output_token_ids(self) -> list[int]:
        return self.tokens[self.prompt_len : self.prompt_len + self.generated]

    @property
    def finished(self) -> bool:
        return self.finish_time is not None

    @property
    def queued_s(self) -> float | None:
        """Seconds from arrival to first being scheduled."""
        return None if self.first_scheduled is None else self.first_scheduled - self.arrival


@dataclass(slots=True)
class Step:
    """One planned engine step: requests, the tokens each computes, and the step's duration in seconds."""

    requests: list[SimRequest]
    tokens: list[int]
    duration: float
    #: The context the decoding sequences attend to when the step is decode-only; -1 if it prefills.
    decode_context: int = -1


@dataclass(slots=True)
class StepResult:
    """What a completed step produced."""

    first_tokens: list[SimRequest]
    finished: list[SimRequest]


@dataclass(slots=True, eq=False)
class DecodeRun:
    """Steps 1..k that repeat a decode-only step's batch, planned at once (see :meth:`Scheduler.decode_run`).

    Step ``j`` ends at ``ends[j - 1]`` and lasts ``durations[j - 1]``.  The
    boundaries (a step's end: its completion, then the next step's plan) are
    applied lazily by :meth:`Scheduler.advance`; the last step, or the one in
    flight when the run is cut short, is completed as an ordinary
    :class:`Step` (:meth:`DecodeRun.step`), so finishes go the usual way.
    """

    requests: list[SimRequest]
    ends: list[float]
    durations: list[float]
    #: Each request's ``num_computed`` before step 1.
    base: list[int]
    #: Block bookkeeping at boundaries, in the order the one-step-at-a-time
    #: scheduler does it: ``(boundary, 0, i)`` registers request i's newly
    #: full block, ``(boundary, 1, i)`` allocates its next block.
    events: list[tuple[int, int, int]]
    next_event: int = 0
    #: Boundaries applied so far: steps 1..done are complete, step done + 1 is planned.
    done: int = 0
    #: The last boundary the run may apply: len(ends) - 1, or ``done`` once cut short.
    limit: int = 0

    def step(self) -> Step:
        """The step in flight after the applied boundaries, as an ordinary step."""
        return Step(list(self.requests), [1] * len(self.requests), self.durations[self.done])

    @property
    def end(self) -> float:
        """When the step in flight ends."""
        return self.ends[self.done]

    def cut(self) -> None:
        """Apply no more boundaries: the step in flight becomes the run's last."""
        self.limit = self.done


class Scheduler:
    """Continuous batching over a :class:`BlockManager` (see the module docstring)."""

    def __init__(
        self,
        profile: CostProfile,
        *,
        kv_blocks: int | None = None,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        queue_order: QueueOrder = "priority",
        host_tier: HostTierMode | None = None,
        host_kv_bytes: int | None = None,
    ) -> None:
        if queue_order not in ("fcfs", "priority"):
            raise ValueError(f"unknown queue order {queue_order!r}; known: fcfs, priority")
        self.profile = profile
        self.kv = BlockManager(kv_blocks or profile.kv_blocks, profile.block_size)
        #: The host-memory KV tier (:mod:`._host`), or None (the default: no tier).
        self.host: HostTier | None = None
        if host_tier is not None:
            self.host = _host_tier(self.kv, profile, host_tier, host_kv_bytes)
        # Requests waiting for blocks on their way from host memory:
        # (when the copy ends, seq, request, first loaded block, blocks loaded).
        self._loading: list[tuple[float, int, SimRequest, int, int]] = []
        # Requests whose load ended, admitted before the waiting queue (counted in num_waiting):
        # they hold their blocks, and one that waited behind a request that cannot fit could deadlock.
        self._loaded: deque[SimRequest] = deque()
        #: Computed tokens thrown away by preemptions (each victim's computed tokens then).
        self.recomputed_tokens = 0
        self.max_num_seqs = max_num_seqs or profile.max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens or profile.max_num_batched_tokens
        self.queue_order: QueueOrder = queue_order
        self.running: list[SimRequest] = []
        self._fifo: deque[SimRequest] = deque()
        self._heap: list[tuple[int, float, int, SimRequest]] = []
        self._requests: dict[str, SimRequest] = {}
        # Per program, the block hashes of its last finished unpinned request
        # (and how many of them were registered), for a pin set afterwards.
        self._last_finished: OrderedDict[str, tuple[list[int], int]] = OrderedDict()
        # Per program, its rank: the order in which its first request reached
        # this scheduler (latest program, highest rank), least recently seen first.
        self._program_rank: OrderedDict[str, int] = OrderedDict()
        self._programs_seen = 0
        self._num_waiting = 0
        self._seq = 0
        self.preemptions = 0
        #: Whether Continuum's public scheduling rules are on (:meth:`use_continuum`).
        self.continuum = False
        # Continuum's waiting queue (a deque in its code), scanned on every peek.
        self._cwait: list[SimRequest] = []
        self._cpick = 0

    # -- queue -------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    @property
    def has_work(self) -> bool:
        return bool(self.running) or self._num_waiting > 0

    def use_continuum(self) -> None:
        """Schedule by Continuum's public rules from now on (see :mod:`._continuum`); waiting requests move over."""
        if self.continuum:
            return
        self.continuum = True
        if self.queue_order == "priority":
            moved = [entry[3] for entry in sorted(self._heap, key=lambda e: e[:3])]
            self._heap = []
        else:
            moved = list(self._fifo)
            self._fifo.clear()
        self._cwait = [r for r in moved if not r.aborted]

    def _push_waiting(self, req: SimRequest, *, front: bool) -> None:
        self._num_waiting += 1
        if self.continuum:
            if front:
                self._cwait.insert(0, req)
            else:
                self._cwait.append(req)
        elif self.queue_order == "priority":
            heapq.heappush(self._heap, (req.priority, req.arrival, req.seq, req))
        elif front:
            self._fifo.appendleft(req)
        else:
            self._fifo.append(req)

    def _peek_waiting(self) -> SimRequest | None:
        """The next live waiting request, dropping aborted ones on the way."""
        if self.continuum:
            waiting = self._cwait
            if any(r.aborted for r in waiting):
                waiting[:] = [r for r in waiting if not r.aborted]
            if not waiting:
                return None
            self._cpick = continuum_pick(waiting, self.kv.has_pin)
            return waiting[self._cpick]
        if self.queue_order == "priority":
            while self._heap:
                req = self._heap[0][3]
                if not req.aborted:
                    return req
                heapq.heappop(self._heap)
            return None
        while self._fifo:
            req = self._fifo[0]
            if not req.aborted:
                return req
            self._fifo.popleft()
        return None

    def _pop_waiting(self) -> None:
        self._num_waiting -= 1
        if self.continuum:
            del self._cwait[self._cpick]
        elif self.queue_order == "priority":
            heapq.heappop(self._heap)
        else:
            self._fifo.popleft()

    # -- requests ----------------------------------------------------------

    def add(self, req: SimRequest) -> None:
        """Queue a request; raise ValueError if it could never fit in the KV cache or its id is taken."""
        if req.request_id in self._requests:
            raise ValueError(f"request id {req.request_id!r} is already in the simulator")
        if req.prompt_len < 1 or req.max_tokens < 1:
            raise ValueError("a request needs at least one prompt token and max_tokens >= 1")
        if len(req.tokens) != req.prompt_len + req.max_tokens:
            raise ValueError("tokens must hold the prompt and all max_tokens output ids")
        needed = self.kv.blocks_for(req.prompt_len + req.max_tokens - 1)
        if needed > self.kv.num_blocks:
            raise ValueError(
                f"request {req.request_id!r} needs {needed} KV blocks "
                f"({req.prompt_len} prompt + {req.max_tokens} output tokens) but the cache has {self.kv.num_blocks}"
            )
        self._seq += 1
        req.seq = self._seq
        req.hashes = _CHAIN_HASHES.hashes(req.tokens, self.kv.block_size)
        if req.program_id is not None:
            req.job_rank = self._rank(req.program_id)
        self._requests[req.request_id] = req
        self._push_waiting(req, front=False)

    def cached_prefix_blocks(self, token_ids: Sequence[int]) -> tuple[int, int]:
        """The leading full blocks of ``token_ids`` that the prefix cache holds now, and the prompt's full blocks.

        A pure read of the cache (see :meth:`BlockManager.cached_blocks`).
        """
        bs = self.kv.block_size
        last = _LAST_PROMPT
        if last.tokens is not token_ids or last.block_size != bs:
            # A list copy: the shared cache keeps the sequence, and the
            # request that follows (prompt + output, a list) then finds it as its prefix.
            last.hashes = _CHAIN_HASHES.hashes(list(token_ids), bs)
            last.tokens = token_ids
            last.block_size = bs
        return self.kv.cached_blocks(last.hashes), len(last.hashes)

    def abort(self, request_id: str) -> bool:
        """Drop a request wherever it is and release its blocks; False if unknown or finished."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return False
        req.aborted = True
        if req in self.running:
            self.running.remove(req)
            self.kv.release(req.blocks)
            req.blocks = []
        else:
            if not req.loading:  # a loading request is not in the waiting queue; its load finds it aborted
                self._num_waiting -= 1
            if req.blocks:  # held for or after a load from host memory
                self.kv.release(req.blocks)
                req.blocks = []
        return True

    def unpin(self, program_id: str) -> bool:
        """Release a program's pin early, on request; False if it has none."""
        return self.kv.release_pin(program_id)

    def _remember_finished(self, req: SimRequest) -> None:
        assert req.program_id is not None
        last = self._last_finished
        last[req.program_id] = (req.hashes, req.num_registered)  # the list itself: no copy per request
        last.move_to_end(req.program_id)
        if len(last) > _LAST_FINISHED_KEPT:
            last.popitem(last=False)

    def _rank(self, program_id: str) -> int:
        """The program's rank (first seen, lowest), numbering it if new; it becomes the most recently seen."""
        ranks = self._program_rank
        rank = ranks.get(program_id)
        if rank is None:
            self._programs_seen += 1
            rank = ranks[program_id] = self._programs_seen
            if len(ranks) > _PROGRAMS_KEPT:
                ranks.popitem(last=False)
        else:
            ranks.move_to_end(program_id)
        return rank

    def set_pin(self, program_id: str, expiry: float, value: float | None = None) -> bool:
        """Pin ``program_id`` until ``expiry``: move its live pin's expiry, or pin its last request's cached blocks.

        ``value`` is the pin's worth per block from now on (``None``: 0; see
        :meth:`BlockManager.pin`).  False when the program has neither a pin
        nor cached blocks of its last finished request.
        """
        kv = self.kv
        if kv.set_expiry(program_id, expiry, value=value):
            return True
        last = self._last_finished.get(program_id)
        if last is None:
            return False
        hashes, registered = last
        rank = self._rank(program_id)
        return kv.pin_cached(program_id, hashes[:registered], expiry, value=value, rank=rank) > 0

    # -- host-memory tier ----------------------------------------------------

    def settle(self, now: float) -> None:
        """Apply the host tier's copies that ended at or before ``now``: loaded requests wait again."""
        host = self.host
        if host is None:
            return
        host.settle(now)
        loading = self._loading
        kv = self.kv
        while loading and loading[0][0] <= now:
            done, _, req, start, count = heapq.heappop(loading)
            if count:
                hashes = req.hashes[start : start + count]
                host.loaded(hashes, done)
                if not req.aborted:
                    kv.register_many(req.blocks[start : start + count], hashes)
                    req.num_registered = start + count
            if req.aborted:
                continue
            req.loading = False
            if req.blocks:
                self._loaded.append(req)
                self._num_waiting += 1
            else:  # it waited for another's copy: it looks its prefix up again
                self._push_waiting(req, front=True)

    def next_event(self) -> float:
        """When the next host-tier copy that changes what the scheduler may do ends; inf if none (or no tier)."""
        host = self.host
        if host is None:
            return math.inf
        t = host.next_event()
        if self._loading:
            t = min(t, self._loading[0][0])
        return t

    def offload(self, program_id: str, now: float) -> bool:
        """Copy the program's cached context to host memory (see :meth:`HostTier.offload`); False if none is cached.

        The context is its live pin's blocks, else the leading blocks of its
        last finished request that the prefix cache still holds.
        """
        host = self.host
        if host is None:
            raise ValueError("this scheduler has no host tier")
        self.settle(now)
        kv = self.kv
        pin = kv.pin_of(program_id)
        if pin is not None:
            blocks = pin.blocks[: len(kv.hashes_of(pin.blocks))]
        else:
            last = self._last_finished.get(program_id)
            if last is None:
                return False
            hashes, registered = last
            cached = kv.cached
            blocks = [cached[h] for h in hashes[: kv.cached_blocks(hashes[:registered])]]
        if not blocks:
            return False
        host.offload(program_id, blocks, now, pin=pin)
        return True

    def prefetch(self, program_id: str, ttl_s: float, now: float) -> bool:
        """Bring the program's host-held context back to the GPU, pinned ``ttl_s`` seconds after it arrives.

        The context is what the program's last offload copied, else its last
        finished request's blocks.  Loads the part after what the GPU still
        caches, as far as free blocks allow (evicting cached free blocks);
        until the copy ends the loaded blocks serve no request.  With
        nothing to load, pins what the GPU caches.  False when neither
        memory holds any of it.
        """
        host = self.host
        if host is None:
            raise ValueError("this scheduler has no host tier")
        self.settle(now)
        hashes = host.program_hashes(program_id)
        if hashes is None:
            last = self._last_finished.get(program_id)
            if last is None:
                return False
            hashes = last[0][: last[1]]
        kv = self.kv
        k = kv.cached_blocks(hashes)
        if k < len(hashes) and host.inflight(hashes[k]) is not None:
            return True  # on its way already
        cached = kv.cached
        gpu = [cached[h] for h in hashes[:k]]
        kv.touch(gpu)
        rank = self._rank(program_id)
        if host.prefetch(program_id, hashes, gpu, now, ttl_s=ttl_s, rank=rank):
            return True
        if gpu:
            kv.pin(program_id, gpu, now + ttl_s, rank=rank)
            return True
        return False

    def _load_from_host(self, req: SimRequest, hit: list[int], now: float) -> bool:
        """Start loading from host memory the blocks that continue ``req``'s GPU prefix hit; False if none.

        The request leaves the waiting queue until the copy ends, holding
        its hit blocks and the loaded ones (vLLM's ``WAITING_FOR_REMOTE_KVS``).
        As many blocks as fit beside those of the request's first chunk
        after them, which it takes too (pins released under pressure, but
        not Continuum's); a block already on its way (a prefetch) is waited for.
        """
        host = self.host
        assert host is not None
        kv = self.kv
        bs = kv.block_size
        hashes = req.hashes
        k = len(hit)
        limit = min(len(hashes), (req.num_tokens - 1) // bs)
        if k >= limit:
            return False
        wait = host.inflight(hashes[k])
        if wait is not None:
            self._pop_waiting()
            self._park(req, wait, k, 0)
            return True
        # A request that cannot load waits and is looked at every step: it
        # tries again once the evictions, the free blocks or host memory change.
        memo = (kv.evictions, kv.num_free, host.version, k)
        if memo == req.host_memo:
            return False
        m = host.leading(hashes, k, limit)
        if not m:
            req.host_memo = memo
            return False
        # The load also takes the blocks of the request's first chunk after
        # it, so that once loaded it is admitted without allocating: loaded
        # requests holding blocks while they wait for more could deadlock.
        total = req.num_tokens
        budget = self.max_num_batched_tokens
        reserve = min(-(-budget // bs) + 1, kv.blocks_for(total) - k)
        reused = kv.evictable_among(hit, req.prefix)
        room = kv.num_free - reused
        if room < m + reserve and not self.continuum and kv.num_pins:
            kv.release_pins_under_pressure(m + reserve + reused)
            reused = kv.evictable_among(hit, req.prefix)
            room = kv.num_free - reused
        m = min(m, room - reserve)
        if m <= 0:
            req.host_memo = memo if not kv.num_pins else None
            return False
        computed = (k + m) * bs
        extra = -(-(computed + min(total - computed, budget)) // bs) - k - m
        self._pop_waiting()
        kv.touch(hit)
        got = kv.allocate(m + extra)
        if got is None:  # pragma: no cover - m + extra <= room
            raise AssertionError("a load from host memory could not allocate the blocks it counted")
        req.blocks = hit + got
        req.prefix = PrefixMemo()
        host.host_hit_tokens += m * bs
        self._park(req, host.load(hashes[k : k + m], now), k, m)
        return True

    def _park(self, req: SimRequest, done: float, start: int, count: int) -> None:
        req.loading = True
        heapq.heappush(self._loading, (done, req.seq, req, start, count))

    def _admit_loaded(self, req: SimRequest, now: float, plan: _Plan) -> bool:
        """Admit a request whose blocks came from host memory; False if it does not fit (admission stops).

        It holds the blocks of its first chunk already (:meth:`_load_from_host`):
        it fits unless a smaller budget or a preemption since changed that.
        """
        if req.aborted:
            self._loaded.popleft()
            return True
        kv = self.kv
        bs = kv.block_size
        held = req.blocks
        loaded = req.num_registered  # the hit and loaded blocks; held may run on (the first chunk's)
        computed = loaded * bs
        n = min(req.num_tokens - computed, plan.budget)
        need = -(-(computed + n) // bs) - len(held)
        if kv.num_free < need:
            if self.continuum:
                if not self.running:
                    kv.release_latest_pin()
                return False
            kv.release_pins_under_pressure(need)
            if kv.num_free < need:
                return False
        self._loaded.popleft()
        self._num_waiting -= 1
        if need > 0:
            got = kv.allocate(need)
            if got is None:  # pragma: no cover - excluded by the check above
                raise AssertionError("allocation failed after a successful capacity check")
            req.blocks = held + got
        req.num_computed = computed
        req.num_stored = loaded
        if req.cached_tokens is None:
            req.cached_tokens = computed
            req.first_scheduled = now
        if req.program_id is not None:
            kv.consume_pin(req.program_id)
        self.running.append(req)
        plan.add(req, n)
        return True

    # -- steps -------------------------------------------------------------

    def _preempt(self, victim: SimRequest) -> None:
        self.running.remove(victim)
        self.kv.release(victim.blocks)
        victim.blocks = []
        victim.num_registered = 0
        self.recomputed_tokens += victim.num_computed
        victim.num_computed = 0
        victim.num_stored = 0
        victim.preemptions += 1
        self.preemptions += 1
        self._push_waiting(victim, front=True)

    def _waiting_programs(self) -> set[str]:
        """Programs with a live request waiting (whose pins Continuum does not expire)."""
        return {r.program_id for r in self._cwait if r.program_id is not None and not r.aborted}

    def _victim(self) -> SimRequest:
        running = self.running
        top = max(r.preempt_rank for r in running)
        if top or min(r.preempt_rank for r in running):
            # Ranks given (metadata preempt_rank): the highest goes; vLLM's rule among equals.
            running = [r for r in running if r.preempt_rank == top]
        if self.queue_order == "priority":
            return max(running, key=lambda r: (r.priority, r.arrival, r.seq))
        return running[-1]

    def schedule(self, now: float) -> Step | None:
        """Plan the next step at time ``now`` (seconds); None when there is nothing to run."""
        kv = self.kv
        if self.host is not None:
            self.settle(now)
        kv.expire_pins(now, self._waiting_programs if self.continuum else None)
        if not self.has_work:
            return None
        plan = _Plan(self.max_num_batched_tokens)
        preempted_before = self.preemptions
        self._schedule_running(plan)
        if self.preemptions == preempted_before:
            self._admit(now, plan)
            if not plan.requests and not self.has_work:
                return None  # every waiting request went to wait for blocks from host memory
        duration = self.profile.step_time(plan.prefill, plan.decode_batch, plan.decode_context)
        return Step(plan.requests, plan.tokens, duration, -1 if plan.prefill else plan.decode_context)

    def decode_run(self, step: Step, now: float) -> DecodeRun | None:
        """The run of steps that repeat ``step``, just planned at ``now``, if it has at least 2; else None.

        While a decode-only step runs the whole batch and nothing waiting could
        be admitted, the next step has the same batch, each context one token
        longer, until a request finishes, a pin expires or the free blocks run
        out: the run ends with the step that finishes the first request, with
        the step that ends at or after the next pin expiry (its boundary would
        release the pin before planning), or before the step whose plan needs
        one block more than are free (that would release pins or preempt).
        A request arriving or aborted meanwhile must cut the run
        (:meth:`DecodeRun.cut`) after :meth:`advance` to the time it happens.
        The steps' durations are priced as :meth:`schedule` would price them.
        """
        ctx = step.decode_context
        reqs = step.requests
        batch = len(reqs)
        if ctx < 0 or batch != len(self.running):
            return None
        # A waiting request is admitted by the next plan unless the sequence
        # slots or the token budget are full, and stay so while the batch does.
        if self._num_waiting and batch < self.max_num_seqs and batch < self.max_num_batched_tokens:
            return None
        k = min(r.max_tokens - r.generated for r in reqs)
        if k < 2:
            return None
        expiry = self.kv.next_expiry()
        if self.host is not None:
            expiry = min(expiry, self.next_event())
        profile = self.profile
        no_prefill: list[tuple[int, int]] = []
        d = step.duration
        t = now
        ends: list[float] = []
        durations: list[float] = []
        # t accumulates like the loop clock does, one step's duration at a time.
        for j in range(1, k + 1):
            t += d
            ends.append(t)
            durations.append(d)
            if j == k or t >= expiry:
                break
            ctx += batch
            d = profile.step_time(no_prefill, batch, ctx)
        k = len(ends)
        if k < 2:
            return None
        # Block bookkeeping at boundaries 1..k-1: boundary b completes step b
        # (a request whose computed tokens reach a block end registers it)
        # and plans step b + 1 (a request whose computed tokens fill its
        # blocks allocates one).
        bs = self.kv.block_size
        base = [r.num_computed for r in reqs]
        allocs: list[tuple[int, int, int]] = []
        events: list[tuple[int, int, int]] = []
        for i, r in enumerate(reqs):
            c0 = base[i]
            events += [(b, 0, i) for b in range(bs - c0 % bs, k, bs)]
            allocs += [(b, 1, i) for b in range(len(r.blocks) * bs - c0, k, bs)]
        free = self.kv.num_free
        if len(allocs) > free:
            allocs.sort()
            # The plan of step b + 1 would find no free block: end the run with step b.
            k = allocs[free][0]
            if k < 2:
                return None
            del ends[k:], durations[k:]
            events = [e for e in events if e[0] < k]
            del allocs[free:]
            allocs = [e for e in allocs if e[0] < k]
        events += allocs
        events.sort()
        return DecodeRun(list(reqs), ends, durations, base, events, limit=k - 1)

    def advance(self, run: DecodeRun, now: float) -> None:
        """Apply the run's boundaries up to ``now`` (at most ``run.limit``), as complete + schedule would.

        No request finishes or gets its first token at these boundaries (the
        run ends before), no pin expires, and every allocation succeeds.
        """
        ends = run.ends
        old = done = run.done
        while done < run.limit and ends[done] <= now:
            done += 1
        if done == old:
            return
        run.done = done
        kv = self.kv
        bs = kv.block_size
        reqs = run.requests
        base = run.base
        events = run.events
        e = run.next_event
        host = self.host
        while e < len(events) and events[e][0] <= done:
            b, kind, i = events[e]
            e += 1
            req = reqs[i]
            if kind:
                if host is not None:  # stores that ended before this eviction may keep their blocks
                    host.settle(ends[b - 1])
                got = kv.allocate(1)
                if got is None:  # pragma: no cover - decode_run counted the free blocks
                    raise AssertionError("a decode run ran out of blocks")
                req.blocks += got
            else:
                full = (base[i] + b) // bs
                registered = req.num_registered
                if full > registered:
                    kv.register_many(req.blocks[registered:full], req.hashes[registered:full])
                    req.num_registered = full
        run.next_event = e
        steps = done - old
        for req in reqs:
            req.num_computed += steps
            req.generated += steps
            req.num_tokens += steps

    def _schedule_running(self, plan: _Plan) -> None:
        """Running requests in admission order.

        A request short of a block first gets pins released, then preempts
        the lowest-priority running request (possibly one already planned
        this step, or itself).
        """
        kv = self.kv
        bs = kv.block_size
        running = self.running
        requests = plan.requests
        tokens = plan.tokens
        # The common case, a decode that fits in its last block, is inlined:
        # this loop runs once per running request per step.
        decode_batch = 0
        decode_context = 0
        budget = plan.budget
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            computed = req.num_computed
            n = req.num_tokens - computed
            if n == 1 and req.generated and computed < len(req.blocks) * bs:
                requests.append(req)
                tokens.append(1)
                budget -= 1
                decode_batch += 1
                decode_context += computed + 1
                i += 1
                continue
            if n > budget:
                n = budget
            plan.budget = budget
            lost = False
            need = -(-(computed + n) // bs) - len(req.blocks)
            if self.continuum and need > 0:
                i, lost = self._continuum_blocks(req, need, i, plan)
                if lost:
                    break  # Continuum's code: a request that preempted itself ends the running phase
                plan.add(req, n)
                i += 1
                budget = plan.budget
                continue
            while need > 0:
                got = kv.allocate(need)
                if got is not None:
                    req.blocks.extend(got)
                    break
                kv.release_pins_under_pressure(need)
                if kv.num_free >= need:
                    continue
                victim = self._victim()
                if running.index(victim) < i:
                    i -= 1
                plan.drop(victim)
                self._preempt(victim)
                if victim is req:
                    lost = True
                    break
            if not lost:  # else the next request moved into slot i
                plan.add(req, n)
                i += 1
            budget = plan.budget
        plan.budget = budget
        plan.decode_batch += decode_batch
        plan.decode_context += decode_context

    def _continuum_blocks(self, req: SimRequest, need: int, i: int, plan: _Plan) -> tuple[int, bool]:
        """Find ``need`` blocks for running ``req`` (slot ``i``) by Continuum's rules; (new ``i``, whether it lost).

        With two or more running, the running request of the latest job is
        preempted (pins stay); with one, the pin with the latest expiry is
        released; with no pin left, the request preempts itself (vLLM's
        fallback; Continuum's code raises ``IndexError`` there).
        """
        kv = self.kv
        running = self.running
        while True:
            got = kv.allocate(need)
            if got is not None:
                req.blocks.extend(got)
                return i, False
            if len(running) <= 1:
                if kv.release_latest_pin():
                    continue
                victim = req
            else:
                victim = continuum_victim(running)
            if running.index(victim) < i:
                i -= 1
            plan.drop(victim)
            self._preempt(victim)
            if victim is req:
                return i, True

    def _admit(self, now: float, plan: _Plan) -> None:
        """Admit waiting requests in queue order while sequence slots, token budget and blocks allow."""
        kv = self.kv
        bs = kv.block_size
        loaded = self._loaded
        while plan.budget > 0 and len(self.running) < self.max_num_seqs:
            if loaded:  # loaded from host memory: first, with the blocks they hold
                if not self._admit_loaded(loaded[0], now, plan):
                    return
                continue
            req = self._peek_waiting()
            if req is None:
                return
            total = req.num_tokens
            hit = kv.cached_prefix(req.hashes, total, req.prefix)
            if self.host is not None and self._load_from_host(req, hit, now):
                continue
            computed = len(hit) * bs
            n = min(total - computed, plan.budget)
            need = -(-(computed + n) // bs) - len(hit)
            free = kv.num_free
            if self.continuum:
                # Hard pins: no pin is given up for a waiting request, unless nothing runs.
                fits = free - len(hit) >= need or (free >= need and free - kv.evictable_among(hit, req.prefix) >= need)
                if not fits:
                    if not self.running:
                        kv.release_latest_pin()
                    return
            elif free - len(hit) < need and (free >= need or kv.num_pins):
                # Counting the free blocks among the hit ones takes a pass over
                # thousands of blocks: skip it when the bounds 0 <= reused <=
                # len(hit) already decide (the pins are only released when the
                # exact check fails, and there are none to release).
                reused = kv.evictable_among(hit, req.prefix)
                if free - reused < need:
                    kv.release_pins_under_pressure(need + reused)
                    # Releasing pins may have dropped some of the hit blocks to the free LRU.
                    reused = kv.evictable_among(hit, req.prefix)
                    if kv.num_free - reused < need:
                        return
            elif free < need:
                return
            self._pop_waiting()
            kv.touch(hit)
            got = kv.allocate(need)
            if got is None:  # pragma: no cover - excluded by the check above
                raise AssertionError("allocation failed after a successful capacity check")
            req.blocks = hit + got
            req.prefix = PrefixMemo()  # admitted: the blocks are the request's now
            req.num_computed = computed
            req.num_registered = req.num_stored = len(hit)
            if req.cached_tokens is None:
                req.cached_tokens = computed
                req.first_scheduled = now
            if req.program_id is not None:
                kv.consume_pin(req.program_id)
            self.running.append(req)
            plan.add(req, n)

    def complete(self, step: Step, now: float) -> StepResult:
        """Apply a planned step that ended at time ``now``: advance requests, finish or pin them."""
        kv = self.kv
        bs = kv.block_size
        first: list[SimRequest] = []
        finished: list[SimRequest] = []
        host = self.host
        store = host if host is not None and host.mode == "lru" else None
        for req, n in zip(step.requests, step.tokens, strict=True):
            if req.aborted:  # while the step ran
                continue
            computed = req.num_computed + n
            req.num_computed = computed
            full = computed // bs
            registered = req.num_registered
            if full > registered:
                kv.register_many(req.blocks[registered:full], req.hashes[registered:full])
                req.num_registered = full
            if store is not None and full > req.num_stored:
                store.store(req.hashes[req.num_stored : full], now)
                req.num_stored = full
            if computed == req.num_tokens:
                generated = req.generated + 1
                req.generated = generated
                req.num_tokens = computed + 1
                if req.first_token_time is None:
                    req.first_token_time = now
                    first.append(req)
                if generated == req.max_tokens:
                    req.finish_time = now
                    finished.append(req)
        if finished:
            self.running = [r for r in self.running if r.finish_time is None]
            for req in finished:
                del self._requests[req.request_id]
                if req.pin_ttl_s is not None and req.pin_ttl_s > 0 and req.program_id is not None:
                    # A provisional pin: no value until the policy sets one.
                    kv.pin(req.program_id, req.blocks, now + req.pin_ttl_s, rank=self._rank(req.program_id))
                else:
                    kv.release(req.blocks)
                    if req.program_id is not None:
                        self._remember_finished(req)
                req.blocks = []
        return StepResult(first, finished)


def _host_tier(kv: BlockManager, profile: CostProfile, mode: HostTierMode, host_kv_bytes: int | None) -> HostTier:
    """The host tier a profile describes (``host_kv_bytes`` overriding its size); ValueError if it lacks a figure."""
    size = profile.host_kv_bytes if host_kv_bytes is None else host_kv_bytes
    missing = [
        name
        for name, value in (
            ("kv_bytes_per_token", profile.kv_bytes_per_token),
            ("host_kv_bytes", size),
            ("host_to_device_bytes_per_s", profile.host_to_device_bytes_per_s),
            ("device_to_host_bytes_per_s", profile.device_to_host_bytes_per_s),
        )
        if value is None
    ]
    if missing:
        raise ValueError(f"a host tier needs the cost profile's {', '.join(missing)} (profile {profile.name!r})")
    assert size is not None and profile.kv_bytes_per_token is not None
    assert profile.host_to_device_bytes_per_s is not None and profile.device_to_host_bytes_per_s is not None
    if size < 0:
        raise ValueError(f"host_kv_bytes must be >= 0, got {size}")
    block_bytes = profile.kv_bytes_per_token * kv.block_size
    return HostTier(
        kv,
        mode,
        capacity_blocks=size // block_bytes,
        block_bytes=block_bytes,
        host_to_device_bytes_per_s=profile.host_to_device_bytes_per_s,
        device_to_host_bytes_per_s=profile.device_to_host_bytes_per_s,
    )


_LAST_FINISHED_KEPT = 1024
"""Programs whose last finished request's block hashes are kept for a later pin (most recent first)."""

_PROGRAMS_KEPT = 1 << 16
"""Programs whose rank is kept; one unseen while this many others came is long gone (a return ranks it anew)."""


class _Plan:
    """A step being planned: what each request computes, what is left of the token budget, the cost inputs."""

    __slots__ = ("budget", "decode_batch", "decode_context", "prefill", "requests", "tokens")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.requests: list[SimRequest] = []
        self.tokens: list[int] = []
        self.prefill: list[tuple[int, int]] = []
        self.decode_batch = 0
        self.decode_context = 0

    def add(self, req: SimRequest, n: int) -> None:
        self.requests.append(req)
        self.tokens.append(n)
        self.budget -= n
        if n == 1 and req.generated and req.num_computed + 1 == req.num_tokens:
            self.decode_batch += 1
            self.decode_context += req.num_tokens
        else:
            self.prefill.append((req.num_computed, n))

    def drop(self, req: SimRequest) -> None:
        """Take back a planned request about to be preempted (its computed tokens not yet reset)."""
        for k, planned in enumerate(self.requests):
            if planned is req:
                n = self.tokens.pop(k)
                del self.requests[k]
                self.budget += n
                if n == 1 and req.generated and req.num_computed + 1 == req.num_tokens:
                    self.decode_batch -= 1
                    self.decode_context -= req.num_tokens
                else:
                    self.prefill.remove((req.num_computed, n))
                return
