"""Policies by name: ``Runtime(policy="vllm")`` and ``agentrt replay --policy``."""

from __future__ import annotations

from ._agentrt import AgentrtPolicy
from ._autellix import AutellixPolicy
from ._base import Policy
from ._continuum import ContinuumPolicy
from ._dynamo import DynamoPolicy
from ._hexgen import HexgenPolicy
from ._llmd import LlmdPolicy
from ._vllm import VLLMPolicy

__all__ = ["get_policy", "policy_names", "register_policy"]

_POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Make a policy class selectable by its ``name``; usable as a decorator."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"policy class {cls.__qualname__} needs a non-empty string `name`")
    _POLICIES[name] = cls
    return cls


def get_policy(policy: str | Policy) -> Policy:
    """A policy instance from a name (a fresh one) or an instance (itself)."""
    if isinstance(policy, Policy):
        return policy
    try:
        return _POLICIES[policy]()
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(policy_names())}") from None


def policy_names() -> list[str]:
    """The registered policy names, sorted."""
    return sorted(_POLICIES)


register_policy(VLLMPolicy)
register_policy(ContinuumPolicy)
register_policy(HexgenPolicy)
register_policy(AutellixPolicy)
register_policy(AgentrtPolicy)
register_policy(LlmdPolicy)
register_policy(DynamoPolicy)
