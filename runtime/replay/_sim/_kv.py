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
pressure.  A pinned block is referenced, so it is never evicted.  Pressure
releases the least valuable pin first (its ``value``: what it is worth per
block, as the policy that set it said; 0 when none did), and among equal
values the latest program's first (its ``rank``: programs numbered in the
order the engine first saw them; Continuum's "latest job first").
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

__all__ = ["BlockManager", "ChainHashCache", "Pin", "PrefixMemo", "chain_hashes"]

# Prefix-cache walks look this many hashes up at once (in C, with map).
_WALK_CHUNK = 256
_FIRST_CHUNK = 16
# Evicted hashes kept for PrefixMemo checks; older memos are checked in full.
_EVICTION_LOG = 1 << 16
# Block lists shorter than this are handled in Python: numpy costs a few microseconds a call.
_SMALL = 8


def chain_hashes(token_ids: Sequence[int], block_size: int, *, prefix: Sequence[int] = ()) -> list[int]:
    """Hashes of the full blocks of ``token_ids``, each chained over its parent's.

    ``prefix`` may hold the already known hashes of the first blocks (those of
    a sequence that ``token_ids`` continues); only the blocks after them are
    hashed.
    """
    hashes = list(prefix)
    parent = hashes[-1] if hashes else 0
    append = hashes.append
    # zip over one iterator yields the blocks as tuples, with no per-block slicing.
    it = iter(token_ids[len(hashes) * block_size :] if hashes else token_ids)
    for block in zip(*[it] * block_size, strict=False):  # a partial last block is not hashed
        parent = hash((parent, block))
        append(parent)
    return hashes


class ChainHashCache:
    """Chain hashes of recently hashed sequences, so a sequence that continues one is only hashed past it.

    A replayed program's next prompt is its previous call's prompt and output
    plus a few hundred new tokens: hashing each prompt from scratch costs a
    Python step per block (thousands per call), most of it repeating work.
    Entries are keyed by a sequence's full-block count and the ids of its last
    full block; a new sequence probes its last ``max_scan_blocks`` block ends
    for a match and confirms it by comparing the token ids, so the hashes are
    exactly those :func:`chain_hashes` computes.  The cache keeps references to
    at most ``max_tokens`` tokens, least recently used dropped first.
    """

    def __init__(self, max_tokens: int = 1 << 25, max_scan_blocks: int = 1024) -> None:
        self.max_tokens = max_tokens
        self.max_scan_blocks = max_scan_blocks
        self._entries: OrderedDict[tuple[int, int, tuple[int, ...]], tuple[Sequence[int], list[int]]] = OrderedDict()
        self._held = 0
        self.hits = 0
        self.misses = 0

    def hashes(self, token_ids: Sequence[int], block_size: int) -> list[int]:
        """:func:`chain_hashes` of ``token_ids``, which must not be modified afterwards (the cache keeps them)."""
        entries = self._entries
        full = len(token_ids) // block_size
        prefix: list[int] = []
        for f in range(full, max(0, full - self.max_scan_blocks), -1):
            key = (block_size, f, tuple(token_ids[(f - 1) * block_size : f * block_size]))
            entry = entries.get(key)
            if entry is None:
                continue
            known_ids, known_hashes = entry
            n = f * block_size
            # Usually the whole known sequence is a prefix (a previous call's
            # prompt and output): then only one side needs slicing.
            k = len(known_ids)
            if (k <= len(token_ids) and token_ids[:k] == known_ids) or known_ids[:n] == token_ids[:n]:
                # The continuation's own entry supersedes this one, which is
                # only needed again if another sequence continues it too:
                # make it the first to go.
                entries.move_to_end(key, last=False)
                prefix = known_hashes[:f]
                break
        if prefix:
            self.hits += 1
        else:
            self.misses += 1
        hashes = chain_hashes(token_ids, block_size, prefix=prefix)
        if full and len(token_ids) <= self.max_tokens:
            key = (block_size, full, tuple(token_ids[(full - 1) * block_size : full * block_size]))
            old = entries.pop(key, None)
            if old is not None:
                self._held -= len(old[0])
            entries[key] = (token_ids, hashes)
            self._held += len(token_ids)
            while self._held > self.max_tokens:
                _, (dropped, _) = entries.popitem(last=False)
                self._held -= len(dropped)
        return hashes


