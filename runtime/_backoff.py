"""The one exponential backoff: how long to wait before each new try of something that failed.

Used for a call's rounds over the engines (:mod:`._dispatch`), a step's
retries (:mod:`._context`) and an engine's restarts (:mod:`._engines._supervisor`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff"]

#: Doublings past this many add nothing (the cap is reached long before) and would overflow a float.
_MAX_DOUBLINGS = 1000


@dataclass(frozen=True, slots=True)
class Backoff:
    """``first_s`` seconds before the first retry, doubling for each one after, at most ``max_s`` seconds.

    No jitter: jitter spreads many independent clients that would otherwise
    hit one server in step, and none of our waits is such a crowd.  Calls
    waiting for one restarting engine queue in its scheduler when it is back,
    which orders them; a step's retries and an engine's restarts are one
    caller each.  And without it replays stay deterministic under virtual
    time.
    """

    first_s: float
    max_s: float

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"Backoff needs 0 < first_s <= max_s, got {self.first_s} and {self.max_s}")

    def delay_s(self, n: int) -> float:
        """Seconds to wait before retry ``n`` (1, 2, ...): ``first_s * 2 ** (n - 1)``, at most ``max_s``."""
        if n < 1:
            raise ValueError(f"retries are counted from 1, got {n}")
        return min(self.first_s * 2.0 ** min(n - 1, _MAX_DOUBLINGS), self.max_s)
