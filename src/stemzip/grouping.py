"""Finding stems and the data files that belong to each of them.

A data file belongs to stem ``S`` when its name is ``S`` followed by a
character that is not a letter or digit (``_``, ``-``, ``.``, a space, ...)
and anything after it. When several stems fit, the longest wins, so ``run1``
never takes ``run10_forces.csv``. Names are compared literally.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
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


def _regular_file_names(directory: Path, extensions: Sequence[str]) -> list[str]:
    names = []
    with os.scandir(directory) as entries:
        for entry in entries:
            # is_file() is false for folders, FIFOs, sockets and devices, which
            # are never opened; links to regular files count as files
            if has_extension(entry.name, extensions) and entry.is_file():
                names.append(entry.name)
    return sorted(names)


def find_stems(
    directory: Path,
    extensions: Sequence[str],
    contains: Sequence[str] = (),
    not_contains: Sequence[str] = (),
) -> list[str]:
    """Stems of the stem files in ``directory``, sorted and without repeats.

    A stem is a file name without its final extension (``case.1.yml`` gives
    ``case.1``). A name is kept when it contains every string of ``contains``
    and none of ``not_contains``.
    """
    stems = set()
    for name in _regular_file_names(directory, extensions):
        if all(part in name for part in contains) and not any(
            part in name for part in not_contains
        ):
            stems.add(name.rpartition(".")[0])
    return sorted(stems)


def list_data_files(directory: Path, extensions: Sequence[str]) -> list[str]:
    """Names of the regular files in ``directory`` with a selected extension."""
    return _regular_file_names(directory, extensions)


def owning_stem(name: str, stems: set[str] | frozenset[str]) -> str | None:
    """The longest stem that ``name`` belongs to, or None."""
    # each boundary is a non-alphanumeric character; the prefix before the
    # last one that names a stem is the longest match
    for end in range(len(name) - 1, 0, -1):
        if not name[end].isalnum() and name[:end] in stems:
            return name[:end]
    return None


@dataclass(frozen=True)
class Grouping:
    """Data files by stem, and the names that matched no stem."""

    # every stem, in sorted order, with its members sorted by name
    members: dict[str, list[str]]
    unmatched: list[str]


def group_by_stem(stems: Iterable[str], names: Iterable[str]) -> Grouping:
    """Assign each data file name to its longest matching stem.

    One pass over ``names`` with a set look-up per separator, so the work
    grows with the number of files, not with stems times files.
    """
    stem_set = frozenset(stems)
    members: dict[str, list[str]] = {stem: [] for stem in sorted(stem_set)}
    unmatched = []
    for name in sorted(names):
        stem = owning_stem(name, stem_set)
        if stem is None:
            unmatched.append(name)
        else:
            members[stem].append(name)
    return Grouping(members=members, unmatched=unmatched)
