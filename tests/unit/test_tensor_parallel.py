"""``model_parallel``: which parts of a LoRA-wrapped decoder layer are split, and the KV-head check."""

from __future__ import annotations

import peft
import pytest
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.training.models import ModelSource, build_tiny_qwen3
from cryptotune_daemon.training.strategies.sharded import decoder_layers
from cryptotune_daemon.training.strategies.tensor_parallel import layer_plan, split_heads_problem
from cryptotune_daemon.worker.stages.init import InitStage


def test_lora_parts_are_split_with_their_projection() -> None:
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    model = peft.get_peft_model(build_tiny_qwen3(), config)
    layer = decoder_layers(model)[0]
    plan = layer_plan(layer)
    colwise = {k for k, v in plan.items() if isinstance(v, ColwiseParallel)}
    rowwise = {k for k, v in plan.items() if isinstance(v, RowwiseParallel)}
    for name in ("q_proj", "k_proj", "v_proj"):
        assert {f"self_attn.{name}.base_layer", f"self_attn.{name}.lora_B.default"} <= colwise
    for name in ("gate_proj", "up_proj"):
        assert {f"mlp.{name}.base_layer", f"mlp.{name}.lora_B.default"} <= colwise
    assert rowwise == {
        "self_attn.o_proj.base_layer",
        "self_attn.o_proj.lora_A.default",
        "mlp.down_proj.base_layer",
        "mlp.down_proj.lora_A.default",
    }
    # A of a colwise projection and B of a rowwise one stay whole on every rank.
    assert not any(k.endswith("lora_A.default") for k in colwise)
    assert len(plan) == 14
    assert split_heads_problem(layer, 2) is None
    assert split_heads_problem(layer, 4) is not None  # 2 KV heads


def test_a_degree_that_does_not_divide_the_kv_heads_is_refused_in_init() -> None:
    stage = object.__new__(InitStage)
    source = ModelSource(name="builtin:tiny-qwen3", kind="builtin")
    stage._check_tensor_parallel_degree(source, 2)
    with pytest.raises(CryptotuneError) as raised:
        stage._check_tensor_parallel_degree(source, 3)
    message = str(raised.value)
    assert message.startswith("parallel.world_size: tensor parallel degree 3 does not divide the 2 KV heads")
    assert "use 2" in message
