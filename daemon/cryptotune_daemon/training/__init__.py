"""LoRA training of Qwen3 causal LMs: models, data, planning, the trainer, checkpoints and reports."""
