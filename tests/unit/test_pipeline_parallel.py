"""``pipeline_parallel``: the stage split, the stages against the whole model, padding, keys, planner row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch

from cryptotune_daemon.config import validate_config_text
from cryptotune_daemon.config.pipeline import pipeline_stages_problem, stage_layers
from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.training.batching import collate_packed, deal_samples
from cryptotune_daemon.training.dataset import Example
from cryptotune_daemon.training.loss import label_loss_sums, per_example_loss_sums
from cryptotune_daemon.training.models import ModelSource, build_tiny_qwen3
from cryptotune_daemon.training.strategies.pipeline import (
    StageModule,
    pad_micro_batches,
    release_other_stages,
)
from cryptotune_daemon.worker.stages.init import InitStage

# -- the stage split -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "stages", "sizes"),
    [(36, 4, [9, 9, 9, 9]), (10, 4, [3, 3, 2, 2]), (5, 2, [3, 2]), (2, 2, [1, 1]), (7, 1, [7])],
)
def test_layers_are_cut_into_consecutive_even_stages(layers: int, stages: int, sizes: list[int]) -> None:
    ranges = stage_layers(layers, stages)
    assert [len(r) for r in ranges] == sizes
    # Consecutive, covering every layer once; the last stage (LM head and loss) never the largest.
    assert [i for r in ranges for i in r] == list(range(layers))
    assert len(ranges[-1]) == min(sizes)


def test_more_stages_than_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="2 decoder layers cannot be cut into 3 stages"):
        stage_layers(2, 3)
    assert pipeline_stages_problem(2, 2, "tiny") is None
    problem = pipeline_stages_problem(2, 4, "builtin:tiny-qwen3")
    assert problem is not None and "at most 2 processes; got 4" in problem


def test_init_refuses_more_stages_than_decoder_layers() -> None:
    stage = object.__new__(InitStage)
    source = ModelSource(name="builtin:tiny-qwen3", kind="builtin")
    stage._check_pipeline_stages(source, 2)
    with pytest.raises(CryptotuneError) as raised:
        stage._check_pipeline_stages(source, 3)
    assert str(raised.value).startswith("parallel.world_size: pipeline_parallel cuts the 2 decoder layers")


def test_samples_are_dealt_round_robin() -> None:
    assert deal_samples([5, 4, 3, 2, 1], 2) == [[5, 3, 1], [4, 2]]
    assert deal_samples([7], 3) == [[7], [], []]


# -- the keys ----------------------------------------------------------------------------------------

PIPELINE = (
    "training:\n  per_device_train_batch_size: 8\n"
    "parallel:\n  strategy: pipeline_parallel\n  world_size: 4\n  enable_distributed: true\n"
)


def test_1f1b_needs_a_micro_batch_per_stage() -> None:
    report = validate_config_text(PIPELINE + "  pipeline_schedule: 1f1b\n  pipeline_micro_batches: 2\n")
    [error] = [e for e in report.errors if e.path == "parallel.pipeline_micro_batches"]
    assert error.line == 8 and "at least one micro-batch per stage (4 stages)" in error.message
    assert "pipeline_schedule: gpipe" in error.message


def test_gpipe_with_few_micro_batches_only_warns() -> None:
    report = validate_config_text(PIPELINE + "  pipeline_schedule: gpipe\n  pipeline_micro_batches: 2\n")
    assert report.valid, report.errors
    [warning] = [w for w in report.warnings if w.path == "parallel.pipeline_micro_batches"]
    assert warning.line == 8 and "most stages would wait" in warning.message


def test_more_micro_batches_than_samples_per_device_warns() -> None:
    report = validate_config_text(PIPELINE.replace("8", "2") + "  pipeline_micro_batches: 8\n")
    assert report.valid, report.errors
    [warning] = [w for w in report.warnings if w.path == "parallel.pipeline_micro_batches"]
    assert warning.line == 7 and "6 of them would be empty" in warning.message


def test_pipeline_parallel_is_trainable() -> None:
    report = validate_config_text(PIPELINE + "  pipeline_micro_batches: 4\n")
    assert report.valid and not report.warnings, (report.errors, report.warnings)


# -- the stages compute the whole model's loss ---------------------------------------------------------------


def _examples() -> list[Example]:
    generator = torch.Generator().manual_seed(3)
    examples = []
    for index, length in enumerate([23, 17, 11, 9, 5]):
        ids = tuple(int(t) for t in torch.randint(10, 5000, (length,), generator=generator))
        prompt = length // 3
        labels = (-100,) * prompt + ids[prompt:]
        examples.append(
            Example(index=index, line=index + 1, input_ids=ids, labels=labels, prompt_tokens=prompt)
        )
    return examples


def _peft_model() -> torch.nn.Module:
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = peft.get_peft_model(build_tiny_qwen3(), config)
    model.config.use_cache = False
    return model


def test_chained_stages_give_the_whole_models_loss_and_gradients() -> None:
    model = _peft_model()
    batch = collate_packed(_examples(), 0, 32)
    assert batch["input_ids"].shape[0] > 1  # several packed rows
    sums, counts = per_example_loss_sums(model, **batch)
    sums.sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    causal_lm = model.get_base_model()
    decoder, head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
    first, last = stage_layers(2, 2)
    stages = [
        StageModule(decoder, head, first, first=True, last=False, hidden_dtype=torch.float32),
        StageModule(decoder, head, last, first=False, last=True, hidden_dtype=torch.float32),
    ]
    # Padding to a wider, taller shape (as a pipeline step does) changes nothing.
    [padded] = pad_micro_batches([batch], 0)
    [wider, _] = pad_micro_batches([padded, {k: torch.cat([v, v], 1) for k, v in padded.items()}], 0)
    assert wider["input_ids"].shape[1] == 2 * padded["input_ids"].shape[1]
    hidden = stages[0](wider["input_ids"], wider["position_ids"])
    hidden = stages[1](hidden.detach().requires_grad_(), wider["position_ids"])
    got_sums, got_counts = label_loss_sums(head, hidden, wider["labels"], wider["sample_ids"])
    assert torch.equal(got_counts, counts)
    torch.testing.assert_close(got_sums, sums.detach(), rtol=1e-5, atol=1e-5)
    got_sums.sum().backward()
    # The last stage's own LoRA gradients match the whole model's.
    stage_params = {id(p) for p in stages[1].parameters()}
    compared = 0
    for name, param in model.named_parameters():
        if id(param) in stage_params and param.grad is not None:
            difference = float((param.grad - expected[name]).norm() / expected[name].norm())
            assert difference < 1e-4, f"{name}: gradient differs by {difference:.1e} (relative norm)"
            compared += 1
    assert compared > 0


def test_padding_keeps_each_sample_apart() -> None:
    batch = collate_packed(_examples()[:2], 7, 64)
    [small, empty] = pad_micro_batches([batch, None], 7)
    assert torch.equal(small["input_ids"], batch["input_ids"])
    assert (empty["labels"] == -100).all() and (empty["sample_ids"] == -1).all()
    assert torch.equal(empty["position_ids"][0], torch.arange(batch["input_ids"].shape[1]))


# -- the planner's row -----------------------------------------------------------------------------


def _pipeline_row(**overrides: Any) -> dict[str, Any]:
    from cryptotune_daemon.training.planner import plan_training

    from .test_planner import A100_80GB, QWEN3_4B, request

    values: dict[str, Any] = {
        "strategy": "pipeline_parallel",
        "max_seq_length": 4096,
        "micro_batch_size": 8,
        "gradient_checkpointing": False,
        "world_size": 4,
    }
    values.update(overrides)
    plan = plan_training(request(**values), QWEN3_4B, A100_80GB, [4096] * 64)
    return next(r for r in plan.strategies if r["strategy"] == "pipeline_parallel")


def test_the_pipeline_row_counts_a_stage_its_micro_batches_in_flight_and_the_bubble() -> None:
    gpipe = _pipeline_row(pipeline_schedule="gpipe", pipeline_micro_batches=8)
    one_f_one_b = _pipeline_row(pipeline_schedule="1f1b", pipeline_micro_batches=8)
    assert "4 stages of up to 9 layers, 8 micro-batches (gpipe: 8 in flight, 27% bubble)" in gpipe["reason"]
    assert "(1f1b: 4 in flight, 27% bubble)" in one_f_one_b["reason"]
    # 1F1B keeps at most one micro-batch per stage alive; GPipe all of them.
    assert one_f_one_b["memory_per_gpu_mb"] < gpipe["memory_per_gpu_mb"]
    assert one_f_one_b["step_seconds"] == gpipe["step_seconds"]
    # More micro-batches: a smaller bubble, a faster step.
    assert _pipeline_row(pipeline_micro_batches=4)["step_seconds"] > one_f_one_b["step_seconds"]
    # A stage holds about a quarter of the layers: far less than the whole model of DDP.
    whole = _pipeline_row(world_size=1)
    assert one_f_one_b["memory_per_gpu_mb"] < whole["memory_per_gpu_mb"]
    assert one_f_one_b["available"] and not whole["available"]


def test_more_stages_than_layers_are_not_available() -> None:
    row = _pipeline_row(world_size=40)
    assert not row["available"] and "more stages than the model's 36 layers" in row["reason"]


def test_a_stage_frees_other_stages_weights_but_keeps_every_name(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = _peft_model()
    whole = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    causal_lm = model.get_base_model()
    decoder, head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
    last = StageModule(decoder, head, range(1, 2), first=False, last=True, hidden_dtype=torch.float32)
    release_other_stages(model, last)
    layers = decoder.layers
    assert layers[0].mlp.down_proj.base_layer.weight.numel() == 0
    assert layers[1].mlp.down_proj.base_layer.weight.numel() > 0
    # The LM head is the tied embedding: the last stage keeps it.
    assert head.weight.numel() == 151936 * 64
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".layers.1." in n for n in trained)
    # An adapter gathered from every stage saves whole from any stage's model.
    model.save_pretrained(str(tmp_path), state_dict=whole)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert len(saved) == len(whole)
