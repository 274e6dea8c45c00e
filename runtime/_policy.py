"""Scheduling policies: the priority of each LLM call and the engine it goes to.

A policy is a strategy object chosen by name (``Runtime(policy="vllm")``).
Adding one is a local change: subclass :class:`Policy`, give it a ``name``,
and register it with :func:`register_policy`.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from ._engines._base import Engine
from ._errors import NoEngineError
from ._program import Program

__all__ = ["Policy", "VLLMPolicy", "get_policy", "policy_names", "register_policy"]


class Policy(ABC):
    """Decides, for each LLM call of a program, its engine priority and its engine."""

    name: ClassVar[str]

    @abstractmethod
    def priority(self, program: Program, requested: int | None) -> int:
        """The vLLM priority of the call (lower runs first); ``requested`` is the caller's, if any."""

    @abstractmethod
    def choose_engine(self, engines: Sequence[Engine], program: Program) -> Engine:
        """One of ``engines`` (all available); raise :class:`NoEngineError` if none fits."""


class VLLMPolicy(Policy):
    """What plain vLLM behind a load balancer gives: first come first served, least-loaded dispatch.

    The call's priority is the caller's or the program's user priority, so
    equal priorities are served in arrival order by vLLM's scheduler.
    Engines are picked by fewest requests in flight, ties broken round-robin.
    """

    name = "vllm"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def priority(self, program: Program, requested: int | None) -> int:
        return program.priority if requested is None else requested

    def choose_engine(self, engines: Sequence[Engine], program: Program) -> Engine:
        if not engines:
            raise NoEngineError("no engine is available")
        least = min(e.in_flight for e in engines)
        candidates = [e for e in engines if e.in_flight == least]
        return candidates[next(self._turn) % len(candidates)]


_POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Make a policy class selectable by its ``name``; usable as a decorator."""
    _POLICIES[cls.name] = cls
    return cls


def get_policy(policy: str | Policy) -> Policy:
    """A policy instance from a name or an instance."""
    if isinstance(policy, Policy):
        return policy
    try:
        return _POLICIES[policy]()
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(policy_names())}") from None


def policy_names() -> list[str]:
    return sorted(_POLICIES)


register_policy(VLLMPolicy)
