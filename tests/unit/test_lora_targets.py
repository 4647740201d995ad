"""LoRA target modules the model does not have are errors, never a silent skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryptotune_daemon.config import load_config, validate_config_text
from cryptotune_daemon.config.lora_targets import is_qwen3_family, qwen3_target_problems
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.models import ModelSource
from cryptotune_daemon.training.module_names import check_target_modules, model_module_names

TYPO_CONFIG = """\
model:
  model_name: {model}
lora:
  target_modules:
    - q_proj
    - qkv_proj_typo
    - gate_prj
"""


@pytest.mark.parametrize("model", ["builtin:tiny-qwen3", "Qwen/Qwen3-4B-Thinking-2507", "Qwen/Qwen3-0.6B"])
def test_qwen3_typos_are_errors_with_a_suggestion_at_validation(model: str) -> None:
    report = validate_config_text(TYPO_CONFIG.format(model=model))
    assert not report.valid
    assert [(issue.path, issue.line) for issue in report.errors] == [
        ("lora.target_modules", 6),
        ("lora.target_modules", 7),
    ]
    assert "no module named 'qkv_proj_typo'" in report.errors[0].message
    assert "did you mean 'gate_proj'?" in report.errors[1].message
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "all-linear"):
        assert name in report.errors[1].message


def test_the_submission_path_refuses_them_too() -> None:
    with pytest.raises(CryptotuneError) as caught:
        load_config(TYPO_CONFIG.format(model="builtin:tiny-qwen3"), "typo.yaml")
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert "typo.yaml:7: lora.target_modules:" in caught.value.message


@pytest.mark.parametrize(
    "targets",
    [
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ["all-linear"],
        ["down_proj"],
    ],
)
def test_real_qwen3_modules_and_all_linear_are_accepted(targets: list[str]) -> None:
    report = validate_config_text(f"lora:\n  target_modules: {json.dumps(targets)}\n")
    assert report.valid, report.errors


def test_all_linear_with_other_names_and_repeats_are_errors() -> None:
    assert "alone" in qwen3_target_problems("builtin:tiny-qwen3", ["all-linear", "q_proj"])[0][1]
    assert "listed twice" in qwen3_target_problems("builtin:tiny-qwen3", ["q_proj", "q_proj"])[0][1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("builtin:tiny-qwen3", True),
        ("Qwen/Qwen3-4B-Thinking-2507", True),
        ("qwen/qwen3-8b", True),
        ("Qwen/Qwen2.5-7B-Instruct", False),
        ("Qwen/Qwen3.5-9B", False),
        ("Qwen/Qwen3-30B-A3B", False),
        ("Qwen/Qwen3-VL-8B-Instruct", False),
        ("meta-llama/Llama-3.1-8B", False),
    ],
)
def test_qwen3_family_by_name(name: str, expected: bool) -> None:
    assert is_qwen3_family(name) is expected


def test_a_local_directory_is_judged_by_its_config_json(tmp_path: Path) -> None:
    qwen = tmp_path / "my-model"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    llama = tmp_path / "qwen3-named-llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert is_qwen3_family(str(qwen)) and not is_qwen3_family(str(llama))
    report = validate_config_text(TYPO_CONFIG.format(model=str(llama)))
    assert report.valid  # not Qwen3: checked in the init stage against the loaded model instead


def tiny_llama(tmp_path: Path) -> ModelSource:
    directory = tmp_path / "tiny-llama"
    directory.mkdir()
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 64,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return ModelSource(name="my/tiny-llama", kind="local", path=directory)


def test_other_models_are_checked_against_their_module_names(tmp_path: Path) -> None:
    source = tiny_llama(tmp_path)
    assert {"q_proj", "gate_proj", "down_proj"} <= set(model_module_names(source))
    check_target_modules(source, ["q_proj", "v_proj"])
    check_target_modules(source, ["all-linear"])
    with pytest.raises(CryptotuneError) as caught:
        check_target_modules(source, ["q_proj", "qkv_proj"])
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    message = caught.value.message
    assert "lora.target_modules[1]" in message and "my/tiny-llama has no module named 'qkv_proj'" in message
    assert "down_proj" in message  # the list of what exists


def test_builtin_model_modules_match_the_qwen3_list() -> None:
    names = set(model_module_names(ModelSource(name="builtin:tiny-qwen3", kind="builtin")))
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
