"""Random draws shared by the generators: one seeded generator, token scaling, tool shapes."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Z90", "Z99", "Draw", "ToolShape"]

#: z-scores of the standard normal at the 90th and 99th percentiles (lognormal fits).
Z90 = 1.2815515655446004
Z99 = 2.3263478740408408


@dataclass(frozen=True)
class ToolShape:
    """A tool of an agent's mix: probability, lognormal duration (s) and output (tokens)."""

    name: str
    weight: float
    median_s: float
    sigma_s: float
    max_s: float
    output_median: float
    output_sigma: float
    output_max: int


class Draw:
    """Random draws and token scaling for one workload."""

    def __init__(self, rng: random.Random, scale: float, tool_scale: float) -> None:
        self.rng, self.scale, self.tool_scale = rng, scale, tool_scale

    def tokens(self, n: float, *, at_least: int = 1) -> int:
        """``n`` tokens scaled (rounded, at least ``at_least``)."""
        return max(at_least, round(n * self.scale))

    def seconds(self, s: float) -> float:
        return round(s * self.tool_scale, 3)

    def uniform_int(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(*bounds)

    def uniform(self, bounds: tuple[float, float]) -> float:
        return self.rng.uniform(*bounds)

    def lognormal(self, median: float, sigma: float) -> float:
        return self.rng.lognormvariate(math.log(median), sigma)

    def around(self, mean: float, sigma: float) -> float:
        """A lognormal draw whose *mean* is ``mean`` (spread ``sigma``)."""
        return self.rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)

    def choice(self, weighted: Sequence[tuple[int, float]]) -> int:
        values = [v for v, _ in weighted]
        weights = [w for _, w in weighted]
        value: int = self.rng.choices(values, weights)[0]
        return value
