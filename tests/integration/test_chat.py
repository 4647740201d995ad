"""Chat and export through a real daemon: streamed pieces, --compare, cancel frees the model, vLLM checks."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cryptotune import Client
from cryptotune.errors import FailedPrecondition, InvalidArgument, NotFound
from cryptotune.types import ChatDone, ChatPiece
from tests.helpers.jobs import SAMPLE, wait_terminal, write_config, write_data
from tests.integration.conftest import RunningDaemon, run_cli, short_tmp_dir, start_daemon, stop_daemon

IDLE_TIMEOUT_S = 6
REASONING, ANSWER = "先想一想。", "答案是四。"


def write_short_answers(path: Path, count: int = 16) -> Path:
    """Records that all reason and answer the same few words: a tiny model learns to close its reasoning."""
    records = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:count]]
    for record in records:
        record["thinking"] = f"<thinking>{REASONING}</thinking>"
        record["output"] = ANSWER
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


INFERENCE_MODULE = "cryptotune_daemon.worker.inference"
WAIT_S = 300.0


@pytest.fixture(scope="module")
def trained() -> Iterator[tuple[RunningDaemon, Path]]:
    """A daemon (short chat idle timeout) and one succeeded job, ``chat-1``, on builtin:tiny-qwen3."""
    root = short_tmp_dir()
    daemon = start_daemon(
        root / "state", "--chat-idle-timeout", str(IDLE_TIMEOUT_S), "--max-chats", "2", "--warm-workers", "1"
    )
    try:
        with daemon.client() as client:
            job = client.submit(
                write_short_answers(root / "data.jsonl"),
                write_config(root / "config.yaml", epochs=100, max_steps=40, save_steps=100),
                output_dir=root / "out",
                pipeline_id="chat-1",
            )
            assert wait_terminal(client, job.job_id) == "succeeded", daemon.log()
        yield daemon, root
    finally:
        stop_daemon(daemon)
        shutil.rmtree(root, ignore_errors=True)


def inference_workers(daemon: RunningDaemon) -> list[psutil.Process]:
    """The daemon's inference worker processes (what `ps` shows a user)."""
    found = []
    for child in psutil.Process(daemon.process.pid).children(recursive=True):
        try:
            if INFERENCE_MODULE in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:
            continue
    return found


def wait_until_no_worker(daemon: RunningDaemon) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if not inference_workers(daemon):
            return
        time.sleep(0.2)
    raise AssertionError("the inference worker was not freed")


def test_chat_json_streams_pieces_then_reasoning_and_answer(trained: tuple[RunningDaemon, Path]) -> None:
    daemon, _ = trained
    result = run_cli(
        "chat",
        "chat-1",
        "--prompt",
        "什么是SM4？",
        "--json",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
        address=daemon.address,
    )
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    pieces, final = lines[:-1], lines[-1]
    assert len(pieces) >= 3  # streamed piece by piece, before the end
    assert all(
        p["model"] == "tuned" and p["channel"] in ("reasoning", "answer") and p["text"] for p in pieces
    )
    assert set(final) >= {"reasoning", "answer"}
    reasoning = "".join(p["text"] for p in pieces if p["channel"] == "reasoning")
    answer = "".join(p["text"] for p in pieces if p["channel"] == "answer")
    assert final["reasoning"] == reasoning.strip("\n")
    assert final["answer"] == answer.strip("\n")
    assert final["finish_reason"] in ("stop", "length")
    # The fine-tuned model learnt to close its reasoning: the two channels are told apart.
    assert reasoning.strip() and answer.strip()
    # Greedy decoding is reproducible, and the model stays loaded between chats.
    assert len(inference_workers(daemon)) == 1
    again = run_cli(
        "chat",
        "chat-1",
        "--prompt",
        "什么是SM4？",
        "--json",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
        address=daemon.address,
    )
    assert json.loads(again.stdout.splitlines()[-1]) == final


