"""Choosing engines: two hash candidates per prefix, load, and the headroom an engine has for one more call.

- :class:`PrefixHomes` gives each prefix key its two candidate engines by
  rendezvous hashing (highest ``hash(key, engine)`` first): every runtime
  agrees on them without sharing state, a key keeps its candidates when
  other engines come and go, and programs of one app (one system prompt)
  meet on the same two engines, where their shared prefix blocks are
  cached.  The better of the two by load takes the call (DualMap's two
  choices).  Rankings are cached per key, for the engine set they were
  computed on.
- :func:`waiting_estimate`: the calls queued on an engine, counting the
  ones sent since its scheduler last reported (``in_flight - running``,
  or the policy's own count of calls it routed there if that is ahead),
  so that calls routed in one burst see each other.
- :func:`has_headroom`: an engine can start one more call soon when fewer
  than ``max_waiting`` wait there; engines that report no queue figures
  always have headroom (the admission gate then does nothing).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence

from .._engines import Engine, EngineLoad
from .._errors import EngineCapabilityError

__all__ = [
    "PrefixHomes",
    "has_batch_room",
    "has_headroom",
    "hash_home",
    "least_loaded",
    "load_key",
    "require_cache_reports",
    "waiting_estimate",
]

# Prefix keys whose rankings are kept (LRU): apps and agents, not programs.
_RANKINGS = 4096


def waiting_estimate(load: EngineLoad, routed: int = 0) -> int | None:
    """Calls waiting on the engine of ``load``: its figure, or more if calls were sent since; ``None`` if unknown.

    ``routed`` is the caller's own count of calls it routed to the engine
    and has not seen finish, which may be ahead of :attr:`Engine.in_flight`
    (a call released from the admission queue reaches the engine when its
    task next runs).
    """
    if load.waiting is None:
        return None
    if load.running is None:
        return load.waiting
    return max(load.waiting, max(load.in_flight, routed) - load.running)


def has_headroom(load: EngineLoad, max_waiting: int, routed: int = 0, max_kv_usage: float | None = None) -> bool:
    """Whether the engine of ``load`` has fewer than ``max_waiting`` calls waiting (always, when it reports no queue).

    With ``max_kv_usage``, also whether its KV cache is used below that
    fraction, pinned blocks not counted (pins give way to new requests),
    or it runs nothing.
    """
    waiting = waiting_estimate(load, routed)
    if waiting is not None and waiting >= max_waiting:
        return False
    if max_kv_usage is None:
        return True
    if load.kv_usage is None or not load.running:
        return True
    pinned = (load.pinned_blocks or 0) / load.kv_blocks if load.kv_blocks else 0.0
    return load.kv_usage - pinned < max_kv_usage


def has_batch_room(load: EngineLoad, routed: int = 0, max_kv_usage: float = 0.9) -> bool:
    """Whether the engine of ``load`` admits every call waiting there as soon as its token budget allows: a free
    sequence slot for each, and KV cache used below ``max_kv_usage`` (pinned blocks not counted); False where
    it does not say.

    Holding a call in the runtime then buys nothing: no engine queue forms for
    a priority to order, and the call only waits for the next release.
    """
    waiting = waiting_estimate(load, routed)
    if waiting is None or load.running is None or load.max_num_seqs is None or load.kv_usage is None:
        return False
    pinned = (load.pinned_blocks or 0) / load.kv_blocks if load.kv_blocks else 0.0
    return load.running + waiting < load.max_num_seqs and load.kv_usage - pinned < max_kv_usage


def least_loaded(engines: Sequence[Engine], turn: Iterator[int]) -> Engine:
    """The engine with the fewest requests in flight, ties broken round-robin by ``turn`` (a counter)."""
    least = min(e.in_flight for e in engines)
    candidates = [e for e in engines if e.in_flight == least]
    return candidates[next(turn) % len(candidates)]


def load_key(engine: Engine) -> tuple[int, float]:
    """Engines ordered by load: requests in flight, then KV cache usage."""
    load = engine.load()
    return (load.in_flight, load.kv_usage or 0.0)


class PrefixHomes:
    """The two candidate engines of each prefix key, by rendezvous hashing over engine names."""

    def __init__(self) -> None:
        self._rankings: OrderedDict[tuple[str, tuple[str, ...]], tuple[str, ...]] = OrderedDict()

    def candidates(self, key: str, engines: Sequence[Engine]) -> list[Engine]:
        """The (up to) two engines among ``engines`` that ``key`` hashes highest to, best first."""
        if len(engines) <= 2:
            return list(engines)
        names = tuple(e.name for e in engines)
        cache_key = (key, names)
        ranking = self._rankings.get(cache_key)
        if ranking is None:
            scored = sorted(names, key=lambda name: _score(key, name), reverse=True)
            ranking = self._rankings[cache_key] = tuple(scored[:2])
            if len(self._rankings) > _RANKINGS:
                self._rankings.popitem(last=False)
        else:
            self._rankings.move_to_end(cache_key)
        by_name = {e.name: e for e in engines}
        return [by_name[name] for name in ranking]


def hash_home(key: str, engines: Sequence[Engine]) -> Engine:
    """The engine among ``engines`` that ``key`` hashes highest to: the first of :meth:`PrefixHomes.candidates`."""
    return max(engines, key=lambda e: _score(key, e.name))


def require_cache_reports(policy: str, engines: Sequence[Engine]) -> None:
    """Refuse, at bind, engines that cannot report their cached prefixes to a policy that routes by them.

    Raises :class:`~runtime.EngineCapabilityError` naming them: scoring such
    an engine's cache as empty would route by a guess.
    """
    blind = [e for e in engines if not e.reports_cached_prefix]
    if blind:
        names = ", ".join(f"{e.name} ({type(e).__name__})" for e in blind)
        raise EngineCapabilityError(
            f"policy {policy!r} routes by the engines' prefix-cache contents, which these engines "
            f"cannot report: {names}; use engines with reports_cached_prefix (the simulator)"
        )


def _score(key: str, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\0{name}".encode(), digest_size=8).digest(), "big")
