from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stemzip.archive import ArchiveOptions
from stemzip.config import RunSettings
from stemzip.errors import ConfigError
from stemzip.grouping import NameFilter
from stemzip.plan import describe_plan, plan_run
from stemzip.results import Status

DATA = {
    "run1_a.csv": "1",
    "run1_b.csv": "2",
    "run1_x_c.csv": "3",
    "run10_a.csv": "4",
    "loose.csv": "5",
}


def test_jobs_settled_and_unmatched(run_tree: Callable[..., RunSettings]) -> None:
    settings = run_tree(["run1", "run10", "run2"], DATA)

    plan = plan_run(settings)

    assert plan.stems == ["run1", "run10", "run2"]
    assert [job.stem for job in plan.jobs] == ["run1", "run10"]
    assert [Path(f).name for f in plan.jobs[0].files] == [
        "run1_a.csv",
        "run1_b.csv",
        "run1_x_c.csv",
    ]
    assert plan.jobs[0].archive_path == str(settings.output_directory / "run1.zip")
    assert [(r.stem, r.status) for r in plan.settled] == [("run2", Status.NO_FILES)]
    assert plan.unmatched == ["loose.csv"]


@pytest.mark.parametrize(
    ("stem_filter", "warning"),
    [
        pytest.param(
            NameFilter(),
            "no stem files (extension yml) in ",
            id="no-stem-files",
        ),
        pytest.param(
            NameFilter(include=("case*",)),
            "the file_management.filename.filters leave out all 2 stem files in ",
            id="all-filtered-out",
        ),
    ],
)
def test_a_run_without_stems_says_so(
    run_tree: Callable[..., RunSettings],
    caplog: pytest.LogCaptureFixture,
    stem_filter: NameFilter,
    warning: str,
) -> None:
    stems = [] if not stem_filter.include else ["run1", "run10"]
    settings = run_tree(stems, DATA, stem_filter=stem_filter)

    plan = plan_run(settings)

    assert plan.stems == [] and plan.jobs == []
    first = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert first.getMessage().startswith(warning)
    assert "nothing to zip" in first.getMessage()


def test_files_of_filtered_out_stems_are_left_alone(
    run_tree: Callable[..., RunSettings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = run_tree(
        ["run1", "run1_x", "run10"],
        DATA,
        stem_filter=NameFilter(not_contains=("_x",)),
    )

    plan = plan_run(settings)

    assert [job.stem for job in plan.jobs] == ["run1", "run10"]
    assert [Path(f).name for f in plan.jobs[0].files] == ["run1_a.csv", "run1_b.csv"]
    assert "1 data files belong to stems the filters leave out" in caplog.text


def test_data_filters(run_tree: Callable[..., RunSettings]) -> None:
    settings = run_tree(
        ["run1", "run10"],
        DATA,
        data_filter=NameFilter(include=("*_a.csv", "*_b.csv"), exclude=("run10*",)),
    )

    plan = plan_run(settings)

    assert [(job.stem, len(job.files)) for job in plan.jobs] == [("run1", 2)]


def test_recursive_members_keep_relative_paths_and_skip_the_output(
    run_tree: Callable[..., RunSettings],
) -> None:
    data = {"run1_a.csv": "1", "Jacket/run1_b.csv": "2", "Jacket/run2_c.csv": "3"}
    settings = run_tree(["run1", "run2"], {})
    for name, text in data.items():
        (settings.data_directory / name).parent.mkdir(parents=True, exist_ok=True)
        (settings.data_directory / name).write_text(text)
    inside = settings.data_directory / "zips"
    inside.mkdir()
    (inside / "run1_old.csv").write_text("archived before")
    settings = dataclasses.replace(settings, recursive=True, output_directory=inside)

    plan = plan_run(settings)

    assert [job.arcnames for job in plan.jobs] == [
        ("Jacket/run1_b.csv", "run1_a.csv"),
        ("Jacket/run2_c.csv",),
    ]
    assert [m[1] for m in plan.jobs[0].members()] == ["Jacket/run1_b.csv", "run1_a.csv"]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("{stem}.zip", "run1.zip", id="default"),
        pytest.param("{stem}_{date}.zip", "run1_{date}.zip", id="date"),
        pytest.param("{date}/{stem}-{time}.zip", "{date}/run1-{time}.zip", id="folder"),
    ],
)
def test_archive_name_template(
    run_tree: Callable[..., RunSettings], template: str, expected: str
) -> None:
    settings = run_tree(["run1"], DATA, archive_name=template)
    before = time.localtime()

    (job,) = plan_run(settings).jobs

    after = time.localtime()
    stamps = {time.strftime("%Y%m%d", t) for t in (before, after)}
    names = {
        expected.format(date=d, time=time.strftime("%H%M%S", t))
        for d in stamps
        for t in (before, after)
    }
    relative = Path(job.archive_path).relative_to(settings.output_directory)
    assert relative.as_posix() in names


