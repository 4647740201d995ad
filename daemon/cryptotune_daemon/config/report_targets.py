"""Which ``training.report_to`` targets can run here: the package each needs and how to install it."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

# report_to target → (module it needs, how to install it); tensorboard is a daemon dependency.
REPORT_PACKAGES = {
    "tensorboard": ("tensorboard", "pip install 'cryptotune[daemon]'"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
}


def missing_reporters(report_to: Sequence[str]) -> list[str]:
    """The ``report_to`` targets whose package is not installed in this environment."""
    return [t for t in dict.fromkeys(report_to) if importlib.util.find_spec(REPORT_PACKAGES[t][0]) is None]


def missing_reporters_message(missing: Sequence[str]) -> str:
    """What to do about ``missing`` targets (a sentence naming the install commands)."""
    hints = "; ".join(f"{t}: {REPORT_PACKAGES[t][1]}" for t in missing)
    return (
        f"lists {', '.join(missing)}, but the package is not installed where the daemon runs ({hints}, in "
        "the daemon's environment), or remove it from training.report_to"
    )


def check_report_to(report_to: Sequence[str]) -> None:
    """Raises CONFIG_INVALID naming the install command when a ``report_to`` target's package is missing."""
    missing = missing_reporters(report_to)
    if missing:
        raise CryptotuneError(
            ErrorCode.CONFIG_INVALID, f"training.report_to {missing_reporters_message(missing)}"
        )
