"""What the model builders share: the ChatML tokens and template, and helpers.

Every model uses the same three special tokens at the same ids and the same
ChatML layout, so the runtime treats them alike (stop tokens, prompts). The
helpers import transformers and torch only when called: importing this module
stays cheap.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from .._errors import ModelPreparationError

if TYPE_CHECKING:
    import torch

# ChatML special tokens shared by every model; SmolLM2 has them at these ids
# too, which keeps the runtime's stop-token handling identical for all.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # ids 0, 1, 2

#: ChatML for any role. ``content`` may be a string, None (an assistant turn
#: that only made tool calls) or a list of OpenAI content parts, whose text
#: parts are joined: the template must not fail on what an OpenAI-style client
#: sends, even though the tiny model cannot make sense of it.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = message.get('content') -%}"
    "{%- if content is string -%}{%- set text = content -%}"
    "{%- elif content -%}"
    "{%- set text = content | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}"
    "{%- else -%}{%- set text = '' -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + text + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


#: ChatML with tools the Hermes / Qwen2.5 way: with ``tools``, a system turn
#: lists them in ``<tools>...</tools>`` (after the caller's system text) and
#: says how to call one; assistant ``tool_calls`` render as
#: ``<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`` and
#: consecutive ``tool`` messages as ``<tool_response>`` blocks of one user
#: turn.  Without tools and tool messages it renders exactly what
#: :data:`CHATML_TEMPLATE` does, byte for byte.
HERMES_TOOLS_TEMPLATE = (
    "{%- macro text_of(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- elif content -%}"
    "{{- content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -}}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\n' -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- text_of(messages[0].get('content')) + '\n\n' -}}"
    "{%- endif -%}"
    "{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments '"
    " + 'within <tool_call></tool_call> XML tags:\n<tool_call>\n'"
    ' + \'{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n\' -}}'
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set text = text_of(message.get('content')) -%}"
    "{%- if tools and loop.first and message['role'] == 'system' -%}"
    "{#- already in the tools system turn -#}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "{{- '<|im_start|>assistant' -}}{%- if text -%}{{- '\n' + text -}}{%- endif -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call.get('function') else call -%}"
    "{%- set args = fn.get('arguments', {}) -%}"
    "{{- '\n<tool_call>\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' -}}"
    "{%- if args is string -%}{{- args -}}{%- else -%}{{- args | tojson -}}{%- endif -%}"
    "{{- '}\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\n<tool_response>\n' + text + '\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + text + '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


def import_transformers() -> Any:
    """The ``transformers`` module, typed as Any.

    transformers is only partly annotated, and its annotations change between
    releases; going through Any keeps ``mypy --strict`` clean on all of them.
    Imported here, not at module level: it takes seconds and pulls in torch.
    """
    import transformers

    return transformers


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """Ids of the ChatML special tokens; they must be single tokens."""
    ids: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        # An unknown token maps to unk's id, so check the id maps back.
        if not isinstance(token_id, int) or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise ModelPreparationError(f"{token} is not a single token of the tokenizer")
        ids[token] = token_id
    return ids


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().contiguous().cpu()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