def test_compare_answers_with_both_models(trained: tuple[RunningDaemon, Path]) -> None:
    daemon, _ = trained
    result = run_cli(
        "chat",
        "chat-1",
        "-p",
        "RSA 的安全性基于什么？",
        "--compare",
        "--json",
        "--max-new-tokens",
        "6",
        "--seed",
        "7",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--temperature",
        "0.7",
        address=daemon.address,
    )
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    final = lines[-1]
    assert {"reasoning", "answer"} <= set(final) and {"reasoning", "answer"} <= set(final["base"])
    models = [p["model"] for p in lines[:-1]]
    assert "tuned" in models and "base" in models
    assert models.index("base") > max(
        i for i, m in enumerate(models) if m == "tuned"
    )  # tuned first, then base
    shown = run_cli(
        "chat",
        "chat-1",
        "-p",
        "RSA 的安全性基于什么？",
        "--compare",
        "--max-new-tokens",
        "4",
        address=daemon.address,
    )
    assert shown.exit_code == 0, shown.stderr
    assert "fine-tuned" in shown.stdout and "base model" in shown.stdout


@pytest.mark.slow
def test_cancelled_stream_frees_the_model_and_idle_models_are_freed(
    trained: tuple[RunningDaemon, Path],
) -> None:
    daemon, _ = trained
    with Client(daemon.address) as client:
        stream = client.generate(
            "chat-1", "解释一下椭圆曲线密码学。", max_new_tokens=4000, temperature=1.0, seed=1
        )
        pieces = 0
        for event in stream:
            if isinstance(event, ChatPiece):
                pieces += 1
                if pieces == 3:
                    break
        assert inference_workers(daemon)
        stream.close()  # what Ctrl-C does: the RPC is cancelled
        wait_until_no_worker(daemon)
        # A finished chat keeps the model loaded; nobody using it for --chat-idle-timeout frees it.
        events = list(client.generate("chat-1", "什么是SM3？", max_new_tokens=3, temperature=0))
        assert isinstance(events[-1], ChatDone)
        assert inference_workers(daemon)
        wait_until_no_worker(daemon)


def test_chat_and_export_errors_are_clear(trained: tuple[RunningDaemon, Path], tmp_path: Path) -> None:
    daemon, _ = trained
    with Client(daemon.address) as client:
        with pytest.raises(NotFound):
            list(client.generate("no-such-job", "hi"))
        dry = client.submit(
            write_data(tmp_path / "d.jsonl", count=8),
            write_config(tmp_path / "c.yaml"),
            output_dir=tmp_path / "dry",
            pipeline_id="chat-dry",
            dry_run=True,
        )
        wait_terminal(client, dry.job_id)
        with pytest.raises(FailedPrecondition, match="dry run"):
            list(client.generate("chat-dry", "hi"))
        with pytest.raises(InvalidArgument, match="temperature"):
            list(client.generate("chat-1", "hi", temperature=5.0))
        with pytest.raises(InvalidArgument, match="context"):
            list(client.generate("chat-1", "密钥" * 45000, max_new_tokens=8))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    result = run_cli("export", "chat-1", str(busy), address=daemon.address)
    assert result.exit_code == 1 and "not empty" in result.stderr
    gguf = run_cli("export", "chat-1", str(tmp_path / "g"), "--gguf", address=daemon.address)
    assert gguf.exit_code == 1 and "GGUF" in gguf.stderr and "out of scope" in gguf.stderr
    usage = run_cli("chat", "chat-1", "--json", address=daemon.address)
    assert usage.exit_code == 2 and "--prompt" in usage.stderr


def test_adapter_export_reports_what_vllm_refuses(
    trained: tuple[RunningDaemon, Path], tmp_path: Path
) -> None:
    daemon, root = trained
    config_path = root / "out" / "adapter" / "adapter_config.json"
    original = config_path.read_text()
    adapter_config = json.loads(original)
    adapter_config["modules_to_save"] = ["lm_head"]
    config_path.write_text(json.dumps(adapter_config))
    try:
        result = run_cli("--json", "export", "chat-1", str(tmp_path / "a"), address=daemon.address)
    finally:
        config_path.write_text(original)
    assert result.exit_code == 0, result.stderr
    serving = result.json()["serving"]  # type: ignore[index]
    assert serving["loadable"] is False and serving["command"] is None
    assert any("modules_to_save" in p for p in serving["problems"])
    shown = run_cli("export", "chat-1", str(tmp_path / "b"), address=daemon.address)
    assert "vLLM would not load this adapter" in shown.stdout
    assert (tmp_path / "b" / "adapter" / "adapter_config.json").is_file()