def test_existing_archive_is_kept_when_overwrite_is_off(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["run1", "run10"], DATA, if_exists="skip")
    settings.output_directory.mkdir()
    (settings.output_directory / "run10.zip").write_bytes(b"old")

    plan = plan_run(settings)

    assert [job.stem for job in plan.jobs] == ["run1"]
    assert [(r.stem, r.status) for r in plan.settled] == [("run10", Status.SKIPPED)]


def test_dry_run_plan_names_actions_leftovers_and_contested_files(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["run1", "run1_x", "run10", "run2"], DATA, dry_run=True)

    text = describe_plan(plan_run(settings))

    out = settings.output_directory
    assert text.splitlines() == [
        f"run1: zip -> {out / 'run1.zip'}",
        "    run1_a.csv",
        "    run1_b.csv",
        f"run10: zip -> {out / 'run10.zip'}",
        "    run10_a.csv",
        f"run1_x: zip -> {out / 'run1_x.zip'}",
        "    run1_x_c.csv",
        "run2: no files -> -",
        "1 files match no stem:",
        "    loose.csv",
        "1 files more than one stem could claim:",
        "    run1_x_c.csv: run1_x, run1 (goes to run1_x)",
    ]


def test_two_stems_never_share_an_archive(run_tree: Callable[..., RunSettings]) -> None:
    # load_settings refuses such a template; the plan checks again regardless
    settings = run_tree(["run1", "run10"], DATA, archive_name="{stem:.3}.zip")

    with pytest.raises(ConfigError, match="'run1' and 'run10' the same archive"):
        plan_run(settings)


def test_a_stem_cannot_lead_its_archive_out_of_the_folder(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["..", "run1"], {"..-a.csv": "x", "run1_a.csv": "y"})
    # "...yml" and "..-a.csv" are hidden names
    settings = dataclasses.replace(
        settings, archive_name="{stem}/all.zip", include_hidden=True
    )

    plan = plan_run(settings)

    assert [job.stem for job in plan.jobs] == ["run1"]
    (refused,) = plan.settled
    assert refused.stem == ".." and refused.status is Status.FAILED
    assert "would be outside" in str(refused.error)


def test_recursive_search_skips_the_folder_sources_are_moved_to(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["run1"], {"run1_a.csv": "x"})
    moved = settings.data_directory / "done"
    moved.mkdir()
    (moved / "run1_b.csv").write_text("moved by an earlier run")
    options = ArchiveOptions(verify=True, after="move", move_to=str(moved))
    settings = dataclasses.replace(settings, recursive=True, archive=options)

    (job,) = plan_run(settings).jobs

    assert job.arcnames == ("run1_a.csv",)


@pytest.mark.parametrize(
    ("after", "words"),
    [
        pytest.param("delete", "zip, verify, then delete the sources", id="delete"),
        pytest.param("move", "zip, verify, then move the sources to", id="move"),
    ],
)
def test_dry_run_says_what_becomes_of_the_sources(
    run_tree: Callable[..., RunSettings], after: str, words: str
) -> None:
    options = ArchiveOptions(verify=True, after=after, move_to="/somewhere")
    settings = run_tree(["run1"], DATA, archive=options, dry_run=True)

    assert f"run1: {words}" in describe_plan(plan_run(settings))


def _folder_in_the_way(out: Path) -> None:
    (out / "run1.zip").mkdir(parents=True)


def _fifo_in_the_way(out: Path) -> None:
    out.mkdir(parents=True)
    os.mkfifo(out / "run1.zip")  # opening it would block


def _file_on_the_way(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "run1").write_text("a file, not a folder")


@pytest.mark.parametrize(
    ("make", "archive_name", "kind", "message", "note"),
    [
        pytest.param(
            _folder_in_the_way,
            "{stem}.zip",
            "IsADirectoryError: ",
            "is a folder, where this stem's archive would go",
            "fail (a folder is in the way)",
            id="folder",
        ),
        pytest.param(
            _fifo_in_the_way,
            "{stem}.zip",
            "NotAnArchiveError: ",
            "is no regular file, let alone a ZIP archive",
            "fail (a non-file is in the way)",
            id="fifo",
        ),
        pytest.param(
            _file_on_the_way,
            "{stem}/data.zip",
            "NotADirectoryError: a file stands where a folder on the way to ",
            "would be; move it away or choose another archive.name",
            "fail (a file is in the way of its folder)",
            id="file-on-the-way",
        ),
    ],
)
def test_what_stands_at_an_archive_path_fails_its_stem_when_planned(
    run_tree: Callable[..., RunSettings],
    make: Callable[[Path], None],
    archive_name: str,
    kind: str,
    message: str,
    note: str,
) -> None:
    settings = run_tree(
        ["run1", "run10"], DATA, dry_run=True, archive_name=archive_name
    )
    make(settings.output_directory)

    plan = plan_run(settings)

    assert [job.stem for job in plan.jobs] == ["run10"]
    (blocked,) = plan.settled
    assert blocked.status is Status.FAILED
    assert str(blocked.error).startswith(kind)
    assert message in str(blocked.error)
    assert f"run1: {note}" in describe_plan(plan)
