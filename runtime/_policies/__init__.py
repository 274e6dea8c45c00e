"""Scheduling policies: the interface (:mod:`._base`), the registry, and one module per policy.

Adding a policy is a local change: a module here with a :class:`Policy`
subclass, registered in :mod:`._registry`.  ``vllm`` (:mod:`._vllm`) is the
baseline every other policy is measured against; ``continuum``
(:mod:`._continuum`) and ``agentrt`` (:mod:`._agentrt`) pin KV blocks
through the machinery of :mod:`._pinning`, the latter by the TTL rule of
:mod:`._ttl`.
"""

from ._agentrt import AgentrtPolicy
from ._base import PREFIX_KEY_TOKENS, CallFinished, CallInfo, Policy, PolicyHost, Route, ToolFinished, ToolStarted
from ._continuum import ContinuumPolicy
from ._pinning import PinningPolicy
from ._registry import get_policy, policy_names, register_policy
from ._vllm import VLLMPolicy

__all__ = [
    "PREFIX_KEY_TOKENS",
    "AgentrtPolicy",
    "CallFinished",
    "CallInfo",
    "ContinuumPolicy",
    "PinningPolicy",
    "Policy",
    "PolicyHost",
    "Route",
    "ToolFinished",
    "ToolStarted",
    "VLLMPolicy",
    "get_policy",
    "policy_names",
    "register_policy",
]
