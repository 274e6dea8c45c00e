"""agentrt's vLLM scheduler plug-in, by the dotted path vLLM loads it from.

Start a vLLM server of your own with it, and the runtime can pin its
programs' KV blocks there (:class:`~runtime.RemoteEngine` with
``pin_control=``)::

    AGENTRT_PIN_LISTEN=0.0.0.0:8101 AGENTRT_PIN_TOKEN=$SECRET \\
        vllm serve MODEL --scheduling-policy priority --enable-prefix-caching \\
        --scheduler-cls runtime.vllm_scheduler.PinningScheduler

Use :class:`PinningScheduler` on the CPU build (and wherever vLLM's async
scheduling is off) and :class:`AsyncPinningScheduler` on GPUs with async
scheduling.  Without ``AGENTRT_PIN_LISTEN`` the plug-in still keeps the pins
that requests ask for (``vllm_xargs`` ``{"program_id": ..., "pin_ttl_s": ...}``)
but has no control path.  Importing this module imports vLLM.
"""

from ._engines import AsyncPinningScheduler, PinningScheduler

__all__ = ["AsyncPinningScheduler", "PinningScheduler"]
