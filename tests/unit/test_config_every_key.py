"""No accepted config key is silently ignored: changing any key changes the plan, the behaviour or the files.

Every key of the schema must be listed in exactly one probe table below (a new key fails
``test_every_schema_key_has_a_probe`` until it is given one). Each probe runs the code that consumes
the key — the planner and trainer settings, model resolution, the submission policy, the worker's
dry run or a short real run — once with the default and once with another value, and the two
observations must differ.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from cryptotune_daemon.config import SECTIONS, CryptotuneConfig, load_config
from cryptotune_daemon.config.system_paths import WORKER_LOG_FILE
from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.jobs.submission import SubmitRequest, prepare
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore
from cryptotune_daemon.training.models import ModelSource, model_facts, resolve_model
from cryptotune_daemon.training.planner import DeviceInfo, plan_training
from cryptotune_daemon.worker.pipeline import Pipeline, plan_request, trainer_settings
from cryptotune_daemon.worker.spec import parse_spec
from cryptotune_daemon.worker.state import PIPELINE_STATE_FILE

ALL_KEYS = sorted(f"{section}.{name}" for section, model in SECTIONS.items() for name in model.model_fields)
BASE: dict[str, Any] = {"model.model_name": "builtin:tiny-qwen3"}


def config_of(settings: dict[str, Any]) -> CryptotuneConfig:
    tree: dict[str, dict[str, Any]] = {}
    for key, value in {**BASE, **settings}.items():
        section, name = key.split(".")
        tree.setdefault(section, {})[name] = value
    return load_config(yaml.safe_dump(tree))


# -- the planner and the trainer's settings (config → resolved settings) ------------------------------

GPU = DeviceInfo(
    kind="cuda", name="test GPU", memory_total_mb=81_920, memory_budget_mb=70_000, bf16_supported=True
)
TRAIN_LENGTHS = [300 + 7 * i for i in range(120)]


def resolved_settings(config: CryptotuneConfig) -> dict[str, Any]:
    facts = model_facts(ModelSource(name="builtin:tiny-qwen3", kind="builtin"))
    plan = plan_training(plan_request(config, 1), facts, GPU, TRAIN_LENGTHS)
    return {"plan": asdict(plan), "trainer": asdict(trainer_settings(config, plan))}


# key → (other value, extra settings for both runs)
PLANNED: dict[str, tuple[Any, dict[str, Any]]] = {
    "training.num_train_epochs": (1, {}),
    "training.max_steps": (5, {}),
    "training.per_device_train_batch_size": ("auto", {}),
    "training.gradient_accumulation_steps": (8, {}),
    "training.learning_rate": ("1.0e-4", {}),
    "training.weight_decay": (0.0, {}),
    "training.warmup_ratio": (0.3, {}),
    "training.lr_scheduler_type": ("linear", {}),
    "training.max_grad_norm": (0.5, {}),
    "training.fp16": (True, {"training.bf16": False}),
    "training.bf16": (False, {}),
    "training.gradient_checkpointing": (True, {}),
    "training.save_strategy": ("epoch", {}),
    "training.save_steps": (50, {}),
    "training.eval_strategy": ("epoch", {}),
    "training.eval_steps": (50, {}),
    "training.logging_steps": (1, {}),
    "training.max_seq_length": (1024, {}),
    "training.seed": (7, {}),
    "lora.rank": (16, {}),
    "lora.alpha": (32, {}),
    "lora.dropout": (0.05, {}),
    "lora.target_modules": (["q_proj", "v_proj", "gate_proj"], {}),
    "lora.optimization_strategy": ("memory", {}),
}


@pytest.mark.parametrize("key", sorted(PLANNED))
def test_planned_keys_change_the_resolved_settings(key: str) -> None:
    other, extra = PLANNED[key]
    before = resolved_settings(config_of(extra))
    after = resolved_settings(config_of({**extra, key: other}))
    assert before != after, f"{key}: {other!r} resolves to the same plan and trainer settings as the default"


# -- model resolution and the submission policy --------------------------------------------------------


def fake_hub_cache(root: Path, repo: str, refs: dict[str, str]) -> Path:
    """A Hugging Face cache holding ``repo`` at each ref (config.json and a weights file per snapshot)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    for ref, commit in refs.items():
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
        snapshot = folder / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
        (snapshot / "model.safetensors").write_bytes(b"")
    return root


def test_model_name_and_revision_choose_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    cache = fake_hub_cache(tmp_path / "hub", "org/model", {"main": "a" * 40, "v2": "b" * 40})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    default = config_of({})
    hub = config_of({"model.model_name": "org/model"})
    hub_v2 = config_of({"model.model_name": "org/model", "model.model_revision": "v2"})

    def source(config: CryptotuneConfig) -> ModelSource:
        return resolve_model(config.model.model_name, revision=config.model.model_revision)

    assert source(default).kind == "builtin" and source(hub).kind == "hub"  # model.model_name
    assert source(hub).path != source(hub_v2).path  # model.model_revision
    assert source(hub_v2).path is not None and source(hub_v2).path.name == "b" * 40


