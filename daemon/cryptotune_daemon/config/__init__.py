"""The cryptotune config: pydantic schema, YAML validation with line numbers, template and JSON schema."""

from cryptotune_daemon.config.issues import ConfigIssue
from cryptotune_daemon.config.schema import (
    SECTIONS,
    CryptotuneConfig,
    DataConfig,
    LoraConfig,
    ModelConfig,
    ParallelConfig,
    Precision,
    SystemConfig,
    TrainingConfig,
)
from cryptotune_daemon.config.template import config_json_schema, config_template
from cryptotune_daemon.config.validate import (
    ConfigReport,
    format_issue,
    load_config,
    validate_config_text,
)

__all__ = [
    "SECTIONS",
    "ConfigIssue",
    "ConfigReport",
    "CryptotuneConfig",
    "DataConfig",
    "LoraConfig",
    "ModelConfig",
    "ParallelConfig",
    "Precision",
    "SystemConfig",
    "TrainingConfig",
    "config_json_schema",
    "config_template",
    "format_issue",
    "load_config",
    "validate_config_text",
]
