"""No accepted config key is silently ignored: changing any key changes the plan, the behaviour or the files.

Every key of the schema must be listed in exactly one probe table (a new key fails
``test_every_schema_key_has_a_probe`` until it is given one). Each probe runs the code that consumes
the key — the planner and trainer settings, model resolution, the submission policy, or (in
tests/integration/test_config_every_key_runs.py) the worker's dry run or a short real run — once
with the default and once with another value, and the two observations must differ.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from cryptotune_daemon.config import SECTIONS, CryptotuneConfig, load_config, validate_config_text
from cryptotune_daemon.config.schema import generation_record_count
from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.jobs.submission import SubmitRequest, prepare
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore
from cryptotune_daemon.training.models import ModelSource, model_facts, resolve_model
from cryptotune_daemon.training.planner import DeviceInfo, plan_training
from cryptotune_daemon.worker.config_mapping import plan_request, trainer_settings
from tests.helpers.config_keys import DRY_RUN_KEYS, RUN_KEYS

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
    # The machines: the trainer's strategy shards inside each one (HSDP with sharded_data_parallel).
    "parallel.nodes": (2, {"parallel.world_size": 2, "parallel.enable_distributed": True}),
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
    assert submit_env({}, gpu_count=4).spec.world_size == 1
    distributed = {"parallel.enable_distributed": True}
    assert submit_env(distributed, gpu_count=4).spec.world_size == 1
    assert submit_env({**distributed, "parallel.world_size": 2}, gpu_count=4).spec.world_size == 2
    assert submit_env({**distributed, "parallel.strategy": "auto"}, gpu_count=4).spec.world_size == 4


def test_the_generation_bound_limits_the_checked_records() -> None:
    def checked(settings: dict[str, Any]) -> int:
        training = config_of(settings).training
        return generation_record_count(
            int(training.eval_sample_size), int(training.max_new_tokens), int(training.max_generated_tokens)
        )

    assert checked({}) > checked({"training.max_generated_tokens": 256}) >= 1


def test_report_to_chooses_where_metrics_are_written(tmp_path: Path) -> None:
    from cryptotune_daemon.training.reporting import open_reporting

    def written(settings: dict[str, Any]) -> list[str]:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        reporting = open_reporting(config_of(settings).training.report_to, out, "run", {})
        reporting.on_event("progress", {"step": 1, "loss": 2.5})
        reporting.close()
        return sorted(str(p.relative_to(out)).split("/")[0] for p in out.rglob("*") if p.is_file())

    assert written({}) == ["tensorboard"]  # the default
    assert written({"training.report_to": []}) == []


def test_model_hub_chooses_where_a_hub_id_is_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def failure(settings: dict[str, Any]) -> str:
        model = config_of({**settings, "model.model_name": "example-org/not-cached-anywhere"}).model
        with pytest.raises(CryptotuneError) as caught:
            resolve_model(str(model.model_name), hub=str(model.hub))
        return caught.value.message

    hugging_face, modelscope = failure({}), failure({"model.hub": "modelscope"})
    assert "Hugging Face cache" in hugging_face and "modelscope" not in hugging_face
    # ModelScope: its package (not installed here) or, where it is installed, its own offline error.
    assert "modelscope" in modelscope.lower() and "Hugging Face cache" not in modelscope


STRATEGY_KEYS = {
    "parallel.tensor_parallel_size": 2,
    "parallel.pipeline_schedule": "gpipe",
    "parallel.pipeline_micro_batches": 8,
}


@pytest.mark.parametrize("key", sorted(STRATEGY_KEYS))
def test_strategy_keys_are_used_or_warned_about(key: str) -> None:
    # Under a strategy that does not use it, a changed strategy key is named in a warning
    # (never silently ignored); the strategies that use it are covered by the planner's tests.
    section, name = key.split(".")
    text = yaml.safe_dump(
        {"model": {"model_name": "builtin:tiny-qwen3"}, section: {name: STRATEGY_KEYS[key]}}
    )
    report = validate_config_text(text)
    assert report.valid
    assert [w.path for w in report.warnings if "only used by" in w.message] == [key]


def test_system_output_dir_chooses_the_output_dir(submit_env: Callable[..., Any]) -> None:
    allowed: Path = submit_env.allowed  # type: ignore[attr-defined]
    assert submit_env({}).output_dir == allowed / "cwd" / "training_output"
    assert submit_env({"system.output_dir": "./elsewhere"}).output_dir == allowed / "cwd" / "elsewhere"
    assert submit_env({"system.output_dir": str(allowed / "abs")}).output_dir == allowed / "abs"
    option = str(allowed / "option")
    assert submit_env({"system.output_dir": "./elsewhere"}, output_dir=option).output_dir == Path(option)


# -- the table itself ---------------------------------------------------------------------------------

OTHER_PROBES = {
    "model.model_name": test_model_name_and_revision_choose_the_weights,
    "model.model_revision": test_model_name_and_revision_choose_the_weights,
    "model.trust_remote_code": test_trust_remote_code_is_refused_without_the_daemon_flag,
    "parallel.strategy": test_parallel_keys_change_the_world_size,
    "parallel.world_size": test_parallel_keys_change_the_world_size,
    "parallel.enable_distributed": test_parallel_keys_change_the_world_size,
    "system.output_dir": test_system_output_dir_chooses_the_output_dir,
    "training.max_generated_tokens": test_the_generation_bound_limits_the_checked_records,
    "training.report_to": test_report_to_chooses_where_metrics_are_written,
    "model.hub": test_model_hub_chooses_where_a_hub_id_is_fetched,
    **dict.fromkeys(STRATEGY_KEYS, test_strategy_keys_are_used_or_warned_about),
}


def test_every_schema_key_has_a_probe() -> None:
    tables = [set(PLANNED), set(DRY_RUN_KEYS), set(RUN_KEYS), set(OTHER_PROBES)]
    covered = set().union(*tables)
    assert sorted(covered) == ALL_KEYS, f"keys without a probe: {sorted(set(ALL_KEYS) - covered)}"
    assert sum(len(table) for table in tables) == len(covered), "a key is probed twice"
