"""The host-memory (CPU) KV tier of one simulated engine.

Modelled on vLLM's KV offloading to CPU memory (``OffloadingConnector``):
host memory holds KV blocks by their prefix hash, up to a capacity, least
recently used dropped first.  Blocks move over two links, device to host
(D2H, *stores*) and host to device (H2D, *loads*), each a FIFO with one
bandwidth: a copy of ``n`` blocks issued at ``t`` ends at
``max(t, link free) + n * block_bytes / bandwidth``.  A copy moves whole
blocks (``block_size * kv_bytes_per_token`` bytes).

Two ways blocks reach host memory (the mode, :data:`HostTierMode`):

* ``"lru"``, vLLM's write-through: every block a request computes is
  stored once it is registered in the GPU prefix cache (blocks filled
  during a run of decode steps when the run ends); a block evicted from the
  GPU before its store ended is not on host (vLLM instead makes the step
  that reuses the block wait for the copy: a simplification).
* ``"directed"``: only what the policy offloads (:meth:`HostTier.offload`):
  a program's cached context is copied, its GPU blocks stay referenced
  while the copy runs and are then released to the head of the GPU's LRU
  (evicted before any other cached block), and the program's pin is
  dropped.

In both modes a waiting request whose GPU prefix hit stops where host
memory continues it loads those blocks instead of recomputing them (the
scheduler's side, :mod:`._scheduler`), and :meth:`HostTier.prefetch` brings
a program's context back ahead of its next request, pinned for a while.

The tier keeps no token data: a block is its hash.  Completions are applied
lazily, by :meth:`HostTier.settle` at the time the scheduler next looks
(before any GPU eviction at that time, so a store's fate is decided by the
evictions that preceded its end).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ._kv import BlockManager, Pin

__all__ = ["HostTier", "HostTierMode", "TransferLink"]

#: How blocks reach host memory: ``"lru"`` (every computed block, vLLM's
#: OffloadingConnector) or ``"directed"`` (only what the policy offloads).
HostTierMode = Literal["lru", "directed"]

# Host-side hash lookups walk this many hashes at a time (in C, with map).
_WALK_CHUNK = 256
# Programs whose offloaded hashes are kept for a later prefetch (most recent first).
_PROGRAMS_KEPT = 4096


class TransferLink:
    """One direction of the host link: copies run one after another at ``bytes_per_s``."""

    __slots__ = ("bytes_moved", "bytes_per_s", "free_at")

    def __init__(self, bytes_per_s: float) -> None:
        if not bytes_per_s > 0:
            raise ValueError(f"a link's bandwidth must be > 0 bytes/s, got {bytes_per_s!r}")
        self.bytes_per_s = bytes_per_s
        #: When the link finishes the copies issued so far (seconds).
        self.free_at = -math.inf
        #: Bytes of every copy issued so far.
        self.bytes_moved = 0

    def issue(self, nbytes: int, now: float) -> float:
        """Queue a copy of ``nbytes`` bytes at ``now``; returns when it ends (seconds)."""
        done = max(now, self.free_at) + nbytes / self.bytes_per_s
        self.free_at = done
        self.bytes_moved += nbytes
        return done


@dataclass(slots=True)
class _Store:
    """A device-to-host copy in flight."""

    done: float
    hashes: list[int]
    #: Directed offloads: the program and the GPU blocks held during the copy, and its pin then.
    program_id: str | None = None
    blocks: list[int] = field(default_factory=list)
    pin: Pin | None = None


@dataclass(slots=True, order=True)
class _Prefetch:
    """A host-to-device copy of a program's context in flight, pinned on arrival."""

    done: float
    seq: int
    program_id: str = field(compare=False)
    #: The GPU blocks to pin: the leading ones already cached, then the loaded ones.
    blocks: list[int] = field(compare=False)
    #: Where the loaded blocks start in ``blocks``, and their hashes.
    start: int = field(compare=False)
    hashes: list[int] = field(compare=False)
    ttl_s: float = field(compare=False)
    rank: int = field(compare=False)


