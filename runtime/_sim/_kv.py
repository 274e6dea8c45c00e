"""KV-cache blocks of one simulated engine: prefix caching, LRU eviction, pins.

Modelled on vLLM v1's ``KVCacheManager``: the cache is ``num_blocks`` blocks
of ``block_size`` tokens.  A full block is identified by a hash chained over
its parent's hash and its token ids, and once computed it is registered in the
prefix-cache map, where later requests with the same prefix find it.  Every
running request holding a block counts in the block's reference count.  A
block whose count drops to 0 keeps its hash and joins an LRU list of cached
free blocks; it is evicted (its hash dropped) only when a block is needed and
no never-used free block is left.

Pins (Continuum) keep a finished request's blocks referenced for a while so
its program's next turn finds them: a pin belongs to a program, lasts until
its expiry time, is replaced by the program's next pin, is consumed when the
program's next request is admitted, and may be released early under memory
pressure, latest-created first.  A pinned block is referenced, so it is never
evicted.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BlockManager", "Pin", "chain_hashes"]


def chain_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Hashes of the full blocks of ``token_ids``, each chained over its parent's."""
    hashes: list[int] = []
    parent = 0
    ids = tuple(token_ids)
    for start in range(0, len(ids) - block_size + 1, block_size):
        parent = hash((parent, ids[start : start + block_size]))
        hashes.append(parent)
    return hashes


@dataclass(slots=True)
class Pin:
    """Blocks a finished request of ``program_id`` keeps referenced until ``expiry`` (seconds)."""

    program_id: str
    blocks: list[int]
    expiry: float
    created: int


