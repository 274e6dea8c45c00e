"""Scheduling policies: the interface (:mod:`._base`), the registry, and one module per policy.

Adding a policy is a local change: a module here with a :class:`Policy`
subclass, registered in :mod:`._registry`.  ``vllm`` (:mod:`._vllm`) is the
baseline every other policy is measured against; ``continuum``
(:mod:`._continuum`) and ``agentrt`` (:mod:`._agentrt`) pin KV blocks
through the machinery of :mod:`._pinning`, the latter by the TTL rule of
:mod:`._ttl`; ``hexgen`` (:mod:`._hexgen`), ``autellix`` (:mod:`._autellix`)
and ``agentrt`` order calls by program urgency, from what
:class:`._progress.ProgramBook` keeps of live programs and learns of
workflows (:mod:`._profiles`), with the arithmetic of :mod:`._urgency` and
the engine choices of :mod:`._placement`.  ``llm-d`` (:mod:`._llmd`)
reproduces llm-d's precise prefix-cache-aware routing (scorers over the
engines' cache contents, queues and KV usage), the baseline a vLLM user
would deploy instead; ``dynamo`` (:mod:`._dynamo`) NVIDIA Dynamo's KV router
(the lowest cost of prefill blocks plus the blocks of calls routed and not
finished).
"""

from ._agentrt import AgentrtPolicy
from ._autellix import AutellixPolicy
from ._base import PREFIX_KEY_TOKENS, CallFinished, CallInfo, Policy, PolicyHost, Route, ToolFinished, ToolStarted
from ._continuum import ContinuumPolicy
from ._dynamo import DynamoPolicy
from ._hexgen import HexgenPolicy
from ._llmd import LlmdPolicy
from ._pinning import PinningPolicy
from ._registry import get_policy, policy_names, register_policy
from ._vllm import VLLMPolicy

__all__ = [
    "PREFIX_KEY_TOKENS",
    "AgentrtPolicy",
    "AutellixPolicy",
    "CallFinished",
    "CallInfo",
    "ContinuumPolicy",
    "DynamoPolicy",
    "HexgenPolicy",
    "LlmdPolicy",
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
