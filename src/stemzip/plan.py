"""Planning a run: which stems exist, what each archives, and what to do."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from stemzip.archive import (
    StemJob,
    carried_members,
    changed_members,
    check_replaceable,
    describe_error,
    in_the_way,
    is_own_archive,
    is_temporary,
)
from stemzip.config import RunSettings
from stemzip.errors import ConfigError, DamagedArchiveError, NotAnArchiveError
from stemzip.grouping import (
    StemIndex,
    contenders,
    find_stems,
    group_by_stem,
    scan_folder,
)
from stemzip.names import caseless, readable
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
    # per selected stem, the entries it would have taken that are not
    # archived, each "path: why", sorted
    left_out: dict[str, list[str]] = field(default_factory=dict)
    # per stem, what the dry run says is done where it is not a plain zip:
    # "skip (archive up to date)", "rebuild (2 members changed)", ...
    notes: dict[str, str] = field(default_factory=dict)

    def noting_left_out(self, results: Iterable[StemResult]) -> list[StemResult]:
        """``results`` sorted by stem, each with the entries its stem left out."""
        return sorted(
            (
                replace(r, left_out=tuple(self.left_out[r.stem]))
                if r.stem in self.left_out
                else r
                for r in results
            ),
            key=lambda result: result.stem,
        )


def archive_path(settings: RunSettings, stem: str, started: time.struct_time) -> Path:
    """Where ``stem``'s archive goes, from the ``archive.name`` template.

    A stem that is not valid UTF-8 is written as :func:`readable` makes it.
    """
    name = settings.archive_name.format(
        stem=readable(stem),
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
        # stems that the %XX substitute makes alike clash by name, not by the
        # template: _name_clashes fails them
        if target in owners and readable(owners[target]) != readable(stem):
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


def _odd_entries(
    settings: RunSettings,
    entries: dict[str, str],
    every_stem: Sequence[str],
    selected: set[str],
) -> dict[str, list[str]]:
    """The entries that are no file to archive, by the selected stem they fit."""
    if not entries:
        return {}
    grouping = group_by_stem(every_stem, entries)
    if grouping.unmatched:
        log.warning(
            "%d entries in %s are no regular files, match no stem and are left "
            "alone, e.g. '%s: %s'",
            len(grouping.unmatched),
            settings.data_directory,
            readable(grouping.unmatched[0]),
            entries[grouping.unmatched[0]],
        )
    return {
        stem: [f"{path}: {entries[path]}" for path in paths]
        for stem, paths in grouping.members.items()
        if paths and stem in selected
    }


def _warn_no_stems(settings: RunSettings, found: int) -> None:
    # most often a wrong folder or extension: the run succeeds with nothing
    # done, so the log must say so plainly
    extensions = ", ".join(settings.stem_extensions)
    if found:
        log.warning(
            "the file_management.filename.filters leave out all %d stem files "
            "in %s; nothing to zip",
            found,
            settings.stem_directory,
        )
    else:
        log.warning(
            "no stem files (extension %s) in %s; nothing to zip. Check "
            "file_management.input_directory and "
            "file_management.filename.extension",
            extensions,
            settings.stem_directory,
        )


def _group(
    settings: RunSettings, stems: Sequence[str] | None
) -> tuple[dict[str, list[str]], list[str], frozenset[str], dict[str, list[str]]]:
    """Members and odd entries of each selected stem, strays, every stem."""
    if stems is None:
        stems, every_stem = find_stems(
            settings.stem_directory,
            settings.stem_extensions,
            settings.stem_filter,
            settings.include_hidden,
        )
        if not stems:
            _warn_no_stems(settings, len(every_stem))
    else:
        every_stem = list(stems)
    listing = scan_folder(
        settings.data_directory,
        settings.data_extensions,
        settings.data_filter,
        recursive=settings.recursive,
        skip=_folders_to_skip(settings),
        include_hidden=settings.include_hidden,
        follow_links=settings.follow_links,
    )
    files = listing.files
    if settings.include_hidden:
        # stemzip's own temporary archives are hidden, and never data
        files = [p for p in files if not is_temporary(p.rpartition("/")[2])]
    grouping = group_by_stem(every_stem, files)
    selected = set(stems)
    left_out = sum(len(m) for s, m in grouping.members.items() if s not in selected)
    if left_out:
        log.info("%d data files belong to stems the filters leave out", left_out)
    members = {s: m for s, m in grouping.members.items() if s in selected}
    odd = _odd_entries(settings, listing.left_out, every_stem, selected)
    return members, grouping.unmatched, frozenset(grouping.members), odd


def _without_archives(
    settings: RunSettings, members: dict[str, list[str]], targets: dict[str, Path]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Members without the archives in the output folder, and the old ones left.

    Only when the output folder is the data folder or inside it. This run's
    archives from an earlier run (marked as stemzip's) are dropped without a
    word; any other ``.zip`` there (a stale or foreign archive, such as
    ``run1_old.zip``) is returned per stem as left out, so that no archive
    ever takes in another and a rerun archives what the first did. Any other
    file at an archive's path (a workbook an ``archive.name`` ending in
    ``.xlsx`` lands on) stays a member; the stem whose archive would replace
    it fails when it is decided.
    """
    output = _output_inside_data(settings)
    if output is None:
        return members, {}
    prefix = f"{settings.data_directory}{os.sep}"
    planned = {str(target) for target in targets.values()}
    kept: dict[str, list[str]] = {}
    stale: dict[str, list[str]] = {}
    for stem, paths in members.items():
        kept[stem] = []
        for path in paths:
            name = path.rpartition("/")[2]
            full = prefix + path.replace("/", os.sep)
            if full in planned and is_own_archive(full):
                continue
            if full not in planned and (
                name.lower().endswith(".zip") and Path(full).is_relative_to(output)
            ):
                stale.setdefault(stem, []).append(
                    f"{path}: archive in the output folder"
                )
            else:
                kept[stem].append(path)
    return kept, stale