@pytest.fixture
def submit_env(tmp_path: Path) -> Callable[..., Any]:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    settings = DaemonSettings(state_dir=tmp_path / "state", listen=(), allowed_output_roots=(allowed,))
    blobs = BlobStore(tmp_path / "blobs")
    with blobs.writer() as writer:
        writer.write(b'{"instruction": "q", "output": "a"}\n')
        digest = writer.commit().digest
    store = JobStore(tmp_path / "jobs.sqlite3")

    def submit(settings_: dict[str, Any], gpu_count: int = 0, *, remote: bool = False, **fields: Any) -> Any:
        tree: dict[str, dict[str, Any]] = {}
        for key, value in {**BASE, **settings_}.items():
            section, name = key.split(".")
            tree.setdefault(section, {})[name] = value
        request = SubmitRequest(
            request_id="r1",
            data_digest=digest,
            data_name="d.jsonl",
            config_yaml=yaml.safe_dump(tree),
            config_name="c.yaml",
            output_dir=fields.get("output_dir", ""),
            pipeline_id="",
            resume="",
            dry_run=True,
            client_cwd=str(allowed / "cwd"),
            remote=remote,
        )
        return prepare(request, settings=settings, store=store, blobs=blobs, gpu_count=gpu_count)

    submit.allowed = allowed  # type: ignore[attr-defined]
    return submit


def test_trust_remote_code_is_refused_without_the_daemon_flag(submit_env: Callable[..., Any]) -> None:
    submit_env({})
    with pytest.raises(CryptotuneError) as caught:
        submit_env({"model.trust_remote_code": True})
    assert "--allow-remote-code" in caught.value.message


def test_parallel_keys_change_the_world_size(submit_env: Callable[..., Any]) -> None:
    assert submit_env({}, gpu_count=4).spec["world_size"] == 1
    distributed = {"parallel.enable_distributed": True}
    assert submit_env(distributed, gpu_count=4).spec["world_size"] == 1
    assert submit_env({**distributed, "parallel.world_size": 2}, gpu_count=4).spec["world_size"] == 2
    assert submit_env({**distributed, "parallel.strategy": "auto"}, gpu_count=4).spec["world_size"] == 4


def test_system_output_dir_chooses_the_output_dir(submit_env: Callable[..., Any]) -> None:
    allowed: Path = submit_env.allowed  # type: ignore[attr-defined]
    assert submit_env({}).output_dir == allowed / "cwd" / "training_output"
    assert submit_env({"system.output_dir": "./elsewhere"}).output_dir == allowed / "cwd" / "elsewhere"
    assert submit_env({"system.output_dir": str(allowed / "abs")}).output_dir == allowed / "abs"
    option = str(allowed / "option")
    assert submit_env({"system.output_dir": "./elsewhere"}, output_dir=option).output_dir == Path(option)


# -- the worker: a dry run per data and system key, one short real run for the evaluation keys --------

DRY_RUN_KEYS: dict[str, Any] = {
    "data.train_split_ratio": 0.5,
    "data.eval_split_ratio": 0.5,
    "data.max_samples": 8,
    "data.shuffle_data": False,
    "data.data_format": "sharegpt",
    "system.logging_dir": "./elsewhere-logs",
    "system.cache_dir": "./tokens",
    "system.log_level": "DEBUG",
}
RUN_KEYS = {"training.eval_sample_size": 1, "training.max_new_tokens": 2}
SPLIT_PAIRS = {
    "data.train_split_ratio": "data.eval_split_ratio",
    "data.eval_split_ratio": "data.train_split_ratio",
}


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


# -- the table itself ---------------------------------------------------------------------------------

OTHER_PROBES = {
    "model.model_name": test_model_name_and_revision_choose_the_weights,
    "model.model_revision": test_model_name_and_revision_choose_the_weights,
    "model.trust_remote_code": test_trust_remote_code_is_refused_without_the_daemon_flag,
    "parallel.strategy": test_parallel_keys_change_the_world_size,
    "parallel.world_size": test_parallel_keys_change_the_world_size,
    "parallel.enable_distributed": test_parallel_keys_change_the_world_size,
    "system.output_dir": test_system_output_dir_chooses_the_output_dir,
}


def test_every_schema_key_has_a_probe() -> None:
    tables = [set(PLANNED), set(DRY_RUN_KEYS), set(RUN_KEYS), set(OTHER_PROBES)]
    covered = set().union(*tables)
    assert sorted(covered) == ALL_KEYS, f"keys without a probe: {sorted(set(ALL_KEYS) - covered)}"
    assert sum(len(table) for table in tables) == len(covered), "a key is probed twice"
