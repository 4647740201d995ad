"""The worker pipeline end to end on builtin:tiny-qwen3: stages, outputs, dry run, refusals, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from cryptotune_daemon.training.checkpoints import newest_verified
from cryptotune_daemon.training.report import REQUIRED_KEYS
from cryptotune_daemon.worker.pipeline import EXIT_CANCELLED, Pipeline
from cryptotune_daemon.worker.spec import parse_spec
from cryptotune_daemon.worker.state import STAGES, read_state
from tests.helpers.checkpoints import list_checkpoints
from tests.helpers.pipeline import (
    REPO,
    adapter_weights,
    config_text,
    make_spec,
    of,
    read_events,
    run_inprocess,
    write_records,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run, shared by the tests that inspect its outputs or compare against it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("full")
    data = write_records(root / "records.jsonl")
    spec = make_spec(root, data=data, config=config_text())
    pipeline = Pipeline(parse_spec(spec))
    code = pipeline.run()
    events = read_events(Path(spec["events_path"]))
    # The trained model as the pipeline held it when it wrote the adapter: the reference for reloads.
    probe_ids = trained_logits = None
    if code == 0:
        probe_ids = torch.tensor([list(pipeline.ctx.data.eval[0].input_ids)])
        pipeline.ctx.model.eval()
        with torch.no_grad():
            trained_logits = pipeline.ctx.model(input_ids=probe_ids).logits
    del pipeline
    return {
        "code": code,
        "events": events,
        "spec": spec,
        "out": Path(spec["output_dir"]),
        "data": data,
        "probe_ids": probe_ids,
        "trained_logits": trained_logits,
    }


def test_full_run_emits_stages_in_order_and_ends_with_result(full_run: dict[str, Any]) -> None:
    events = full_run["events"]
    assert full_run["code"] == 0, of(events, "failed")
    stage_events = [(e["type"], e["data"]["stage"]) for e in events if e["type"].startswith("stage_")]
    expected = [(kind, stage) for stage in STAGES for kind in ("stage_started", "stage_completed")]
    assert stage_events == expected
    assert events[-1]["type"] == "result"
    assert all(isinstance(e["ts"], float) for e in events)
    plan = of(events, "plan")[0]
    assert plan["steps"] == 8 and plan["train_samples"] == 12 and plan["eval_samples"] == 4
    assert plan["precision"] == "fp32" and plan["device"] == "cpu" and plan["world_size"] == 1
    progress = of(events, "progress")
    assert [p["step"] for p in progress] == list(range(1, 9))
    assert all(p["tokens_per_second"] > 0 and p["eta_seconds"] >= 0 for p in progress)
    assert progress[-1]["eta_seconds"] == 0
    assert [c["step"] for c in of(events, "checkpoint")] == [2, 4, 6, 8]
    # mid-training evals at steps 3 and 6, then the evaluation stage's at the final step
    assert [e["step"] for e in of(events, "eval")] == [3, 6, 8]
    generation = of(events, "generation_eval")[0]
    assert 0.0 <= generation["thinking_format_rate"] <= 1.0
    assert 0.0 <= generation["crypto_term_recall"] <= 1.0
    assert len(generation["samples"]) == 2


def test_full_run_writes_report_adapter_and_state(full_run: dict[str, Any]) -> None:
    out: Path = full_run["out"]
    report = json.loads((out / "report.json").read_text())
    assert set(REQUIRED_KEYS) <= set(report)
    assert report["pipeline_id"] == "pipe-1" and report["model"] == "builtin:tiny-qwen3"
    assert report["steps"] == 8 and report["train_samples"] == 12 and report["eval_samples"] == 4
    for key in ("train_loss_first", "train_loss_last", "eval_loss", "perplexity", "tokens_per_second"):
        assert isinstance(report[key], float) and report[key] > 0, key
    assert report["perplexity"] == pytest.approx(float(torch.tensor(report["eval_loss"]).exp()), rel=1e-6)
    # Every difficulty with eval samples has its loss and its perplexity, exp(loss).
    state = read_state(out)
    assert state is not None
    eval_difficulties = {str(i % 4 + 1) for i in state.results["split"]["eval"]}
    losses, perplexities = report["eval_loss_by_difficulty"], report["perplexity_by_difficulty"]
    assert eval_difficulties and set(losses) == set(perplexities) == eval_difficulties
    for difficulty, loss in losses.items():
        assert perplexities[difficulty] == pytest.approx(math.exp(loss), rel=1e-9), difficulty
    final_eval = of(full_run["events"], "eval")[-1]
    assert final_eval["eval_loss_by_difficulty"] == losses
    assert final_eval["perplexity_by_difficulty"] == perplexities
    markdown = (out / "report.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| Perplexity by difficulty |"))
    for difficulty, value in perplexities.items():
        assert f"{difficulty}: {value:.4g}" in row
    assert 0.0 <= report["thinking_format_rate"] <= 1.0 and 0.0 <= report["crypto_term_recall"] <= 1.0
    # The base model (adapter disabled) is scored on the same split; training lowered the loss.
    base = report["base"]
    assert set(base) == {
        "eval_loss",
        "eval_loss_by_difficulty",
        "perplexity",
        "thinking_format_rate",
        "term_recall",
        "length_cap_rate",
    }
    assert set(base["eval_loss_by_difficulty"]) == set(losses)
    assert report["eval_loss"] < base["eval_loss"]
    assert 0.0 <= base["length_cap_rate"] <= 1.0 and 0.0 <= report["length_cap_rate"] <= 1.0
    assert of(full_run["events"], "comparison")[-1]["base"] == base
    assert "| | base | fine-tuned |" in markdown
    assert report["peak_memory_mb"] > 0 and report["wall_seconds"] > 0
    assert set(report["stage_seconds"]) == set(STAGES)
    assert report["resumed_from_step"] is None
    assert (report["precision"], report["device"], report["world_size"]) == ("fp32", "cpu", 1)
    assert report["adapter_path"] == str(out / "adapter")
    assert "![loss](loss_curve.png)" in markdown
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "resolved_config.yaml").read_text().count("per_device_train_batch_size: 2") == 1
    assert (out / "adapter" / "adapter_config.json").exists() and (
        out / "adapter" / "tokenizer.json"
    ).exists()
    assert all(state.completed(s) for s in STAGES)
    assert state.hashes.data and state.hashes.config and state.hashes.tokenizer
    assert [c.step for c in list_checkpoints(out)] == [2, 4, 6, 8]
    final = newest_verified(out)
    assert final is not None and final.hashes == state.hashes
    for name, tensor in adapter_weights(out / "adapter").items():
        assert torch.equal(tensor, adapter_weights(final.path / "adapter")[name])


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_written_adapter_reloads_onto_a_fresh_base_with_the_trained_logits(full_run: dict[str, Any]) -> None:
    from peft import PeftModel

    from cryptotune_daemon.training.models import load_base_model, resolve_model

    assert full_run["code"] == 0, of(full_run["events"], "failed")
    ids, trained = full_run["probe_ids"], full_run["trained_logits"]

    def fresh_base() -> Any:
        # As the pipeline loads builtin:tiny-qwen3 for a CPU run.
        source = resolve_model("builtin:tiny-qwen3")
        return load_base_model(source, dtype=torch.float32, device=torch.device("cpu"))

    reloaded = PeftModel.from_pretrained(fresh_base(), str(full_run["out"] / "adapter"))
    reloaded.eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits
        base = fresh_base()(input_ids=ids).logits
    torch.testing.assert_close(again, trained, atol=1e-5, rtol=0)
    # The adapter changed the model (otherwise the check above proves nothing).
    assert not torch.allclose(base, trained, atol=1e-3)


def test_dry_run_stops_after_config_gen_with_a_plan(tmp_path: Path) -> None:
    data = write_records(tmp_path / "records.jsonl")
    code, events = run_inprocess(make_spec(tmp_path, data=data, config=config_text(), dry_run=True))
    assert code == 0
    assert [e["data"]["stage"] for e in events if e["type"] == "stage_completed"] == [
        "init",
        "data_prep",
        "config_gen",
    ]
    plan = of(events, "plan")[0]
    assert plan["steps"] == 8 and plan["memory_estimate_mb"] > 0 and plan["model"] == "builtin:tiny-qwen3"
    assert events[-1]["type"] == "result" and events[-1]["data"]["dry_run"] is True
    out = tmp_path / "out"
    assert (out / "resolved_config.yaml").exists()
    assert not (out / "adapter").exists() and not (out / "checkpoints").exists()


def test_over_long_samples_are_refused_with_their_records(tmp_path: Path) -> None:
    long_record = json.dumps(
        {"instruction": "解释 AES。", "input": "", "output": "AES 是分组密码。" * 40, "thinking": ""},
        ensure_ascii=False,
    )
    data = write_records(tmp_path / "records.jsonl", 8, extra=[long_record])
    code, events = run_inprocess(make_spec(tmp_path, data=data, config=config_text(max_seq_length=120)))
    assert code == 1
    failed = of(events, "failed")[0]
    assert failed["stage"] == "data_prep"
    assert "exceed training.max_seq_length=120" in failed["reason"]
    assert "record 8 (line 9):" in failed["reason"] and "never truncated" in failed["reason"]
    state = read_state(tmp_path / "out")
    assert state is not None and state.stages["data_prep"]["status"] == "failed"


def test_invalid_records_fail_the_stage_with_line_numbers(tmp_path: Path) -> None:
    data = write_records(tmp_path / "records.jsonl", 6, extra=['{"instruction": "缺少回答"}', "not json"])
    code, events = run_inprocess(make_spec(tmp_path, data=data, config=config_text()))
    assert code == 1
    failed = of(events, "failed")[0]
    assert failed["stage"] == "data_prep"
    assert "line 7" in failed["reason"] and "line 8" in failed["reason"]
    assert "Traceback" not in failed["reason"]


def test_duplicates_are_dropped_with_a_warning(tmp_path: Path) -> None:
    data = write_records(tmp_path / "records.jsonl", 8)
    lines = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join([*lines, lines[0], lines[1]]) + "\n", encoding="utf-8")
    code, events = run_inprocess(make_spec(tmp_path, data=data, config=config_text(), dry_run=True))
    assert code == 0
    assert any("dropped 2 exact duplicate" in w["message"] for w in of(events, "warning"))
    assert of(events, "plan")[0]["train_samples"] + of(events, "plan")[0]["eval_samples"] == 8


def test_remote_code_is_refused(tmp_path: Path) -> None:
    data = write_records(tmp_path / "records.jsonl", 4)
    remote = config_text().replace(
        "model_name: builtin:tiny-qwen3", "model_name: builtin:tiny-qwen3\n  trust_remote_code: true"
    )
    code, events = run_inprocess(make_spec(tmp_path, data=data, config=remote, events="a.jsonl"))
    assert code == 1 and "--allow-remote-code" in of(events, "failed")[0]["reason"]


def test_uncached_hub_model_fails_with_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    data = write_records(tmp_path / "records.jsonl", 4)
    config = config_text().replace("builtin:tiny-qwen3", "example-org/not-cached-model")
    code, events = run_inprocess(make_spec(tmp_path, data=data, config=config))
    assert code == 1
    reason = of(events, "failed")[0]["reason"]
    assert (
        "not in the local Hugging Face cache" in reason and "download example-org/not-cached-model" in reason
    )


def test_resume_with_changed_data_or_config_is_refused(tmp_path: Path) -> None:
    data = write_records(tmp_path / "records.jsonl")
    assert run_inprocess(make_spec(tmp_path, data=data, config=config_text(), dry_run=True))[0] == 0
    resume = {"output_dir": str(tmp_path / "out"), "step": None}

    changed = write_records(tmp_path / "changed.jsonl", 15)
    code, events = run_inprocess(
        make_spec(tmp_path, data=changed, config=config_text(), resume=resume, events="a.jsonl")
    )
    assert code == 1
    reason = of(events, "failed")[0]["reason"]
    assert "cannot resume: the data file changed" in reason

    code, events = run_inprocess(
        make_spec(tmp_path, data=data, config=config_text(lr=0.02), resume=resume, events="b.jsonl")
    )
    assert code == 1
    reason = of(events, "failed")[0]["reason"]
    assert "the config changed" in reason and "training.learning_rate: 0.01 -> 0.02" in reason


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "daemon"), env.get("PYTHONPATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.mark.slow
def test_sigterm_then_resume_continues_at_the_next_step(tmp_path: Path, full_run: dict[str, Any]) -> None:
    """Cancel a worker process mid-training, then resume: steps k+1..N, same final adapter."""
    spec = make_spec(tmp_path, data=full_run["data"], config=config_text())
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False))
    process = subprocess.Popen(
        [sys.executable, "-m", "cryptotune_daemon.worker", "--spec", str(spec_path)],
        env=_worker_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    events_path = Path(spec["events_path"])
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any(e["type"] == "checkpoint" for e in read_events(events_path)):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the worker ended before its first checkpoint"
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=240)  # a guard against a hang, not a speed requirement
    finally:
        if process.poll() is None:
            process.kill()
    assert code == EXIT_CANCELLED
    first_events = read_events(events_path)
    assert not of(first_events, "result")
    done_steps = [p["step"] for p in of(first_events, "progress")]
    out = tmp_path / "out"
    checkpoint = newest_verified(out)
    assert checkpoint is not None and checkpoint.step < 8
    state = read_state(out)
    assert state is not None and state.stages["training"]["status"] == "cancelled"

    # Leftovers a crash could leave behind are never used: a temp dir and a manifest-less step.
    (out / "checkpoints" / ".tmp-step-000099-abcd").mkdir()
    (out / "checkpoints" / "step-000007").mkdir(exist_ok=True)
    resume = {"output_dir": str(out), "step": None}
    code, events = run_inprocess(
        make_spec(
            tmp_path, data=full_run["data"], config=config_text(), resume=resume, events="resumed.jsonl"
        )
    )
    assert code == 0, of(events, "failed")
    assert [e["data"]["stage"] for e in events if e["type"] == "stage_skipped"] == [
        "init",
        "data_prep",
        "config_gen",
    ]
    assert any("step-000007 has no manifest.json" in w["message"] for w in of(events, "warning"))
    steps = [p["step"] for p in of(events, "progress")]
    assert steps == list(range(checkpoint.step + 1, 9))
    assert set(done_steps) >= set(range(1, checkpoint.step + 1))
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] == checkpoint.step and report["steps"] == 8
    # The resumed run's loss history (steps 1..8, none repeated) and adapter match the uninterrupted run.
    final = newest_verified(out)
    reference = newest_verified(full_run["out"])
    assert final is not None and reference is not None and final.step == reference.step == 8
    history = json.loads((final.path / "trainer_state.json").read_text())["loss_history"]
    expected = json.loads((reference.path / "trainer_state.json").read_text())["loss_history"]
    assert [s for s, _ in history] == list(range(1, 9))
    assert [loss for _, loss in history] == pytest.approx([loss for _, loss in expected], rel=1e-5)
    resumed_weights, reference_weights = (
        adapter_weights(out / "adapter"),
        adapter_weights(full_run["out"] / "adapter"),
    )
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in resumed_weights.items():
        torch.testing.assert_close(tensor, reference_weights[name], rtol=1e-5, atol=1e-6)


def test_resume_refuses_a_corrupt_chosen_checkpoint_and_skips_a_corrupt_newest(
    tmp_path: Path, full_run: dict[str, Any]
) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(full_run["out"], out)
    step8 = out / "checkpoints" / "step-000008" / "optimizer.pt"
    step8.write_bytes(step8.read_bytes()[:-3] + b"xyz")
    spec = make_spec(
        tmp_path,
        data=full_run["data"],
        config=config_text(),
        resume={"output_dir": str(out), "step": 8},
        events="a.jsonl",
    )
    code, events = run_inprocess(spec)
    assert code == 1
    assert "checkpoint at step 8 does not verify" in of(events, "failed")[0]["reason"]
    # The newest verified checkpoint is now step 6; resuming from it re-trains steps 7 and 8.
    spec = make_spec(
        tmp_path,
        data=full_run["data"],
        config=config_text(),
        resume={"output_dir": str(out), "step": 6},
        events="b.jsonl",
    )
    code, events = run_inprocess(spec)
    assert code == 0, of(events, "failed")
    assert [p["step"] for p in of(events, "progress")] == [7, 8]
    assert newest_verified(out) is not None


def test_resume_after_a_late_failure_restarts_at_the_first_incomplete_stage(
    tmp_path: Path, full_run: dict[str, Any]
) -> None:
    import shutil

    from cryptotune_daemon.worker.state import write_state

    out = tmp_path / "out"
    shutil.copytree(full_run["out"], out)
    state = read_state(out)
    assert state is not None
    state.invalidate_from("evaluation")
    state.mark("evaluation", "failed", error="boom")
    write_state(out, state)
    spec = make_spec(
        tmp_path, data=full_run["data"], config=config_text(), resume={"output_dir": str(out), "step": None}
    )
    code, events = run_inprocess(spec)
    assert code == 0, of(events, "failed")
    assert [e["data"]["stage"] for e in events if e["type"] == "stage_skipped"] == [
        "init",
        "data_prep",
        "config_gen",
        "training",
    ]
    assert [e["data"]["stage"] for e in events if e["type"] == "stage_completed"] == [
        "env_setup",
        "evaluation",
        "complete",
    ]
    assert not of(events, "progress")
    # Evaluating the restored adapter gives the uninterrupted run's eval loss.
    reference = json.loads((full_run["out"] / "report.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-6)
    assert report["train_loss_last"] == reference["train_loss_last"]


def test_worker_module_reports_an_unreadable_spec(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    spec = {"events_path": str(events), "pipeline_id": "p"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = subprocess.run(
        [sys.executable, "-m", "cryptotune_daemon.worker", "--spec", str(tmp_path / "spec.json")],
        env=_worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    failed = of(read_events(events), "failed")
    assert failed and "job spec is missing" in failed[0]["reason"]


def test_report_counts_the_generated_samples_and_tokens(full_run: dict[str, Any]) -> None:
    out: Path = full_run["out"]
    report = json.loads((out / "report.json").read_text())
    # eval_sample_size 2 at max_new_tokens 6, generated as one batch: 2 samples, at most 12 tokens.
    assert report["generation_evaluated"] == 2
    assert 2 <= report["generation_tokens"] <= 12
    summary = f"{report['generation_evaluated']} samples, {report['generation_tokens']} tokens generated"
    assert summary in (out / "report.md").read_text()
