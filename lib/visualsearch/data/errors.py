"""Clear errors for bad input, and a log of inputs skipped on the way.

Why: a researcher pointing the companion at a real dataset must learn *which* file, line and field is wrong,
never read a bare traceback; and a corrupt image among 100k must not end a run but be counted, with the
count written into the provenance of every table computed from that data.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class DataFormatError(ValueError):
    """A data file is missing or does not follow its published format.

    The message names the file, the line (1-based) and field where known, and what was expected.
    """

    def __init__(self, path, problem: str, line: int | None = None, field: str | None = None,
                 expected: str | None = None):
        self.path, self.problem, self.line, self.field, self.expected = Path(path), problem, line, field, expected
        where = str(path) + (f", line {line}" if line is not None else "") + (f", field '{field}'" if field else "")
        msg = f"{where}: {problem}" + (f" (expected {expected})" if expected else "")
        super().__init__(msg)


def require_file(path, what: str) -> Path:
    """Return `path` as a Path, or raise DataFormatError saying which file of which dataset is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, f"missing file: {what} not found")
    return path


def require_dir(path, what: str) -> Path:
    """Return `path` as a Path, or raise DataFormatError saying which folder is missing."""
    path = Path(path)
    if not path.is_dir():
        raise DataFormatError(path, f"missing folder: {what} not found")
    return path


@dataclass
class SkipLog:
    """Counts inputs that were skipped (missing or unreadable images, empty captions, ...) and why.

    Readers take one, add to it, and the reporting layer writes `summary()` into each provenance sidecar.
    """

    reasons: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason -> first few paths, to show the user

    def add(self, path, reason: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(str(path))

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def merge(self, other: "SkipLog") -> "SkipLog":
        for reason, n in other.reasons.items():
            self.reasons[reason] += n
            self.examples.setdefault(reason, [])
            self.examples[reason] = (self.examples[reason] + other.examples.get(reason, []))[:5]
        return self

    def summary(self) -> dict:
        return {"skipped": self.count, "by_reason": dict(self.reasons), "examples": dict(self.examples)}

    def __str__(self) -> str:
        if not self.count:
            return "no inputs skipped"
        parts = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
        return f"{self.count} inputs skipped ({parts})"
