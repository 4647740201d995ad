"""Bad input, round two, through a real daemon and the real CLI/SDK: bad text in records, LoRA targets
that do not exist, and the ``system`` section taking effect (output dir precedence, logs, log level)."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptotune import Client
from cryptotune.errors import InvalidArgument
from tests.integration.conftest import RunningDaemon, run_cli, short_tmp_dir, start_daemon, stop_daemon

GOOD = {"instruction": "什么是AES？", "output": "AES是对称分组密码。"}
CONFIG = """\
model:
  model_name: builtin:tiny-qwen3
training:
  max_steps: 1
  max_seq_length: 256
{extra}"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[RunningDaemon, str]]:
    root = short_tmp_dir()
    port = free_port()
    running = start_daemon(root / "state", "--listen", f"127.0.0.1:{port}", "--warm-workers", "1")
    try:
        yield running, f"127.0.0.1:{port}"
    finally:
        stop_daemon(running)
        shutil.rmtree(root, ignore_errors=True)


def write_wild_data(path: Path) -> Path:
    rows = [GOOD, {**GOOD, "instruction": "AES\ud800"}, {**GOOD, "output": "答\x00案"}, GOOD]
    # json.dumps escapes the surrogate as "\ud800", exactly as broken exporters write it.
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def wait_terminal(client: Client, job: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get_job(job).state
        if state in ("succeeded", "failed", "cancelled"):
            return state
        time.sleep(0.5)
    raise TimeoutError(f"job {job} did not finish")


def test_inspect_data_names_file_line_index_and_field(
    served: tuple[RunningDaemon, str], tmp_path: Path
) -> None:
    daemon, _ = served
    data = write_wild_data(tmp_path / "wild.jsonl")
    result = run_cli("--json", "inspect-data", str(data), address=daemon.address)
    report = json.loads(result.stdout)
    assert (report["records_total"], report["records_valid"], report["records_invalid"]) == (4, 2, 2)
    assert [(e["line"], e["index"], e["field"]) for e in report["errors"]] == [
        (2, 1, "instruction"),
        (3, 2, "output"),
    ]
    human = run_cli("inspect-data", str(data), address=daemon.address)
    text = human.stdout + human.stderr
    assert "U+D800" in text and "U+0000" in text and "internal error" not in text
    assert run_cli("list-gpus", address=daemon.address).exit_code == 0  # still serving


def test_training_refuses_bad_text_before_training(served: tuple[RunningDaemon, str], tmp_path: Path) -> None:
    daemon, _ = served
    data = write_wild_data(tmp_path / "wild.jsonl")
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(extra=""))
    with Client(daemon.address) as client:
        job = client.submit(data, config, output_dir=tmp_path / "out", dry_run=True)
        assert wait_terminal(client, job.job_id) == "failed"
        reason = client.get_job(job.job_id).failure_reason
    assert "wild.jsonl" in reason and "line 2" in reason and "instruction" in reason and "U+D800" in reason


def test_lora_target_typos_are_refused_with_did_you_mean(
    served: tuple[RunningDaemon, str], tmp_path: Path
) -> None:
    daemon, _ = served
    config = tmp_path / "typo.yaml"
    config.write_text(CONFIG.format(extra="lora:\n  target_modules: [q_proj, qkv_proj_typo, gate_prj]\n"))
    checked = run_cli("--json", "validate-config", str(config), address=daemon.address)
    assert checked.exit_code == 1
    errors = json.loads(checked.stdout)["errors"]
    assert [(e["path"], e["line"]) for e in errors] == [("lora.target_modules", 7)] * 2
    assert "qkv_proj_typo" in errors[0]["message"] and "did you mean 'gate_proj'?" in errors[1]["message"]
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    trained = run_cli("train", str(data), str(config), "--dry-run", address=daemon.address)
    assert trained.exit_code != 0 and "did you mean 'gate_proj'?" in trained.stdout + trained.stderr


def test_system_section_takes_effect(served: tuple[RunningDaemon, str], tmp_path: Path) -> None:
    daemon, _ = served
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({**GOOD, "instruction": f"问题{i}"}) for i in range(8)) + "\n")
    config = tmp_path / "system.yaml"
    system = "system:\n  output_dir: ./elsewhere\n  logging_dir: ./my-logs\n  log_level: debug\n"
    config.write_text(CONFIG.format(extra=system))
    result = run_cli("train", str(data), str(config), "--dry-run", address=daemon.address, cwd=tmp_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    out = tmp_path / "elsewhere"
    assert f"output dir: {out} (from the config's system.output_dir)" in result.stderr
    log = (out / "my-logs" / "worker.log").read_text()
    assert " DEBUG " in log
    # --output-dir wins over system.output_dir; without either, ./training_output of the client's cwd.
    option = run_cli(
        "train", str(data), str(config), "--dry-run", "-o", str(tmp_path / "opt"), address=daemon.address
    )
    assert f"output dir: {tmp_path / 'opt'} (from --output-dir)" in option.stderr
    plain = tmp_path / "plain.yaml"
    plain.write_text(CONFIG.format(extra=""))
    default = run_cli("train", str(data), str(plain), "--dry-run", address=daemon.address, cwd=tmp_path)
    assert f"output dir: {tmp_path / 'training_output'} (the default ./training_output)" in default.stderr
    assert (tmp_path / "training_output" / "logs" / "worker.log").exists()


def test_a_remote_client_must_not_use_a_relative_system_output_dir(
    served: tuple[RunningDaemon, str], tmp_path: Path
) -> None:
    daemon, address = served
    token = (daemon.state_dir / "auth_token").read_text().strip()
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(extra="system:\n  output_dir: ./relative\n"))
    with Client(address, token=token) as client, pytest.raises(InvalidArgument) as caught:
        client.submit(data, config, dry_run=True)
    assert "system.output_dir './relative' is relative" in str(caught.value)
    assert "-o/--output-dir" in str(caught.value)


def test_a_home_of_a_user_that_does_not_exist_is_a_clear_error(
    served: tuple[RunningDaemon, str], tmp_path: Path
) -> None:
    """``~nosuchuser`` (left as written by the shell) in an option or a config: never a traceback."""
    daemon, _ = served
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD, ensure_ascii=False) + "\n", encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(extra=""))
    missing_user = "~cryptotune-no-such-user-0"
    trained = run_cli("train", str(data), str(config), "-o", f"{missing_user}/out", address=daemon.address)
    assert trained.exit_code == 1 and "Traceback" not in trained.stderr
    assert f"no user 'cryptotune-no-such-user-0' on this machine to expand '{missing_user}'" in trained.stderr
    exported = run_cli("export", "some-job", f"{missing_user}/adapter", address=daemon.address)
    assert exported.exit_code == 1 and "Traceback" not in exported.stderr and "full path" in exported.stderr

    # As the model: validation names the key, and the job fails saying the directory does not exist.
    config.write_text(CONFIG.format(extra="").replace("builtin:tiny-qwen3", "~0"))
    checked = run_cli("validate-config", "--json", str(config), address=daemon.address)
    assert checked.exit_code in (0, 1) and "Traceback" not in checked.stderr, checked.stderr
    assert isinstance(checked.json(), dict)
    with Client(daemon.address) as client:
        job = client.submit(data, config, output_dir=tmp_path / "out", dry_run=True)
        assert wait_terminal(client, job.job_id) == "failed"
        assert "model directory ~0 does not exist" in client.get_job(job.job_id).failure_reason
