"""How long to pin a program's KV blocks while its tool runs: Continuum's utility rule, as pure functions.

A pin held for ``tau`` seconds saves the program's next turn, if the tool
returns within ``tau``, what an evicted context costs it: the prefill of its
context again (``reload_s``) and the queueing an evicted request suffers
(``queue_s``, weighted by ``eta``).  Holding the blocks costs ``cost_per_s``
per second.  The time-to-live is the best candidate::

    tau* = argmax  P(tool returns within tau) * gain_s - cost_per_s * tau
           tau in {0} and the tool's observed durations
    gain_s = weight * (eta * queue_s + reload_s)

with ``P`` the empirical CDF of the tool's recent durations (Continuum,
arXiv 2511.02230, per tool; ``weight`` is the program's urgency, 1 for
all programs today).  ``tau = 0`` (no pin) has utility 0, so a pin is only
held when it is expected to save more than it costs.  The holding cost
grows with the engine's memory pressure (:func:`hold_cost`), and a pin's
worth per unit of memory (:func:`pin_value`) orders the pins an engine gives
up under pressure.

Nothing here keeps state or does I/O: the ``agentrt`` policy
(:mod:`._agentrt`) feeds it its measurements.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from .._engines import EngineLoad

__all__ = [
    "NO_PIN",
    "HoldCost",
    "TTLChoice",
    "best_ttl",
    "cdf_points",
    "hold_cost",
    "pin_value",
]


@dataclass(frozen=True, slots=True)
class TTLChoice:
    """The rule's answer: ``ttl_s`` (0: do not pin), the chance ``p_return`` that the tool
    returns within it, and its ``utility`` (seconds saved, expected, less the holding cost)."""

    ttl_s: float
    p_return: float
    utility: float


#: The answer when no candidate pays: no pin.
NO_PIN = TTLChoice(0.0, 0.0, 0.0)


def cdf_points(durations: Sequence[float]) -> list[tuple[float, float]]:
    """``(d, P(duration <= d))`` for each distinct value ``d`` of ``durations`` (seconds), ascending."""
    data = sorted(durations)
    n = len(data)
    points: list[tuple[float, float]] = []
    i = 0
    while i < n:
        d = data[i]
        i = bisect.bisect_right(data, d, i)
        points.append((d, i / n))
    return points


def best_ttl(candidates: Sequence[tuple[float, float]], gain_s: float, cost_per_s: float) -> TTLChoice:
    """The candidate ``(tau, P(return within tau))`` of highest utility ``P * gain_s - cost_per_s * tau``.

    ``tau = 0`` (utility 0) is always a candidate, and wins ties, as does the
    shorter of two taus of equal utility: a pin is held only when it pays.
    ``gain_s`` is in seconds, ``cost_per_s`` in seconds per second held.
    """
    best = NO_PIN
    for tau, p in candidates:
        if tau <= 0:
            continue
        utility = p * gain_s - cost_per_s * tau
        if utility > best.utility or (utility == best.utility and best.ttl_s > 0 and tau < best.ttl_s):
            best = TTLChoice(tau, p, utility)
    return best


@dataclass(frozen=True, slots=True)
class HoldCost:
    """How the cost of holding pinned memory grows with an engine's pressure (see :func:`hold_cost`)."""

    #: The cost with headroom: seconds of program time one second of pinned memory is worth.
    idle: float = 0.1
    #: KV usage (0..1) up to which the engine has headroom.
    headroom: float = 0.8
    #: Added at full KV usage, linearly from ``headroom``.
    kv_weight: float = 1.0
    #: Added when as many requests wait as run (capped there), linearly.
    wait_weight: float = 1.0


def hold_cost(load: EngineLoad, weights: HoldCost = HoldCost()) -> float:
    """Seconds of program time that holding a pin one second is worth, on an engine loaded as ``load``::

        c = idle
            + kv_weight * min(1, (kv_usage - headroom) / (1 - headroom))   once kv_usage > headroom
            + wait_weight * min(1, waiting / max(1, running))               while requests wait

    ``idle`` is the cost with headroom.  The paper's ``- tau`` is ``idle =
    1``; the default is 0.1 because engines release pins under memory
    pressure themselves (least valuable first), so a pin held while memory
    is free costs little, and on the tuning traces a cost of 1 cut pins
    short of most tool calls.  Blocks pinned while KV usage nears 1 or
    requests wait are what those requests lack, hence the pressure terms.
    Figures the engine does not report count as no pressure.
    """
    cost = weights.idle
    usage = load.kv_usage
    if usage is not None and usage > weights.headroom:
        cost += weights.kv_weight * min(1.0, (usage - weights.headroom) / (1.0 - weights.headroom))
    waiting = load.waiting or 0
    if waiting > 0:
        cost += weights.wait_weight * min(1.0, waiting / max(1, load.running or 0))
    return cost


def pin_value(p_return: float, reload_s: float, units: int) -> float:
    """What a pin is worth per unit of memory it holds: the expected prefill seconds it saves, per block (or token).

    ``units`` is the blocks (or tokens: any unit consistent among one
    engine's pins) the pin holds; 0 is taken as 1.
    """
    return p_return * reload_s / max(1, units)
