"""Continuum's public scheduler, as the simulator reproduces it for the ``continuum`` policy.

Read from Whrlicht/vllm-continuum (commit ``cbd3702``, "lichtV1"), with its
scheduling policy ``CONTINUUM``; a *job* is a program (the request's
``job_id``), a job's *entry time* is the arrival of its first request at the
scheduler (``running_job_id_first_entry_time`` in ``Scheduler.add_request``;
here :attr:`SimRequest.job_rank`, the order in which programs first reached
this scheduler).

1. **Pins.** A finished request that is not its job's last step is pinned
   (its blocks stay referenced) for ``set_up_pin``'s length
   (``vllm/v1/core/estimate_with_func.py``: 2 s when its tool's mean
   duration is at most 2 s, else none), ``Scheduler._free_blocks``.  The
   finish of a job's next request releases the job's previous pin.  Here the
   ``continuum`` policy sets the length (``runtime/_policies/_continuum.py``)
   and the pin is handed off when the job's next request is admitted: the
   same blocks, since that request references them.
2. **Expiry** (``Scheduler.unpin_requests_regular``, at the start of every
   ``schedule()``): a pin past its end time is released unless a request of
   its job is waiting.
3. **Running requests short of blocks** (``schedule()``'s running loop and
   ``Scheduler.pop_running_request_based_on_last_step``): with two or more
   requests running, the running request of the latest job (latest entry
   time) that is not on its last step is preempted (recompute; back to the
   waiting queue's head), else the latest job's; pins are kept.  With at most
   one running, the pin with the latest end time is released and the
   allocation tried again.  A request that preempted itself ends the running
   phase of the step.
4. **Waiting requests** (``ContinuumRequestQueue.peek_request(pinned_requests,
   ...)`` in ``vllm/v1/core/sched/request_queue.py``): the waiting request
   whose job holds a pin and entered first, else the one whose job entered
   first (job-level FCFS; a job's earlier-queued request first).  Request
   priorities are not used.  No waiting request is admitted in a step that
   preempted (vLLM's rule).
5. **Waiting requests short of blocks**: the request stays waiting and
   admission stops for the step; no pin is given up for it, unless nothing
   is running, when the pin with the latest end time is released.  So pins
   are hard against newcomers: program-level admission control.

Differences, each from what the simulator or the runtime knows:

- *Last step*: Continuum's client marks a job's last request
  (``is_last_step``); the runtime cannot know a call is its program's last
  before its reply, so every request counts as not last, and rule 3
  preempts the latest job's request.  (The runtime's policy releases a
  program's pin when the program finishes, which is what a last step's
  missing pin amounts to.)
- *One running request, no pin left*: Continuum's code raises
  ``IndexError``; here the request preempts itself, as vLLM does.
- ``unpin_requests_regular`` removes pins from the list it iterates (a
  Python list), so it may skip one per removal until the next step; here
  every expired pin is checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

__all__ = ["continuum_pick", "continuum_victim"]


class _Request(Protocol):
    """What the rules read of a request (:class:`~._scheduler.SimRequest` has it)."""

    @property
    def program_id(self) -> str | None: ...

    @property
    def job_rank(self) -> int: ...


_R = TypeVar("_R", bound=_Request)


def continuum_pick(waiting: Sequence[_Request], has_pin: Callable[[str], bool]) -> int:
    """The index in ``waiting`` (queue order) of the request Continuum admits next (rule 4).

    Requests of a job holding a pin (``has_pin(program_id)``) come first,
    then jobs by entry; within a job, the first in the queue.
    """
    best = 0
    best_key: tuple[bool, int] | None = None
    for k, req in enumerate(waiting):
        program = req.program_id
        key = (not (program is not None and has_pin(program)), req.job_rank)
        if best_key is None or key < best_key:
            best, best_key = k, key
    return best


def continuum_victim(running: Sequence[_R]) -> _R:
    """The running request Continuum preempts (rule 3): the first of the latest job's.

    Every request counts as not on its last step (see the module docstring).
    """
    victim = running[0]
    for req in running:
        if req.job_rank > victim.job_rank:
            victim = req
    return victim