@dataclass(slots=True)
class PrefixMemo:
    """A waiting sequence's cached prefix as last found, and :attr:`BlockManager.evictions` then.

    Only an eviction removes a hash from the prefix-cache map (registering
    never replaces one), so while no block has been evicted the blocks found
    are still cached and a new walk may start where the last one stopped.
    """

    blocks: list[int] = field(default_factory=list)
    evictions: int = 0
    #: The sequence's hashes as a set, built when first needed to test evictions against.
    watched: set[int] | None = None
    #: ``blocks`` (or its first part) as an index array, for :meth:`BlockManager.evictable_among`.
    index: np.ndarray | None = None
    #: The sequence's hashes as an array, built when first needed to check the blocks still hold them.
    hashes: np.ndarray | None = None


def _memo_index(memo: PrefixMemo) -> np.ndarray:
    """``memo.blocks`` as an index array, kept in the memo and extended as the blocks grow.

    The blocks only grow at the end; :meth:`BlockManager.cached_prefix` drops the array when it cuts them.
    """
    blocks = memo.blocks
    index = memo.index
    if index is None or index.size > len(blocks):
        index = np.array(blocks, dtype=np.int64)
    elif index.size < len(blocks):
        index = np.concatenate((index, np.array(blocks[index.size :], dtype=np.int64)))
    memo.index = index
    return index


@dataclass(slots=True)
class Pin:
    """Blocks a finished request of ``program_id`` keeps referenced until ``expiry`` (seconds).

    ``value`` (per block) and ``rank`` (the program's order) decide which pin
    memory pressure releases first: the least valuable, then the latest
    program's.  ``created`` and ``ordered`` mark the pin's live entries in
    the expiry heap and in the release-order heap.
    """

    program_id: str
    blocks: list[int]
    expiry: float
    created: int
    value: float = 0.0
    rank: int = 0
    ordered: int = 0


