"""Finding stems and the data files that belong to each of them.

A data file belongs to stem ``S`` when its file name is ``S`` followed by a
character that is not a letter or digit (``_``, ``-``, ``.``, a space, ...)
and anything after it. When several stems fit, the longest wins, so ``run1``
never takes ``run10_forces.csv``. Names are compared literally, except that
Unicode normalisation is ignored: ``é`` as one character and as ``e`` plus a
combining accent are the same.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from stemzip.names import composed

log = logging.getLogger(__name__)


def has_extension(name: str, extensions: Sequence[str]) -> bool:
    """Whether ``name`` ends in ``.ext`` for one of ``extensions`` (any case)."""
    lowered = name.lower()
    return any(
        lowered.endswith("." + ext.lower()) and len(name) > len(ext) + 1
        for ext in extensions
    )


@dataclass(frozen=True)
class NameFilter:
    """Which names to keep, by substrings and by glob patterns."""

    # keep names that contain every one of these
    contains: tuple[str, ...] = ()
    # drop names that contain any of these
    not_contains: tuple[str, ...] = ()
    # keep names that match one of these glob patterns; none keeps all
    include: tuple[str, ...] = ()
    # drop names that match any of these glob patterns
    exclude: tuple[str, ...] = ()

    def keeps(self, name: str) -> bool:
        """Whether ``name`` passes every rule (globs are case-sensitive)."""
        return (
            all(part in name for part in self.contains)
            and not any(part in name for part in self.not_contains)
            and (
                not self.include
                or any(fnmatch.fnmatchcase(name, p) for p in self.include)
            )
            and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)
        )


# backups editors leave beside the file they save, compared in any case
_BACKUP_SUFFIXES = (".bak", ".swp", ".swo")


def is_hidden(name: str) -> bool:
    """Whether a file name is hidden, an editor's backup or an office lock file.

    Hidden names start with ``.`` (AppleDouble ``._x``, vim's ``.x.swp``,
    LibreOffice's ``.~lock.x#``, stemzip's own temporary archives); backups
    end in ``~``, ``.bak``, ``.swp`` or ``.swo``; Microsoft Office's lock
    files start with ``~$``.
    """
    return (
        name.startswith((".", "~$"))
        or name.endswith("~")
        or name.lower().endswith(_BACKUP_SUFFIXES)
    )


_FILE = "file"
_LINK = "link"
_FOLDER = "folder"


def _kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return _FILE
    if stat.S_ISDIR(mode):
        return _FOLDER
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _kind(entry: os.DirEntry[str]) -> str:
    """``file``, ``link`` (to a regular file), ``folder``, or what else it is."""
    try:
        # neither call needs a system call for a plain file or folder, which
        # keeps large folders cheap to list
        if entry.is_file():
            return _LINK if entry.is_symlink() else _FILE
        if entry.is_dir(follow_symlinks=False):
            return _FOLDER
        # only asks what the entry is; FIFOs and devices are never opened
        mode = entry.stat().st_mode
    except FileNotFoundError:
        return "dangling link" if entry.is_symlink() else "gone while listed"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "link loop"
        return f"unreadable ({exc.strerror})"
    kind = _kind_of(mode)
    return f"link to a {kind}" if entry.is_symlink() else kind


def _walk(
    directory: Path, recursive: bool, skip: set[Path], include_hidden: bool
) -> Iterator[tuple[str, str]]:
    """Each entry's relative path and kind; a recursive walk enters folders."""
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            listing = os.scandir(directory / relative)
        except OSError as exc:
            if not relative:
                raise
            # one unreadable subfolder does not stop the others being searched
            log.warning(
                "cannot list %s (%s): files in it are not archived",
                directory / relative,
                exc.strerror,
            )
            continue
        with listing as entries:
            for entry in entries:
                name = f"{relative}/{entry.name}" if relative else entry.name
                kind = _kind(entry)
                if recursive and kind == _FOLDER:
                    if Path(entry.path) not in skip and (
                        include_hidden or not entry.name.startswith(".")
                    ):
                        pending.append(name)
                elif include_hidden or not is_hidden(entry.name):
                    yield name, kind


@dataclass(frozen=True)
class Listing:
    """The selected entries of a folder: files to archive, and the rest."""

    # regular files, and links to them when links are followed; sorted
    files: list[str]
    # every other selected entry with what it is ("folder", "FIFO", "socket",
    # "device", "dangling link", "link loop", "link to a folder", "link (not
    # followed)", ...), sorted by path
    left_out: dict[str, str]


def scan_folder(
    directory: Path,
    extensions: Sequence[str],
    name_filter: NameFilter = NameFilter(),
    recursive: bool = False,
    skip: set[Path] | frozenset[Path] = frozenset(),
    include_hidden: bool = False,
    follow_links: bool = True,
) -> Listing:
    """Entries under ``directory`` with a selected extension that the filter keeps.

    Names are relative to ``directory``, with forward slashes. No entry is
    opened. Hidden names (:func:`is_hidden`) are passed over unless
    ``include_hidden``. A recursive search follows no linked folder, and
    enters neither a folder of ``skip`` (the output folder, when it lies
    inside) nor, unless ``include_hidden``, a folder whose name starts with
    ``.``.
    """
    files = []
    left_out = {}
    for name, kind in _walk(directory, recursive, set(skip), include_hidden):
        if not (has_extension(name, extensions) and name_filter.keeps(name)):
            continue
        if kind == _FILE or (kind == _LINK and follow_links):
            files.append(name)
        else:
            left_out[name] = "link (not followed)" if kind == _LINK else kind
    return Listing(files=sorted(files), left_out=dict(sorted(left_out.items())))


