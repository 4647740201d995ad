"""The fault-injection seam (faults.py): refused by a production daemon, carried by the job spec."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.faults import NO_FAULTS, FaultInjection, OomTestHook
from cryptotune_daemon.main import main
from cryptotune_daemon.worker.spec import JobSpec, ResumeSpec


def test_a_daemon_without_the_test_flag_refuses_to_inject_faults(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--state-dir", str(tmp_path), "--inject-fault", "oom=3:1"])
    assert result.exit_code == 2
    assert "--inject-fault is for tests and needs --enable-fault-injection" in result.output


def test_an_unknown_fault_is_refused(tmp_path: Path) -> None:
    args = ["--state-dir", str(tmp_path), "--enable-fault-injection", "--inject-fault", "disk=full"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "kinds: oom, crash_in_checkpoint, reconcile_delay_s" in result.output


def test_the_fault_flags_stay_out_of_the_daemon_help() -> None:
    assert "inject" not in CliRunner().invoke(main, ["--help"]).output


def test_faults_parse_from_the_flags() -> None:
    faults = FaultInjection.parse(["oom=3:2:1", "crash_in_checkpoint=4", "reconcile_delay_s=1.5"])
    assert faults == FaultInjection(OomTestHook(3, 2, 1), 4, 1.5)
    assert FaultInjection.parse([]) == NO_FAULTS and not NO_FAULTS.any
    with pytest.raises(CryptotuneError, match="KIND=VALUE"):
        FaultInjection.parse(["oom"])


def test_the_job_spec_round_trips_through_json_with_and_without_faults(tmp_path: Path) -> None:
    spec = JobSpec(
        job_id="j1",
        pipeline_id="p1",
        data_path=tmp_path / "d.jsonl",
        data_name="d.jsonl",
        config_yaml="model: {}\n",
        config_name="c.yaml",
        output_dir=tmp_path / "out",
        state_dir=tmp_path / "state",
        resume=ResumeSpec(output_dir=tmp_path / "out", step=4),
        world_size=2,
        data_digest="ab" * 32,
    )
    assert JobSpec.from_json(spec.to_json()) == spec
    assert spec.to_json()["fault_injection"] is None
    faulty = dataclasses.replace(spec, fault_injection=FaultInjection(oom=OomTestHook(2, 0, 1)))
    assert JobSpec.from_json(faulty.to_json()) == faulty
