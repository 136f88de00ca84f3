"""Writing one stem's archive: streamed, compressed, and renamed into place whole."""

from __future__ import annotations

import bz2
import contextlib
import errno
import io
import logging
import lzma
import os
import re
import secrets
import shutil
import signal
import stat
import threading
import time
import traceback
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from stemzip.errors import (
    ArchiveVerificationError,
    CarryOverError,
    ConfigError,
    DamagedArchiveError,
    NotAnArchiveError,
    SourceChangedError,
    StemTimeoutError,
)
from stemzip.names import readable
from stemzip.results import Status, StemResult

isal_zlib: Any
fcntl: Any
try:
    import fcntl
except ImportError:  # POSIX only; without it partial files are never removed
    fcntl = None

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
AFTER_ACTIONS = ("keep", "delete", "move")
# accepted compresslevel range, and the level used when none is given
_LEVELS: dict[str, tuple[int, int, int]] = {
    "isal": (0, 3, 3),
    "zlib": (0, 9, 6),
    "bzip2": (1, 9, 9),
}
_CHUNK = 1 << 20  # bytes read and compressed at a time; bounds memory per member
# sources up to this many bytes are archived in memory, then written at once
_IN_MEMORY = 4 << 20


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
    # read the archive back and check members and CRCs before renaming it
    verify: bool = False
    # what becomes of the sources once their archive is in place: AFTER_ACTIONS
    after: str = "keep"
    # folder the sources go to with after="move"
    move_to: str | None = None

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
        self._check_after()
        if self.engine == "isal" and isal_zlib is None:
            raise ConfigError(
                "archive.engine is 'isal' but the isal package is not installed; "
                "install it (pip install isal) or set archive.engine=auto"
            )
        if self.compresslevel is not None:
            self._check_level(self.compresslevel)

    def _check_after(self) -> None:
        if self.after not in AFTER_ACTIONS:
            raise ConfigError(
                f"archive.after {self.after!r} is not one of {', '.join(AFTER_ACTIONS)}"
            )
        if self.after != "keep" and not self.verify:
            raise ConfigError(f"archive.after={self.after} needs archive.verify=true")
        if self.after == "move" and not self.move_to:
            raise ConfigError("archive.after=move needs archive.move_to=<folder>")

    def _check_level(self, level: int) -> None:
        key = self._level_key()
        if key is None:
            raise ConfigError(
                f"archive.compresslevel must be null with archive.compression="
                f"{self.compression}, got {level}"
            )
        low, high, _ = _LEVELS[key]
        if not low <= level <= high:
            hint = "set archive.compresslevel=null"
            if key == "isal" and level <= _LEVELS["zlib"][1]:
                hint = "for zlib's levels set archive.engine=zlib"
            raise ConfigError(
                f"archive.compresslevel {level} is outside {low}..{high}"
                f" for the {key} compressor; {hint}"
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
    # absolute paths of the sources, in archive order
    files: tuple[str, ...]
    archive_path: str
    options: ArchiveOptions = field(default_factory=ArchiveOptions)
    # member names, relative with forward slashes; empty means the file names
    arcnames: tuple[str, ...] = ()
    # bytes of the sources when planned (None: not known); orders the work,
    # and lets a small archive be assembled in memory
    size: int | None = None
    # the folder member names are relative to, where a member's source is
    # looked for before it is carried over (None: every source counts as gone)
    data_directory: str | None = None

    def sources(self) -> list[tuple[str, str]]:
        """Each source path with its own name (or path in the data folder)."""
        names = self.arcnames or tuple(os.path.basename(f) for f in self.files)
        return list(zip(self.files, names, strict=True))

    def members(self) -> list[tuple[str, str]]:
        """Each source path with the name it is stored under.

        That is its own name, with each byte that is not valid UTF-8 written
        as ``%XX`` (:func:`~stemzip.names.readable`): ZIP names are UTF-8.
        """
        return [(source, readable(name)) for source, name in self.sources()]


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


def _open_regular(source: str) -> tuple[int, os.stat_result]:
    # O_NONBLOCK: a source swapped for a FIFO since planning must not block
    # the open for ever; it is refused below, like any other non-file (reads
    # of a regular file ignore the flag)
    fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            name = readable(os.path.basename(source))
            raise SourceChangedError(f"{name!r} is no longer a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, status


def _zip_date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    # the format holds dates from 1980 to 2107; others get the nearest one
    year, month, day, hour, minute, second = time.localtime(mtime)[:6]
    if year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    if year > 2107:
        return (2107, 12, 31, 23, 59, 59)
    return (year, month, day, hour, minute, second)


# a file as read: device, inode, size and modification time in nanoseconds
Identity = tuple[int, int, int, int]


def identity(status: os.stat_result) -> Identity:
    """What tells a file as it was read from the same path rewritten since."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _zip_info(arcname: str, status: os.stat_result) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, _zip_date_time(status.st_mtime))
    info.external_attr = (status.st_mode & 0xFFFF) << 16
    info.file_size = status.st_size
    return info


# set when the run is interrupted: threads cannot be sent a signal, so the
# ones writing archives look here between chunks and give up
_stopping = threading.Event()


@contextlib.contextmanager
def stopping_writers() -> Iterator[None]:
    """Make every archive written in this process give up, until the exit.

    Each raises :class:`KeyboardInterrupt` after its current chunk, and its
    temporary file is removed.
    """
    _stopping.set()
    try:
        yield
    finally:
        _stopping.clear()


# runs whose stems must give up, by the token their batches carry: a Dask
# worker outlives the run that sent it work, and may hold stems of others
_stopped_runs: set[str] = set()
# the token of the run whose stems this thread archives
_current = threading.local()


def stop_run(token: str) -> None:
    """Make every archive of run ``token`` written in this process give up.

    Sent to each Dask worker when the run is interrupted; each archive gives
    up after its current chunk, and its temporary file is removed.
    """
    _stopped_runs.add(token)


@contextlib.contextmanager
def archiving_for(token: str | None) -> Iterator[None]:
    """Mark the archives this thread writes as run ``token``'s."""
    _current.token = token
    try:
        yield
    finally:
        _current.token = None


def told_to_stop() -> bool:
    """Whether the archives this thread writes must give up."""
    return _stopping.is_set() or getattr(_current, "token", None) in _stopped_runs


def _add_member(
    archive: zipfile.ZipFile,
    source: str,
    arcname: str,
    options: ArchiveOptions,
    deadline: float | None,
    in_memory: bool = False,
    read: dict[str, Identity] | None = None,
) -> int:
    fd, before = _open_regular(source)
    if in_memory and before.st_size > _IN_MEMORY:
        os.close(fd)
        raise SourceChangedError(
            f"{readable(os.path.basename(source))!r} grew to {before.st_size} bytes "
            "since the run was planned; rerun once it is complete"
        )
    info = _zip_info(arcname, before)
    info.compress_type = COMPRESSION_METHODS[options.compression]
    # one byte over the size lets the read that finds the end come at once,
    # and keeps small files from paying for a whole chunk
    size = min(_CHUNK, before.st_size + 1)
    try:
        with _open_member(archive, info, options) as writer:
            while chunk := os.read(fd, size):
                writer.write(chunk)
                if deadline is not None and time.monotonic() > deadline:
                    raise StemTimeoutError("time limit reached")
                if told_to_stop():
                    raise KeyboardInterrupt("the run was interrupted")
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or (
        info.file_size != before.st_size
    ):
        raise SourceChangedError(
            f"{readable(os.path.basename(source))!r} changed while it was being "
            f"archived ({before.st_size} bytes before, {info.file_size} read, "
            f"{after.st_size} after); rerun once it is complete"
        )
    log.debug("added %r (%d bytes)", arcname, info.file_size)
    if read is not None:
        read[source] = identity(after)
    return info.file_size


# longest file name most file systems allow, in bytes
NAME_MAX = 255


def _temporary_path(target: Path) -> Path:
    token = secrets.token_hex(4)
    name = f".{target.name}.{token}.part"
    if len(os.fsencode(name)) > NAME_MAX:
        name = f".stemzip.{token}.part"
    return target.with_name(name)


_PARTIAL = re.compile(r"\.(?P<archive>.+)\.[0-9a-f]{8}\.part")


def is_temporary(name: str) -> bool:
    """Whether a file name is that of a temporary archive stemzip writes."""
    return _PARTIAL.fullmatch(name) is not None


def _lock(handle: BinaryIO) -> None:
    # held while the archive is written, so that another run can tell a live
    # temporary file from one a killed run left behind
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _abandoned(path: str) -> bool:
    if fcntl is None:
        return False  # no way to tell a live writer from a dead one
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_partial_files(jobs: Sequence[StemJob]) -> int:
    """Remove temporary files that a killed run left for these jobs' archives.

    Only files named like this module's temporaries, for one of the archives
    about to be written, and locked by no running writer are touched. Returns
    how many were removed.
    """
    wanted: dict[Path, set[str]] = {}
    for job in jobs:
        target = Path(job.archive_path)
        wanted.setdefault(target.parent, {"stemzip"}).add(target.name)
    removed = 0
    for folder, names in wanted.items():
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            stale = [
                entry.path
                for entry in entries
                if (match := _PARTIAL.fullmatch(entry.name))
                and match["archive"] in names
                and entry.is_file(follow_symlinks=False)
            ]
        for path in stale:
            if _abandoned(path):
                log.warning(
                    "removing %s, an unfinished archive whose writer is gone", path
                )
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                removed += 1
    return removed


def verify_archive(path: Path, expected: dict[str, int]) -> None:
    """Read ``path`` back and check it holds ``expected`` (name to size).

    Every member is decompressed and its CRC checked. Raises
    :class:`ArchiveVerificationError` on any difference.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            found = {info.filename: info.file_size for info in infos}
            if found == expected:
                for info in infos:
                    _read_through(archive, info)
    except zipfile.BadZipFile as exc:
        raise ArchiveVerificationError(f"{path.name}: {exc}") from exc
    except (zlib.error, lzma.LZMAError, EOFError, OSError) as exc:
        raise ArchiveVerificationError(
            f"{path.name} cannot be read back: {exc}"
        ) from exc
    if found != expected:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        raise ArchiveVerificationError(
            f"{path.name} members differ from the plan: missing {missing}, "
            f"unexpected {extra}, or sizes differ"
        )


def _read_through(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    # zipfile checks the CRC once a member is read to its end; read in
    # chunks, so that an interrupted run need not wait for a large member
    with archive.open(info) as member:
        while member.read(_CHUNK):
            if told_to_stop():
                raise KeyboardInterrupt("the run was interrupted")


# how every ZIP file starts: a local header, or the end record of an empty one
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
# the archive comment that marks the archives stemzip writes, which end with
# the end record: its signature, 16 bytes, the comment's length and itself
ARCHIVE_COMMENT = b"stemzip"
_END_RECORD = 22


def is_own_archive(path: str | Path) -> bool:
    """Whether the file at ``path`` is an archive that stemzip wrote.

    Only the last bytes are read: those of the end record and its comment.
    """
    tail = _END_RECORD + len(ARCHIVE_COMMENT)
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size < tail:
                return False
            handle.seek(-tail, os.SEEK_END)
            record = handle.read(tail)
    except OSError:
        return False
    length = int.from_bytes(record[20:22], "little")
    return (
        record.startswith(b"PK\x05\x06")
        and length == len(ARCHIVE_COMMENT)
        and record[_END_RECORD:] == ARCHIVE_COMMENT
    )


def in_the_way(target: Path) -> OSError | None:
    """The error for what stands at an archive's path, if it is no file.

    A folder, FIFO, socket or device there is never opened (a FIFO would
    block) and never replaced; None when nothing or a regular file is there.
    A file where a folder on the way should be, or a folder this user may
    not search, is an error too.
    """
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return NotADirectoryError(
            errno.ENOTDIR,
            f"a file stands where a folder on the way to {target} would be; "
            "move it away or choose another archive.name",
        )
    except OSError as exc:
        return exc
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return IsADirectoryError(
            errno.EISDIR,
            f"{target} is a folder, where this stem's archive would go; move it "
            "away or choose another archive.name",
        )
    return NotAnArchiveError(
        f"{target} exists and is no regular file, let alone a ZIP archive; "
        "move it away or choose another archive.name"
    )


def _check_readable(target: Path) -> None:
    try:
        with zipfile.ZipFile(target):
            pass
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise DamagedArchiveError(
            f"{target} exists and cannot be read as a ZIP archive ({exc}): cut "
            "short or damaged, it may still hold what its sources no longer "
            "do, so it is left as it is; move it away to zip this stem afresh"
        ) from exc


def check_replaceable(target: Path) -> None:
    """Raise unless what is at ``target`` may be replaced by a new archive.

    That is nothing, or an archive stemzip wrote (:func:`is_own_archive`).
    """
    # an archive only ever replaces an archive: a data file that an
    # archive.name template happens to hit is never written over. Checked
    # again here, for what appeared since the run was planned
    blocker = in_the_way(target)
    if blocker is not None:
        raise blocker
    try:
        descriptor = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    try:
        head = os.read(descriptor, 4)
    finally:
        os.close(descriptor)
    if head not in _ZIP_SIGNATURES:
        raise NotAnArchiveError(
            f"{target} exists and is not a ZIP archive; stemzip replaces only "
            "its own archives, so move it away or choose another archive.name"
        )
    if not is_own_archive(target):
        _check_readable(target)
        # a workbook, a document, another tool's archive: ZIP files all
        raise NotAnArchiveError(
            f"{target} exists and is a ZIP file that stemzip did not write "
            "(another tool's archive, a workbook); stemzip replaces only its "
            "own archives, so move it away or choose another archive.name"
        )


def _stored_date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    # what a member's date reads back as: DOS time keeps only even seconds
    year, month, day, hour, minute, second = _zip_date_time(mtime)
    return (year, month, day, hour, minute, second - second % 2)


def source_gone(name: str, data_directory: str | None) -> bool:
    """Whether a member's source is no longer in the data folder.

    Such a member is carried into the archive that replaces its own: the
    archive is then the source's only copy.
    """
    if data_directory is None:
        return True
    return not os.path.lexists(os.path.join(data_directory, *name.split("/")))


def changed_members(
    target: Path,
    members: Sequence[tuple[str | Path, str]],
    data_directory: str | None = None,
) -> int | None:
    """Count the differences between the archive at ``target`` and ``members``.

    ``members`` are (source, name) pairs as :func:`write_archive` takes them.
    Each member the archive lacks, holds with another size, or holds with
    another date (the source's, as the format stores it: clamped to
    1980..2107, in 2-second steps) counts once, as does each name the archive
    holds beyond them whose source is still in ``data_directory`` (one whose
    source is gone would be carried over, so it is no change). Only the
    central directory is read. Returns None when ``target`` is a ZIP file
    that cannot be read, and raises :class:`NotAnArchiveError` when it is no
    archive stemzip wrote.
    """
    check_replaceable(target)
    try:
        with zipfile.ZipFile(target) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", target, exc)
        return None
    held = {info.filename: (info.file_size, info.date_time) for info in infos}
    changed = len(infos) - len(held)  # names held twice
    for source, name in members:
        stored = held.pop(name, None)
        try:
            status = os.stat(source)
        except OSError:  # gone since it was listed: the rebuild will say so
            changed += 1
            continue
        if stored != (status.st_size, _stored_date_time(status.st_mtime)):
            changed += 1
    extra = [name for name in held if not source_gone(name, data_directory)]
    return changed + len(extra)


class _ArchiveFile(io.FileIO):
    """An unbuffered archive file whose writes are never short.

    A raw write may store only part of its data (a disk filling up, a
    signal) and says so only in the count it returns, which zipfile does not
    check; the rest is written here, so a full disk raises ENOSPC instead of
    leaving an archive with a hole in it.
    """

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            written = super().write(view[done:])
            if not written:  # not for a regular file; never loop on it
                raise OSError(errno.EIO, f"{self.name}: a write stored nothing")
            done += written
        return done


def _create(path: Path) -> io.FileIO:
    # unbuffered: a small archive arrives in one write, a large one in chunks
    try:
        return _ArchiveFile(path, "xb")
    except FileNotFoundError:  # a subfolder of the archive name, made on demand
        path.parent.mkdir(parents=True, exist_ok=True)
        return _ArchiveFile(path, "xb")


def _to_carry(
    earlier: Path, taken: set[str], data_directory: str | None
) -> list[zipfile.ZipInfo]:
    """The members of ``earlier`` that its replacement must take over.

    Those that no new member replaces and whose source is gone.
    """
    try:
        with zipfile.ZipFile(earlier) as old:
            infos = old.infolist()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise _carry_error(earlier, exc) from exc
    return [
        info
        for info in infos
        if info.filename not in taken
        and not info.is_dir()
        and source_gone(info.filename, data_directory)
    ]


def carried_members(job: StemJob) -> list[str]:
    """The members of the job's existing archive that its new one will keep.

    Empty when there is no archive, or one that cannot be replaced or read,
    which fails the stem anyway. For the dry run's plan.
    """
    target = Path(job.archive_path)
    if not is_own_archive(target):
        return []
    taken = {name for _, name in job.members()}
    try:
        return sorted(
            info.filename for info in _to_carry(target, taken, job.data_directory)
        )
    except CarryOverError:
        return []


def _carry_error(earlier: Path, exc: BaseException) -> CarryOverError:
    return CarryOverError(
        f"cannot carry the members of {earlier} whose sources are gone into its "
        f"replacement ({exc}); the archive is left as it is: move it away to "
        "zip this stem afresh"
    )


def _carry_member(
    archive: zipfile.ZipFile,
    old: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    options: ArchiveOptions,
    deadline: float | None,
) -> int:
    """Copy one member of ``old`` into ``archive``, through its CRC check."""
    copy = zipfile.ZipInfo(info.filename, info.date_time)
    copy.external_attr = info.external_attr
    copy.compress_type = COMPRESSION_METHODS[options.compression]
    copy.file_size = info.file_size
    with old.open(info) as source, _open_member(archive, copy, options) as out:
        while chunk := source.read(_CHUNK):
            out.write(chunk)
            if deadline is not None and time.monotonic() > deadline:
                raise StemTimeoutError("time limit reached")
            if told_to_stop():
                raise KeyboardInterrupt("the run was interrupted")
    return info.file_size


def _write_members(
    archive: zipfile.ZipFile,
    members: Sequence[tuple[str | Path, str]],
    carried: list[zipfile.ZipInfo],
    earlier: Path | None,
    options: ArchiveOptions,
    deadline: float | None,
    small: bool,
    read: dict[str, Identity] | None,
) -> tuple[dict[str, int], int]:
    """Add the sources and the carried members, in name order.

    Returns each new member's size, and how many members were carried.
    """
    items: list[tuple[str, str | Path | None, zipfile.ZipInfo | None]]
    items = [(name, source, None) for source, name in members]
    if carried:
        items += [(info.filename, None, info) for info in carried]
        items.sort(key=lambda item: item[0])
    sizes: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        old = None
        if carried:
            assert earlier is not None
            old = stack.enter_context(zipfile.ZipFile(earlier))
        for name, source, info in items:
            if info is None:
                assert source is not None
                sizes[name] = _add_member(
                    archive, os.fspath(source), name, options, deadline, small, read
                )
                continue
            assert old is not None
            try:
                sizes[name] = _carry_member(archive, old, info, options, deadline)
            except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError) as exc:
                raise _carry_error(earlier or Path(), exc) from exc
    return sizes, len(carried)


def write_archive(
    target: Path,
    members: Sequence[tuple[str | Path, str]],
    options: ArchiveOptions,
    deadline: float | None = None,
    size_hint: int | None = None,
    read: dict[str, Identity] | None = None,
    data_directory: str | None = None,
) -> int:
    """Write ``members`` (source, name) into a new ZIP at ``target``.

    Returns the bytes read from the sources. The archive is built under a
    hidden temporary name beside ``target``, verified there when
    ``options.verify`` is set, and renamed over ``target`` only once
    complete, so ``target`` is never seen truncated and a previous archive
    survives any failure. ``size_hint``, the sources' total bytes when known,
    lets a small archive be assembled in memory. ``read``, when given, gets
    each source's :func:`identity` as archived. An archive already at
    ``target`` (stemzip's own: no other file is replaced) hands on every
    member that no source replaces and whose source is gone from
    ``data_directory`` (:func:`source_gone`): it is that source's only copy.
    Raises what reading, writing or verifying raised, after removing the
    temporary file; raises :class:`StemTimeoutError` once
    ``time.monotonic()`` passes ``deadline``.
    """
    check_replaceable(target)
    earlier = target if target.is_file() else None
    carried = []
    if earlier is not None:
        carried = _to_carry(earlier, {name for _, name in members}, data_directory)
    temporary = _temporary_path(target)
    sizes: dict[str, int] = {}
    try:
        with _create(temporary) as raw:
            _lock(raw)
            # a small archive is assembled in memory and written at once:
            # zipfile seeks and writes several times per member, and on many
            # small stems those system calls cost more than the compression
            small = size_hint is not None and size_hint <= _IN_MEMORY and not carried
            memory = io.BytesIO() if small else None
            with zipfile.ZipFile(memory or raw, "w", allowZip64=True) as archive:
                archive.comment = ARCHIVE_COMMENT
                sizes, kept = _write_members(
                    archive, members, carried, earlier, options, deadline, small, read
                )
            if memory is not None:
                raw.write(memory.getbuffer())
            if options.fsync:
                raw.flush()
                os.fsync(raw.fileno())
        if options.verify:
            verify_archive(temporary, sizes)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    if kept:
        log.info(
            "kept %d members of the earlier %s whose sources are gone",
            kept,
            readable(str(target)),
        )
    new = {name for _, name in members}
    return sum(size for name, size in sizes.items() if name in new)


def _unchanged(job: StemJob, read: dict[str, Identity]) -> list[tuple[str, str]]:
    """The stem's (source, name) pairs still as they were archived.

    Raises :class:`SourceChangedError` naming those that are not, after
    none has been touched, so no data the archive lacks is deleted or moved.
    """
    changed = []
    for source, _ in job.sources():
        try:
            now = identity(os.stat(source))
        except FileNotFoundError:
            now = None
        if now != read.get(source):
            changed.append(readable(os.path.basename(source)))
    if changed:
        raise SourceChangedError(
            f"{changed!r} changed after they were archived, so no source was "
            f"{'deleted' if job.options.after == 'delete' else 'moved'}; "
            "rerun once they are complete"
        )
    return list(job.sources())


def _dispose_sources(job: StemJob, read: dict[str, Identity]) -> None:
    """Delete or move a stem's sources once its verified archive is in place.

    Only when every source is still as it was archived (``read``).
    """
    if job.options.after == "keep":
        return
    sources = _unchanged(job, read)
    if job.options.after == "delete":
        for source, _ in sources:
            os.unlink(source)
        # logged by the worker, so it may come before the main process's
        # "wrote" line: it names the archive they are safe in
        log.info(
            "deleted %d sources of %r, now held by verified %s",
            len(job.files),
            job.stem,
            job.archive_path,
        )
    elif job.options.after == "move":
        assert job.options.move_to is not None
        folder = Path(job.options.move_to)
        targets = [(source, folder / name) for source, name in sources]
        taken = [str(target) for _, target in targets if target.exists()]
        if taken:
            raise FileExistsError(f"not moving sources over existing files: {taken}")
        for source, target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
        log.info(
            "moved %d sources of %r to %s, now also held by verified %s",
            len(targets),
            job.stem,
            folder,
            job.archive_path,
        )


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
            f"stem {readable(stem)!r} took longer than timeout_per_file={seconds:g} s"
        ) from None
    finally:
        if in_main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def describe_error(exc: BaseException) -> str:
    """``exc`` as its type and message, file names as the results show them.

    An OSError's own message quotes its file names with ``repr``, which writes
    a byte that is not valid UTF-8 as ``\\udcXX``; here it is ``%XX``, as in
    the member names, the results and the log.
    """
    what = f"{type(exc).__name__}: {exc}"
    if not (isinstance(exc, OSError) and exc.strerror):
        return what
    names = [n for n in (exc.filename, exc.filename2) if isinstance(n, str)]
    if not names or all(name.isascii() for name in names):
        return what
    text = f"[Errno {exc.errno}] {exc.strerror}: {readable(names[0])!r}"
    if len(names) > 1:
        text += f" -> {readable(names[1])!r}"
    return f"{type(exc).__name__}: {text}"


def _failure(
    job: StemJob, exc: BaseException, archive: Path | None, started: float
) -> StemResult:
    what = describe_error(exc)
    if archive is not None:
        verb = "deleted" if job.options.after == "delete" else "moved"
        what = f"archive {archive} is complete, but not all sources were {verb}: {what}"
    return StemResult(
        stem=job.stem,
        status=Status.FAILED,
        zip_file_path=None if archive is None else str(archive),
        files=job.files,
        error=what,
        traceback=traceback.format_exc(),
        seconds=time.perf_counter() - started,
    )


def _write_twice_if_changed(
    job: StemJob, target: Path, deadline: float | None, read: dict[str, Identity]
) -> int:
    # a source still being written by a late solver or a copy may be
    # complete a moment later; a second change fails the stem
    try:
        return write_archive(
            target,
            job.members(),
            job.options,
            deadline,
            job.size,
            read,
            job.data_directory,
        )
    except SourceChangedError as exc:
        log.warning(
            "stem %r: %s; reading its files once more",
            readable(job.stem),
            readable(str(exc)),
        )
    # streamed this time: a file that grew may no longer fit in memory
    read.clear()
    return write_archive(
        target, job.members(), job.options, deadline, None, read, job.data_directory
    )


def zip_stem(job: StemJob, timeout: float | None = None) -> StemResult:
    """Archive one stem and report how it went; per-stem errors never escape.

    Logs nothing at INFO: the process that collects the results logs them
    with :func:`log_result`, so workers send no line per archive.
    """
    target = Path(job.archive_path)
    started = time.perf_counter()
    read: dict[str, Identity] = {}
    try:
        with _time_limit(timeout, job.stem) as deadline:
            bytes_in = _write_twice_if_changed(job, target, deadline, read)
        bytes_out = target.stat().st_size
    except Exception as exc:
        return _failure(job, exc, None, started)
    try:
        _dispose_sources(job, read)
    except OSError as exc:
        return _failure(job, exc, target, started)

    return StemResult(
        stem=job.stem,
        status=Status.ZIPPED,
        zip_file_path=str(target),
        files=job.files,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        seconds=time.perf_counter() - started,
    )


def log_result(result: StemResult) -> None:
    """Log one line for a stem that was zipped or failed."""
    # the same substitutes as in the results, so a line matches its entry
    if result.status is Status.FAILED:
        log.error(
            "stem %r failed: %s", readable(result.stem), readable(result.error or "")
        )
    elif result.status is Status.ZIPPED:
        log.info(
            "wrote %s: %d members, %d bytes from %d in %.2f s",
            readable(result.zip_file_path or ""),
            len(result.files),
            result.bytes_out,
            result.bytes_in,
            result.seconds,
        )
