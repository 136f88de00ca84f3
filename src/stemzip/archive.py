"""Writing one stem's archive: streamed, compressed, and renamed into place whole."""

from __future__ import annotations

import bz2
import contextlib
import logging
import os
import secrets
import signal
import threading
import time
import traceback
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from stemzip.errors import ConfigError, SourceChangedError, StemTimeoutError
from stemzip.results import Status, StemResult

isal_zlib: Any
try:
    from isal import isal_zlib
except ImportError:  # the accelerated engine is optional at run time
    isal_zlib = None

log = logging.getLogger(__name__)

COMPRESSION_METHODS: dict[str, int] = {
    "stored": zipfile.ZIP_STORED,
    "deflated": zipfile.ZIP_DEFLATED,
    "bzip2": zipfile.ZIP_BZIP2,
    "lzma": zipfile.ZIP_LZMA,
}
DEFLATE_ENGINES = ("auto", "isal", "zlib")
# accepted compresslevel range, and the level used when none is given
_LEVELS: dict[str, tuple[int, int, int]] = {
    "isal": (0, 3, 3),
    "zlib": (0, 9, 6),
    "bzip2": (1, 9, 9),
}
_CHUNK = 1 << 20  # bytes read and compressed at a time; bounds memory per member


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


def available_engine(engine: str = "auto") -> str:
    """Name the DEFLATE engine that ``engine`` resolves to on this machine."""
    if engine == "auto":
        return "zlib" if isal_zlib is None else "isal"
    return engine


@dataclass(frozen=True)
class ArchiveOptions:
    """How members are compressed and how archives reach the disk."""

    # one of COMPRESSION_METHODS
    compression: str = "deflated"
    # DEFLATE engine: auto (isal when installed, else zlib), isal or zlib
    engine: str = "auto"
    # level in the engine's own range; None uses its default
    compresslevel: int | None = None
    # fsync each archive before renaming it into place
    fsync: bool = False

    def _level_key(self) -> str | None:
        if self.compression == "deflated":
            return available_engine(self.engine)
        return "bzip2" if self.compression == "bzip2" else None

    def check(self) -> None:
        """Raise :class:`ConfigError` if the options cannot work here."""
        if self.compression not in COMPRESSION_METHODS:
            raise ConfigError(
                f"archive.compression {self.compression!r} is not one of "
                f"{', '.join(COMPRESSION_METHODS)}"
            )
        if self.engine not in DEFLATE_ENGINES:
            raise ConfigError(
                f"archive.engine {self.engine!r} is not one of "
                f"{', '.join(DEFLATE_ENGINES)}"
            )
        if self.engine == "isal" and isal_zlib is None:
            raise ConfigError(
                "archive.engine is 'isal' but the isal package is not installed; "
                "install it (pip install isal) or set archive.engine=auto"
            )
        key = self._level_key()
        if self.compresslevel is None:
            return
        if key is None:
            raise ConfigError(
                f"archive.compresslevel must be null with archive.compression="
                f"{self.compression}, got {self.compresslevel}"
            )
        low, high, _ = _LEVELS[key]
        if not low <= self.compresslevel <= high:
            raise ConfigError(
                f"archive.compresslevel {self.compresslevel} is outside {low}..{high}"
                f" for the {key} compressor; set archive.compresslevel=null"
            )

    def level(self) -> int | None:
        """The level actually used, after defaults."""
        key = self._level_key()
        if key is None:
            return None
        return _LEVELS[key][2] if self.compresslevel is None else self.compresslevel

    def describe(self) -> str:
        """The method, engine and level, for the log."""
        if self.compression != "deflated":
            level = self.level()
            return self.compression + ("" if level is None else f" level {level}")
        return f"deflated ({available_engine(self.engine)} level {self.level()})"

    def new_compressor(self) -> _Compressor | None:
        """A fresh compressor for one member, or None to let zipfile choose."""
        level = self.level()
        if self.compression == "bzip2":
            return bz2.BZ2Compressor(level if level is not None else 9)
        if self.compression != "deflated":
            return None
        # ZIP members hold raw DEFLATE streams: no zlib header, hence wbits -15
        if available_engine(self.engine) == "isal":
            assert isal_zlib is not None
            fast: _Compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
            return fast
        return zlib.compressobj(level if level is not None else 6, zlib.DEFLATED, -15)


