"""Config YAML → report: syntax, shape, types, ranges, cross-field checks and warnings, each with its line.

The public API (:func:`validate_config_text`, :func:`load_config`); the steps are modules of their own:
``yaml_lines`` (parsing, lines, duplicate keys), ``sections`` (shape and per-key values), ``rules``
(cross-field errors and warnings), ``messages`` (the wording) and ``issues`` (what they all report into).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptotune_daemon.config.issues import ConfigIssue, _Collector, _sorted
from cryptotune_daemon.config.rules import _cross_checks, _warnings
from cryptotune_daemon.config.schema import CryptotuneConfig
from cryptotune_daemon.config.sections import _split_sections, _validate_sections
from cryptotune_daemon.config.yaml_lines import _parse
from cryptotune_daemon.errors import CryptotuneError, ErrorCode


@dataclass(frozen=True)
class ConfigReport:
    """The outcome of validating a config.

    Attributes:
        valid: true when there are no errors (warnings do not make a config invalid).
        errors: problems that must be fixed.
        warnings: settings that are allowed but risky.
        config: the parsed config, set when ``valid``.
    """

    valid: bool
    errors: list[ConfigIssue]
    warnings: list[ConfigIssue]
    config: CryptotuneConfig | None


def validate_config_text(
    text: str, source_name: str = "config.yaml", *, gpu_count: int | None = None
) -> ConfigReport:
    """Validates config YAML and reports every problem with its path and line.

    Never raises on bad input: syntax errors, wrong shapes, unknown keys, bad values and
    inconsistent settings all become errors in the report.

    Args:
        text: the YAML text.
        source_name: the file name, for callers that print issues (unused in the issues themselves).
        gpu_count: GPUs on the machine that will train, when known; checks parallel.world_size.

    Returns:
        The report; ``config`` is set when there are no errors.
    """
    del source_name  # Issues carry path and line; callers add the file name when they print them.
    out = _Collector()
    if not isinstance(text, str):
        out.errors.append(ConfigIssue("", None, f"expected YAML text, got {type(text).__name__}"))
        return ConfigReport(False, out.errors, [], None)
    ok, data = _parse(text, out)
    if not ok:
        return ConfigReport(False, out.listed_errors(), [], None)
    raw = _split_sections(data, out)
    config = _validate_sections(raw, out)
    _cross_checks(config, out, gpu_count)
    _warnings(config, out)
    valid = not out.errors
    return ConfigReport(valid, out.listed_errors(), _sorted(out.warnings), config if valid else None)


def format_issue(issue: ConfigIssue, source_name: str) -> str:
    """Renders an issue as ``source:line: path: message`` (line and path left out when unknown)."""
    where = f"{source_name}:{issue.line}" if issue.line is not None else source_name
    path = f" {issue.path}:" if issue.path else ""
    return f"{where}:{path} {issue.message}"


def load_config(
    text: str, source_name: str = "config.yaml", *, gpu_count: int | None = None
) -> CryptotuneConfig:
    """Parses and validates a config, for code that needs a config or an error.

    Args:
        text: the YAML text.
        source_name: the file name used in the error message.
        gpu_count: GPUs on the machine that will train, when known.

    Returns:
        The validated config (warnings are dropped; use :func:`validate_config_text` to see them).

    Raises:
        CryptotuneError: ``CONFIG_INVALID``, listing each error as ``source:line: path: message``.
    """
    report = validate_config_text(text, source_name, gpu_count=gpu_count)
    if report.config is None:
        count = len(report.errors)
        lines = [
            f"{source_name} is not a valid cryptotune config ({count} error{'s' if count != 1 else ''}):"
        ]
        lines.extend(format_issue(issue, source_name) for issue in report.errors)
        raise CryptotuneError(ErrorCode.CONFIG_INVALID, "\n".join(lines))
    return report.config
