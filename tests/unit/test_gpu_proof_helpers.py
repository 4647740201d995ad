"""The GPU proof's pure helpers: which shipped wheels get installed, and the FLOP count behind MFU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"test_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_only_missing_or_older_distributions_are_installed(tmp_path: Path) -> None:
    wheels = load("gpu_wheels")
    present = wheels.parse_wheel(tmp_path / "pytest-1.0-py3-none-any.whl")  # older than the installed one
    missing = wheels.parse_wheel(tmp_path / "no_such_dist_xyz-0.1-py3-none-any.whl")
    newer = wheels.parse_wheel(tmp_path / "pytest-999.0-py3-none-any.whl")
    assert missing.name == "no-such-dist-xyz" and missing.version == "0.1"
    assert [w.name for w, _ in wheels.needed([present, missing])] == ["no-such-dist-xyz"]
    assert [w.version for w, _ in wheels.needed([newer])] == ["999.0"]
    with pytest.raises(ValueError, match="two wheels of pytest"):
        wheels.needed([present, newer])
    assert wheels.version_key("1.85.3") < wheels.version_key("1.86.0") < wheels.version_key("1.86.0.post1")
    assert wheels.version_key("2.0.0rc1") < wheels.version_key("2.0.0")
    with pytest.raises(ValueError, match="not a wheel"):
        wheels.parse_wheel(tmp_path / "README.md")


def test_flop_count_matches_the_formula_by_hand() -> None:
    proof = load("gpu_proof")
    shape = {
        "hidden_size": 4,
        "intermediate_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 2,
    }
    # q 4→4, k 4→2, v 4→2, o 4→4, gate/up 4→8, down 8→4: 16+8+8+16+32+32+32 = 144 weights per layer.
    # LoRA rank 1: (4+4)+(4+2)+(4+2)+(4+4)+(4+8)+(4+8)+(8+4) = 64 per layer.
    per_token = 4 * (2 * 144 + 4 * 10) + 6 * 2 * 64
    n = 3
    assert proof.train_flops(shape, 10, [n], lora_rank=1) == n * per_token + 6 * 2 * 4 * n * n
    assert proof.train_flops(shape, 10, [n, n], lora_rank=1) == 2 * proof.train_flops(shape, 10, [n], 1)
