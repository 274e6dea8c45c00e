"""Tests for runtime._models: resolving and preparing local models, and `agentrt models`.

The tiny model is built for real (twice, ~7 s each on 2 cores) to check that
the build is deterministic, and llama-49m once (~3 s) to check its shape and
that it shares tiny's tokenizer; SmolLM2's conversion downloads ~93 MB and takes
about a minute, so it is checked by hand, not here. The build machinery
(atomic swap, markers, failures) is tested with a fake recipe that takes no time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime import _models
from runtime._cli._models import main
from runtime._errors import ModelNotFoundError, ModelPreparationError
from runtime._models import (
    KNOWN_MODELS,
    MARKER_NAME,
    _common,
    _prepare,
    _recipes,
    _tiny,
    models_dir,
    prepare_model,
    resolve_model,
)

REPO_ROOT = Path(_models.__file__).resolve().parents[2]


# --------------------------------------------------------------------------
# models_dir / resolve_model
# --------------------------------------------------------------------------


def test_known_models() -> None:
    assert KNOWN_MODELS == ("tiny", "smollm2-135m", "llama-49m")
    # KNOWN_MODELS is spelled out so the core need not import the builders.
    assert tuple(_recipes.RECIPES) == KNOWN_MODELS


def test_models_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AGENTRT_MODELS_DIR", raising=False)
    assert models_dir() == REPO_ROOT / ".cache" / "models"
    monkeypatch.setenv("AGENTRT_MODELS_DIR", str(tmp_path))
    assert models_dir() == tmp_path


def test_import_is_cheap() -> None:
    code = (
        "import sys, runtime._models; "
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'gguf') if m in sys.modules)); "
        "print(sorted(m for m in sys.modules if m.startswith('runtime._models.') and m != 'runtime._models._locate'))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["[]", "[]"]


def _fake_model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_resolve_unknown_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTRT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("no-such-model")
    message = str(info.value)
    assert str(tmp_path / "models" / "no-such-model") in message  # where it looked
    assert "agentrt models prepare NAME" in message
    assert "tiny" in message and "smollm2-135m" in message


def test_resolve_known_but_unprepared_names_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTRT_MODELS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"`agentrt models prepare tiny`"):
        resolve_model("tiny")
    # LookupError too, so generic code can catch it
    with pytest.raises(LookupError):
        resolve_model("smollm2-135m")


def test_resolve_path_and_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTRT_MODELS_DIR", str(tmp_path / "models"))
    elsewhere = _fake_model_dir(tmp_path / "elsewhere" / "m")
    assert resolve_model(elsewhere) == elsewhere.resolve()  # PathLike
    assert resolve_model(str(elsewhere)) == elsewhere.resolve()
    named = _fake_model_dir(tmp_path / "models" / "mine")
    assert resolve_model("mine") == named.resolve()


def test_resolve_dir_without_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTRT_MODELS_DIR", str(tmp_path / "models"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(empty)
    with pytest.raises(ModelNotFoundError):
        resolve_model("")


# --------------------------------------------------------------------------
# prepare_model machinery, with a fake recipe
# --------------------------------------------------------------------------


class _FakeBuild:
    """A recipe build that writes a config, counts calls and can be made to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self, out: Path, scratch: Path) -> dict[str, Any]:
        self.calls += 1
        assert out.is_dir() and scratch.is_dir() and out.parent == scratch.parent
        (out / "config.json").write_text(json.dumps({"call": self.calls}))
        if self.fail:
            raise RuntimeError("boom")
        return {"call": self.calls}


@pytest.fixture
def fake_recipe(monkeypatch: pytest.MonkeyPatch) -> _FakeBuild:
    build = _FakeBuild()
    monkeypatch.setitem(_recipes.RECIPES, "fake", _recipes.Recipe("fake", 1, "a fake", build))
    return build


def test_prepare_unknown_recipe(tmp_path: Path) -> None:
    with pytest.raises(ModelPreparationError) as info:
        prepare_model("gpt-17", dest_dir=tmp_path / "x")
    assert "tiny" in str(info.value) and "smollm2-135m" in str(info.value)
    assert not (tmp_path / "x").exists()