class BlockManager:
    """Block allocation with prefix caching and pins (see the module docstring).

    Counters: ``pins`` created, ``pin_hits``, ``pins_expired``,
    ``pins_released`` (by :meth:`release_pin`), ``pins_released_pressure``;
    ``pinned_blocks`` is what live pins hold now.

    Block tables are numpy arrays: at published sizes a prompt spans
    thousands of blocks, and taking, dropping and freeing references one block
    at a time in Python dominated the simulator.  The LRU of cached free
    blocks is a queue with lazy deletion: a block's entry is live while
    ``_pos[block]`` holds its index, so taking a reference on a free block is
    one array store, and eviction skips stale entries.  Block lists passed in
    and returned are plain lists of distinct block ids.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        #: References per block (running requests and pins).
        self.ref = np.zeros(num_blocks, dtype=np.int64)
        # The hash a block holds, valid where _hashed is set.
        self._hash = np.zeros(num_blocks, dtype=np.int64)
        self._hashed = np.zeros(num_blocks, dtype=np.bool_)
        #: The prefix-cache map: block hash -> block.
        self.cached: dict[int, int] = {}
        # Free blocks without a hash (never used, or freed before they filled up).
        self._fresh: list[int] = list(range(num_blocks - 1, -1, -1))
        # Free blocks that still hold a cached prefix, least recently freed
        # first: _queue[_head:_tail], an entry live iff _pos[block] is its index.
        self._queue = np.zeros(max(2 * num_blocks, 1024), dtype=np.int64)
        self._head = 0
        self._tail = 0
        self._pos = np.full(num_blocks, -1, dtype=np.int64)
        self._num_evictable = 0
        self._pins: dict[str, Pin] = {}
        self._expiries: list[tuple[float, int, str]] = []
        # Pressure-release order, least valuable first, then latest program:
        # (value, -rank, ordered, program_id), an entry live iff the program's
        # pin has that ``ordered`` number; stale ones are dropped as they
        # surface, and all at once when they outnumber the live ones.
        self._release_order: list[tuple[float, int, int, str]] = []
        self._pin_seq = 0
        self.pins = 0
        self.pin_hits = 0
        self.pins_expired = 0
        self.pins_released = 0
        self.pins_released_pressure = 0
        #: Blocks live pins hold (a block two pins share counts twice).
        self.pinned_blocks = 0
        #: Hashed blocks evicted so far (it invalidates :class:`PrefixMemo` walks).
        self.evictions = 0
        # The hashes of the latest evictions; the first was eviction number _log_start.
        self._evicted: list[int] = []
        self._log_start = 0

    # -- capacity ----------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks with no reference: never used, or cached and evictable."""
        return len(self._fresh) + self._num_evictable

    @property
    def num_used(self) -> int:
        """Blocks referenced by running requests or pins."""
        return self.num_blocks - self.num_free

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def hash_of(self, block: int) -> int | None:
        """The prefix hash ``block`` holds, or None."""
        return int(self._hash[block]) if self._hashed[block] else None

    # -- prefix cache ------------------------------------------------------

    def cached_prefix(self, hashes: Sequence[int], num_tokens: int, memo: PrefixMemo | None = None) -> list[int]:
        """Cached blocks covering the longest computed prefix of a sequence of ``num_tokens`` tokens.

        ``hashes`` are the sequence's full-block hashes (:func:`chain_hashes`).
        As in vLLM, the last token is never served from the cache, so at most
        ``(num_tokens - 1) // block_size`` blocks are returned.

        With ``memo`` (the same sequence's, whose ``num_tokens`` never
        shrinks), the walk resumes where the last one stopped: a waiting
        request is looked up every step until it fits, and re-walking
        thousands of blocks each time dominated the simulator.  The returned
        list is then the memo's own and must not be modified.
        """
        limit = min(len(hashes), (num_tokens - 1) // self.block_size)
        cached = self.cached
        if memo is None:
            hit: list[int] = []
        else:
            hit = memo.blocks
            if memo.evictions != self.evictions:
                since = memo.evictions - self._log_start
                memo.evictions = self.evictions
                if hit:
                    if memo.watched is None:
                        memo.watched = set(hashes)
                    # Usually none of the few hashes evicted since is the
                    # sequence's; else (or if the log no longer reaches back)
                    # keep the part of the memo whose blocks still hold their hashes.
                    if since < 0 or not memo.watched.isdisjoint(self._evicted[since:]):
                        idx = _memo_index(memo)
                        if memo.hashes is None:
                            memo.hashes = np.array(hashes, dtype=np.int64)
                        want = memo.hashes[: len(hit)]
                        held = self._hashed[idx] & (self._hash[idx] == want)
                        if not held.all():
                            del hit[int(np.argmin(held)) :]
                            memo.index = None
            if len(hit) > limit:  # pragma: no cover - num_tokens only grows
                return hit[:limit]
        # Look the hashes up a chunk at a time in C, stopping at the first
        # miss; a small first chunk, as a resumed walk usually stops at once.
        i = len(hit)
        get = cached.get
        chunk = _FIRST_CHUNK
        while i < limit:
            found = list(map(get, hashes[i : min(i + chunk, limit)]))
            if None in found:
                hit += cast("list[int]", found[: found.index(None)])
                break
            hit += cast("list[int]", found)
            i += len(found)
            chunk = _WALK_CHUNK
        return hit

    def cached_blocks(self, hashes: Sequence[int]) -> int:
        """How many of a sequence's full-block ``hashes``, from the first to the first missing, the cache holds now.

        A pure read (no reference taken, the LRU untouched): what a router
        that tracks this engine's KV events (BlockStored / BlockRemoved) knows
        of it.  Unlike :meth:`cached_prefix` the last token is not held back:
        every full block counts.
        """
        get = self.cached.get
        i = 0
        n = len(hashes)
        chunk = _FIRST_CHUNK
        while i < n:
            found = list(map(get, hashes[i : min(i + chunk, n)]))
            if None in found:
                return i + found.index(None)
            i += len(found)
            chunk = _WALK_CHUNK
        return n

    def evictable_among(self, blocks: Sequence[int], memo: PrefixMemo | None = None) -> int:
        """How many of ``blocks`` are free (counted in :attr:`num_free`) and would stop being so if reused.

        With ``memo`` (whose :attr:`~PrefixMemo.blocks` ``blocks`` must be, as
        :meth:`cached_prefix` returned them), the blocks' index array is kept
        in it: a waiting request is checked every step, and converting its
        thousands of block ids anew each time dominated the simulator.
        """
        if not blocks:
            return 0
        if memo is None or memo.blocks is not blocks:
            return int(np.count_nonzero(self.ref[np.array(blocks, dtype=np.int64)] == 0))
        return int(np.count_nonzero(self.ref[_memo_index(memo)] == 0))

    def register(self, block: int, block_hash: int) -> None:
        """Record that ``block`` now holds the full block ``block_hash``; first computed copy wins."""
        if block_hash not in self.cached:
            self.cached[block_hash] = block
            self._hash[block] = block_hash
            self._hashed[block] = True

    def register_many(self, blocks: Sequence[int], hashes: Sequence[int]) -> None:
        """:meth:`register` each of ``blocks`` with the hash at the same index of ``hashes``."""
        cached = self.cached
        if len(blocks) < _SMALL:
            for block, h in zip(blocks, hashes, strict=True):
                self.register(block, h)
            return
        if cached.keys().isdisjoint(hashes):  # the usual case: nothing computed twice
            cached.update(zip(hashes, blocks, strict=True))
            idx = np.array(blocks, dtype=np.int64)
            self._hash[idx] = np.array(hashes, dtype=np.int64)
            self._hashed[idx] = True
            return
        for block, h in zip(blocks, hashes, strict=True):
            self.register(block, h)

    # -- references --------------------------------------------------------

    def touch(self, blocks: Sequence[int]) -> None:
        """Take one more reference on each of ``blocks`` (prefix-cache hits)."""
        if not blocks:
            return
        idx = np.array(blocks, dtype=np.int64)
        counts = self.ref[idx]
        free = idx[counts == 0]
        if free.size:
            # Free cached blocks leave the LRU: their queue entries go stale.
            self._pos[free] = -1
            self._num_evictable -= int(free.size)
        self.ref[idx] = counts + 1

    def allocate(self, count: int) -> list[int] | None:
        """``count`` new blocks, referenced once, evicting cached free blocks if needed; None if too few."""
        if count > self.num_free:
            return None
        fresh = self._fresh
        # Never-used blocks first, popped from the end of the list.
        take = min(count, len(fresh))
        out = fresh[len(fresh) - take :]
        out.reverse()
        del fresh[len(fresh) - take :]
        evict = count - take
        if evict:
            # Then the least recently freed cached blocks, whose hashes are dropped
            # (every block in the LRU holds one: unhashed free blocks are fresh).
            victims: list[int]
            if evict < _SMALL:  # one block per decode step that fills one: keep numpy out of it
                victims = self._dequeue_few(evict)
                old = [int(self._hash[b]) for b in victims]
                hashed = self._hashed
                for b in victims:
                    hashed[b] = False
            else:
                taken = self._dequeue(evict)
                old = self._hash[taken].tolist()
                self._hashed[taken] = False
                victims = taken.tolist()
            cached = self.cached
            for h in old:
                del cached[h]
            log = self._evicted
            if len(log) > _EVICTION_LOG:
                log.clear()
                self._log_start = self.evictions
            log += old
            self.evictions += evict
            out += victims
        if count < _SMALL:
            ref = self.ref
            for block in out:
                ref[block] = 1
        else:
            self.ref[np.array(out, dtype=np.int64)] = 1
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference on each of ``blocks``; freed ones keep their hash and join the LRU.

        Blocks are released last first, so a request's tail blocks (the least
        shared) are evicted before its head.
        """
        self._release(blocks, front=False)

    def release_first(self, blocks: Sequence[int]) -> None:
        """:meth:`release`, but freed blocks join the LRU at its head: evicted before every other cached free block.

        For KV copied to host memory (:mod:`._host`): its GPU copy is the
        cheapest to lose.  The last block goes first, as in :meth:`release`.
        """
        self._release(blocks, front=True)

    def _release(self, blocks: Sequence[int], *, front: bool) -> None:
        """Drop a reference on each of ``blocks``, last first; freed hashed ones join the LRU's tail (or head)."""
        if not blocks:
            return
        idx = np.array(blocks[::-1], dtype=np.int64)
        counts = self.ref[idx] - 1
        if (counts < 0).any():
            bad = int(idx[np.argmin(counts)])
            raise AssertionError(f"block {bad} released more often than referenced")
        self.ref[idx] = counts
        freed = idx[counts == 0]
        if freed.size:
            hashed = self._hashed[freed]
            if not hashed.all():
                self._fresh += freed[~hashed].tolist()
                freed = freed[hashed]
            if front:
                self._enqueue_front(freed)
            else:
                self._enqueue(freed)

    def _enqueue_front(self, blocks: np.ndarray) -> None:
        """Put free cached ``blocks`` at the LRU's head, the first of them evicted first."""
        k = int(blocks.size)
        if not k:
            return
        head = self._head
        if head < k:
            # No room before the head: lay the queue out anew, these blocks first.
            live = self._live()
            size = self._queue.size
            while live.size + k > size // 2:
                size *= 2
            self._queue = np.zeros(size, dtype=np.int64)
            self._queue[k : k + live.size] = live
            self._pos[live] = np.arange(k, k + live.size)
            head = k
            self._tail = k + int(live.size)
        start = head - k
        self._queue[start:head] = blocks
        self._pos[blocks] = np.arange(start, head)
        self._head = start
        self._num_evictable += k

    def _enqueue(self, blocks: np.ndarray) -> None:
        """Append free cached ``blocks`` to the LRU, most recently freed last."""
        k = int(blocks.size)
        if not k:
            return
        if self._tail + k > self._queue.size:
            # Drop the stale entries (renumbering the live ones), growing if still short.
            live = self._live()
            size = self._queue.size
            while live.size + k > size // 2:
                size *= 2
            self._queue = np.zeros(size, dtype=np.int64)
            self._queue[: live.size] = live
            self._pos[live] = np.arange(live.size)
            self._head, self._tail = 0, int(live.size)
        tail = self._tail
        self._queue[tail : tail + k] = blocks
        self._pos[blocks] = np.arange(tail, tail + k)
        self._tail = tail + k
        self._num_evictable += k

    def _live(self) -> np.ndarray:
        """The LRU's blocks in order (its live entries)."""
        seg = self._queue[self._head : self._tail]
        live: np.ndarray = seg[self._pos[seg] == np.arange(self._head, self._tail)]
        return live

    def _dequeue_few(self, count: int) -> list[int]:
        """:meth:`_dequeue` for a handful of blocks, one queue entry at a time."""
        queue = self._queue
        pos = self._pos
        head = self._head
        out: list[int] = []
        while len(out) < count:
            block = int(queue[head])
            if pos[block] == head:
                pos[block] = -1
                out.append(block)
            head += 1
        self._head = head
        self._num_evictable -= count
        return out

    def _dequeue(self, count: int) -> np.ndarray:
        """Take the ``count`` least recently freed cached blocks out of the LRU (``count`` <= its size)."""
        queue = self._queue
        pos = self._pos
        head = self._head
        taken: list[np.ndarray] = []
        got = 0
        while got < count:
            end = min(self._tail, head + max(2 * (count - got), 64))
            seg = queue[head:end]
            live = pos[seg] == np.arange(head, end)
            blocks = seg[live]
            need = count - got
            if blocks.size > need:
                end = head + int(np.flatnonzero(live)[need - 1]) + 1
                blocks = blocks[:need]
            taken.append(blocks)
            got += int(blocks.size)
            head = end
        self._head = head
        out = taken[0] if len(taken) == 1 else np.concatenate(taken)
        pos[out] = -1
        self._num_evictable -= count
        return out

    # -- pins --------------------------------------------------------------

    def pin(
        self, program_id: str, blocks: list[int], expiry: float, *, value: float | None = None, rank: int = 0
    ) -> None:
        """Keep ``blocks`` (whose references the caller hands over) until ``expiry``; replaces the program's pin.

        ``value`` is what the pin is worth per block (``None``: 0) and
        ``rank`` the program's order (higher: a later program); under
        pressure the least valuable pin goes first, then the latest program's.
        """
        self._pin_seq += 1
        old = self._pins.get(program_id)
        pin = Pin(program_id, blocks, expiry, self._pin_seq, 0.0 if value is None else value, rank)
        self._pins[program_id] = pin
        heapq.heappush(self._expiries, (expiry, self._pin_seq, program_id))
        self._order(pin)
        self.pins += 1
        self.pinned_blocks += len(blocks)
        if old is not None:
            self._drop(old)

    def _order(self, pin: Pin) -> None:
        """Queue ``pin`` for pressure release at its value and rank (an earlier entry of it goes stale)."""
        self._pin_seq += 1
        pin.ordered = self._pin_seq
        heap = self._release_order
        heapq.heappush(heap, (pin.value, -pin.rank, pin.ordered, pin.program_id))
        if len(heap) > 2 * len(self._pins) + 64:
            pins = self._pins
            live = [e for e in heap if (p := pins.get(e[3])) is not None and p.ordered == e[2]]
            heapq.heapify(live)
            self._release_order = live

    def _drop(self, pin: Pin) -> None:
        """Give up a pin no longer in the table: its references go."""
        self.pinned_blocks -= len(pin.blocks)
        self.release(pin.blocks)

    def set_expiry(self, program_id: str, expiry: float, *, value: float | None = None) -> bool:
        """Move the program's live pin's expiry to ``expiry`` and set its value (``None``: 0); False if it has none."""
        pin = self._pins.get(program_id)
        if pin is None:
            return False
        # A new sequence number: the heap entry of the old expiry goes stale.
        self._pin_seq += 1
        pin.expiry = expiry
        pin.created = self._pin_seq
        heapq.heappush(self._expiries, (expiry, self._pin_seq, program_id))
        value = 0.0 if value is None else value
        if value != pin.value:
            pin.value = value
            self._order(pin)
        return True

    def pin_cached(
        self, program_id: str, hashes: Sequence[int], expiry: float, *, value: float | None = None, rank: int = 0
    ) -> int:
        """Pin the leading blocks of ``hashes`` the prefix cache still holds, until ``expiry``.

        For a pin set after its request finished: its blocks were freed but
        may still be cached.  ``value`` and ``rank`` are as in :meth:`pin`.
        Returns how many blocks it pinned (0: none left, and no pin).
        """
        cached = self.cached
        blocks: list[int] = []
        for h in hashes:
            block = cached.get(h)
            if block is None:  # vLLM's prefix walk stops at the first miss too
                break
            blocks.append(block)
        if not blocks:
            return 0
        self.touch(blocks)
        self.pin(program_id, blocks, expiry, value=value, rank=rank)
        return len(blocks)

    def release_pin(self, program_id: str) -> bool:
        """Release the program's pin on request (engine control); False if it has none."""
        if self.unpin(program_id):
            self.pins_released += 1
            return True
        return False

    def pin_of(self, program_id: str) -> Pin | None:
        """The program's live pin, or None (its blocks are the caller's to read, not to change)."""
        return self._pins.get(program_id)

    def hashes_of(self, blocks: Sequence[int]) -> list[int]:
        """The hashes of the leading ``blocks`` that hold one, up to the first that does not."""
        if not blocks:
            return []
        idx = np.array(blocks, dtype=np.int64)
        hashed = self._hashed[idx]
        n = len(blocks) if hashed.all() else int(np.argmin(hashed))
        return cast("list[int]", self._hash[idx[:n]].tolist())

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
        self._drop(pin)
        return True

    def consume_pin(self, program_id: str) -> bool:
        """Release the program's pin because its next request was admitted (a pin hit)."""
        if self.unpin(program_id):
            self.pin_hits += 1
            return True
        return False

    def next_expiry(self) -> float:
        """The earliest queued pin expiry (possibly a replaced pin's, which releases nothing); inf if none."""
        return self._expiries[0][0] if self._expiries else math.inf

    def expire_pins(self, now: float, keep: Callable[[], Collection[str]] | None = None) -> int:
        """Release every pin whose expiry is at or before ``now``; returns how many.

        ``keep``, if given, returns the programs whose expired pins stay
        (called once, when the first expired pin is found): they are checked
        again at the next call (Continuum's ``unpin_requests_regular`` keeps
        the pin of a job with a request waiting).
        """
        expired = 0
        heap = self._expiries
        kept: list[tuple[float, int, str]] = []
        keeping: Collection[str] | None = None
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            _, seq, program_id = entry
            pin = self._pins.get(program_id)
            if pin is not None and pin.created == seq:
                if keep is not None:
                    if keeping is None:
                        keeping = keep()
                    if program_id in keeping:
                        kept.append(entry)
                        continue
                del self._pins[program_id]
                self._drop(pin)
                expired += 1
        for entry in kept:
            heapq.heappush(heap, entry)
        self.pins_expired += expired
        return expired

    def release_latest_pin(self) -> bool:
        """Release the pin with the latest expiry (Continuum's unpin under pressure); False if there is none.

        Among equal expiries the earliest pinned goes.  Counted in
        :attr:`pins_released_pressure`.
        """
        if not self._pins:
            return False
        program_id = max(self._pins.values(), key=lambda p: p.expiry).program_id
        self.unpin(program_id)
        self.pins_released_pressure += 1
        return True

    def release_pins_under_pressure(self, needed_blocks: int) -> int:
        """Release pins until ``needed_blocks`` blocks are free; returns how many.

        The least valuable pin goes first, and among equal values the latest
        program's (highest rank).
        """
        released = 0
        pins = self._pins
        heap = self._release_order
        while self.num_free < needed_blocks and pins:
            _, _, ordered, program_id = heapq.heappop(heap)
            pin = pins.get(program_id)
            if pin is None or pin.ordered != ordered:
                continue  # stale: the pin is gone or was re-valued
            del pins[program_id]
            self._drop(pin)
            released += 1
        self.pins_released_pressure += released
        return released

    def check(self) -> None:
        """Raise AssertionError unless the bookkeeping is consistent (for tests)."""
        ref = self.ref.tolist()
        assert all(r >= 0 for r in ref), "negative reference count"
        lru = self._live().tolist()
        assert len(lru) == self._num_evictable, "the LRU's count is off"
        free = set(self._fresh) | set(lru)
        assert len(free) == self.num_free, "a block is free twice"
        assert all(ref[b] == 0 for b in free), "a free block is referenced"
        assert all(self._hashed[b] for b in lru), "an unhashed block is in the LRU"
        assert not any(self._hashed[b] for b in self._fresh), "a hashed block is fresh"
        assert sum(1 for r in ref if r > 0) + self.num_free == self.num_blocks, "blocks not conserved"
        for h, b in self.cached.items():
            assert self.hash_of(b) == h, "prefix map and block hashes disagree"
        assert self.pinned_blocks == sum(len(p.blocks) for p in self._pins.values()), "pinned-block count is off"
        live = {e[3]: e for e in self._release_order if (p := self._pins.get(e[3])) is not None and p.ordered == e[2]}
        assert live.keys() == self._pins.keys(), "a pin is missing from the release order"
        for program_id, (value, neg_rank, _, _) in live.items():
            pin = self._pins[program_id]
            assert (value, -neg_rank) == (pin.value, pin.rank), "a pin's release-order entry is out of date"
        for pin in self._pins.values():
            for b in pin.blocks:
                assert ref[b] > 0, "a pinned block is unreferenced"
                held = self.hash_of(b)
                assert held is None or self.cached[held] == b, "a pinned block was evicted"
