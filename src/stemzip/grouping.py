"""Finding stems and the data files that belong to each of them.

A data file belongs to stem ``S`` when its file name is ``S`` followed by a
character that is not a letter or digit (``_``, ``-``, ``.``, a space, ...)
and anything after it. When several stems fit, the longest wins, so ``run1``
never takes ``run10_forces.csv``. Names are compared literally.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

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


def _walk(directory: Path, recursive: bool, skip: set[Path]) -> Iterator[str]:
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(directory / relative) as entries:
            for entry in entries:
                name = f"{relative}/{entry.name}" if relative else entry.name
                # is_file() is false for folders, FIFOs, sockets and devices,
                # which are never opened; links to regular files count as files
                try:
                    is_file = entry.is_file()
                except OSError as exc:  # a link loop, say
                    log.warning("skipping %s: %s", entry.path, exc.strerror)
                    continue
                if is_file:
                    yield name
                elif (
                    recursive
                    and entry.is_dir(follow_symlinks=False)
                    and Path(entry.path) not in skip
                ):
                    pending.append(name)


def list_files(
    directory: Path,
    extensions: Sequence[str],
    name_filter: NameFilter = NameFilter(),
    recursive: bool = False,
    skip: set[Path] | frozenset[Path] = frozenset(),
) -> list[str]:
    """Regular files under ``directory`` with a selected extension, sorted.

    Names are relative to ``directory``, with forward slashes. A recursive
    search follows no linked folder and never enters a folder of ``skip``
    (the output folder, when it lies inside).
    """
    return sorted(
        name
        for name in _walk(directory, recursive, set(skip))
        if has_extension(name, extensions) and name_filter.keeps(name)
    )


def _stem_of(name: str) -> str:
    return name.rpartition(".")[0]


def find_stems(
    directory: Path,
    extensions: Sequence[str],
    name_filter: NameFilter = NameFilter(),
) -> tuple[list[str], list[str]]:
    """The stems in ``directory``: those selected, and all of them.

    A stem is a stem file's name without its final extension (``case.1.yml``
    gives ``case.1``); ``name_filter`` selects by file name. Both lists are
    sorted and without repeats.
    """
    names = list_files(directory, extensions)
    every = sorted({_stem_of(name) for name in names})
    selected = sorted({_stem_of(name) for name in names if name_filter.keeps(name)})
    return selected, every


# every character that is not a letter or digit may end a stem
_SEPARATOR = re.compile(r"[\W_]")


def _fitting(name: str, stems: frozenset[str]) -> Iterator[str]:
    # prefixes are tried from the longest down, so the first one found is the
    # longest match
    for match in reversed(list(_SEPARATOR.finditer(name, 1))):
        end = match.start()
        # a combining mark (the accent of a decomposed "é") belongs to the
        # letter before it, so it never ends a stem
        if name[:end] in stems and not unicodedata.category(name[end]).startswith("M"):
            yield name[:end]


def owning_stem(path: str, stems: frozenset[str]) -> str | None:
    """The longest stem that the file name at the end of ``path`` belongs to."""
    return next(_fitting(path.rpartition("/")[2], stems), None)


def contenders(path: str, stems: frozenset[str]) -> list[str]:
    """Every stem the file could belong to, longest first."""
    return list(_fitting(path.rpartition("/")[2], stems))


@dataclass(frozen=True)
class Grouping:
    """Data files by stem, and the names that matched no stem."""

    # every stem, in sorted order, with its members sorted by path
    members: dict[str, list[str]]
    unmatched: list[str]


def group_by_stem(stems: Iterable[str], paths: Iterable[str]) -> Grouping:
    """Assign each data file to its longest matching stem.

    One pass over ``paths`` with a set look-up per separator, so the work
    grows with the number of files, not with stems times files.
    """
    stem_set = frozenset(stems)
    members: dict[str, list[str]] = {stem: [] for stem in sorted(stem_set)}
    unmatched = []
    for path in sorted(paths):
        stem = owning_stem(path, stem_set)
        if stem is None:
            unmatched.append(path)
        else:
            members[stem].append(path)
    return Grouping(members=members, unmatched=unmatched)