def _report_left_out(
    odd: dict[str, list[str]], stale: dict[str, list[str]]
) -> dict[str, list[str]]:
    """Join what each stem leaves out, and log one line per such stem."""
    left_out = {
        stem: sorted(odd.get(stem, []) + stale.get(stem, []))
        for stem in sorted(odd.keys() | stale.keys())
    }
    for stem, entries in left_out.items():
        log.warning(
            "stem %r: %d entries left out: %s",
            readable(stem),
            len(entries),
            readable("; ".join(entries)),
        )
    return left_out


def _existing_archive(
    settings: RunSettings, job: StemJob
) -> tuple[StemJob | StemResult, str]:
    """Keep, refuse or rebuild the archive already at the job's target."""
    stem, target = job.stem, job.archive_path
    if settings.if_exists == "skip":
        log.info("kept existing %s: existing archives are kept", target)
        kept = StemResult(stem, Status.SKIPPED, target, job.files)
        return kept, "skip (archive kept)"
    if settings.if_exists == "fail":
        error = (
            f"archive {target} already exists and archive.if_exists is fail; set "
            "archive.if_exists=overwrite to replace it, update to rebuild it "
            "when its sources changed, or skip to keep it"
        )
        return _failed(job, error, "fail (archive exists)", target)
    try:
        changed = changed_members(
            Path(target), job.members(), str(settings.data_directory)
        )
    except NotAnArchiveError as exc:
        return _refused(job, exc)
    except OSError as exc:
        # an archive this user may not read cannot be compared, nor replaced
        # by the check that it is one
        error = f"cannot read existing archive: {describe_error(exc)}"
        return _failed(job, error, "fail (archive unreadable)")
    if changed is None:
        # it may hold the only copy of sources that are gone
        error = (
            f"existing archive {target} cannot be read, so the members whose "
            "sources are gone cannot be carried into its replacement; it is "
            "left as it is: move it away to zip this stem afresh"
        )
        return _failed(job, error, "fail (archive unreadable)")
    if changed:
        log.debug("rebuilding %s: %d members changed", target, changed)
        plural = "s" if changed > 1 else ""
        return job, f"rebuild ({changed} member{plural} changed)"
    if job.options.after != "keep":
        # an interrupt may have cut the last run's deletions short: the
        # archive is rebuilt and verified before the sources go
        verb = "deleted" if job.options.after == "delete" else "moved"
        return job, f"rebuild (sources still to be {verb})"
    log.info("kept %s: archive up to date", target)
    current = StemResult(stem, Status.SKIPPED, target, job.files)
    return current, "skip (archive up to date)"


def _failed(
    job: StemJob, error: str, note: str, archive: str | None = None
) -> tuple[StemResult, str]:
    """A stem failed when planned, logged, with the plan's note on it."""
    log.error("stem %r failed: %s", readable(job.stem), readable(error))
    return StemResult(job.stem, Status.FAILED, archive, job.files, error), note


def _refused(job: StemJob, exc: NotAnArchiveError) -> tuple[StemResult, str]:
    """The failure of a stem whose archive would replace another file."""
    error = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, DamagedArchiveError):
        return _failed(job, error, "fail (archive unreadable)")
    return _failed(job, error, "fail (not an archive stemzip wrote)")


