"""Planning a run: which stems exist, what each archives, and what to do."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stemzip.archive import StemJob
from stemzip.config import RunSettings
from stemzip.errors import ConfigError
from stemzip.grouping import contenders, find_stems, group_by_stem, list_files
from stemzip.results import Status, StemResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """The work of one run, decided before any archive is written."""

    stems: list[str]
    # stems to archive, sorted by stem
    jobs: list[StemJob]
    # stems settled without work: archive kept, or no data files
    settled: list[StemResult]
    # data files that belong to no stem; left alone
    unmatched: list[str]
    # data files that more than one stem could claim, with every such stem,
    # longest (the one that takes the file) first
    contested: dict[str, list[str]] = field(default_factory=dict)


def archive_path(settings: RunSettings, stem: str, started: time.struct_time) -> Path:
    """Where ``stem``'s archive goes, from the ``archive.name`` template."""
    name = settings.archive_name.format(
        stem=stem,
        date=time.strftime("%Y%m%d", started),
        time=time.strftime("%H%M%S", started),
    )
    return settings.output_directory / name


def _output_inside_data(settings: RunSettings) -> Path | None:
    output = settings.output_directory
    return output if output.is_relative_to(settings.data_directory) else None


def _folders_to_skip(settings: RunSettings) -> set[Path]:
    # a recursive search must not take in the archives, or the sources that
    # an earlier run moved aside
    folders = {settings.output_directory}
    if settings.archive.move_to is not None:
        folders.add(Path(settings.archive.move_to))
    return {f for f in folders if f.is_relative_to(settings.data_directory)}


def _check_targets(settings: RunSettings, targets: dict[str, Path]) -> set[str]:
    """Refuse two stems sharing an archive; return stems whose archive escapes."""
    owners: dict[Path, str] = {}
    for stem, target in targets.items():
        if target in owners:
            raise ConfigError(
                f"archive.name {settings.archive_name!r} gives stems "
                f"{owners[target]!r} and {stem!r} the same archive {target}; "
                "make it name each stem"
            )
        owners[target] = stem
    inside = settings.output_directory
    return {
        stem
        for stem, target in targets.items()
        if not Path(os.path.normpath(target)).is_relative_to(inside)
        or os.path.normpath(target) == str(inside)
    }


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:  # gone since it was listed: its stem will say so
        return 0


def _group(
    settings: RunSettings, stems: Sequence[str] | None
) -> tuple[dict[str, list[str]], list[str], frozenset[str]]:
    """Members of each selected stem, the files no stem takes, every stem."""
    if stems is None:
        stems, every_stem = find_stems(
            settings.stem_directory, settings.stem_extensions, settings.stem_filter
        )
    else:
        every_stem = list(stems)
    paths = list_files(
        settings.data_directory,
        settings.data_extensions,
        settings.data_filter,
        recursive=settings.recursive,
        skip=_folders_to_skip(settings),
    )
    grouping = group_by_stem(every_stem, paths)
    selected = set(stems)
    left_out = sum(len(m) for s, m in grouping.members.items() if s not in selected)
    if left_out:
        log.info("%d data files belong to stems the filters leave out", left_out)
    members = {s: m for s, m in grouping.members.items() if s in selected}
    return members, grouping.unmatched, frozenset(grouping.members)


def _without_archives(
    settings: RunSettings, members: dict[str, list[str]], targets: dict[str, Path]
) -> dict[str, list[str]]:
    # with the archives among the data files, none may take in another
    if _output_inside_data(settings) is None:
        return members
    planned = set(targets.values())
    return {
        stem: [p for p in paths if settings.data_directory / p not in planned]
        for stem, paths in members.items()
    }


def _decide(
    settings: RunSettings, stem: str, members: list[str], target: Path, escapes: bool
) -> StemJob | StemResult:
    """The job for one stem, or its result when it needs no work."""
    if not members:
        log.warning("stem %r has no data files in %s", stem, settings.data_directory)
        return StemResult(stem=stem, status=Status.NO_FILES)
    # plain strings: Path objects cost more than the rest of planning here
    files = tuple(f"{settings.data_directory}{os.sep}{path}" for path in members)
    if escapes:
        error = f"archive {target} would be outside {settings.output_directory}"
        log.error("stem %r failed: %s", stem, error)
        return StemResult(stem, Status.FAILED, None, files, error)
    if not settings.overwrite and target.is_file():
        log.info("kept existing %s (overwrite is off)", target)
        return StemResult(stem, Status.SKIPPED, str(target), files)
    return StemJob(
        stem=stem,
        files=files,
        archive_path=str(target),
        options=settings.archive,
        arcnames=tuple(members) if settings.recursive else (),
        size=sum(_size(path) for path in files),
    )


def _contested(
    members: dict[str, list[str]], every_stem: frozenset[str]
) -> dict[str, list[str]]:
    return {
        path: claims
        for paths in members.values()
        for path in paths
        if len(claims := contenders(path, every_stem)) > 1
    }


def plan_run(settings: RunSettings, stems: Sequence[str] | None = None) -> Plan:
    """Group the data files by stem and decide what each stem needs.

    The stems come from the stem folder unless ``stems`` names them. A data
    file goes to the longest stem it fits among all stems in the folder, so a
    file of a stem that the filters leave out is left alone, never handed to
    a shorter stem. Lists the stem folder and the data folder once each;
    reads no file. Raises :class:`ConfigError` when two stems would share an
    archive.
    """
    members, unmatched, every_stem = _group(settings, stems)
    started = time.localtime()
    targets = {stem: archive_path(settings, stem, started) for stem in members}
    escaping = _check_targets(settings, targets)
    members = _without_archives(settings, members, targets)

    jobs: list[StemJob] = []
    settled: list[StemResult] = []
    for stem, paths in members.items():
        outcome = _decide(settings, stem, paths, targets[stem], stem in escaping)
        if isinstance(outcome, StemJob):
            jobs.append(outcome)
        else:
            settled.append(outcome)

    if unmatched:
        log.warning(
            "%d data files match no stem and are left alone, e.g. %r",
            len(unmatched),
            unmatched[0],
        )
    return Plan(
        stems=sorted(members),
        jobs=jobs,
        settled=settled,
        unmatched=unmatched,
        contested=_contested(members, every_stem) if settings.dry_run else {},
    )


def _zip_action(job: StemJob) -> str:
    if job.options.after == "delete":
        return "zip, verify, then delete the sources"
    if job.options.after == "move":
        return f"zip, verify, then move the sources to {job.options.move_to}"
    return "zip"


def describe_plan(plan: Plan) -> str:
    """The plan as text for a person: one block per stem, then the leftovers."""
    lines = []
    actions = {
        job.stem: (_zip_action(job), job.archive_path, job.members())
        for job in plan.jobs
    }
    for result in plan.settled:
        action = (
            "skip (archive kept)" if result.status is Status.SKIPPED else "no files"
        )
        actions[result.stem] = (action, result.zip_file_path or "-", [])
    for stem in sorted(actions):
        action, target, members = actions[stem]
        lines.append(f"{stem}: {action} -> {target}")
        lines.extend(f"    {name}" for _, name in members)
    lines.append(f"{len(plan.unmatched)} files match no stem:")
    lines.extend(f"    {path}" for path in plan.unmatched)
    lines.append(f"{len(plan.contested)} files more than one stem could claim:")
    lines.extend(
        f"    {path}: {', '.join(claims)} (goes to {claims[0]})"
        for path, claims in sorted(plan.contested.items())
    )
    return "\n".join(lines) + "\n"