def list_files(
    directory: Path,
    extensions: Sequence[str],
    name_filter: NameFilter = NameFilter(),
    recursive: bool = False,
    skip: set[Path] | frozenset[Path] = frozenset(),
    include_hidden: bool = False,
) -> list[str]:
    """Regular files under ``directory`` with a selected extension, sorted.

    Links to regular files count as files; other entries that are no regular
    file get one warning line. Otherwise as :func:`scan_folder`.
    """
    listing = scan_folder(
        directory, extensions, name_filter, recursive, skip, include_hidden
    )
    if listing.left_out:
        name, kind = next(iter(listing.left_out.items()))
        log.warning(
            "skipping %d entries of %s that are no regular files, e.g. %r (%s)",
            len(listing.left_out),
            directory,
            name,
            kind,
        )
    return listing.files


def _stem_of(name: str) -> str:
    return name.rpartition(".")[0]


def find_stems(
    directory: Path,
    extensions: Sequence[str],
    name_filter: NameFilter = NameFilter(),
    include_hidden: bool = False,
) -> tuple[list[str], list[str]]:
    """The stems in ``directory``: those selected, and all of them.

    A stem is a stem file's name without its final extension (``case.1.yml``
    gives ``case.1``); ``name_filter`` selects by file name. Hidden files,
    backups and lock files are no stem files unless ``include_hidden``. Both
    lists are sorted and without repeats.
    """
    names = list_files(directory, extensions, include_hidden=include_hidden)
    every = sorted({_stem_of(name) for name in names})
    selected = sorted({_stem_of(name) for name in names if name_filter.keeps(name)})
    return selected, every


# every character that is not a letter or digit may end a stem
_SEPARATOR = re.compile(r"[\W_]")
# Unicode categories that [\W_] matches but that never end a stem
_JOINED = ("M", "Cs")


class StemIndex:
    """Stems looked up by their composed (NFC) form, built once per run.

    ``café`` typed on Linux and ``cafe`` + combining accent written by macOS
    are one form, so each fits the other's data files. Stem names that share
    a form are twins (:meth:`twins`).
    """

    def __init__(self, stems: Iterable[str]) -> None:
        self._by_form: dict[str, list[str]] = {}
        for stem in sorted(set(stems)):
            self._by_form.setdefault(composed(stem), []).append(stem)

    def fitting(self, path: str) -> Iterator[list[str]]:
        """The stems that the file name at the end of ``path`` fits, longest first.

        Each item holds the stems of one form: a single stem, or twins.
        """
        name = composed(path.rpartition("/")[2])
        # prefixes are tried from the longest down, so the first one found is
        # the longest match
        for match in reversed(list(_SEPARATOR.finditer(name, 1))):
            end = match.start()
            stems = self._by_form.get(name[:end])
            # a combining mark that composition left alone (no precomposed
            # letter exists) belongs to the letter before it, and a byte that
            # is not UTF-8 (a surrogate, "Cs") is most likely a letter in an
            # older encoding: neither ever ends a stem
            if stems is None or unicodedata.category(name[end]).startswith(_JOINED):
                continue
            yield stems

    def owner(self, path: str) -> str | None:
        """The longest stem the file fits; of twins, the one spelled as the file."""
        for stems in self.fitting(path):
            if len(stems) == 1:
                return stems[0]
            name = path.rpartition("/")[2]
            return next((stem for stem in stems if name.startswith(stem)), stems[0])
        return None

    def twins(self) -> dict[str, list[str]]:
        """Each stem whose name differs from others only in normalisation, and those."""
        return {
            stem: [twin for twin in group if twin != stem]
            for group in self._by_form.values()
            if len(group) > 1
            for stem in group
        }


def _index(stems: Iterable[str] | StemIndex) -> StemIndex:
    return stems if isinstance(stems, StemIndex) else StemIndex(stems)


def owning_stem(path: str, stems: Iterable[str] | StemIndex) -> str | None:
    """The longest stem that the file name at the end of ``path`` belongs to.

    Pass a :class:`StemIndex` when asking for many files.
    """
    return _index(stems).owner(path)


def contenders(path: str, stems: Iterable[str] | StemIndex) -> list[str]:
    """Every stem the file could belong to, longest first (twins together)."""
    return [stem for group in _index(stems).fitting(path) for stem in group]


@dataclass(frozen=True)
class Grouping:
    """Data files by stem, and the names that matched no stem."""

    # every stem, in sorted order, with its members sorted by path
    members: dict[str, list[str]]
    unmatched: list[str]


def group_by_stem(stems: Iterable[str], paths: Iterable[str]) -> Grouping:
    """Assign each data file to its longest matching stem.

    One pass over ``paths`` with a dict look-up per separator, so the work
    grows with the number of files, not with stems times files. Stems and
    names are compared in composed (NFC) form; members keep their own.
    """
    stem_set = frozenset(stems)
    index = StemIndex(stem_set)
    members: dict[str, list[str]] = {stem: [] for stem in sorted(stem_set)}
    unmatched = []
    for path in sorted(paths):
        stem = index.owner(path)
        if stem is None:
            unmatched.append(path)
        else:
            members[stem].append(path)
    return Grouping(members=members, unmatched=unmatched)