def _blocker_note(blocker: OSError) -> str:
    if isinstance(blocker, IsADirectoryError):
        return "fail (a folder is in the way)"
    if isinstance(blocker, NotADirectoryError):
        return "fail (a file is in the way of its folder)"
    if isinstance(blocker, NotAnArchiveError):
        return "fail (a non-file is in the way)"
    return "fail (archive path cannot be checked)"


def _decide(
    settings: RunSettings, stem: str, members: list[str], target: Path, escapes: bool
) -> tuple[StemJob | StemResult, str | None]:
    """The job for one stem or its settled result, and the plan's note on it."""
    if not members:
        if is_own_archive(target):
            # every source went after an earlier run archived it: the
            # archive holds the stem, and is kept as it is
            log.info("kept %s: its stem has no data files left", target)
            kept = StemResult(stem, Status.SKIPPED, str(target))
            return kept, "skip (no data files left, archive kept)"
        log.warning("stem %r has no data files in %s", stem, settings.data_directory)
        return StemResult(stem=stem, status=Status.NO_FILES), None
    # plain strings: Path objects cost more than the rest of planning here
    files = tuple(f"{settings.data_directory}{os.sep}{path}" for path in members)
    if escapes:
        error = f"archive {target} would be outside {settings.output_directory}"
        log.error("stem %r failed: %s", readable(stem), readable(error))
        escaped = StemResult(stem, Status.FAILED, None, files, error)
        return escaped, "fail (archive outside the output folder)"
    job = StemJob(
        stem=stem,
        files=files,
        archive_path=str(target),
        options=settings.archive,
        arcnames=tuple(members) if settings.recursive else (),
        size=sum(_size(path) for path in files),
        data_directory=str(settings.data_directory),
    )
    blocker = in_the_way(target)
    if blocker is not None:
        error = f"{type(blocker).__name__}: {blocker.strerror or blocker}"
        if blocker.filename is not None:
            error = describe_error(blocker)
        log.error("stem %r failed: %s", readable(stem), readable(error))
        blocked = StemResult(stem, Status.FAILED, None, files, error)
        return blocked, _blocker_note(blocker)
    if not target.is_file():
        return job, None
    if settings.if_exists == "overwrite":
        try:
            check_replaceable(target)
        except NotAnArchiveError as exc:
            return _refused(job, exc)
        return job, None
    return _existing_archive(settings, job)


def _contested(members: dict[str, list[str]], index: StemIndex) -> dict[str, list[str]]:
    return {
        path: claims
        for paths in members.values()
        for path in paths
        if len(claims := contenders(path, index)) > 1
    }


def _twin_clashes(members: dict[str, list[str]], index: StemIndex) -> dict[str, str]:
    # !a: the two spellings print alike, their escapes do not
    return {
        stem: (
            f"stem names {stem!a} and {', '.join(map(ascii, twins))} differ only "
            "in Unicode normalisation (an accent stored in its letter or as a "
            "mark after it), so their data files cannot be told apart; rename "
            "one of the stem files"
        )
        for stem, twins in index.twins().items()
        if stem in members
    }


def _member_clashes(members: dict[str, list[str]], settled: set[str]) -> dict[str, str]:
    errors = {}
    for stem, paths in members.items():
        if stem in settled or all(map(str.isascii, paths)):
            continue
        stored: dict[str, str] = {}
        for path in paths:
            other = stored.setdefault(readable(path), path)
            if other != path:
                errors[stem] = (
                    f"data files {other!a} and {path!a} would both be stored as "
                    f"{readable(path)!r}, since bytes that are not valid UTF-8 are "
                    "written as %XX; rename one of them"
                )
                break
    return errors


def _clash_error(stem: str, others: list[str], targets: dict[str, Path]) -> str:
    target = targets[stem]
    if all(targets[other] == target for other in others):
        return (
            f"archive {target} would also be that of stem "
            f"{', '.join(map(ascii, others))} (bytes that are not valid UTF-8 are "
            "written as %XX), so neither is written; rename one of the stem files"
        )
    named = ", ".join(f"stem {other!a} ({targets[other]})" for other in others)
    return (
        f"archive {target} would be the same file as that of {named} on a volume "
        "that ignores case and Unicode normalisation (macOS, Windows), so neither "
        "is written; rename one of the stem files"
    )


def _archive_clashes(
    members: dict[str, list[str]], targets: dict[str, Path], settled: set[str]
) -> dict[str, str]:
    # on such a volume Run7.zip and run7.zip are one file: one archive would
    # replace the other, or be read back as the other
    sharing: dict[str, list[str]] = {}
    for stem, paths in members.items():
        if paths and stem not in settled:
            sharing.setdefault(caseless(str(targets[stem])), []).append(stem)
    return {
        stem: _clash_error(stem, [other for other in stems if other != stem], targets)
        for stems in sharing.values()
        if len(stems) > 1
        for stem in stems
    }


