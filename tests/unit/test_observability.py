"""Pure parts of observability: login codes, session cookies, per-job metric retention, the scalars a
job event carries, SSE resume positions, report_to and model.hub checks."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest

from cryptotune_daemon.config.report_targets import check_report_to
from cryptotune_daemon.config.validate import load_config, validate_config_text
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs.model import Job, JobState
from cryptotune_daemon.observability.dashboard.views import parse_last_event_id
from cryptotune_daemon.observability.login import LoginCodes, LoginRefused, Refusal, Sessions, cookie_name
from cryptotune_daemon.observability.metrics import reported_jobs
from cryptotune_daemon.training.hashing import config_hash
from cryptotune_daemon.training.reporting import scalars_of


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refusal(action: Callable[[], object]) -> Refusal:
    with pytest.raises(LoginRefused) as raised:
        action()
    return raised.value.refusal


def test_a_login_code_works_once_and_only_while_fresh() -> None:
    clock = Clock()
    codes = LoginCodes(ttl=60, clock=clock)
    code = codes.issue("job-1")
    assert codes.redeem(code) == "job-1"
    assert refusal(lambda: codes.redeem(code)) is Refusal.USED
    late = codes.issue("")
    clock.now += 61
    assert refusal(lambda: codes.redeem(late)) is Refusal.EXPIRED
    assert refusal(lambda: codes.redeem("guessed")) is Refusal.UNKNOWN
    assert refusal(lambda: codes.redeem("")) is Refusal.MISSING
    assert [r.status for r in (Refusal.MISSING, Refusal.UNKNOWN, Refusal.USED, Refusal.EXPIRED)] == [
        401,
        403,
        410,
        410,
    ]


def test_session_cookies_are_signed_and_expire() -> None:
    clock = Clock()
    sessions = Sessions(b"k" * 32, ttl=100, clock=clock)
    value = sessions.issue()
    assert sessions.valid(value)
    assert Sessions(b"k" * 32, clock=clock).valid(value)  # a restarted daemon with the same key
    assert not Sessions(b"x" * 32, clock=clock).valid(value)
    expiry, nonce, mac = value.split(".")
    assert not sessions.valid(f"{int(expiry) + 1000}.{nonce}.{mac}")  # a forged expiry
    assert not sessions.valid(None) and not sessions.valid("") and not sessions.valid("a.b")
    clock.now += 101
    assert not sessions.valid(value)
    assert cookie_name("/a") != cookie_name("/b")
    assert cookie_name("/a").startswith("cryptotune_session_")


def test_finished_jobs_drop_out_of_the_per_job_series() -> None:
    running = Job("job-r", "p1", "", JobState.RUNNING, updated_at=0)
    recent = Job("job-s", "p2", "", JobState.SUCCEEDED, updated_at=950)
    old = Job("job-o", "p3", "", JobState.FAILED, updated_at=100)
    shown = reported_jobs([running, recent, old, running], now=1000, retention=100)
    assert [j.job_id for j in shown] == ["job-r", "job-s"]


def test_event_scalars_use_the_pinned_tensorboard_tags() -> None:
    progress = {"step": 3, "loss": 2.5, "learning_rate": 1e-4, "grad_norm": 0.7, "tokens_per_second": 900.0}
    assert scalars_of("progress", progress) == {
        "train/loss": 2.5,
        "train/learning_rate": 1e-4,
        "train/grad_norm": 0.7,
        "train/tokens_per_second": 900.0,
    }
    evaluation = scalars_of(
        "eval",
        {"step": 3, "eval_loss": 2.0, "perplexity": None, "eval_loss_by_difficulty": {"1": 1.5, "3": 2.5}},
    )
    assert evaluation == {
        "eval/loss": 2.0,
        "eval/loss_by_difficulty/1": 1.5,
        "eval/loss_by_difficulty/3": 2.5,
    }
    gpus = scalars_of(
        "gpu_sample",
        {"gpus": [{"index": 0, "utilization_percent": 80, "memory_used_mb": 100, "memory_total_mb": 200}]},
    )
    assert gpus == {"gpu/0/memory_used_mb": 100.0, "gpu/0/utilization_percent": 80.0}
    assert scalars_of("log", {"message": "hi"}) == {}


def test_event_streams_resume_after_the_last_event_id() -> None:
    assert parse_last_event_id(None, None) == 0
    assert parse_last_event_id("12", "3") == 12  # a reconnect's header wins
    assert parse_last_event_id(None, "3") == 3
    for bad in ("x", "-1"):
        with pytest.raises(ValueError):
            parse_last_event_id(bad, None)


def test_report_to_defaults_to_tensorboard_and_names_missing_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_config("").training.report_to == ["tensorboard"]
    assert load_config("training:\n  report_to: wandb\n").training.report_to == ["wandb"]
    with pytest.raises(CryptotuneError) as raised:
        load_config("training:\n  report_to: [comet]\n")
    assert "must be one of tensorboard, wandb, mlflow" in raised.value.message
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    check_report_to(["tensorboard"])
    with pytest.raises(CryptotuneError) as raised:
        check_report_to(["tensorboard", "mlflow"])
    assert raised.value.code == ErrorCode.CONFIG_INVALID
    assert "pip install mlflow" in raised.value.message
    # `validate-config` warns before a job would fail at init.
    report = validate_config_text("training:\n  report_to: [tensorboard, mlflow]\n")
    assert report.valid
    assert any(w.path == "training.report_to" and "pip install mlflow" in w.message for w in report.warnings)
    # Where metrics go does not change what is trained: a resume may switch it.
    assert config_hash(load_config("")) == config_hash(load_config("training:\n  report_to: []\n"))


def test_model_hub_is_validated_and_a_missing_modelscope_names_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cryptotune_daemon.training.models import resolve_model

    assert load_config("").model.hub == "huggingface"
    assert load_config("model:\n  hub: ModelScope\n").model.hub == "modelscope"
    with pytest.raises(CryptotuneError) as raised:
        load_config("model:\n  hub: github\n")
    assert "must be one of huggingface, modelscope" in raised.value.message
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "modelscope" else real(name)
    )
    with pytest.raises(CryptotuneError) as raised:
        resolve_model("Qwen/Qwen3-4B-Thinking-2507", hub="modelscope")
    assert raised.value.code == ErrorCode.MODEL_UNAVAILABLE
    assert "pip install modelscope" in raised.value.message
    assert resolve_model("builtin:tiny-qwen3", hub="modelscope").kind == "builtin"


def test_http_addresses_default_to_loopback() -> None:
    from cryptotune_daemon.observability.http_server import HttpAddress, parse_http_address

    assert parse_http_address("9464", "--metrics-listen") == HttpAddress("127.0.0.1", 9464)
    assert parse_http_address(":9464", "--metrics-listen").loopback
    assert parse_http_address("[::1]:80", "--http-listen") == HttpAddress("::1", 80)
    assert not parse_http_address("0.0.0.0:80", "--http-listen").loopback
    assert not parse_http_address("10.250.0.1:80", "--http-listen").loopback
    for bad in ("host:", "host:99999", "host:http"):
        with pytest.raises(CryptotuneError, match="--http-listen takes HOST:PORT"):
            parse_http_address(bad, "--http-listen")
