"""No accepted config key is silently ignored: the keys whose effect only a worker run shows.

The probe tables live in tests/helpers/config_keys.py; tests/unit/test_config_every_key.py checks that
every schema key has exactly one probe.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from cryptotune_daemon.config.system_paths import WORKER_LOG_FILE
from cryptotune_daemon.worker.pipeline import Pipeline
from cryptotune_daemon.worker.spec import parse_spec
from cryptotune_daemon.worker.state import PIPELINE_STATE_FILE
from tests.helpers.config_keys import BASE, DRY_RUN_KEYS, RUN_KEYS, SPLIT_PAIRS

# -- the worker: a dry run per data and system key, one short real run for the evaluation keys --------


def write_records(path: Path, count: int = 16) -> Path:
    rows = [
        {
            "instruction": f"什么是第 {i} 种分组密码模式？",
            "output": f"第 {i} 种模式的答案。",
            "difficulty": i % 4 + 1,
        }
        for i in range(count)
    ]
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")
    return path


def run_worker(root: Path, settings: dict[str, Any], *, dry_run: bool = True) -> dict[str, Any]:
    """Runs the pipeline in this process; returns what a user can see: state, events and files."""
    tree: dict[str, dict[str, Any]] = {}
    base = {**BASE, "training.max_steps": 1, "training.max_seq_length": 256, "data.data_format": "auto"}
    for key, value in {**base, **settings}.items():
        section, name = key.split(".")
        tree.setdefault(section, {})[name] = value
    root.mkdir(parents=True)
    out = root / "out"
    spec = {
        "job_id": "job-1",
        "pipeline_id": "pipe-1",
        "data_path": str(write_records(root / "records.jsonl")),
        "data_name": "records.jsonl",
        "config_yaml": yaml.safe_dump(tree),
        "config_name": "config.yaml",
        "output_dir": str(out),
        "state_dir": str(root.parent / "state"),  # shared: the tokenizer is built once
        "dry_run": dry_run,
        "resume": None,
        "device": "cpu",
        "events_path": str(root / "events.jsonl"),
    }
    root_logger = logging.getLogger()
    level, handlers = root_logger.level, list(root_logger.handlers)
    try:
        code = Pipeline(parse_spec(spec)).run()
    finally:
        for handler in list(root_logger.handlers):
            if handler not in handlers:
                root_logger.removeHandler(handler)
                handler.close()
        root_logger.setLevel(level)
    events = [json.loads(line) for line in (root / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    state = (
        json.loads((out / PIPELINE_STATE_FILE).read_text()) if (out / PIPELINE_STATE_FILE).exists() else {}
    )
    files = sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "checkpoint" not in str(p)
    )
    logs = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*.log")}
    return {"code": code, "events": events, "state": state, "files": files, "logs": logs}


def observed(run: dict[str, Any]) -> Any:
    results = run["state"]  # the fingerprint of the config itself is left out: it always differs
    failures = [e["data"].get("reason", "")[:80] for e in run["events"] if e["type"] == "failed"]
    debug_lines = sum(line.count(" DEBUG ") for line in run["logs"].values())
    return (
        run["code"],
        results.get("split"),
        results.get("data_stats"),
        run["files"],
        failures,
        debug_lines > 0,
    )


@pytest.fixture(scope="module")
def worker_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return tmp_path_factory.mktemp("every-key")


@pytest.fixture(scope="module")
def default_dry_run(worker_root: Path) -> dict[str, Any]:
    return run_worker(worker_root / "default", {})


@pytest.mark.slow  # one worker dry run per key; test_system_keys_put_files_where_they_say runs in make test
@pytest.mark.parametrize("key", sorted(DRY_RUN_KEYS))
def test_data_and_system_keys_change_the_dry_run(
    key: str, worker_root: Path, default_dry_run: dict[str, Any]
) -> None:
    assert default_dry_run["code"] == 0, default_dry_run["events"][-1]
    settings = {key: DRY_RUN_KEYS[key]}
    if key in SPLIT_PAIRS:  # the two ratios must add up to 1
        settings[SPLIT_PAIRS[key]] = 0.5
    run = run_worker(worker_root / key, settings)
    assert observed(run) != observed(default_dry_run), f"{key} changed nothing a user can see"


def test_system_keys_put_files_where_they_say(worker_root: Path) -> None:
    run = run_worker(
        worker_root / "system",
        {"system.logging_dir": "./my-logs", "system.cache_dir": "./my-cache", "system.log_level": "debug"},
    )
    assert run["code"] == 0
    assert f"my-logs/{WORKER_LOG_FILE}" in run["files"]
    assert any(name.startswith("my-cache/tokenized/") for name in run["files"])
    assert " DEBUG " in run["logs"][f"my-logs/{WORKER_LOG_FILE}"]
    quiet = run_worker(worker_root / "quiet", {"system.log_level": "ERROR"})
    assert quiet["logs"][f"logs/{WORKER_LOG_FILE}"] == ""  # a clean dry run logs nothing at ERROR
    assert not any(name.startswith("my-cache") for name in quiet["files"])  # default: the daemon's cache


@pytest.mark.slow  # a real (one-step) training run
def test_evaluation_keys_change_the_generation_checks(worker_root: Path, qwen3_tokenizer: Any) -> None:
    run = run_worker(worker_root / "real-run", RUN_KEYS, dry_run=False)
    assert run["code"] == 0, run["events"][-1]
    (generation,) = [e["data"] for e in run["events"] if e["type"] == "generation_eval"]
    eval_records = len(run["state"]["split"]["eval"])
    assert eval_records > 1  # so the default (16) would have checked more than one
    assert generation["evaluated"] == 1  # training.eval_sample_size
    (sample,) = generation["samples"]  # training.max_new_tokens: 2 tokens (re-encoding may split one)
    assert len(qwen3_tokenizer.encode(sample["generated"], add_special_tokens=False)) <= 4, sample
