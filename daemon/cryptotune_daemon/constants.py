"""Facts more than one layer needs, defined once: model names, sequence-length bounds, the label mask."""

from __future__ import annotations

from typing import Final

# The model a config trains when it names none (and the one GPU recommendations are sized for).
DEFAULT_MODEL_ID: Final = "Qwen/Qwen3-4B-Thinking-2507"
# The tiny, offline Qwen3 built in (demo, tests, CPU runs); every builtin model name has the prefix.
BUILTIN_PREFIX: Final = "builtin:"
BUILTIN_TINY_QWEN3: Final = "builtin:tiny-qwen3"

# training.max_seq_length: its bounds and default (InspectData uses the same).
MIN_SEQ_LENGTH: Final = 16
MAX_SEQ_LENGTH: Final = 131072
DEFAULT_MAX_SEQ_LENGTH: Final = 2048

# The label of a token that takes no loss (the prompt, padding), as PyTorch's cross-entropy expects.
IGNORE_INDEX: Final = -100
