"""A policy mixin for the simulator tests: it records each routed call's program, engine priority and engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime import CallInfo, Engine, Route


class RecordingRoutes:
    """Mixed in before a policy class: ``routes`` gets ``(program id, priority, engine name)`` per routed call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routes: list[tuple[str, int, str]] = []

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route | None:
        route: Route | None = super().route(call, engines)  # type: ignore[misc]
        if route is not None:
            self.routes.append((call.program.id, route.priority, route.engine.name))
        return route
