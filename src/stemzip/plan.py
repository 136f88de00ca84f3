"""Planning a run: which stems exist, what each archives, and what to do."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from stemzip.archive import StemJob
from stemzip.config import RunSettings
from stemzip.grouping import find_stems, group_by_stem, list_data_files
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


def _settle_existing(job: StemJob) -> StemResult:
    return StemResult(
        stem=job.stem, status=Status.SKIPPED, zip_file_path=job.archive_path
    )


def plan_run(settings: RunSettings) -> Plan:
    """Group the data files by stem and decide what each stem needs.

    Lists the stem folder and the data folder once each; reads no file.
    """
    stems = find_stems(
        settings.stem_directory,
        settings.stem_extensions,
        settings.contains,
        settings.not_contains,
    )
    names = list_data_files(settings.data_directory, settings.data_extensions)
    grouping = group_by_stem(stems, names)

    jobs: list[StemJob] = []
    settled: list[StemResult] = []
    for stem, members in grouping.members.items():
        if not members:
            log.warning(
                "stem %r has no data files in %s", stem, settings.data_directory
            )
            settled.append(StemResult(stem=stem, status=Status.NO_FILES))
            continue
        job = StemJob(
            stem=stem,
            files=tuple(str(settings.data_directory / name) for name in members),
            archive_path=str(Path(settings.output_directory) / f"{stem}.zip"),
            options=settings.archive,
        )
        if not settings.overwrite and Path(job.archive_path).exists():
            log.info("kept existing %s (overwrite is off)", job.archive_path)
            settled.append(_settle_existing(job))
            continue
        jobs.append(job)

    if grouping.unmatched:
        log.warning(
            "%d data files match no stem and are left alone, e.g. %r",
            len(grouping.unmatched),
            grouping.unmatched[0],
        )
    return Plan(stems=stems, jobs=jobs, settled=settled, unmatched=grouping.unmatched)
