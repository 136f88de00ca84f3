"""What a run does with archives that are already there: archive.if_exists."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from stemzip.archive import ArchiveOptions, changed_members, write_archive
from stemzip.config import RunSettings, load_settings
from stemzip.errors import ConfigError
from stemzip.executors import SequentialStemExecutor
from stemzip.plan import describe_plan, plan_run
from stemzip.results import Status, StemResult
from stemzip.task import zip_by_stem

from .conftest import archive_contents, crc_of, write_run_tree
from .test_app import stemzip

DATA = {
    "run1_a.csv": "1,2\n" * 50,
    "run1_b.csv": "3,4\n" * 50,
    "run2_a.csv": "5,6\n" * 50,
}
# an even number of seconds, so that one second later is the same ZIP date
EVEN_SECOND = 1_700_000_000


def _zip(settings: RunSettings) -> dict[str, StemResult]:
    return {r.stem: r for r in zip_by_stem(settings, SequentialStemExecutor())}


def _stamp(path: Path) -> tuple[int, int, int]:
    """What tells a rewritten file from one left alone."""
    status = path.stat()
    return status.st_ino, status.st_mtime_ns, status.st_size


def _dates(archive_path: Path) -> dict[str, tuple[int, ...]]:
    with zipfile.ZipFile(archive_path) as archive:
        return {info.filename: info.date_time for info in archive.infolist()}


def _date_of(source: Path) -> tuple[int, ...]:
    # sources in these tests are dated on even seconds, which ZIP keeps exactly
    return tuple(time.localtime(source.stat().st_mtime)[:6])


@pytest.fixture
def zipped(run_tree: Callable[..., RunSettings]) -> RunSettings:
    """A run tree whose stems were zipped once; settings with if_exists=update."""
    settings = run_tree(["run1", "run2"], DATA, if_exists="update")
    for source in settings.data_directory.iterdir():
        os.utime(source, (EVEN_SECOND, EVEN_SECOND))
    first = _zip(settings)
    assert {r.status for r in first.values()} == {Status.ZIPPED}
    return settings


def test_update_keeps_archives_whose_sources_are_unchanged(
    zipped: RunSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    out = zipped.output_directory
    before = {path.name: _stamp(path) for path in out.iterdir()}

    results = _zip(zipped)

    assert {s: r.status for s, r in results.items()} == {
        "run1": Status.SKIPPED,
        "run2": Status.SKIPPED,
    }
    assert results["run1"].zip_file_path == str(out / "run1.zip")
    assert {path.name: _stamp(path) for path in out.iterdir()} == before
    assert f"kept {out / 'run1.zip'}: archive up to date" in caplog.text


def _add_file(data: Path) -> None:
    (data / "run1_c.csv").write_text("7,8\n")
    os.utime(data / "run1_c.csv", (EVEN_SECOND, EVEN_SECOND))


def _remove_file(data: Path) -> None:
    (data / "run1_b.csv").unlink()


def _touch(data: Path) -> None:
    os.utime(data / "run1_b.csv", (EVEN_SECOND + 2, EVEN_SECOND + 2))


def _resize(data: Path) -> None:
    # the date is put back: only the size tells the change
    source = data / "run1_b.csv"
    with source.open("a") as handle:
        handle.write("9,9\n")
    os.utime(source, (EVEN_SECOND, EVEN_SECOND))


@pytest.mark.parametrize(
    ("change", "members"),
    [
        pytest.param(_add_file, ["run1_a.csv", "run1_b.csv", "run1_c.csv"], id="added"),
        pytest.param(_touch, ["run1_a.csv", "run1_b.csv"], id="date"),
        pytest.param(_resize, ["run1_a.csv", "run1_b.csv"], id="size"),
    ],
)
def test_update_rebuilds_only_the_archive_whose_sources_changed(
    zipped: RunSettings, change: Callable[[Path], None], members: list[str]
) -> None:
    data, out = zipped.data_directory, zipped.output_directory
    untouched = _stamp(out / "run2.zip")
    change(data)

    results = _zip(zipped)

    assert results["run1"].status is Status.ZIPPED
    assert results["run2"].status is Status.SKIPPED
    assert archive_contents(out / "run1.zip") == {
        name: crc_of(data / name) for name in members
    }
    assert _dates(out / "run1.zip") == {name: _date_of(data / name) for name in members}
    assert _stamp(out / "run2.zip") == untouched


def test_update_compares_dates_as_the_archive_stores_them(
    zipped: RunSettings,
) -> None:
    # ZIP dates step by 2 seconds: one second later reads back the same
    out = zipped.output_directory
    source = zipped.data_directory / "run1_a.csv"
    before = _stamp(out / "run1.zip")

    os.utime(source, (EVEN_SECOND + 1, EVEN_SECOND + 1))
    assert _zip(zipped)["run1"].status is Status.SKIPPED
    assert _stamp(out / "run1.zip") == before

    os.utime(source, (EVEN_SECOND + 2, EVEN_SECOND + 2))
    assert _zip(zipped)["run1"].status is Status.ZIPPED
    assert _stamp(out / "run1.zip") != before


@pytest.mark.parametrize(
    "mtime",
    [
        pytest.param(0, id="1970"),
        pytest.param(4_500_000_000, id="2112"),
    ],
)
def test_update_knows_dates_outside_the_zip_range_are_clamped(
    run_tree: Callable[..., RunSettings], mtime: int
) -> None:
    settings = run_tree(["run1"], {"run1_a.csv": "x\n"}, if_exists="update")
    os.utime(settings.data_directory / "run1_a.csv", (mtime, mtime))
    assert _zip(settings)["run1"].status is Status.ZIPPED
    before = _stamp(settings.output_directory / "run1.zip")

    assert _zip(settings)["run1"].status is Status.SKIPPED

    assert _stamp(settings.output_directory / "run1.zip") == before


def test_update_redoes_what_a_crashed_run_left_undone(zipped: RunSettings) -> None:
    out = zipped.output_directory
    (out / "run2.zip").unlink()
    (out / ".run2.zip.0a1b2c3d.part").write_bytes(b"PK\x03\x04 cut short")
    kept = _stamp(out / "run1.zip")

    results = _zip(zipped)

    assert results["run1"].status is Status.SKIPPED
    assert results["run2"].status is Status.ZIPPED
    assert _stamp(out / "run1.zip") == kept
    assert sorted(p.name for p in out.iterdir()) == ["run1.zip", "run2.zip"]


def test_update_keeps_the_members_of_sources_that_are_gone(
    zipped: RunSettings,
) -> None:
    data, out = zipped.data_directory, zipped.output_directory
    held = archive_contents(out / "run1.zip")
    before = _stamp(out / "run1.zip")
    _remove_file(data)

    results = _zip(zipped)

    # the archive is run1_b.csv's only copy now: nothing to rebuild
    assert results["run1"].status is Status.SKIPPED
    assert _stamp(out / "run1.zip") == before
    assert archive_contents(out / "run1.zip") == held


def test_update_drops_a_member_whose_source_is_no_longer_selected(
    zipped: RunSettings,
) -> None:
    # the source is still on disk, so the archive need not keep it
    data, out = zipped.data_directory, zipped.output_directory
    settings = dataclasses.replace(
        zipped, data_filter=dataclasses.replace(zipped.data_filter, exclude=("*_b*",))
    )

    results = _zip(settings)

    assert results["run1"].status is Status.ZIPPED
    assert archive_contents(out / "run1.zip") == {
        "run1_a.csv": crc_of(data / "run1_a.csv")
    }


def test_update_leaves_an_archive_it_cannot_read(zipped: RunSettings) -> None:
    target = zipped.output_directory / "run1.zip"
    whole = target.read_bytes()
    target.write_bytes(whole[: len(whole) // 2])  # no central directory left

    results = _zip(zipped)

    assert results["run1"].status is Status.FAILED
    assert "cannot be read as a ZIP archive" in str(results["run1"].error)
    assert target.read_bytes() == whole[: len(whole) // 2]
    assert results["run2"].status is Status.SKIPPED


def test_update_never_replaces_a_file_that_is_not_an_archive(
    zipped: RunSettings,
) -> None:
    target = zipped.output_directory / "run1.zip"
    target.write_text("someone's notes")

    results = _zip(zipped)

    assert results["run1"].status is Status.FAILED
    assert "is not a ZIP archive" in str(results["run1"].error)
    assert target.read_text() == "someone's notes"
    assert results["run2"].status is Status.SKIPPED


def test_skip_keeps_an_archive_even_when_its_sources_changed(
    zipped: RunSettings,
) -> None:
    settings = dataclasses.replace(zipped, if_exists="skip")
    _add_file(settings.data_directory)
    before = _stamp(settings.output_directory / "run1.zip")

    results = _zip(settings)

    assert results["run1"].status is Status.SKIPPED
    assert _stamp(settings.output_directory / "run1.zip") == before


def test_fail_fails_the_stems_whose_archive_exists(
    zipped: RunSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dataclasses.replace(zipped, if_exists="fail")
    out = settings.output_directory
    (out / "run2.zip").unlink()
    before = _stamp(out / "run1.zip")

    results = _zip(settings)

    assert results["run1"].status is Status.FAILED
    error = str(results["run1"].error)
    assert f"archive {out / 'run1.zip'} already exists" in error
    assert "set archive.if_exists=overwrite" in error
    assert _stamp(out / "run1.zip") == before
    assert results["run2"].status is Status.ZIPPED
    assert f"stem 'run1' failed: archive {out / 'run1.zip'}" in caplog.text


def test_overwrite_rewrites_an_unchanged_archive(zipped: RunSettings) -> None:
    settings = dataclasses.replace(zipped, if_exists="overwrite")
    before = _stamp(settings.output_directory / "run1.zip")

    results = _zip(settings)

    assert results["run1"].status is Status.ZIPPED
    assert _stamp(settings.output_directory / "run1.zip")[0] != before[0]


def test_dry_run_says_what_each_stem_will_do(
    run_tree: Callable[..., RunSettings],
) -> None:
    stems = ["run1", "run2", "run3", "run4"]
    data = {**DATA, "run3_a.csv": "x\n", "run4_a.csv": "y\n"}
    settings = run_tree(stems, data, if_exists="update")
    _zip(settings)
    out = settings.output_directory
    (out / "run3.zip").write_bytes(b"PK\x03\x04 and then nothing")
    (out / "run4.zip").unlink()
    _add_file(settings.data_directory)
    dry = dataclasses.replace(settings, dry_run=True)

    lines = describe_plan(plan_run(dry)).splitlines()
    refusing = dataclasses.replace(dry, if_exists="fail")
    refused = describe_plan(plan_run(refusing)).splitlines()

    assert f"run1: rebuild (1 member changed) -> {out / 'run1.zip'}" in lines
    assert f"run2: skip (archive up to date) -> {out / 'run2.zip'}" in lines
    assert "run3: fail (archive unreadable) -> -" in lines
    assert f"run4: zip -> {out / 'run4.zip'}" in lines
    assert f"run2: fail (archive exists) -> {out / 'run2.zip'}" in refused
    assert f"run4: zip -> {out / 'run4.zip'}" in refused


def _settings_of(tmp_path: Path, **sections: Any) -> RunSettings:
    (tmp_path / "runs").mkdir(exist_ok=True)
    cfg: dict[str, Any] = {"file_management": {"input_directory": "runs"}}
    cfg |= sections
    return load_settings(cfg, tmp_path)


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        pytest.param({}, "overwrite", id="defaults"),
        pytest.param(
            {"default": {"config": {"overwrite": {"output": True}}}},
            "overwrite",
            id="legacy-true",
        ),
        pytest.param(
            {"default": {"config": {"overwrite": {"output": False}}}},
            "skip",
            id="legacy-false",
        ),
        pytest.param(
            {
                "default": {"config": {"overwrite": {"output": False}}},
                "archive": {"if_exists": "update"},
            },
            "update",
            id="explicit-wins-over-false",
        ),
        pytest.param(
            {
                "default": {"config": {"overwrite": {"output": True}}},
                "archive": {"if_exists": "fail"},
            },
            "fail",
            id="explicit-wins-over-true",
        ),
        pytest.param({"archive": {"if_exists": None}}, "overwrite", id="null"),
    ],
)
def test_legacy_key_decides_when_if_exists_is_not_set(
    tmp_path: Path, sections: dict[str, Any], expected: str
) -> None:
    assert _settings_of(tmp_path, **sections).if_exists == expected


@pytest.mark.parametrize("value", ["replace", "Update", "", 1, True])
def test_bad_if_exists_names_key_value_and_choices(
    tmp_path: Path, value: object
) -> None:
    message = (
        rf"archive\.if_exists {value!r} is not one of "
        r"overwrite, skip, update, fail; set archive\.if_exists=update"
    )
    with pytest.raises(ConfigError, match=message):
        _settings_of(tmp_path, archive={"if_exists": value})


def test_command_reruns_with_update_and_refuses_a_bad_value(tmp_path: Path) -> None:
    write_run_tree(tmp_path, ["run1", "run2"], DATA)
    args = [
        "file_management.input_directory=stems",
        "analysis.input_directory=data",
        "file_management.output_directory=out",
        "parallel_processing=sequential",
    ]
    first = stemzip(tmp_path, *args, "hydra.run.dir=first")
    assert first.returncode == 0, first.stderr
    before = {p.name: _stamp(p) for p in (tmp_path / "out").iterdir()}

    second = stemzip(tmp_path, *args, "archive.if_exists=update", "hydra.run.dir=again")
    refused = stemzip(tmp_path, *args, "archive.if_exists=always", "hydra.run.dir=bad")

    assert second.returncode == 0, second.stderr
    saved = yaml.safe_load((tmp_path / "again" / "results.yaml").read_text())
    assert [e["status"] for e in saved["zip_utilities"]] == ["skipped", "skipped"]
    assert {p.name: _stamp(p) for p in (tmp_path / "out").iterdir()} == before
    assert "archive up to date" in second.stderr
    assert refused.returncode == 2
    assert "archive.if_exists 'always' is not one of overwrite, skip" in refused.stderr


def _disposing(settings: RunSettings, after: str, if_exists: str) -> RunSettings:
    moved = settings.data_directory.parent / "moved"
    options = dataclasses.replace(
        settings.archive,
        verify=after != "keep",
        after=after,
        move_to=str(moved) if after == "move" else None,
    )
    return dataclasses.replace(settings, archive=options, if_exists=if_exists)


@pytest.mark.parametrize("then", ["same", "keep"])
@pytest.mark.parametrize("if_exists", ["update", "overwrite"])
@pytest.mark.parametrize("after", ["delete", "move"])
def test_members_whose_sources_were_disposed_of_are_carried_over(
    run_tree: Callable[..., RunSettings], after: str, if_exists: str, then: str
) -> None:
    settings = _disposing(run_tree(["run1"], {"run1_a.csv": "day 1\n"}), after, "")
    settings = dataclasses.replace(settings, if_exists=if_exists)
    data, archive = settings.data_directory, settings.output_directory / "run1.zip"
    first = _zip(settings)["run1"]
    assert first.status is Status.ZIPPED
    assert not (data / "run1_a.csv").exists()
    # a late output of the same run, zipped by the next run, which may
    # keep its sources: what the first run removed must survive either way
    (data / "run1_b.csv").write_text("late\n")
    (data / "run1_0.csv").write_text("sorts first\n")
    if then == "keep":
        settings = _disposing(settings, "keep", if_exists)

    plan = describe_plan(plan_run(dataclasses.replace(settings, dry_run=True)))
    second = _zip(settings)["run1"]

    assert "    run1_a.csv (kept from the archive there: its source is gone)" in plan
    assert second.status is Status.ZIPPED, second.error
    with zipfile.ZipFile(archive) as held:
        assert held.testzip() is None
        assert held.read("run1_a.csv") == b"day 1\n", "the only copy is kept"
        assert held.read("run1_b.csv") == b"late\n"
        assert held.namelist() == ["run1_0.csv", "run1_a.csv", "run1_b.csv"]
    if then == "keep":
        return
    assert not (data / "run1_b.csv").exists()
    # with every source gone, a third run leaves the archive alone
    before = _stamp(archive)
    third = _zip(settings)["run1"]
    assert (third.status, third.zip_file_path) == (Status.SKIPPED, str(archive))
    assert _stamp(archive) == before


def test_an_unreadable_archive_is_not_replaced_when_sources_were_disposed_of(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = _disposing(run_tree(["run1"], {"run1_a.csv": "1\n"}), "delete", "")
    out = settings.output_directory
    out.mkdir()
    broken = b"PK\x03\x04 not the rest of an archive"
    (out / "run1.zip").write_bytes(broken)

    for if_exists in ("update", "overwrite"):
        settings = dataclasses.replace(settings, if_exists=if_exists)
        result = _zip(settings)["run1"]

        assert result.status is Status.FAILED
        assert "cannot be read as a ZIP archive" in str(result.error)
        assert (out / "run1.zip").read_bytes() == broken
        assert (settings.data_directory / "run1_a.csv").read_text() == "1\n"


def test_members_to_be_carried_over_are_no_change(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    source = data / "run1_b.csv"
    source.write_text("b\n")
    os.utime(source, (EVEN_SECOND, EVEN_SECOND))
    # run1_a.csv's source is gone: the archive is its only copy
    write_archive(
        tmp_path / "run1.zip",
        [(source, source.name), (source, "run1_a.csv")],
        ArchiveOptions(),
    )
    members = [(source, source.name)]

    assert changed_members(tmp_path / "run1.zip", members, str(data)) == 0
    (data / "run1_a.csv").write_text("back, but not selected")
    assert changed_members(tmp_path / "run1.zip", members, str(data)) == 1


@pytest.mark.parametrize("after", ["delete", "move"])
def test_update_finishes_what_an_interrupted_disposal_left(
    zipped: RunSettings, after: str
) -> None:
    # the archive is up to date, but the sources are still there, as an
    # interrupt between the archive and the deletions leaves them
    data, out = zipped.data_directory, zipped.output_directory
    held = archive_contents(out / "run1.zip")
    settings = _disposing(zipped, after, "update")
    plan = describe_plan(plan_run(dataclasses.replace(settings, dry_run=True)))
    verb = "deleted" if after == "delete" else "moved"
    assert f"run1: rebuild (sources still to be {verb})" in plan

    results = _zip(settings)

    assert results["run1"].status is Status.ZIPPED
    assert archive_contents(out / "run1.zip") == held
    assert not (data / "run1_a.csv").exists()
    assert not (data / "run1_b.csv").exists()
