"""The one clock: the running event loop's time, in seconds.

The runtime (program submission and finish, node times, time held for
admission), every engine backend (request timings: queued, TTFT, end to end)
and toolbridge (tool wall times, inline and isolated alike, through
``anyio.current_time()``, which on asyncio is the same ``loop.time()``) read
this clock and no other.  Under the replay lab's virtual-time loop
(:func:`runtime.replay.run_virtual`) everything therefore runs in one set of
virtual seconds; on a normal asyncio loop ``loop.time()`` is
``time.monotonic()``.
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
