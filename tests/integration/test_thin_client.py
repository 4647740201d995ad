"""The thin client never loads torch, transformers, peft or daemon modules; SDK argument handling."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cryptotune.errors import InvalidArgument
from tests.integration.conftest import RunningDaemon

HEAVY = ("torch", "transformers", "peft", "cryptotune_daemon", "pydantic", "yaml")

PROBE = """
import sys
from cryptotune.cli.main import cli
try:
    cli(["--help"], prog_name="cryptotune", standalone_mode=False)
except SystemExit:
    pass
import cryptotune
from cryptotune import Client
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print("LOADED:" + ",".join(loaded))
"""


def test_help_loads_no_heavy_module() -> None:
    completed = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [sys.executable, "-c", PROBE.format(heavy=set(HEAVY))], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    loaded = completed.stdout.strip().splitlines()[-1]
    assert loaded == "LOADED:", f"thin client loaded heavy modules: {loaded}"
    assert completed.stdout.startswith("Usage: cryptotune [OPTIONS] COMMAND [ARGS]...\n")
    listed = {line.split()[0] for line in completed.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed >= set(COMMAND_HELP), listed


# Each command's usage line and the options the README documents for it (every one takes --json).
COMMAND_HELP = {
    "init-config": ("[OPTIONS]", ("--output", "--force")),
    "validate-config": ("[OPTIONS] CONFIG_FILE", ()),
    "list-gpus": ("[OPTIONS]", ()),
    "inspect-data": ("[OPTIONS] DATA_FILE", ("--sample", "--format", "--max-seq-length")),
    "train": ("[OPTIONS] DATA_FILE CONFIG_FILE", ("--output-dir", "--pipeline-id", "--resume", "--dry-run")),
    "status": ("[OPTIONS] [JOB]", ()),
    "watch": ("[OPTIONS] JOB", ("--since",)),
    "jobs": ("[OPTIONS]", ("--limit",)),
    "cancel": ("[OPTIONS] JOB", ()),
    "logs": ("[OPTIONS] JOB", ("--follow",)),
    "export": ("[OPTIONS] JOB DESTINATION", ()),
    "demo": ("[OPTIONS]", ("--output-dir",)),
}


def test_every_command_has_help() -> None:
    for command, (arguments, options) in COMMAND_HELP.items():
        completed = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
            [sys.executable, "-m", "cryptotune.cli.main", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 0, (command, completed.stderr)
        assert completed.stdout.startswith(f"Usage: cryptotune {command} {arguments}\n"), completed.stdout
        for option in (*options, "--json", "--help"):
            listed = re.search(rf"^  (-\w, )?{option}\b", completed.stdout, re.MULTILINE)
            assert listed, (command, option, completed.stdout)


def test_config_str_is_a_path_when_it_names_a_file(daemon: RunningDaemon, tmp_path: Path) -> None:
    # Colons are legal in file names: such a str used to be validated as YAML text.
    folder = tmp_path / "runs:12:00"
    folder.mkdir()
    good = folder / "a:b.yaml"
    good.write_text("lora:\n  rank: 8\n", encoding="utf-8")
    bad = folder / "bad:1.yml"
    bad.write_text("lora:\n  r: 8\n", encoding="utf-8")
    with daemon.client() as client:
        assert client.validate_config(str(good)).valid
        assert client.validate_config(good).valid
        # The errors are the file's (line 2 of it), not those of the path read as YAML.
        result = client.validate_config(str(bad))
        assert not result.valid
        assert [(e.path, e.line) for e in result.errors] == [("lora.r", 2)]
        # YAML text stays text, one line or several.
        assert client.validate_config("lora: {rank: 8}").valid
        assert not client.validate_config("lora:\n  r: 8\n").valid
        # A missing .yaml/.yml path is a clear error, never YAML text; submit reads configs alike.
        missing = str(folder / "missing:1.yaml")
        with pytest.raises(InvalidArgument, match=r"missing:1\.yaml: no such config file"):
            client.validate_config(missing)
        with pytest.raises(InvalidArgument, match="no such config file"):
            client.validate_config(str(folder / "missing.YML"))
        data = tmp_path / "data.jsonl"
        data.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
        with pytest.raises(InvalidArgument, match=r"missing:1\.yaml: no such config file"):
            client.submit(data, missing, dry_run=True)
        assert client.list_jobs() == []
