"""Exceptions raised by stemzip.

Every error derives from :class:`StemzipError`, and each one also subclasses the
builtin exception it refines, so callers may catch either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stemzip.results import StemResult


class StemzipError(Exception):
    """Base class of every error that stemzip raises on purpose."""


class ConfigError(StemzipError, ValueError):
    """Raised when a configuration value has the wrong type or is out of range."""


class InputDirectoryError(StemzipError, FileNotFoundError):
    """Raised when a configured input folder is missing or is not a folder."""


class OutputDirectoryError(StemzipError, OSError):
    """Raised when an output folder cannot be created, is not a folder, or
    cannot be written to."""


class StemTimeoutError(StemzipError, TimeoutError):
    """Raised inside a stem's work when it runs past its time limit."""


class SourceChangedError(StemzipError, OSError):
    """Raised when a data file's size or date changes while it is archived."""


class ArchiveVerificationError(StemzipError, OSError):
    """Raised when an archive read back differs from what was written."""


class UnsafeArchiveError(StemzipError, ValueError):
    """Raised when an archive to extract could write outside its folder or is
    larger than the limits allow."""


class CarryOverError(StemzipError, OSError):
    """Raised when the members of an archive being replaced, whose sources
    are gone, cannot be carried into the new one."""


class NotAnArchiveError(StemzipError, FileExistsError):
    """Raised when an archive would replace a file that is not a ZIP archive."""


class DamagedArchiveError(NotAnArchiveError):
    """Raised when a file at an archive's path starts as a ZIP archive but
    cannot be read as one."""


class SchedulerUnreachableError(ConfigError):
    """Raised when the configured Dask scheduler cannot be reached."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run; ``results`` holds the stems done."""

    def __init__(
        self, results: Sequence[StemResult], basename: str | None = None
    ) -> None:
        super().__init__("interrupted")
        self.results = sorted(results, key=lambda result: result.stem)
        # the key the results belong under, once the settings are known
        self.basename = basename
