"""Exceptions raised by stemzip.

Every error derives from :class:`StemzipError`, and each one also subclasses the
builtin exception it refines, so callers may catch either.
"""

from __future__ import annotations


class StemzipError(Exception):
    """Base class of every error that stemzip raises on purpose."""


class ConfigError(StemzipError, ValueError):
    """Raised when a configuration value has the wrong type or is out of range."""


class InputDirectoryError(StemzipError, FileNotFoundError):
    """Raised when a configured input folder is missing or is not a folder."""


class OutputDirectoryError(StemzipError, OSError):
    """Raised when the output folder cannot be created or is not a folder."""


class StemTimeoutError(StemzipError, TimeoutError):
    """Raised inside a stem's work when it runs past its time limit."""


class SourceChangedError(StemzipError, OSError):
    """Raised when a data file's size or date changes while it is archived."""


class ArchiveVerificationError(StemzipError, OSError):
    """Raised when an archive read back differs from what was written."""


class UnsafeArchiveError(StemzipError, ValueError):
    """Raised when an archive to extract could write outside its folder or is
    larger than the limits allow."""


class NotAnArchiveError(StemzipError, FileExistsError):
    """Raised when an archive would replace a file that is not a ZIP archive."""


class SchedulerUnreachableError(ConfigError):
    """Raised when the configured Dask scheduler cannot be reached."""
