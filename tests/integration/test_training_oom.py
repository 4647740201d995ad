"""Out-of-memory recovery in training runs, driven by the injected oom fault (faults.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.faults import OomTestHook
from cryptotune_daemon.training.checkpoints import newest_verified
from cryptotune_daemon.training.oom import OomRecovery, train_with_oom_recovery
from cryptotune_daemon.training.trainer import LoraTrainer, TrainerSettings, TrainingOutOfMemory
from tests.helpers.pipeline import config_text, make_spec, of, run_inprocess, write_records
from tests.helpers.trainer import Recorder, adapter_tensors, make_examples, make_trainer, settings


def run_with_recovery(
    output_dir: Path, config: TrainerSettings, hook: OomTestHook | None
) -> tuple[LoraTrainer, list[tuple[OomRecovery, TrainerSettings]], Recorder]:
    examples = make_examples(20, seed=4)
    recorder = Recorder()
    recoveries: list[tuple[OomRecovery, TrainerSettings]] = []

    def build(chosen: TrainerSettings) -> LoraTrainer:
        trainer = make_trainer(output_dir, examples, chosen, recorder)
        trainer.oom_test_hook = hook
        return trainer

    trainer = train_with_oom_recovery(
        build,
        config,
        resume=None,
        latest_checkpoint=lambda: newest_verified(output_dir),
        on_recovery=lambda recovery, chosen: recoveries.append((recovery, chosen)),
    )
    return trainer, recoveries, recorder


def test_recovery_from_a_checkpoint_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    config = settings(
        total_steps=4,
        micro_batch_size=4,
        gradient_accumulation_steps=1,
        lora_dropout=0.0,
        save_steps=2,
        eval_strategy="no",
    )
    full, none, _ = run_with_recovery(tmp_path / "full", config, None)
    assert none == []
    recovered, recoveries, recorder = run_with_recovery(
        tmp_path / "oom", config, OomTestHook(at_step=3, fits_micro_batch=2)
    )
    assert [r for r, _ in recoveries] == [
        OomRecovery(
            step=3,
            old_micro_batch=4,
            new_micro_batch=2,
            old_accumulation=1,
            new_accumulation=2,
            resumed_from_step=2,
        )
    ]
    assert recovered.settings.micro_batch_size == 2 and recovered.settings.gradient_accumulation_steps == 2
    assert recovered.resumed_from_step == 2 and recovered.state.step == 4
    # Steps 3 and 4 ran with half the micro-batch but the same samples: same losses and weights.
    assert [p["step"] for p in recorder.of("progress")] == [1, 2, 3, 4]
    assert [int(s) for s, _ in recovered.state.loss_history] == [1, 2, 3, 4]
    for (_, loss), (_, expected) in zip(recovered.state.loss_history, full.state.loss_history, strict=True):
        assert loss == pytest.approx(expected, abs=1e-5)
    assert recovered.state.trained_tokens == full.state.trained_tokens
    expected_weights = adapter_tensors(full)
    for name, tensor in adapter_tensors(recovered).items():
        torch.testing.assert_close(tensor, expected_weights[name], rtol=1e-4, atol=1e-6)
    # The last checkpoint records the new split, which a later resume accepts.
    checkpoint = newest_verified(tmp_path / "oom")
    assert checkpoint is not None and checkpoint.step == 4
    state = json.loads((checkpoint.path / "trainer_state.json").read_text())
    assert (state["micro_batch_size"], state["gradient_accumulation_steps"]) == (2, 2)


@pytest.mark.slow
def test_recovery_without_a_checkpoint_starts_over_and_halves_repeatedly(tmp_path: Path) -> None:
    config = settings(
        total_steps=2, micro_batch_size=8, lora_dropout=0.0, save_strategy="no", eval_strategy="no"
    )
    trainer, recoveries, _ = run_with_recovery(tmp_path, config, OomTestHook(at_step=1, fits_micro_batch=2))
    assert [(r.old_micro_batch, r.new_micro_batch, r.new_accumulation) for r, _ in recoveries] == [
        (8, 4, 4),
        (4, 2, 8),
    ]
    assert all(r.resumed_from_step == 0 for r, _ in recoveries)
    assert trainer.state.step == 2


def test_micro_batch_one_is_the_floor(tmp_path: Path) -> None:
    config = settings(total_steps=3, micro_batch_size=2, gradient_accumulation_steps=1, eval_strategy="no")
    with pytest.raises(TrainingOutOfMemory) as raised:
        run_with_recovery(tmp_path, config, OomTestHook(at_step=3, fits_micro_batch=0))
    assert raised.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert raised.value.message.startswith("OOM at step 3 with micro-batch 1")
    assert "enable training.gradient_checkpointing" in raised.value.message


def test_resume_accepts_another_split_of_the_same_effective_batch_only(tmp_path: Path) -> None:
    examples = make_examples(10)
    trainer = make_trainer(tmp_path, examples, settings(total_steps=2, save_steps=2), Recorder())
    trainer.setup()
    trainer.train()
    checkpoint = newest_verified(tmp_path)
    assert checkpoint is not None
    same = settings(total_steps=4, micro_batch_size=1, gradient_accumulation_steps=4)
    resumed = make_trainer(tmp_path, examples, same, Recorder())
    resumed.setup(checkpoint)
    assert resumed.resumed_from_step == 2
    other = settings(total_steps=4, micro_batch_size=1, gradient_accumulation_steps=2)
    with pytest.raises(CryptotuneError) as raised:
        make_trainer(tmp_path, examples, other, Recorder()).setup(checkpoint)
    assert "effective batch: 4 -> 2" in raised.value.message
    # A checkpoint from before step-wise data order (no data_order) cannot continue exactly.
    state_file = checkpoint.path / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["data_order"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(CryptotuneError) as raised:
        make_trainer(tmp_path, examples, dataclasses.replace(same), Recorder()).setup(checkpoint)
    assert "data order" in raised.value.message


def _job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str
) -> tuple[int, list[dict[str, Any]], Path]:
    data = write_records(tmp_path / "records.jsonl", 12)
    spec = make_spec(tmp_path, data=data, config=config_text(steps=4, save_steps=2))
    spec["fault_injection"] = {"oom": hook}
    code, events = run_inprocess(spec)
    return code, events, Path(spec["output_dir"])


def test_job_recovers_from_an_oom_and_ends_with_the_planned_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, events, out = _job(tmp_path, monkeypatch, "3:1")
    assert code == 0, of(events, "failed")
    plan = of(events, "plan")[0]
    assert (plan["steps"], plan["micro_batch_size"], plan["gradient_accumulation_steps"]) == (4, 2, 1)
    assert of(events, "oom_recovery") == [
        {
            "step": 3,
            "old_micro_batch": 2,
            "new_micro_batch": 1,
            "old_accumulation": 1,
            "new_accumulation": 2,
            "resumed_from_step": 2,
        }
    ]
    warning = next(w["message"] for w in of(events, "warning") if "out of memory" in w["message"])
    assert "at step 3 with micro-batch 2" in warning and "checkpoint step-000002" in warning
    assert [p["step"] for p in of(events, "progress")] == [1, 2, 3, 4]
    assert events[-1]["type"] == "result"
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 4 and report["effective_batch_size"] == 2
    assert (report["micro_batch_size"], report["gradient_accumulation_steps"]) == (1, 2)
    assert report["oom_recoveries"] == of(events, "oom_recovery")
    assert "| Out-of-memory recoveries | step 3: micro-batch 2 → 1 |" in (out / "report.md").read_text()
    # The new split is persisted, so a resumed job plans with it (and its checkpoints accept it).
    state = json.loads((out / "pipeline_state.json").read_text())
    assert state["plan"]["micro_batch_size"] == 1 and len(state["oom_recoveries"]) == 1
    assert "per_device_train_batch_size: 1" in (out / "resolved_config.yaml").read_text()


def test_job_fails_with_a_clear_reason_when_micro_batch_one_runs_out_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, events, _ = _job(tmp_path, monkeypatch, "3:0")
    assert code == 1
    assert [(r["old_micro_batch"], r["new_micro_batch"]) for r in of(events, "oom_recovery")] == [(2, 1)]
    failed = of(events, "failed")
    assert failed and failed[0]["stage"] == "training"
    assert failed[0]["reason"].startswith("OOM at step 3 with micro-batch 1")