def _name_clashes(
    members: dict[str, list[str]],
    targets: dict[str, Path],
    index: StemIndex,
    escaping: set[str],
) -> dict[str, tuple[str, str]]:
    """Stems failed for names too much alike: the error, and the plan's note.

    Checked in this order, each stem failing for the first reason only: stem
    names that differ only in normalisation, members that the ``%XX``
    substitute makes alike, archives that one volume would take for one.
    """
    clashes = {
        stem: (error, "fail (stem name twins)")
        for stem, error in _twin_clashes(members, index).items()
    }
    for stem, error in _member_clashes(members, set(clashes)).items():
        clashes[stem] = (error, "fail (member names alike)")
    for stem, error in _archive_clashes(
        members, targets, set(clashes) | escaping
    ).items():
        clashes[stem] = (error, "fail (archive names alike)")
    return clashes


def _refuse(
    settings: RunSettings, stem: str, paths: list[str], error: str, note: str
) -> tuple[StemResult, str]:
    log.error("stem %r failed: %s", readable(stem), readable(error))
    files = tuple(f"{settings.data_directory}{os.sep}{path}" for path in paths)
    return StemResult(stem, Status.FAILED, None, files, error), note


def plan_run(settings: RunSettings, stems: Sequence[str] | None = None) -> Plan:
    """Group the data files by stem and decide what each stem needs.

    The stems come from the stem folder unless ``stems`` names them. A data
    file goes to the longest stem it fits among all stems in the folder, so a
    file of a stem that the filters leave out is left alone, never handed to
    a shorter stem. Lists the stem folder and the data folder once each;
    reads no file but, with ``if_exists=update``, the central directory of
    each archive already there. Raises :class:`ConfigError` when the
    ``archive.name`` template gives two stems one archive; stems whose names
    are too much alike (:func:`_name_clashes`) fail instead.
    """
    members, unmatched, every_stem, odd = _group(settings, stems)
    started = time.localtime()
    targets = {stem: archive_path(settings, stem, started) for stem in members}
    escaping = _check_targets(settings, targets)
    members, stale = _without_archives(settings, members, targets)
    left_out = _report_left_out(odd, stale)
    index = StemIndex(every_stem)
    clashes = _name_clashes(members, targets, index, escaping)

    jobs: list[StemJob] = []
    settled: list[StemResult] = []
    notes: dict[str, str] = {}
    for stem, paths in members.items():
        outcome, note = (
            _refuse(settings, stem, paths, *clashes[stem])
            if stem in clashes
            else _decide(settings, stem, paths, targets[stem], stem in escaping)
        )
        if note is not None:
            notes[stem] = note
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
        contested=_contested(members, index) if settings.dry_run else {},
        left_out=left_out,
        notes=notes,
    )


def _zip_action(job: StemJob, verb: str) -> str:
    if job.options.after == "delete":
        return f"{verb}, verify, then delete the sources"
    if job.options.after == "move":
        return f"{verb}, verify, then move the sources to {job.options.move_to}"
    return verb


def describe_plan(plan: Plan) -> str:
    """The plan as text for a person: one block per stem, then the leftovers."""
    lines = []
    actions = {
        job.stem: (
            _zip_action(job, plan.notes.get(job.stem, "zip")),
            job.archive_path,
            job.members(),
        )
        for job in plan.jobs
    }
    carried = {job.stem: carried_members(job) for job in plan.jobs}
    for result in plan.settled:
        action = plan.notes.get(result.stem, result.status.value.replace("_", " "))
        actions[result.stem] = (action, result.zip_file_path or "-", [])
    for stem in sorted(actions):
        action, target, members = actions[stem]
        lines.append(f"{stem}: {action} -> {target}")
        lines.extend(f"    {name}" for _, name in members)
        lines.extend(
            f"    {name} (kept from the archive there: its source is gone)"
            for name in carried.get(stem, [])
        )
        lines.extend(f"    left out: {entry}" for entry in plan.left_out.get(stem, []))
    lines.append(f"{len(plan.unmatched)} files match no stem:")
    lines.extend(f"    {path}" for path in plan.unmatched)
    lines.append(f"{len(plan.contested)} files more than one stem could claim:")
    lines.extend(
        f"    {path}: {', '.join(claims)} (goes to {claims[0]})"
        for path, claims in sorted(plan.contested.items())
    )
    # printed to a terminal, which cannot show bytes that are not UTF-8
    return readable("\n".join(lines) + "\n")