@dataclass(frozen=True)
class StemJob:
    """One archive to write: plain data, cheap to send to a worker."""

    stem: str
    # absolute paths of the members, in archive order
    files: tuple[str, ...]
    archive_path: str
    options: ArchiveOptions = field(default_factory=ArchiveOptions)

    @property
    def size(self) -> int:
        """Bytes of input as listed when planned (0 for vanished files)."""
        total = 0
        for name in self.files:
            with contextlib.suppress(OSError):
                total += os.stat(name).st_size
        return total


def _open_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, options: ArchiveOptions
) -> Any:
    writer = archive.open(info, "w")
    compressor = options.new_compressor()
    if compressor is not None:
        # zipfile has no public hook for the compressor; its member writer
        # keeps one in _compressor, built from the same method, and calls only
        # compress() and flush() on it, so an equivalent object can stand in.
        writer._compressor = compressor  # type: ignore[attr-defined]
    return writer


def _add_member(
    archive: zipfile.ZipFile,
    source: Path,
    options: ArchiveOptions,
    deadline: float | None,
) -> int:
    before = source.stat()
    # strict_timestamps=False stores dates outside 1980..2107 as the nearest
    # date the format can hold, instead of refusing the file
    info = zipfile.ZipInfo.from_file(source, source.name, strict_timestamps=False)
    info.compress_type = COMPRESSION_METHODS[options.compression]
    with source.open("rb") as reader, _open_member(archive, info, options) as writer:
        while chunk := reader.read(_CHUNK):
            writer.write(chunk)
            if deadline is not None and time.monotonic() > deadline:
                raise StemTimeoutError("time limit reached")
    after = source.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or (
        info.file_size != before.st_size
    ):
        raise SourceChangedError(
            f"{source.name!r} changed while it was being archived "
            f"({before.st_size} bytes before, {info.file_size} read, "
            f"{after.st_size} after); rerun once it is complete"
        )
    log.debug("added %r (%d bytes)", source.name, info.file_size)
    return info.file_size


def _temporary_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")


def write_archive(
    target: Path,
    files: Sequence[Path],
    options: ArchiveOptions,
    deadline: float | None = None,
) -> int:
    """Write ``files`` into a new ZIP at ``target`` and return the bytes read.

    The archive is built under a hidden temporary name beside ``target`` and
    renamed over it only once complete, so ``target`` is never seen truncated
    and a previous archive survives any failure. Raises what reading or
    writing raised, after removing the temporary file; raises
    :class:`StemTimeoutError` once ``time.monotonic()`` passes ``deadline``.
    """
    temporary = _temporary_path(target)
    bytes_in = 0
    try:
        with temporary.open("xb") as raw:
            with zipfile.ZipFile(raw, "w", allowZip64=True) as archive:
                for source in files:
                    bytes_in += _add_member(archive, source, options, deadline)
            if options.fsync:
                raw.flush()
                os.fsync(raw.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return bytes_in


def _raise_timeout(signum: int, frame: Any) -> None:
    raise StemTimeoutError("time limit reached")


@contextlib.contextmanager
def _time_limit(seconds: float | None, stem: str) -> Iterator[float | None]:
    """Yield the deadline for one stem's work, and enforce it where possible.

    The work checks the deadline after every chunk. In the main thread an
    alarm signal also interrupts a read that blocks; signals reach no other
    thread, so there the check between chunks is the only one.
    """
    if not seconds:
        yield None
        return
    deadline = time.monotonic() + seconds
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield deadline
    except StemTimeoutError:
        raise StemTimeoutError(
            f"stem {stem!r} took longer than timeout_per_file={seconds:g} s"
        ) from None
    finally:
        if in_main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def zip_stem(job: StemJob, timeout: float | None = None) -> StemResult:
    """Archive one stem and report how it went; per-stem errors never escape."""
    target = Path(job.archive_path)
    started = time.perf_counter()
    try:
        with _time_limit(timeout, job.stem) as deadline:
            sources = [Path(name) for name in job.files]
            bytes_in = write_archive(target, sources, job.options, deadline)
        bytes_out = target.stat().st_size
    except Exception as exc:
        log.error("stem %r failed: %s", job.stem, exc)
        return StemResult(
            stem=job.stem,
            status=Status.FAILED,
            files=job.files,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        )

    log.info(
        "wrote %s: %d members, %d bytes from %d in %.2f s",
        target,
        len(job.files),
        bytes_out,
        bytes_in,
        time.perf_counter() - started,
    )
    return StemResult(
        stem=job.stem,
        status=Status.ZIPPED,
        zip_file_path=str(target),
        files=job.files,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
    )
