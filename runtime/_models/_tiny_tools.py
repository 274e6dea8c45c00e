"""``tiny-tools``: the tiny model with a Hermes-style tools chat template, for native tool-calling tests."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from .._errors import ModelPreparationError
from ._common import HERMES_TOOLS_TEMPLATE
from ._locate import MARKER_NAME, models_dir, read_marker
from ._prepare import build_lock, prepare_model, swap_in

__all__ = ["TINY_TOOLS", "prepare_tiny_tools"]

#: The directory name of the tools variant of ``tiny`` under the models directory.
TINY_TOOLS = "tiny-tools"
#: Bump when the variant's output changes other than through its template.
_TINY_TOOLS_VERSION = 1


def prepare_tiny_tools(dest_dir: Path | None = None) -> Path:
    """``tiny`` with a Hermes-style tools chat template (:data:`HERMES_TOOLS_TEMPLATE`); its directory.

    The same weights and tokenizer as ``tiny`` (prepared first if needed), so
    its output is the same noise; only the template differs, so that native
    tool calling (docs/tools.md) can be tested.  ``tiny`` itself keeps plain
    ChatML: with a tools template every tool call of the tests would take
    the native path, where a random model calls nothing unless forced.
    Kept under the models directory as ``tiny-tools`` (default) and rebuilt
    when ``tiny``, the template or this recipe changes.  Hermes markers
    (``<tool_call>``) stay ordinary text: vLLM's Hermes parser reads them
    from the text and needs no special tokens.
    """
    base = prepare_model("tiny")
    base_marker = read_marker(base) or {}
    stamp = {
        "name": TINY_TOOLS,
        "recipe_version": _TINY_TOOLS_VERSION,
        "derived_from": {"name": "tiny", "prepared_at": base_marker.get("prepared_at")},
        "template_sha256": hashlib.sha256(HERMES_TOOLS_TEMPLATE.encode()).hexdigest(),
    }
    target = (Path(dest_dir) if dest_dir is not None else models_dir() / TINY_TOOLS).expanduser().absolute()

    def current() -> bool:
        marker = read_marker(target)
        return marker is not None and all(marker.get(k) == v for k, v in stamp.items())

    if current():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with build_lock(target):
            if current():  # built by another process while we waited
                return target
            build = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
            try:
                for path in base.iterdir():
                    if path.is_file() and path.name not in (MARKER_NAME, "chat_template.jinja"):
                        shutil.copy2(path, build / path.name)
                (build / "chat_template.jinja").write_text(HERMES_TOOLS_TEMPLATE)
                (build / MARKER_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
                build.chmod(0o755)
                swap_in(build, target)
            finally:
                shutil.rmtree(build, ignore_errors=True)
    except OSError as exc:
        raise ModelPreparationError(f"cannot prepare {TINY_TOOLS} at {target}: {exc}") from exc
    return target
