"""Config issues, and the collector that gathers them while knowing the line of every key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# A location in the document: section, key, then list indexes.
_Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a config.

    Attributes:
        path: dotted path of the key, e.g. ``training.learning_rate``; ``""`` for the whole document.
        line: 1-based line of that key in the YAML when known.
        message: what is wrong and how to fix it.
    """

    path: str
    line: int | None
    message: str


# A report lists at most this many errors, then counts the rest: nobody reads 50,000 "unknown key"
# lines, and working out a did-you-mean for each of them costs seconds of daemon CPU.
MAX_LISTED_ERRORS = 100


@dataclass
class _Collector:
    """Accumulates issues and knows the line of every key seen in the document."""

    lines: dict[_Loc, int] = field(default_factory=dict)
    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)
    # "section" or "section.key" entries whose value was rejected (and replaced by the default).
    failed: set[str] = field(default_factory=set)
    unlisted: int = 0  # errors found beyond MAX_LISTED_ERRORS

    def add(self, issue: ConfigIssue | Callable[[], ConfigIssue]) -> None:
        """Records an error (built only while the list has room: a callable defers the work)."""
        if len(self.errors) >= MAX_LISTED_ERRORS:
            self.unlisted += 1
            return
        self.errors.append(issue() if callable(issue) else issue)

    def listed_errors(self) -> list[ConfigIssue]:
        """The errors in line order, then a note counting those not listed."""
        errors = _sorted(self.errors)
        if self.unlisted:
            errors.append(
                ConfigIssue(
                    "",
                    None,
                    f"{self.unlisted} more error{'s' if self.unlisted != 1 else ''} not listed: "
                    "fix the ones above and validate again",
                )
            )
        return errors

    def usable(self, *paths: str) -> bool:
        """Whether every ``section.key`` given, and its section, was valid."""
        return not any(path in self.failed or path.split(".")[0] in self.failed for path in paths)

    def line_of(self, *locs: _Loc) -> int | None:
        """Line of the first location present; else of the nearest enclosing key present."""
        for loc in locs:
            if loc in self.lines:
                return self.lines[loc]
        for loc in locs:
            for depth in range(len(loc) - 1, 0, -1):
                if loc[:depth] in self.lines:
                    return self.lines[loc[:depth]]
        return None

    def written(self, *locs: _Loc) -> _Loc:
        """The first location that is written in the file (the first one given if none is)."""
        return next((loc for loc in locs if loc in self.lines), locs[0])

    def error(self, loc: _Loc, message: str | Callable[[], str], *also: _Loc) -> None:
        self.add(
            lambda: ConfigIssue(
                _dotted(loc), self.line_of(loc, *also), message() if callable(message) else message
            )
        )

    def warn(self, loc: _Loc, message: str, *also: _Loc) -> None:
        self.warnings.append(ConfigIssue(_dotted(loc), self.line_of(loc, *also), message))


def _dotted(loc: _Loc) -> str:
    # List indexes are reported on the list's own key; the line still points at the item.
    return ".".join(str(part) for part in loc if isinstance(part, str))


def _sorted(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda issue: (issue.line is None, issue.line or 0))