class HostTier:
    """Host memory for one engine's KV blocks and the links to it (see the module docstring).

    Counters: ``bytes_offloaded`` (D2H bytes issued), ``bytes_loaded`` (H2D
    bytes issued, on admission and by prefetch), ``host_hit_tokens`` (prompt
    tokens waiting requests loaded from host memory on admission instead of
    recomputing them), ``offloads`` and ``prefetches`` (calls that moved or
    kept something), ``stores_lost`` (blocks whose store ended after the GPU
    evicted them).
    """

    def __init__(
        self,
        kv: BlockManager,
        mode: HostTierMode,
        *,
        capacity_blocks: int,
        block_bytes: int,
        host_to_device_bytes_per_s: float,
        device_to_host_bytes_per_s: float,
    ) -> None:
        if mode not in ("lru", "directed"):
            raise ValueError(f"unknown host tier mode {mode!r}; known: lru, directed")
        if capacity_blocks < 0 or block_bytes < 1:
            raise ValueError("capacity_blocks must be >= 0 and block_bytes >= 1")
        self.kv = kv
        self.mode: HostTierMode = mode
        self.capacity_blocks = capacity_blocks
        self.block_bytes = block_bytes
        self.h2d = TransferLink(host_to_device_bytes_per_s)
        self.d2h = TransferLink(device_to_host_bytes_per_s)
        # Hashes held in host memory, least recently used first.
        self._held: OrderedDict[int, None] = OrderedDict()
        #: Bumped whenever the set of held hashes changes (for lookups remembered across steps).
        self.version = 0
        # D2H copies in flight, in the order they end (the link is a FIFO).
        self._stores: deque[_Store] = deque()
        # Hashes those copies carry (a hash travels once).
        self._storing: set[int] = set()
        self._prefetches: list[_Prefetch] = []
        # Hashes being loaded to the GPU now -> when their copy ends.
        self._inflight: dict[int, float] = {}
        self._seq = 0
        # Per program, the hashes of the context its last offload copied.
        self._programs: OrderedDict[str, list[int]] = OrderedDict()
        self.bytes_offloaded = 0
        self.bytes_loaded = 0
        self.host_hit_tokens = 0
        self.offloads = 0
        self.prefetches = 0
        self.stores_lost = 0

    # -- state ---------------------------------------------------------------

    @property
    def num_held(self) -> int:
        """Blocks host memory holds now."""
        return len(self._held)

    def holds(self, block_hash: int) -> bool:
        return block_hash in self._held

    def next_event(self) -> float:
        """When the next copy that changes the GPU's state ends (directed stores, prefetches); inf if none.

        Write-through stores change only host memory and are settled lazily.
        """
        t = math.inf
        if self._prefetches:
            t = self._prefetches[0].done
        for store in self._stores:
            if store.program_id is not None:
                return min(t, store.done)
        return t

    def leading(self, hashes: Sequence[int], start: int, limit: int) -> int:
        """How many of ``hashes[start:limit]``, from the first to the first missing, host memory holds."""
        held = self._held
        if start >= limit or hashes[start] not in held:  # the usual miss, without building a chunk
            return 0
        contains = held.__contains__
        i = start
        while i < limit:
            found = list(map(contains, hashes[i : min(i + _WALK_CHUNK, limit)]))
            if not all(found):
                return i + found.index(False) - start
            i += len(found)
        return max(0, limit - start)

    def inflight(self, block_hash: int) -> float | None:
        """When a GPU load of ``block_hash`` under way ends; None if none is."""
        return self._inflight.get(block_hash)

    # -- copies ----------------------------------------------------------------

    def store(self, hashes: Sequence[int], now: float) -> None:
        """Write-through: copy the blocks of ``hashes`` (just registered on the GPU) not yet on host."""
        held = self._held
        storing = self._storing
        new = [h for h in hashes if h not in held and h not in storing]
        if not new or not self.capacity_blocks:
            return
        nbytes = len(new) * self.block_bytes
        self.bytes_offloaded += nbytes
        storing.update(new)
        self._stores.append(_Store(self.d2h.issue(nbytes, now), new))

    def load(self, hashes: Sequence[int], now: float) -> float:
        """Copy the host-held blocks of ``hashes`` to the GPU (the caller allocated them); returns when it ends."""
        held = self._held
        for h in hashes:
            held.move_to_end(h)
        nbytes = len(hashes) * self.block_bytes
        self.bytes_loaded += nbytes
        done = self.h2d.issue(nbytes, now)
        self._inflight.update(dict.fromkeys(hashes, done))
        return done

    def loaded(self, hashes: Sequence[int], done: float) -> None:
        """A load issued by :meth:`load` ended at ``done``."""
        inflight = self._inflight
        for h in hashes:
            if inflight.get(h) == done:
                del inflight[h]

    def offload(self, program_id: str, blocks: list[int], now: float, *, pin: Pin | None) -> None:
        """Directed: copy the program's cached ``blocks`` (hashed, leading) to host memory.

        The blocks gain a reference for the copy; when it ends they are
        released to the head of the GPU's LRU and the program's pin, if it
        is still ``pin`` (its live pin when the copy began), is dropped.
        """
        kv = self.kv
        hashes = kv.hashes_of(blocks)
        programs = self._programs
        programs[program_id] = hashes
        programs.move_to_end(program_id)
        if len(programs) > _PROGRAMS_KEPT:
            programs.popitem(last=False)
        held = self._held
        storing = self._storing
        new = [h for h in hashes if h not in held and h not in storing]
        for h in hashes:
            if h in held:
                held.move_to_end(h)
        kv.touch(blocks)
        nbytes = len(new) * self.block_bytes if self.capacity_blocks else 0
        self.bytes_offloaded += nbytes
        if nbytes:
            storing.update(new)
        # Through the link even with nothing new to copy: blocks other copies
        # carry are not on host before those end (and the link is a FIFO).
        done = self.d2h.issue(nbytes, now)
        self._stores.append(_Store(done, new if nbytes else [], program_id, blocks, pin))
        self.offloads += 1

    def program_hashes(self, program_id: str) -> list[int] | None:
        """The hashes the program's last offload copied, or None."""
        return self._programs.get(program_id)

    def prefetch(
        self,
        program_id: str,
        hashes: Sequence[int],
        gpu_blocks: list[int],
        now: float,
        *,
        ttl_s: float,
        rank: int,
    ) -> bool:
        """Bring the program's host-held context back after its ``gpu_blocks`` (cached, leading, referenced now).

        Loads as many of the following host-held blocks as there are free GPU
        blocks (none free: nothing), then pins the whole context for ``ttl_s``
        seconds from the load's end.  False when there is nothing to load
        (the caller keeps or drops the references it took).
        """
        kv = self.kv
        k = len(gpu_blocks)
        m = min(self.leading(hashes, k, len(hashes)), kv.num_free)
        if m <= 0:
            return False
        got = kv.allocate(m)
        if got is None:  # pragma: no cover - m <= num_free
            raise AssertionError("a prefetch could not allocate the free blocks it counted")
        loading = list(hashes[k : k + m])
        done = self.load(loading, now)
        self._seq += 1
        heapq.heappush(
            self._prefetches, _Prefetch(done, self._seq, program_id, gpu_blocks + got, k, loading, ttl_s, rank)
        )
        self.prefetches += 1
        return True

    def settle(self, now: float) -> None:
        """Apply every copy that ended at or before ``now``, in the order they ended."""
        stores = self._stores
        prefetches = self._prefetches
        while True:
            s = stores[0].done if stores else math.inf
            p = prefetches[0].done if prefetches else math.inf
            if min(s, p) > now:
                return
            if s <= p:
                self._stored(stores.popleft())
            else:
                self._prefetched(heapq.heappop(prefetches))

    def _stored(self, store: _Store) -> None:
        kv = self.kv
        hashes = store.hashes
        self._storing.difference_update(hashes)
        if store.program_id is None:
            cached = kv.cached
            kept = [h for h in hashes if h in cached]
            self.stores_lost += len(hashes) - len(kept)
            hashes = kept
        self._hold(hashes)
        if store.program_id is not None:
            if store.pin is not None and kv.pin_of(store.program_id) is store.pin:
                kv.unpin(store.program_id)
            kv.release_first(store.blocks)

    def _prefetched(self, pf: _Prefetch) -> None:
        kv = self.kv
        kv.register_many(pf.blocks[pf.start :], pf.hashes)
        self.loaded(pf.hashes, pf.done)
        kv.pin(pf.program_id, pf.blocks, pf.done + pf.ttl_s, rank=pf.rank)

    def _hold(self, hashes: Sequence[int]) -> None:
        """Hashes arrive in host memory (most recently used), the least recently used leaving past capacity."""
        if not hashes:
            return
        held = self._held
        self.version += 1
        held.update(dict.fromkeys(hashes))
        over = len(held) - self.capacity_blocks
        if over > 0:
            popitem = held.popitem
            for _ in range(over):
                popitem(last=False)
