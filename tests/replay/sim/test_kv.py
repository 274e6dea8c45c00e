"""The block manager's shortcuts give the same answers as the plain computations they replace."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from runtime.replay._sim._kv import BlockManager, ChainHashCache, PrefixMemo, chain_hashes


def test_chain_hash_cache_matches_chain_hashes() -> None:
    rng = random.Random(0)
    cache = ChainHashCache()
    base = [rng.randrange(1000) for _ in range(200)]
    longer = [*base, *(rng.randrange(1000) for _ in range(77))]
    # The same last block as `longer` at the same position, after a different prefix.
    impostor = [base[0] + 1, *longer[1:]]
    unaligned = base[:150]
    for seq in (base, longer, impostor, unaligned, [1, 2, 3], [], base[:16]):
        assert cache.hashes(seq, 16) == chain_hashes(seq, 16)
    # Only `longer` continues a known sequence: the impostor's last block matches but its ids do not,
    # and the prefixes of `base` end before any known sequence does.
    assert (cache.hits, cache.misses) == (1, 6)
    assert chain_hashes(longer, 16, prefix=chain_hashes(base, 16)) == chain_hashes(longer, 16)


def test_chain_hash_cache_stays_within_its_token_budget() -> None:
    cache = ChainHashCache(max_tokens=100)
    for i in range(10):
        seq = [i] * 40
        assert cache.hashes(seq, 8) == chain_hashes(seq, 8)
    assert cache._held <= 100


def _filled(kv: BlockManager, hashes: list[int]) -> list[int]:
    """Blocks computed for ``hashes`` and released to the cached-free LRU."""
    blocks = kv.allocate(len(hashes))
    assert blocks is not None
    kv.register_many(blocks, hashes)
    kv.release(blocks)
    return blocks


def test_prefix_memo_is_invalidated_by_an_eviction() -> None:
    kv = BlockManager(8, 4)
    hashes = [11, 12, 13, 14, 15]
    blocks = _filled(kv, hashes[:3])
    memo = PrefixMemo()
    assert kv.cached_prefix(hashes, 100, memo) == blocks
    # Nothing evicted: the memo is resumed, and a newly computed block extends it.
    extra = kv.allocate(1)
    assert extra is not None
    kv.register_many(extra, [14])
    assert kv.cached_prefix(hashes, 100, memo) == [*blocks, *extra]
    # Allocating past the never-used blocks evicts the least recently freed
    # cached block: the prefix's tail (released first), which cuts the prefix there.
    taken = kv.allocate(5)
    assert taken is not None and blocks[2] in taken and kv.evictions == 1
    assert kv.cached_prefix(hashes, 100, memo) == kv.cached_prefix(hashes, 100) == blocks[:2]
    # Recomputed elsewhere, the block is found again, and the walk goes on past it.
    kv.release(taken)
    again = _filled(kv, [13])
    assert kv.cached_prefix(hashes, 100, memo) == kv.cached_prefix(hashes, 100) == [*blocks[:2], *again, *extra]
    kv.check()


def test_memoised_walks_match_fresh_walks_under_random_churn() -> None:
    rng = random.Random(1)
    kv = BlockManager(64, 4)
    # Chain hashes of short random sequences: shared prefixes, distinct hashes within one.
    seqs = [chain_hashes([rng.randrange(3) for _ in range(rng.randrange(4, 40))], 1) for _ in range(12)]
    memos = [PrefixMemo() for _ in seqs]
    held: list[list[int]] = []
    for _ in range(400):
        i = rng.randrange(len(seqs))
        seq = seqs[i]
        memo_hit = kv.cached_prefix(seq, 4 * len(seq) + 1, memos[i])
        assert memo_hit == kv.cached_prefix(seq, 4 * len(seq) + 1)
        # The memo keeps the blocks' index array across walks that grow or cut them.
        assert kv.evictable_among(memo_hit, memos[i]) == sum(1 for b in memo_hit if kv.ref[b] == 0)
        action = rng.random()
        if action < 0.4:
            hit = kv.cached_prefix(seq, 4 * len(seq) + 1)
            free_hit = kv.evictable_among(hit)
            assert free_hit == sum(1 for b in hit if kv.ref[b] == 0)
            need = len(seq) - len(hit)
            if kv.num_free - free_hit >= need:
                kv.touch(hit)
                got = kv.allocate(need)
                assert got is not None
                kv.register_many(got, seq[len(hit) :])
                held.append(hit + got)
        elif held:
            kv.release(held.pop(rng.randrange(len(held))))
        kv.check()
    for blocks in held:
        kv.release(blocks)
    assert kv.num_used == 0
    kv.check()


class _ReferenceBlocks:
    """The block manager's allocation and eviction rules, one block at a time in plain Python."""

    def __init__(self, num_blocks: int) -> None:
        self.ref = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}
        self.fresh = list(range(num_blocks - 1, -1, -1))
        self.lru: OrderedDict[int, None] = OrderedDict()

    def allocate(self, count: int) -> list[int] | None:
        if count > len(self.fresh) + len(self.lru):
            return None
        out = [self.fresh.pop() for _ in range(min(count, len(self.fresh)))]
        while len(out) < count:
            block, _ = self.lru.popitem(last=False)
            old = self.block_hash[block]
            assert old is not None
            del self.cached[old]
            self.block_hash[block] = None
            out.append(block)
        for block in out:
            self.ref[block] = 1
        return out

    def register_many(self, blocks: list[int], hashes: list[int]) -> None:
        for block, h in zip(blocks, hashes, strict=True):
            if h not in self.cached:
                self.cached[h] = block
                self.block_hash[block] = h

    def touch(self, blocks: list[int]) -> None:
        for block in blocks:
            if self.ref[block] == 0:
                del self.lru[block]
            self.ref[block] += 1

    def release(self, blocks: list[int]) -> None:
        for block in reversed(blocks):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                if self.block_hash[block] is None:
                    self.fresh.append(block)
                else:
                    self.lru[block] = None


@pytest.mark.parametrize("seed", range(4))
def test_block_manager_allocates_and_evicts_as_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    kv, reference = BlockManager(48, 4), _ReferenceBlocks(48)
    seqs = [chain_hashes([rng.randrange(3) for _ in range(rng.randrange(2, 30))], 1) for _ in range(16)]
    held: list[list[int]] = []
    for _ in range(600):
        if held and (rng.random() < 0.45 or kv.num_free < 20):
            blocks = held.pop(rng.randrange(len(held)))
            kv.release(blocks)
            reference.release(blocks)
        else:
            seq = seqs[rng.randrange(len(seqs))]
            hit = kv.cached_prefix(seq, 4 * len(seq) + 1)
            need = len(seq) - len(hit)
            if kv.num_free - kv.evictable_among(hit) < need:
                continue
            kv.touch(hit)
            reference.touch(hit)
            got = kv.allocate(need)
            assert got == reference.allocate(need)
            assert got is not None
            # Register only part of them sometimes: the rest are freed unhashed, as a cut-short prefill's are.
            upto = len(got) if rng.random() < 0.8 else rng.randrange(len(got) + 1)
            kv.register_many(got[:upto], seq[len(hit) : len(hit) + upto])
            reference.register_many(got[:upto], seq[len(hit) : len(hit) + upto])
            held.append(hit + got)
        assert kv.cached == reference.cached
        assert kv.num_free == len(reference.fresh) + len(reference.lru)
        kv.check()
