"""The web dashboard in a real headless Chromium (Debian's ``chromium``, installed by ``make browser``):
sign-in with a one-time code, a running job whose step and loss curve advance, a daemon restart the
page rides out without missing an event, and a browser without the cookie refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.browser import Browser, find_browser, poll
from tests.integration.conftest import RunningDaemon, run_cli, short_tmp_dir, start_daemon, stop_daemon
from tests.integration.test_jobs import wait_terminal, write_config, write_data
from tests.integration.test_observability import free_port

pytestmark = pytest.mark.slow

STEP = "Number(document.getElementById('job-step').textContent)"
POINTS = "Number(document.getElementById('loss-chart').dataset.points)"
LAST_STEP = "Number(document.getElementById('loss-chart').dataset.lastStep || 0)"
STATE = "document.getElementById('job-state').textContent"


def stop_daemon_only(daemon: RunningDaemon) -> None:
    """SIGTERM the daemon and wait; its job's worker keeps training (the next daemon reattaches)."""
    daemon.process.send_signal(signal.SIGTERM)
    try:
        daemon.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        daemon.process.wait()


def test_dashboard_in_a_real_browser(tmp_path: Path) -> None:
    executable = find_browser()
    if executable is None:
        missing = "no Chromium: install Debian's `chromium` package (`make browser` does it)"
        if os.environ.get("CRYPTOTUNE_REQUIRE_BROWSER"):  # CI: never skip
            pytest.fail(missing)
        pytest.skip(missing)
    root = short_tmp_dir()
    state = root / "state"
    port = free_port()
    listen = ("--http-listen", f"127.0.0.1:{port}")
    daemon = start_daemon(state, *listen)
    browser = Browser(executable)
    stranger = Browser(executable)
    try:
        with daemon.client() as client:
            data = write_data(tmp_path / "data.jsonl")
            config = write_config(tmp_path / "config.yaml", max_steps=200, save_steps=1000)
            job = client.submit(data, config, output_dir=tmp_path / "out", pipeline_id="browser-1")
        result = run_cli("dashboard", job.job_id, "--json", address=daemon.address)
        assert result.exit_code == 0, result.stderr
        url = json.loads(result.stdout)["url"]

        page = browser.new_page()
        page.navigate(url)
        assert page.evaluate("location.pathname") == f"/jobs/{job.job_id}"
        assert page.evaluate("document.getElementById('job-id').textContent") == job.job_id
        page.wait_for(f"{STATE} === 'running'", timeout=300, what="the job page to say running")
        first = page.wait_for(f"{STEP} >= 2 && {POINTS} >= 2 && {STEP}", timeout=600, what="two steps")
        points = page.evaluate(POINTS)
        page.wait_for(
            f"{STEP} > {first} && {POINTS} > {points}", timeout=300, what="the step and curve to advance"
        )

        # The same code cannot sign anyone in twice.
        reuse = stranger.new_page()
        reuse.navigate(url)
        assert reuse.evaluate("performance.getEntriesByType('navigation')[0].responseStatus") == 410

        # Restart the daemon: the worker keeps training, the page reconnects and keeps updating.
        stop_daemon_only(daemon)
        at_restart = page.evaluate(STEP)
        daemon = start_daemon(state, *listen)
        page.wait_for(f"{STEP} > {at_restart} + 1", timeout=600, what="steps after the restart")
        page.wait_for(f"{STATE} === 'running'", timeout=60, what="running after the restart")

        # Nothing missed: one curve point per progress event up to the page's newest step.
        with daemon.client() as client:
            shown_points, shown_last = page.evaluate(f"[{POINTS}, {LAST_STEP}]")
            progress: list[int] = []
            for event in client.follow(job.job_id):
                if event.type == "progress":
                    progress.append(int(event.data["step"]))
                if progress and progress[-1] >= shown_last:
                    break
            assert progress == list(range(1, shown_last + 1))
            assert shown_points == shown_last

            # A browser without the session cookie is refused.
            refused = stranger.new_page()
            refused.navigate(f"http://127.0.0.1:{port}/jobs/{job.job_id}")
            assert refused.evaluate("performance.getEntriesByType('navigation')[0].responseStatus") == 401
            assert "Sign in" in refused.evaluate("document.body.innerText")
            assert "cryptotune dashboard" in refused.evaluate("document.body.innerText")

            client.cancel(job.job_id)
            wait_terminal(client, job.job_id)
        poll(lambda: page.evaluate(STATE) == "cancelled", 120, "the page to show the cancel")
    finally:
        browser.close()
        stranger.close()
        stop_daemon(daemon)
        shutil.rmtree(root, ignore_errors=True)