class BlockManager:
    """Block allocation with prefix caching and pins (see the module docstring).

    Counters: ``pins`` created, ``pin_hits``, ``pins_expired``,
    ``pins_released_pressure``.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}
        # Free blocks without a hash (never used, or freed before they filled up).
        self._fresh: list[int] = list(range(num_blocks - 1, -1, -1))
        # Free blocks that still hold a cached prefix, least recently freed first.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._pins: dict[str, Pin] = {}
        self._expiries: list[tuple[float, int, str]] = []
        self._pin_seq = 0
        self.pins = 0
        self.pin_hits = 0
        self.pins_expired = 0
        self.pins_released_pressure = 0

    # -- capacity ----------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks with no reference: never used, or cached and evictable."""
        return len(self._fresh) + len(self._evictable)

    @property
    def num_used(self) -> int:
        """Blocks referenced by running requests or pins."""
        return self.num_blocks - self.num_free

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    # -- prefix cache ------------------------------------------------------

    def cached_prefix(self, hashes: Sequence[int], num_tokens: int) -> list[int]:
        """Cached blocks covering the longest computed prefix of a sequence of ``num_tokens`` tokens.

        ``hashes`` are the sequence's full-block hashes (:func:`chain_hashes`).
        As in vLLM, the last token is never served from the cache, so at most
        ``(num_tokens - 1) // block_size`` blocks are returned.
        """
        limit = min(len(hashes), (num_tokens - 1) // self.block_size)
        cached = self.cached
        hit: list[int] = []
        for i in range(limit):
            block = cached.get(hashes[i])
            if block is None:
                break
            hit.append(block)
        return hit

    def evictable_among(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks`` are free (counted in :attr:`num_free`) and would stop being so if reused."""
        ref = self.ref
        return sum(1 for b in blocks if ref[b] == 0)

    def register(self, block: int, block_hash: int) -> None:
        """Record that ``block`` now holds the full block ``block_hash``; first computed copy wins."""
        if block_hash not in self.cached:
            self.cached[block_hash] = block
            self.block_hash[block] = block_hash

    # -- references --------------------------------------------------------

    def touch(self, blocks: Sequence[int]) -> None:
        """Take one more reference on each of ``blocks`` (prefix-cache hits)."""
        ref = self.ref
        evictable = self._evictable
        for b in blocks:
            if ref[b] == 0:
                del evictable[b]
            ref[b] += 1

    def allocate(self, count: int) -> list[int] | None:
        """``count`` new blocks, referenced once, evicting cached free blocks if needed; None if too few."""
        if count > self.num_free:
            return None
        out: list[int] = []
        fresh = self._fresh
        ref = self.ref
        for _ in range(count):
            if fresh:
                block = fresh.pop()
            else:
                block, _ = self._evictable.popitem(last=False)
                old = self.block_hash[block]
                if old is not None:
                    del self.cached[old]
                    self.block_hash[block] = None
            ref[block] = 1
            out.append(block)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference on each of ``blocks``; freed ones keep their hash and join the LRU.

        Blocks are released last first, so a request's tail blocks (the least
        shared) are evicted before its head.
        """
        ref = self.ref
        block_hash = self.block_hash
        for b in reversed(blocks):
            count = ref[b] - 1
            if count < 0:
                raise AssertionError(f"block {b} released more often than referenced")
            ref[b] = count
            if count == 0:
                if block_hash[b] is None:
                    self._fresh.append(b)
                else:
                    self._evictable[b] = None

    # -- pins --------------------------------------------------------------

    def pin(self, program_id: str, blocks: list[int], expiry: float) -> None:
        """Keep ``blocks`` (whose references the caller hands over) until ``expiry``; replaces the program's pin."""
        self._pin_seq += 1
        old = self._pins.get(program_id)
        self._pins[program_id] = Pin(program_id, blocks, expiry, self._pin_seq)
        heapq.heappush(self._expiries, (expiry, self._pin_seq, program_id))
        self.pins += 1
        if old is not None:
            self.release(old.blocks)

    def has_pin(self, program_id: str) -> bool:
        return program_id in self._pins

    @property
    def num_pins(self) -> int:
        """Pins live now."""
        return len(self._pins)

    def unpin(self, program_id: str) -> bool:
        """Release the program's pin early; False if it has none."""
        pin = self._pins.pop(program_id, None)
        if pin is None:
            return False
        self.release(pin.blocks)
        return True

    def consume_pin(self, program_id: str) -> bool:
        """Release the program's pin because its next request was admitted (a pin hit)."""
        if self.unpin(program_id):
            self.pin_hits += 1
            return True
        return False

    def expire_pins(self, now: float) -> int:
        """Release every pin whose expiry is at or before ``now``; returns how many."""
        expired = 0
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, seq, program_id = heapq.heappop(heap)
            pin = self._pins.get(program_id)
            if pin is not None and pin.created == seq:
                del self._pins[program_id]
                self.release(pin.blocks)
                expired += 1
        self.pins_expired += expired
        return expired

    def release_pins_under_pressure(self, needed_blocks: int) -> int:
        """Release pins, latest created first, until ``needed_blocks`` blocks are free; returns how many."""
        released = 0
        while self.num_free < needed_blocks and self._pins:
            latest = max(self._pins.values(), key=lambda p: p.created)
            del self._pins[latest.program_id]
            self.release(latest.blocks)
            released += 1
        self.pins_released_pressure += released
        return released

    def check(self) -> None:
        """Raise AssertionError unless the bookkeeping is consistent (for tests)."""
        assert all(r >= 0 for r in self.ref), "negative reference count"
        free = set(self._fresh) | set(self._evictable)
        assert len(free) == self.num_free, "a block is free twice"
        assert all(self.ref[b] == 0 for b in free), "a free block is referenced"
        assert sum(1 for r in self.ref if r > 0) + self.num_free == self.num_blocks, "blocks not conserved"
        for h, b in self.cached.items():
            assert self.block_hash[b] == h, "prefix map and block hashes disagree"
        for pin in self._pins.values():
            for b in pin.blocks:
                assert self.ref[b] > 0, "a pinned block is unreferenced"
                held = self.block_hash[b]
                assert held is None or self.cached[held] == b, "a pinned block was evicted"
