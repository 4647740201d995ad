"""The daemon process never loads torch, transformers or the tokenizers library: inspection runs in a
helper process (services/inspection_process.py), training in workers."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import RunningDaemon

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "client" / "cryptotune" / "examples" / "crypto_qa_zh.jsonl"
HEAVY_LIBRARIES = ("libtorch", "tokenizers", "/transformers/")


def mapped_files(pid: int) -> set[str]:
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {parts[-1] for parts in (line.split() for line in lines) if len(parts) >= 6}


def test_inspect_data_tokenizes_outside_the_daemon_process(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        report = client.inspect_data(SAMPLE, sample=1)
        again = client.inspect_data(SAMPLE)  # the helper process is kept for the next inspection
    assert report.records_valid == 72 and report.token_lengths.max > 0
    assert again.token_lengths == report.token_lengths
    heavy = sorted(f for f in mapped_files(daemon.process.pid) if any(lib in f for lib in HEAVY_LIBRARIES))
    assert heavy == [], f"the daemon process loaded {heavy}"