def test_prepare_is_idempotent_and_atomic(fake_recipe: _FakeBuild, tmp_path: Path) -> None:
    target = tmp_path / "models" / "fake"
    assert prepare_model("fake", dest_dir=target) == target
    assert fake_recipe.calls == 1
    marker = json.loads((target / MARKER_NAME).read_text())
    assert marker["name"] == "fake" and marker["recipe_version"] == 1
    assert marker["details"] == {"call": 1}

    prepare_model("fake", dest_dir=target)
    assert fake_recipe.calls == 1  # nothing rebuilt

    prepare_model("fake", dest_dir=target, force=True)
    assert fake_recipe.calls == 2
    assert json.loads((target / "config.json").read_text()) == {"call": 2}

    # A failing rebuild leaves the previous model untouched, and no temp dirs.
    fake_recipe.fail = True
    with pytest.raises(ModelPreparationError, match="boom") as info:
        prepare_model("fake", dest_dir=target, force=True)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert json.loads((target / "config.json").read_text()) == {"call": 2}
    leftovers = [
        p.name for p in target.parent.iterdir() if p.name.startswith(".fake.") and not p.name.endswith(".lock")
    ]
    assert leftovers == []


def test_prepare_rebuilds_outdated_recipe(
    fake_recipe: _FakeBuild, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    target = tmp_path / "fake"
    prepare_model("fake", dest_dir=target)
    monkeypatch.setitem(_recipes.RECIPES, "fake", _recipes.Recipe("fake", 2, "newer", fake_recipe))
    prepare_model("fake", dest_dir=target)
    assert fake_recipe.calls == 2
    assert json.loads((target / MARKER_NAME).read_text())["recipe_version"] == 2


def test_prepare_failure_leaves_no_target(fake_recipe: _FakeBuild, tmp_path: Path) -> None:
    fake_recipe.fail = True
    target = tmp_path / "fake"
    with pytest.raises(ModelPreparationError):
        prepare_model("fake", dest_dir=target)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fake.lock"]


def test_prepare_unwritable_destination(fake_recipe: _FakeBuild, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ModelPreparationError, match="cannot prepare") as info:
        prepare_model("fake", dest_dir=blocker / "fake")
    assert isinstance(info.value.__cause__, OSError)


def test_prepare_cleans_leftovers_of_killed_builds(fake_recipe: _FakeBuild, tmp_path: Path) -> None:
    (tmp_path / ".fake.build-abc").mkdir()
    (tmp_path / ".fake.build-abc" / "config.json").write_text("{}")
    prepare_model("fake", dest_dir=tmp_path / "fake")
    assert not (tmp_path / ".fake.build-abc").exists()


def test_prepare_refuses_foreign_directory(fake_recipe: _FakeBuild, tmp_path: Path) -> None:
    foreign = _fake_model_dir(tmp_path / "fake")
    with pytest.raises(ModelPreparationError, match="not prepared by agentrt"):
        prepare_model("fake", dest_dir=foreign)
    assert fake_recipe.calls == 0
    prepare_model("fake", dest_dir=foreign, force=True)
    assert (foreign / MARKER_NAME).is_file()


# --------------------------------------------------------------------------
# The tiny model, built for real
# --------------------------------------------------------------------------


def _weights_sha256(model_dir: Path) -> str:
    from safetensors.torch import load_file

    return _common.state_dict_sha256(load_file(str(model_dir / "model.safetensors")))


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model, prepared twice from scratch into separate directories."""
    base = tmp_path_factory.mktemp("models")
    return (
        prepare_model("tiny", dest_dir=base / "a" / "tiny"),
        prepare_model("tiny", dest_dir=base / "b" / "tiny"),
    )


def test_tiny_is_deterministic(tiny_builds: tuple[Path, Path]) -> None:
    a, b = tiny_builds
    assert _weights_sha256(a) == _weights_sha256(b)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    marker = json.loads((a / MARKER_NAME).read_text())
    assert marker["details"]["weights_sha256"] == _weights_sha256(a)


def _must_not_build(*args: object) -> None:
    raise AssertionError("an up-to-date model was built again")


def test_tiny_is_idempotent(tiny_builds: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = tiny_builds
    before = (a / MARKER_NAME).stat().st_mtime_ns
    # Only the marker is read: no build (which would fail here) and no lock.
    monkeypatch.setattr(_prepare, "_build_into", _must_not_build)
    monkeypatch.setattr(_prepare, "build_lock", _must_not_build)
    assert prepare_model("tiny", dest_dir=a) == a
    assert (a / MARKER_NAME).stat().st_mtime_ns == before


def test_tiny_config(tiny_builds: tuple[Path, Path]) -> None:
    config = json.loads((tiny_builds[0] / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == "bfloat16"
    assert config["head_dim"] == 64  # vLLM's CPU attention needs >= 32
    assert config["hidden_size"] == 128 and config["num_hidden_layers"] == 2
    assert config["max_position_embeddings"] == 32768
    assert config["eos_token_id"] == 2
    assert "quantization_config" not in config
    assert 2000 <= config["vocab_size"] <= 4096


def test_tiny_tokenizer(tiny_builds: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_builds[0]))
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    assert [tok.convert_tokens_to_ids(t) for t in specials] == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token_id == 0 and tok.bos_token_id == 0

    text = 'def f(x):\n    return {"ok": x + 1}  # héllo, 日本語 \t\r\n SELECT * FROM t;'
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # BPE merges something
    assert tok.encode("a<|im_end|>b", add_special_tokens=False)[1] == 2


def test_tiny_chat_template(tiny_builds: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_builds[0]))
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None},  # a turn with only tool calls
        {"role": "tool", "content": [{"type": "text", "text": "42"}]},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n<|im_end|>\n"
        "<|im_start|>tool\n42<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    plain = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=False)
    assert plain == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    ids = tok.encode(rendered, add_special_tokens=False)
    assert ids[0] == 1 and ids.count(2) == 4


def test_tiny_model_runs(tiny_builds: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_builds[0]))
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 100, 200, 2]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size)
    assert bool(torch.isfinite(logits).all())


def test_tiny_corpus_is_stable() -> None:
    docs = _tiny._stdlib_corpus()
    again = _tiny._stdlib_corpus()
    assert docs == again
    size = sum(len(d.encode("utf-8")) for d in docs)
    assert _tiny.TINY_CORPUS_MAX_BYTES <= size < _tiny.TINY_CORPUS_MAX_BYTES + (64 << 10)


# --------------------------------------------------------------------------
# llama-49m: tiny's recipe at a size whose prefill costs real time
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_49m_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_model("llama-49m", dest_dir=tmp_path_factory.mktemp("models") / "llama-49m")


def test_llama_49m_config(llama_49m_build: Path) -> None:
    config = json.loads((llama_49m_build / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == "bfloat16"
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (8, 512, 8)
    assert config["head_dim"] == 64 and config["num_key_value_heads"] == 8
    assert config["intermediate_size"] == 1408
    assert config["max_position_embeddings"] == 8192
    assert "quantization_config" not in config
    marker = json.loads((llama_49m_build / MARKER_NAME).read_text())
    assert marker["details"]["weights_sha256"] == _weights_sha256(llama_49m_build)
    assert 29e6 < marker["details"]["parameters"] < 31e6


def test_llama_49m_shares_tinys_tokenizer(llama_49m_build: Path, tiny_builds: tuple[Path, Path]) -> None:
    tiny = tiny_builds[0]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (llama_49m_build / name).read_bytes() == (tiny / name).read_bytes(), name
    tiny_config = json.loads((tiny / "config.json").read_text())
    assert json.loads((llama_49m_build / "config.json").read_text())["vocab_size"] == tiny_config["vocab_size"]


def test_llama_49m_model_runs(llama_49m_build: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(llama_49m_build))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 100, 200, 2]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size)
    assert bool(torch.isfinite(logits).all())


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def test_main_list_and_prepare(tiny_builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_builds[0].parent
    assert main(["--models-dir", str(base), "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "prepared" in out
    assert "smollm2-135m" in out and "not prepared" in out

    assert main(["--models-dir", str(base), "prepare", "tiny"]) == 0  # already built: instant
    assert str(tiny_builds[0]) in capsys.readouterr().out

    with pytest.raises(SystemExit):
        main(["prepare", "gpt-17"])
