"""Resolving models: builtin, local directories, and Hugging Face ids (cache first, then the Hub unless
offline). The Hub is never reached: ``snapshot_download`` is replaced by a fake that records its calls."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.models import BUILTIN_TINY_QWEN3, resolve_model

REPO = "example-org/qwen3-mini"


class FakeHub:
    """``snapshot_download`` with an empty cache; a download writes the repo ``files`` it allows."""

    def __init__(self, root: Path, files: tuple[str, ...] = ("config.json", "model.safetensors")) -> None:
        self.root, self.files = root, files
        self.calls: list[dict[str, Any]] = []
        self.fail_with: Exception | None = None

    def __call__(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append({"repo_id": repo_id, **kwargs})
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not in the cache")
        if self.fail_with is not None:
            raise self.fail_with
        snapshot = self.root / "snapshot"
        snapshot.mkdir(parents=True, exist_ok=True)
        patterns = kwargs.get("allow_patterns") or ["*"]
        for name in self.files:
            if any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
                (snapshot / name).write_text("{}")
        return str(snapshot)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return fake


def test_a_model_missing_from_the_cache_is_downloaded_when_online(hub: FakeHub) -> None:
    source = resolve_model(REPO)
    assert source.kind == "hub" and source.path == hub.root / "snapshot"
    cache_lookup, download = hub.calls
    assert cache_lookup["local_files_only"] is True
    assert download["repo_id"] == REPO and download["revision"] == "main"
    assert "*.safetensors" in download["allow_patterns"] and "*.bin" not in str(download["allow_patterns"])


def test_bin_weights_are_fetched_only_when_the_repo_has_no_safetensors(hub: FakeHub) -> None:
    hub.files = ("config.json", "pytorch_model.bin")
    resolve_model(REPO)
    assert [c.get("allow_patterns") for c in hub.calls][-1] == ["pytorch_model*.bin", "model*.bin"]


def test_offline_mode_is_honoured_with_a_message_saying_how_to_fetch(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CryptotuneError) as info:
        resolve_model(REPO, revision="v2")
    assert info.value.code is ErrorCode.MODEL_UNAVAILABLE
    message = info.value.message
    assert f"'{REPO}' at revision 'v2' is not in the local Hugging Face cache" in message
    assert "offline mode is on" in message and f"hf download {REPO}" in message
    assert all(call.get("local_files_only") for call in hub.calls), "offline: no download attempted"


def test_a_failed_download_says_why(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    hub.fail_with = OSError("Connection refused by huggingface.co\nlong traceback text")
    with pytest.raises(CryptotuneError) as info:
        resolve_model(REPO)
    assert info.value.code is ErrorCode.MODEL_UNAVAILABLE
    message = info.value.message
    assert (
        "downloading it from https://huggingface.co failed (Connection refused by huggingface.co)" in message
    )
    assert "HF_ENDPOINT" in message and "model.hub: modelscope" in message  # what fixes it
    assert "long traceback" not in message


def test_hf_endpoint_selects_a_mirror(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example")
    resolve_model(REPO)
    downloads = [call for call in hub.calls if not call.get("local_files_only")]
    assert downloads and all(call.get("endpoint") == "https://mirror.example" for call in downloads)
    hub.fail_with = OSError("timed out")
    with pytest.raises(CryptotuneError, match=r"downloading it from https://mirror\.example failed"):
        resolve_model(REPO)


def test_a_repo_without_weights_is_refused(hub: FakeHub) -> None:
    hub.files = ("config.json",)
    with pytest.raises(CryptotuneError, match=r"has no config\.json and weights"):
        resolve_model(REPO)


def test_builtin_and_invalid_names(hub: FakeHub, tmp_path: Path) -> None:
    assert resolve_model(BUILTIN_TINY_QWEN3).kind == "builtin"
    with pytest.raises(CryptotuneError, match="unknown builtin model"):
        resolve_model("builtin:huge")
    assert hub.calls == []
