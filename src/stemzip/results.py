"""The outcome of each stem, and the run's summary."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stemzip.names import readable


class Status(str, enum.Enum):
    """What happened to one stem."""

    ZIPPED = "zipped"
    SKIPPED = "skipped"
    NO_FILES = "no_files"
    FAILED = "failed"
    # dry run only: would be zipped
    PLANNED = "planned"


def _readable_or_none(text: str | None) -> str | None:
    return None if text is None else readable(text)


@dataclass(frozen=True)
class StemResult:
    """One stem's outcome; ``to_dict`` gives its entry in the results list."""

    stem: str
    status: Status
    zip_file_path: str | None = None
    files: tuple[str, ...] = ()
    error: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    # full traceback of a failure, kept for error reports, not for the results
    traceback: str | None = None
    # wall time of the stem's work
    seconds: float = 0.0
    # entries the stem would have taken that are not archived, each
    # "path: why" (a folder, a FIFO, a dangling link, ...), sorted
    left_out: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The entry, in plain strings that YAML and JSON files can hold.

        Bytes of a name that are not valid UTF-8 are written as ``%XX``, as in
        the archives (:func:`~stemzip.names.readable`).
        """
        return {
            "stem": readable(self.stem),
            "status": self.status.value,
            "zip_file_path": _readable_or_none(self.zip_file_path),
            "files": [readable(path) for path in self.files],
            "error": _readable_or_none(self.error),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "left_out": [readable(entry) for entry in self.left_out],
        }


@dataclass(frozen=True)
class Summary:
    """Counts per status and bytes read and written over a whole run."""

    counts: dict[Status, int]
    bytes_in: int
    bytes_out: int

    @property
    def failed(self) -> int:
        return self.counts.get(Status.FAILED, 0)

    def describe(self) -> str:
        shown = [s for s in Status if s is not Status.PLANNED or s in self.counts]
        counts = ", ".join(f"{self.counts.get(s, 0)} {s.value}" for s in shown)
        return f"{counts}; {self.bytes_in} bytes in, {self.bytes_out} bytes out"


def summarise(results: Iterable[StemResult]) -> Summary:
    """Add up a run's results."""
    results = list(results)
    return Summary(
        counts=dict(Counter(r.status for r in results)),
        bytes_in=sum(r.bytes_in for r in results),
        bytes_out=sum(r.bytes_out for r in results),
    )
