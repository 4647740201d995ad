"""Where people watch training: TensorBoard files, Prometheus /metrics, the dashboard's sign-in and
event stream over plain HTTP, `cryptotune dashboard`, and shell completion (real daemon, real CLI)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    RunningDaemon,
    run_cli,
    short_tmp_dir,
    start_daemon,
    stop_daemon,
)
from tests.integration.test_jobs import wait_terminal, write_config, write_data

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def observed_daemon(*extra: str) -> Iterator[RunningDaemon]:
    root = short_tmp_dir()
    running = start_daemon(root / "state", *extra)
    try:
        yield running
    finally:
        stop_daemon(running)
        shutil.rmtree(root, ignore_errors=True)


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path, headers=headers or {})
    return connection.getresponse()


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = http_get(port, "/metrics")
    assert response.status == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.read().decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def test_tensorboard_holds_the_progress_events(daemon: RunningDaemon, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_data(tmp_path / "data.jsonl")
    config = write_config(tmp_path / "config.yaml", max_steps=4, save_steps=100)
    out = tmp_path / "out"
    with daemon.client() as client:
        job = client.submit(data, config, output_dir=out, pipeline_id="tb-1")
        assert wait_terminal(client, job.job_id) == "succeeded", daemon.log()
        events = list(client.watch(job.job_id))
    progress = [(int(e.data["step"]), float(e.data["loss"])) for e in events if e.type == "progress"]
    assert [step for step, _ in progress] == [1, 2, 3, 4]

    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    for tag in (
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/tokens_per_second",
        "eval/loss",
    ):
        assert tag in tags, tags
    logged = [(e.step, e.value) for e in accumulator.Scalars("train/loss")]
    assert [step for step, _ in logged] == [step for step, _ in progress]
    for (_, written), (_, reported) in zip(logged, progress, strict=True):
        assert written == pytest.approx(reported, rel=1e-6)  # float32 in the event file


def test_metrics_scraped_during_a_job(tmp_path: Path) -> None:
    port = free_port()
    with observed_daemon("--metrics-listen", f"127.0.0.1:{port}") as daemon, daemon.client() as client:
        data = write_data(tmp_path / "data.jsonl")
        config = write_config(tmp_path / "config.yaml", max_steps=30, save_steps=100)
        job = client.submit(data, config, output_dir=tmp_path / "out", pipeline_id="metrics-1")
        deadline = time.monotonic() + 600
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        while time.monotonic() < deadline:
            samples = scrape(port)
            steps = [
                v for labels, v in samples.get("cryptotune_job_step", []) if labels["job_id"] == job.job_id
            ]
            if steps and steps[0] >= 1:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no cryptotune_job_step for {job.job_id}: {samples}")
        assert ({"state": "running"}, 1.0) in samples["cryptotune_jobs"]
        assert samples["cryptotune_queue_length"] == [({}, 0.0)]
        per_job = {labels["job_id"]: value for labels, value in samples["cryptotune_job_total_steps"]}
        assert per_job[job.job_id] == 30
        assert any(labels["job_id"] == job.job_id for labels, _ in samples["cryptotune_job_loss"])
        assert "cryptotune_job_eta_seconds" in samples
        assert "cryptotune_job_tokens_per_second" in samples
        submitted = [
            (labels, value)
            for labels, value in samples["cryptotune_rpc_requests_total"]
            if labels["method"].endswith("/SubmitJob")
        ]
        assert submitted == [({"method": "/cryptotune.proto.v1.JobService/SubmitJob", "code": "OK"}, 1.0)]
        assert any(
            labels["method"].endswith("/SubmitJob")
            for labels, _ in samples["cryptotune_rpc_duration_seconds_count"]
        )
        assert ({}, 0.0) in samples["cryptotune_oom_recoveries_total"]
        # A watcher counts as an open watch stream while it is open.
        stream = client.watch(job.job_id)
        next(stream)
        watching = dict(((labels["transport"], v) for labels, v in scrape(port)["cryptotune_watch_streams"]))
        assert watching["grpc"] == 1.0
        stream.close()
        client.cancel(job.job_id)
        wait_terminal(client, job.job_id)


def test_a_metrics_listener_off_loopback_needs_tls_and_the_token(tmp_path: Path) -> None:
    """Inside a network namespace of our own, with 10.250.0.1 on its loopback device (not a loopback
    address), so that nothing leaves the machine."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip (util-linux, iproute2) for a private network namespace")
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl for a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=10.250.0.1",
         "-addext", "subjectAltName=IP:10.250.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    script = REPO / "tests" / "integration" / "metrics_off_loopback.py"
    completed = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [
            "unshare",
            "--net",
            "bash",
            "-c",
            'ip link set lo up && ip addr add 10.250.0.1/32 dev lo && exec "$@"',
            "namespace",
            sys.executable,
            str(script),
            str(cert),
            str(key),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert results["without_tls"]["exit_code"] == 2
    assert "without TLS" in results["without_tls"]["stderr"]
    assert results["no_token"] == 401
    assert results["wrong_token"] == 401
    assert results["token"] == 200
    assert "cryptotune_jobs" in results["token_body"]


def test_dashboard_login_codes_cookie_and_event_stream(tmp_path: Path) -> None:
    port = free_port()
    with observed_daemon("--http-listen", f"127.0.0.1:{port}") as daemon, daemon.client() as client:
        data = write_data(tmp_path / "data.jsonl")
        config = write_config(tmp_path / "config.yaml")
        job = client.submit(data, config, output_dir=tmp_path / "out", pipeline_id="dash-1", dry_run=True)
        assert wait_terminal(client, job.job_id) == "succeeded", daemon.log()

        # Without a session: refused, pages and JSON alike.
        assert http_get(port, f"/jobs/{job.job_id}").status == 401
        assert http_get(port, "/api/jobs").status == 401
        assert http_get(port, "/login").status == 401
        assert http_get(port, "/login?code=made-up").status == 403

        result = run_cli("dashboard", job.job_id, "--json", address=daemon.address)
        assert result.exit_code == 0, result.stderr
        url = urllib.parse.urlsplit(json.loads(result.stdout)["url"])
        assert (url.scheme, url.hostname, url.port, url.path) == ("http", "127.0.0.1", port, "/login")
        login = http_get(port, f"{url.path}?{url.query}")
        assert login.status == 303
        assert login.headers["Location"] == f"/jobs/{job.job_id}"
        cookie = login.headers["Set-Cookie"]
        assert cookie.startswith("cryptotune_session_")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
        assert "default-src 'none'" in login.headers["Content-Security-Policy"]
        assert http_get(port, f"{url.path}?{url.query}").status == 410  # one time only

        session = {"Cookie": cookie.split(";", 1)[0]}
        page = http_get(port, f"/jobs/{job.job_id}", session)
        assert page.status == 200
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        html = page.read().decode()
        assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
        listing = json.loads(http_get(port, "/api/jobs", session).read())
        assert [j["job_id"] for j in listing["jobs"]] == [job.job_id]
        detail = json.loads(http_get(port, f"/api/jobs/{job.job_id}", session).read())
        assert detail["state"] == "succeeded" and detail["plan"]["steps"] > 0
        assert http_get(port, "/api/jobs/nope", session).status == 404

        stored = list(client.watch(job.job_id))
        everything = read_sse(port, f"/api/jobs/{job.job_id}/events", session)
        assert [seq for seq, _ in everything] == [e.seq for e in stored]
        resumed = read_sse(port, f"/api/jobs/{job.job_id}/events", {**session, "Last-Event-ID": "3"})
        assert [seq for seq, _ in resumed] == [e.seq for e in stored if e.seq > 3]
        assert http_get(port, f"/api/jobs/{job.job_id}/events?after=x", session).status == 400


def read_sse(port: int, path: str, headers: dict[str, str]) -> list[tuple[int, str]]:
    """The (seq, type) of every job event in the stream, up to its ``end`` event."""
    response = http_get(port, path, headers)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events: list[tuple[int, str]] = []
    frame: dict[str, str] = {}
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line:
            name, _, value = line.partition(": ")
            frame[name] = value
            continue
        if frame.get("event") == "end":
            return events
        if frame.get("event") == "job":
            events.append((int(frame["id"]), json.loads(frame["data"])["type"]))
        frame = {}
    raise AssertionError("the stream ended without an end event")


def test_dashboard_command_without_a_dashboard(daemon: RunningDaemon) -> None:
    result = run_cli("dashboard", address=daemon.address)
    assert result.exit_code == 1
    assert "--http-listen" in result.stderr
    assert "Traceback" not in result.stderr
    unknown = run_cli("dashboard", "no-such-job", address=daemon.address)
    assert unknown.exit_code == 1 and "no-such-job" in unknown.stderr


def test_shell_completion_lists_job_ids_and_never_starts_a_daemon(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    with daemon.client() as client:
        data = write_data(tmp_path / "data.jsonl")
        job = client.submit(data, write_config(tmp_path / "c.yaml"), output_dir=tmp_path / "o",
                            pipeline_id="complete-me", dry_run=True)  # fmt: skip

    def complete(words: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cword = len(words.split()) - (not words.endswith(" "))  # the index of the word being completed
        return subprocess.run(  # noqa: PLW1510 - the exit code is asserted
            [str(Path(sys.executable).parent / "cryptotune")],
            env={**os.environ, **(env or {}), "COMP_WORDS": words, "COMP_CWORD": str(cword),
                 "_CRYPTOTUNE_COMPLETE": "bash_complete"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    found = complete(f"cryptotune --address {daemon.address} status ")
    assert found.returncode == 0
    assert f"plain,{job.job_id}" in found.stdout.splitlines()
    assert "plain,complete-me" in found.stdout.splitlines()
    narrowed = complete(f"cryptotune --address {daemon.address} watch complete")
    assert narrowed.stdout.splitlines() == ["plain,complete-me"]

    # No daemon at the default address: nothing offered, and none started.
    state = short_tmp_dir()
    nothing = complete(
        "cryptotune cancel ", env={"CRYPTOTUNE_STATE_DIR": str(state), "XDG_RUNTIME_DIR": str(state)}
    )
    assert nothing.returncode == 0 and nothing.stdout.strip() == ""
    assert not any(state.iterdir())
    shutil.rmtree(state, ignore_errors=True)

    script = run_cli("completion", "bash")
    assert script.exit_code == 0 and "_CRYPTOTUNE_COMPLETE=bash_complete" in script.stdout
