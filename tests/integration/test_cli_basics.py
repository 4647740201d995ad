"""The four seed commands, driven through the real CLI against a real daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import RunningDaemon, run_cli

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "client" / "cryptotune" / "examples" / "crypto_qa_zh.jsonl"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def test_init_config_writes_a_template_that_validates(daemon: RunningDaemon, tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    result = run_cli("init-config", "--output", str(target), address=daemon.address)
    assert result.exit_code == 0, result.stderr
    assert "model:" in target.read_text()
    again = run_cli("init-config", "-o", str(target), address=daemon.address)
    assert again.exit_code == 1
    assert "already exists" in again.stderr
    checked = run_cli("--json", "validate-config", str(target), address=daemon.address)
    assert checked.exit_code == 0, checked.stdout
    assert checked.json() == {"valid": True, "errors": [], "warnings": []}


def test_validate_config_reports_path_line_and_hint(daemon: RunningDaemon, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rate: 2e-4\n  lerning_rate: 0.1\nlora:\n  rank: 0\n")
    result = run_cli("--json", "validate-config", str(bad), address=daemon.address)
    assert result.exit_code == 1
    report = result.json()
    assert isinstance(report, dict)
    assert report["valid"] is False
    by_path = {e["path"]: e for e in report["errors"]}
    assert by_path["training.lerning_rate"]["line"] == 3
    assert "learning_rate" in by_path["training.lerning_rate"]["message"]
    assert by_path["lora.rank"]["line"] == 5
    human = run_cli("validate-config", str(bad), address=daemon.address)
    assert human.exit_code == 1
    assert "lerning_rate" in human.stdout and "Traceback" not in human.stdout + human.stderr


def test_validate_config_missing_file_is_a_clean_error(daemon: RunningDaemon, tmp_path: Path) -> None:
    result = run_cli("validate-config", str(tmp_path / "nope.yaml"), address=daemon.address)
    assert result.exit_code == 1
    assert "no such config file" in result.stderr
    assert "Traceback" not in result.stderr


def test_list_gpus_json_on_a_cpu_machine(daemon: RunningDaemon) -> None:
    result = run_cli("--json", "list-gpus", address=daemon.address)
    assert result.exit_code == 0, result.stderr
    payload = result.json()
    assert isinstance(payload, dict)
    assert payload["gpus"] == []
    assert payload["recommendation"]["precision"] == "fp32"
    assert "CPU" in payload["note"] or "CPU" in payload["recommendation"]["reason"]
    human = run_cli("list-gpus", address=daemon.address)
    assert human.exit_code == 0
    assert "Recommendation" in human.stdout


def test_inspect_data_json_on_the_bundled_sample(daemon: RunningDaemon) -> None:
    result = run_cli("--json", "inspect-data", str(SAMPLE), "--sample", "2", address=daemon.address)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json()
    assert isinstance(report, dict)
    assert report["format"] == "jsonl"
    assert report["records_total"] == report["records_valid"] >= 60
    assert report["records_invalid"] == 0
    assert set(report["difficulty_counts"]) >= {"1", "2", "3", "4"}
    assert report["token_lengths"]["max"] >= report["token_lengths"]["p50"] > 0
    assert len(report["samples"]) == 2
    sample = report["samples"][0]
    assert sample["rendered_text"].startswith("<|im_start|>user\n")
    assert sample["rendered_text"].endswith(sample["trained_text"] + "\n")
    assert sample["trained_text"].endswith("<|im_end|>")
    assert {"index", "line", "record", "tokens"} <= set(sample)


def test_inspect_data_reports_bad_records_with_lines(daemon: RunningDaemon, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    good = {"instruction": "什么是SM3？", "output": "SM3是国密哈希算法。", "difficulty": 1}
    lines = [
        json.dumps(good, ensure_ascii=False),
        "{not json",
        json.dumps({"instruction": "x", "difficulty": 9}),
    ]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_cli("--json", "inspect-data", str(data), address=daemon.address)
    assert result.exit_code == 1
    report = result.json()
    assert isinstance(report, dict)
    assert report["records_valid"] == 1
    assert report["records_invalid"] == 2
    assert {e["line"] for e in report["errors"]} == {2, 3}


def test_inspect_data_whole_file_errors_are_clean(daemon: RunningDaemon, tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("")
    result = run_cli("inspect-data", str(empty), address=daemon.address)
    assert result.exit_code == 1
    assert "empty.json" in result.stderr and "Traceback" not in result.stderr
    gbk = tmp_path / "gbk.jsonl"
    gbk.write_bytes(json.dumps({"instruction": "密码", "output": "答案"}, ensure_ascii=False).encode("gbk"))
    result = run_cli("--json", "inspect-data", str(gbk), address=daemon.address)
    assert result.exit_code == 1
    error = result.json()
    assert isinstance(error, dict)
    assert "UTF-8" in error["error"]["message"]


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="../shared/datasets is not present on this machine")
def test_inspect_data_llamafactory_toolcalls_reported_not_dropped(daemon: RunningDaemon) -> None:
    path = SHARED_DATASETS / "llamafactory_sharegpt_toolcall_zh_demo.json"
    result = run_cli("--json", "inspect-data", str(path), address=daemon.address)
    report = result.json()
    assert isinstance(report, dict)
    assert report["records_total"] == 300
    assert report["records_valid"] + report["records_invalid"] == 300
    assert len({e["index"] for e in report["errors"]}) == report["records_invalid"]
    assert result.exit_code == (1 if report["records_invalid"] else 0)


def test_explicit_unreachable_address_never_autostarts(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/nobody.sock"
    result = run_cli("list-gpus", address=address, timeout=60)
    assert result.exit_code == 3
    assert "cryptotuned --listen" in result.stderr
    assert not (tmp_path / "nobody.sock").exists()


def test_unregistered_command_is_a_usage_error(daemon: RunningDaemon) -> None:
    result = run_cli("frobnicate", address=daemon.address)
    assert result.exit_code == 2
    assert "No such command" in result.stderr


def test_inspect_data_with_an_unavailable_model_is_a_clean_error(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    result = run_cli(
        "inspect-data", str(SAMPLE), "--model", str(tmp_path / "no-model"), address=daemon.address
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert "no-model" in result.stderr


PROMPT_MARKER = "── prompt (masked, no loss) ──"
TRAINED_MARKER = "── trained (carries the loss) ──"


def test_inspect_data_samples_mark_prompt_and_trained_text_without_colour(daemon: RunningDaemon) -> None:
    report = run_cli("--json", "inspect-data", str(SAMPLE), "--sample", "1", address=daemon.address).json()
    assert isinstance(report, dict)
    sample = report["samples"][0]
    trained = sample["trained_text"]
    prompt = sample["rendered_text"][: -len(trained) - 1]

    for env in ({}, {"NO_COLOR": "1", "FORCE_COLOR": "1"}):
        piped = run_cli("inspect-data", str(SAMPLE), "--sample", "1", address=daemon.address, env=env)
        assert piped.exit_code == 0, piped.stderr
        if not env:
            assert "\x1b[" not in piped.stdout, "piped output is plain"
        assert piped.stdout.count(PROMPT_MARKER) == 1 and piped.stdout.count(TRAINED_MARKER) == 1
        after_prompt = piped.stdout.split(PROMPT_MARKER + "\n", 1)[1]
        shown_prompt, after_trained = after_prompt.split(TRAINED_MARKER + "\n", 1)
        assert shown_prompt == prompt
        assert after_trained.startswith(trained + "\n")
        assert "dim = prompt" not in piped.stdout
        assert "the ── lines mark the prompt" in piped.stdout

    colour = {"FORCE_COLOR": "1", "NO_COLOR": ""}
    coloured = run_cli("inspect-data", str(SAMPLE), "--sample", "1", address=daemon.address, env=colour)
    assert coloured.exit_code == 0, coloured.stderr
    assert PROMPT_MARKER not in coloured.stdout and "dim = prompt" in coloured.stdout
