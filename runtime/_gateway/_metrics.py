"""The gateway's Prometheus metrics (``GET /metrics``): requests, tokens, queues, programs, and the engines'.

Gateway series are counted as requests go (``agentrt_gateway_*``, by
endpoint, tenant and status).  Engine series (``agentrt_engine_*``: tokens,
prefix-cache hits, pins, the scheduler's queue) are read from every
engine's statistics at scrape time; every series carries the scheduling
``policy``, so two gateways compared side by side scrape apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._engines import EngineStats

__all__ = ["GatewayMetrics"]

#: Request durations buckets (seconds): a cached one-token reply to a long generation.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


_Read = Callable[[EngineStats], float | None]


class _EngineCollector(Collector):
    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.stats: Sequence[EngineStats] = ()

    def collect(self) -> Iterator[Metric]:
        labels = ["engine", "policy"]
        counters: dict[str, tuple[str, _Read]] = {
            "prompt_tokens": ("Prompt tokens the engine processed", lambda s: s.prompt_tokens),
            "cached_tokens": ("Prompt tokens served from the prefix cache", lambda s: s.cached_tokens),
            "completion_tokens": ("Tokens the engine generated", lambda s: s.completion_tokens),
            "requests": ("Requests sent to the engine", lambda s: s.requests_total),
            "preemptions": ("Requests the engine preempted", lambda s: s.preemptions),
            "pins": ("KV pins created", lambda s: s.pins),
            "pin_hits": ("Requests admitted while their program's pin was live", lambda s: s.pin_hits),
            "pins_expired": ("Pins whose time-to-live ran out", lambda s: s.pins_expired),
            "pins_released_pressure": ("Pins released for memory pressure", lambda s: s.pins_released_pressure),
        }
        yield from self._families(CounterMetricFamily, counters, labels)
        gauges: dict[str, tuple[str, _Read]] = {
            "in_flight": ("Requests in flight on the engine", lambda s: s.in_flight),
            "waiting": ("Requests waiting in the engine's scheduler", lambda s: s.waiting),
            "running": ("Requests running in the engine's scheduler", lambda s: s.running),
            "kv_usage": ("Fraction of KV blocks in use", lambda s: s.kv_usage),
            "pinned_blocks": ("KV blocks held by pins", lambda s: s.pinned_blocks),
            "healthy": ("1 when the engine passes its health check", lambda s: 1 if s.healthy else 0),
        }
        yield from self._families(GaugeMetricFamily, gauges, labels)

    def _families(
        self,
        family_type: type[CounterMetricFamily] | type[GaugeMetricFamily],
        figures: dict[str, tuple[str, _Read]],
        labels: list[str],
    ) -> Iterator[Metric]:
        """One family per figure, one sample per engine that reports it."""
        for name, (doc, read) in figures.items():
            family = family_type(f"agentrt_engine_{name}", doc, labels=labels)
            for s in self.stats:
                value = read(s)
                if value is not None:
                    family.add_metric([s.name, self.policy], value)
            yield family


class GatewayMetrics:
    """The gateway's own registry (not the process-global one: two gateways in one process keep apart)."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "agentrt_gateway_requests",
            "Requests answered, by endpoint, tenant and HTTP status",
            ["endpoint", "tenant", "status", "policy"],
            registry=r,
        )
        self.duration = Histogram(
            "agentrt_gateway_request_duration_seconds",
            "Seconds from a request's arrival to its last byte",
            ["endpoint", "policy"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "agentrt_gateway_tokens",
            "Tokens of answered requests, by tenant and kind (prompt, cached, completion)",
            ["tenant", "kind", "policy"],
            registry=r,
        )
        self.in_flight = Gauge(
            "agentrt_gateway_in_flight", "Requests admitted and not yet answered", ["tenant", "policy"], registry=r
        )
        self.queued = Gauge(
            "agentrt_gateway_queued", "Requests waiting for admission (fair queuing)", ["tenant", "policy"], registry=r
        )
        self.programs = Gauge("agentrt_gateway_programs", "Live gateway programs (sessions)", ["policy"], registry=r)
        self.programs_started = Counter(
            "agentrt_gateway_programs_started", "Gateway programs started, by tenant", ["tenant", "policy"], registry=r
        )
        self.programs_ended = Counter(
            "agentrt_gateway_programs_ended",
            "Gateway programs ended, by tenant and why (last turn, idle, client disconnected)",
            ["tenant", "reason", "policy"],
            registry=r,
        )
        self.disconnects = Counter(
            "agentrt_gateway_client_disconnects", "Requests whose client left before the answer", ["policy"], registry=r
        )
        self._engines = _EngineCollector(policy)
        r.register(self._engines)

    def render(self, engine_stats: Sequence[EngineStats]) -> bytes:
        self._engines.stats = engine_stats
        return generate_latest(self.registry)
