"""Span and attribute names: OpenTelemetry GenAI semantic conventions, plus ours.

The GenAI conventions are still in development status, so the names are
spelled out here rather than imported from the incubating
``opentelemetry.semconv`` modules (which move between releases); a test checks
them against the installed semconv package.  Names the conventions lack live
under ``agentrt.*``.  Every duration is in seconds, every size in bytes.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AGENTRT_DISPATCH_CANDIDATES",
    "AGENTRT_ENGINE_NAME",
    "AGENTRT_SESSION_SOURCE",
    "AGENTRT_TENANT",
    "HTTP_REQUEST_METHOD",
    "HTTP_RESPONSE_STATUS_CODE",
    "HTTP_ROUTE",
    "EVENT_DISPATCH",
    "EVENT_ENGINE_UNAVAILABLE",
    "AGENTRT_LLM_ATTEMPTS",
    "AGENTRT_PROGRAM_DEADLINE_S",
    "AGENTRT_PROGRAM_LLM_CALLS",
    "AGENTRT_PROGRAM_PRIORITY",
    "AGENTRT_PROGRAM_STATE",
    "AGENTRT_PROGRAM_TOOL_CALLS",
    "AGENTRT_REQUEST_HELD_S",
    "AGENTRT_REQUEST_PRIORITY",
    "AGENTRT_REQUEST_QUEUED_S",
    "AGENTRT_RESPONSE_E2E_S",
    "AGENTRT_AGENT_REPAIRS",
    "AGENTRT_AGENT_STOPPED",
    "AGENTRT_AGENT_TURNS",
    "AGENTRT_REPLAYED",
    "AGENTRT_STEP_ATTEMPTS",
    "AGENTRT_STEP_NAME",
    "AGENTRT_STEP_RETRIES",
    "AGENTRT_STEP_TIMEOUT_S",
    "AGENTRT_TOOL_CPU_S",
    "AGENTRT_TOOL_ERROR_KIND",
    "AGENTRT_TOOL_OOM_KILLED",
    "AGENTRT_TOOL_PEAK_MEMORY_BYTES",
    "AGENTRT_TOOL_WALL_S",
    "ERROR_TYPE",
    "GEN_AI_AGENT_NAME",
    "GEN_AI_CONVERSATION_ID",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_PROVIDER_NAME",
    "GEN_AI_REQUEST_MAX_TOKENS",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_REQUEST_SEED",
    "GEN_AI_REQUEST_TEMPERATURE",
    "GEN_AI_REQUEST_TOP_P",
    "GEN_AI_RESPONSE_FINISH_REASONS",
    "GEN_AI_RESPONSE_ID",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK",
    "GEN_AI_TOOL_CALL_ARGUMENTS",
    "GEN_AI_TOOL_CALL_ID",
    "GEN_AI_TOOL_CALL_RESULT",
    "GEN_AI_TOOL_NAME",
    "GEN_AI_TOOL_TYPE",
    "GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "GEN_AI_WORKFLOW_NAME",
    "OP_CHAT",
    "OP_EXECUTE_TOOL",
    "OP_INVOKE_AGENT",
    "OP_INVOKE_WORKFLOW",
    "PROVIDER_VLLM",
]

# -- GenAI semantic conventions ----------------------------------------------

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_WORKFLOW_NAME: Final = "gen_ai.workflow.name"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
#: Seconds from sending the request to the first generated token.
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
#: Opt-in (content capture): the JSON arguments of a tool call.
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
#: Opt-in (content capture): the result text of a tool call.
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
ERROR_TYPE: Final = "error.type"

# Values of gen_ai.operation.name / gen_ai.provider.name.
OP_INVOKE_WORKFLOW: Final = "invoke_workflow"
OP_INVOKE_AGENT: Final = "invoke_agent"
OP_CHAT: Final = "chat"
OP_EXECUTE_TOOL: Final = "execute_tool"
PROVIDER_VLLM: Final = "vllm"

# -- agentrt's own -------------------------------------------------------------

AGENTRT_PROGRAM_STATE: Final = "agentrt.program.state"
#: The program's end-to-end target, seconds after submission.
AGENTRT_PROGRAM_DEADLINE_S: Final = "agentrt.program.deadline_s"
AGENTRT_PROGRAM_PRIORITY: Final = "agentrt.program.priority"
AGENTRT_PROGRAM_LLM_CALLS: Final = "agentrt.program.llm_calls"
AGENTRT_PROGRAM_TOOL_CALLS: Final = "agentrt.program.tool_calls"
AGENTRT_STEP_NAME: Final = "agentrt.step.name"
AGENTRT_STEP_ATTEMPTS: Final = "agentrt.step.attempts"
#: True on the span of work a resumed program took from its journal instead of running it again.
AGENTRT_REPLAYED: Final = "agentrt.replayed"
AGENTRT_STEP_RETRIES: Final = "agentrt.step.retries"
#: Per-attempt time limit in seconds.
AGENTRT_STEP_TIMEOUT_S: Final = "agentrt.step.timeout_s"
AGENTRT_AGENT_TURNS: Final = "agentrt.agent.turns"
AGENTRT_AGENT_STOPPED: Final = "agentrt.agent.stopped"
#: How many of the agent's turns the model had to repair (unusable replies, unknown tools, invalid arguments).
AGENTRT_AGENT_REPAIRS: Final = "agentrt.agent.repairs"
AGENTRT_ENGINE_NAME: Final = "agentrt.engine.name"
#: Engines the policy could choose from for one dispatch.
AGENTRT_DISPATCH_CANDIDATES: Final = "agentrt.dispatch.candidates"

# Span events on ``chat`` spans: each engine choice, and each engine that failed the call.
EVENT_DISPATCH: Final = "dispatch"
EVENT_ENGINE_UNAVAILABLE: Final = "engine unavailable"
#: Engines tried for one LLM call (more than 1 after a failover).
AGENTRT_LLM_ATTEMPTS: Final = "agentrt.llm.attempts"
#: vLLM priority of the request (lower runs first).
AGENTRT_REQUEST_PRIORITY: Final = "agentrt.request.priority"
#: Seconds the runtime held the call in its admission queue (set only when a policy held it).
AGENTRT_REQUEST_HELD_S: Final = "agentrt.request.held_s"
#: Seconds the engine kept the request waiting before scheduling it.
AGENTRT_REQUEST_QUEUED_S: Final = "agentrt.request.queued_s"
#: Seconds from sending the request to its last token.
AGENTRT_RESPONSE_E2E_S: Final = "agentrt.response.e2e_s"
AGENTRT_TOOL_ERROR_KIND: Final = "agentrt.tool.error_kind"
AGENTRT_TOOL_WALL_S: Final = "agentrt.tool.wall_s"
AGENTRT_TOOL_CPU_S: Final = "agentrt.tool.cpu_s"
AGENTRT_TOOL_PEAK_MEMORY_BYTES: Final = "agentrt.tool.peak_memory_bytes"
AGENTRT_TOOL_OOM_KILLED: Final = "agentrt.tool.oom_killed"

# -- the OpenAI-compatible gateway (agentrt serve) ----------------------------------

HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
#: The tenant (API key) a gateway request came from.
AGENTRT_TENANT: Final = "agentrt.tenant"
#: What named the program a gateway request joined (a header or body field, or none).
AGENTRT_SESSION_SOURCE: Final = "agentrt.session.source"
