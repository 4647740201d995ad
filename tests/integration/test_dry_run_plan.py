"""A dry run's plan event: the memory estimate and the settings chosen for ``auto``."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.pipeline import config_text, make_spec, of, run_inprocess, write_records


def test_dry_run_plan_event_shows_the_estimate_and_the_choice(tmp_path: Path) -> None:
    config = config_text().replace("per_device_train_batch_size: 2", "per_device_train_batch_size: auto")
    config = config.replace("gradient_accumulation_steps: 1", "gradient_accumulation_steps: auto")
    spec = make_spec(tmp_path, data=write_records(tmp_path / "records.jsonl"), config=config, dry_run=True)
    code, events = run_inprocess(spec)
    assert code == 0
    plan = of(events, "plan")[0]
    assert plan["effective_batch_size"] == 16 and plan["packing"] is True
    assert plan["memory_estimate_mb"] <= plan["memory_budget_mb"]
    assert plan["memory_breakdown"].endswith(f"= {plan['memory_estimate_mb']:,} MB")
    assert f"micro-batch {plan['micro_batch_size']}" in plan["choice"] and "fp32" in plan["choice"]
    assert 0 < plan["longest_row_tokens"] <= 512 and plan["packed_rows"] >= 1
