"""How a model's chat template does tools: what an engine tells the runtime about its model.

An engine answers :meth:`~runtime.Engine.tool_template` from its model's
tokenizer (:func:`native_tools_of`, or :func:`load_native_tools` for a
local model directory): whether the template renders tools, and which of
vLLM's tool parsers reads the calls the model writes.  The tool-calling
code (``runtime._tools``) builds prompts and parses replies from it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NativeTools", "detect_parser", "load_native_tools", "native_tools_of", "template_supports_tools"]

logger = logging.getLogger("runtime._tools._native")  # the logger it had before it moved here


# A template "does tools" when its Jinja source reads the `tools` variable
# (`{% if tools %}`, `tools is not none`, `for tool in tools`).
_USES_TOOLS = re.compile(r"(?:\{%-?|\{\{-?)[^%}]*\btools\b")

#: Template markers -> the vLLM tool parser that reads what the model writes.
#: Checked in order; the first marker found decides.
_PARSER_MARKERS: tuple[tuple[str, str], ...] = (
    ("[TOOL_CALLS]", "mistral"),
    ("<tool_call>", "hermes"),
    ("<|python_tag|>", "llama3_json"),
    ("Given the following functions, please respond with a JSON for a function call", "llama3_json"),
)


def template_supports_tools(template: str | None) -> bool:
    """Whether a chat template's Jinja source renders tools (reads the ``tools`` variable)."""
    return bool(template) and _USES_TOOLS.search(template or "") is not None


def detect_parser(template: str | None) -> str | None:
    """The vLLM tool parser for the calls a model with ``template`` writes, or None if unknown.

    Hermes / Qwen ``<tool_call>`` -> ``"hermes"``, Llama 3.x JSON ->
    ``"llama3_json"``, Mistral ``[TOOL_CALLS]`` -> ``"mistral"``.
    """
    if not template_supports_tools(template):
        return None
    assert template is not None
    for marker, parser in _PARSER_MARKERS:
        if marker in template:
            return parser
    return None


@dataclass(frozen=True)
class NativeTools:
    """How one model's chat template does tools.

    ``parser`` is the vLLM tool parser (a name ``ToolParserManager`` knows)
    that reads the model's calls, ``None`` when the template renders tools in
    a format no known parser reads.  ``tokenizer`` is the model's tokenizer,
    which the parsers need (some look their markers up in its vocabulary).
    """

    model: str
    parser: str | None
    tokenizer: Any = field(default=None, compare=False, repr=False)


def native_tools_of(tokenizer: Any, model: str) -> NativeTools | None:
    """What ``tokenizer``'s chat template does with tools; None when it does not render them."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # several named templates: the default one renders chats
        template = template.get("default") or template.get("tool_use")
    if not isinstance(template, str) or not template_supports_tools(template):
        return None
    return NativeTools(model, detect_parser(template), tokenizer)


def load_native_tools(model_path: str | Path, model: str) -> NativeTools | None:
    """:func:`native_tools_of` the tokenizer in a local model directory; None if it is not one.

    Blocking (reads and builds the tokenizer): run it in a worker thread.
    """
    path = Path(model_path).expanduser()
    if not (path / "tokenizer_config.json").is_file():
        return None
    try:
        from vllm.tokenizers import get_tokenizer

        tokenizer = get_tokenizer(str(path))
    except Exception as exc:  # a broken or foreign directory: tools go the JSON way
        logger.warning("cannot load the tokenizer of %s for native tool calls: %s", path, exc)
        return None
    return native_tools_of(tokenizer, model)
