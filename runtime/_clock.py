"""The runtime's clock: the running event loop's time.

Everything the runtime times (program submission and finish, node spans,
engine request timings) reads this clock, so that under the simulator's
virtual-time loop (:mod:`runtime._vclock`) the whole runtime runs in virtual
seconds.  On a normal asyncio loop ``loop.time()`` is ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["now"]


def now() -> float:
    """Seconds on the running loop's clock; ``time.monotonic()`` outside a loop."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()
