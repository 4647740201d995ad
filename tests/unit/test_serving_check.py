"""The vLLM check of an adapter: what would not load for Qwen3, and the smallest --max-lora-rank."""

from __future__ import annotations

from typing import Any

from cryptotune_daemon.jobs.serving import check_vllm_adapter

PLAIN: dict[str, Any] = {
    "r": 16,
    "bias": "none",
    "use_dora": False,
    "modules_to_save": None,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def test_a_plain_lora_adapter_loads() -> None:
    check = check_vllm_adapter(PLAIN, base_model="Qwen/Qwen3-4B-Thinking-2507", name="aes-v1")
    assert check.loadable and not check.problems
    assert (check.rank, check.max_lora_rank) == (16, 16)
    assert check_vllm_adapter({**PLAIN, "r": 17}, base_model="m/x", name="n").max_lora_rank == 32


def test_settings_vllm_refuses_are_each_named() -> None:
    check = check_vllm_adapter(
        {
            **PLAIN,
            "r": 1024,
            "modules_to_save": ["lm_head"],
            "use_dora": True,
            "bias": "lora_only",
            "target_modules": ["q_proj", "embed_tokens"],
        },
        base_model="Qwen/Qwen3-4B-Thinking-2507",
        name="aes-v1",
    )
    assert not check.loadable and check.max_lora_rank == 0
    text = "\n".join(check.problems)
    for words in ("rank 1024", "modules_to_save (lm_head)", "DoRA", "bias 'lora_only'", "embed_tokens"):
        assert words in text


def test_the_builtin_model_cannot_be_served_by_vllm() -> None:
    check = check_vllm_adapter(PLAIN, base_model="builtin:tiny-qwen3", name="demo")
    assert not check.loadable and "--merged" in check.problems[0]
