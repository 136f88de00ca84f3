"""Odd entries among the data files, hidden names, and archives beside the data."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

from stemzip.config import RunSettings, load_settings
from stemzip.errors import ConfigError
from stemzip.executors import SequentialStemExecutor
from stemzip.grouping import find_stems, is_hidden
from stemzip.plan import describe_plan, plan_run
from stemzip.task import zip_by_stem

from .conftest import archive_contents, crc_of, write_run_tree

STEMZIP = Path(sys.executable).with_name("stemzip")

# what run1 cannot take from the folder odd_entries() fills, as reported
RUN1_LEFT_OUT = [
    "run1_dir.csv: folder",
    "run1_dirlink.csv: link to a folder",
    "run1_gone.csv: dangling link",
    "run1_loop.csv: link loop",
    "run1_null.csv: link to a device",
    "run1_pipe.csv: FIFO",
    "run1_sock.csv: socket",
]


def make_socket(path: Path) -> None:
    """Leave a unix socket at ``path``."""
    # bound by its short relative name: socket paths are limited to ~107 bytes
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path.name)
    finally:
        os.chdir(here)


def odd_entries(data: Path) -> None:
    """Fill ``data`` with one of every kind of entry that is no regular file."""
    (data / "run1_a.csv").write_text("a\n")
    (data / "run1_link.csv").symlink_to("run1_a.csv")
    (data / "run1_dir.csv").mkdir()
    (data / "run1_dirlink.csv").symlink_to("run1_dir.csv")
    os.mkfifo(data / "run1_pipe.csv")
    make_socket(data / "run1_sock.csv")
    (data / "run1_gone.csv").symlink_to("missing.csv")
    (data / "run1_loop.csv").symlink_to("run1_loop.csv")
    (data / "run1_null.csv").symlink_to(os.devnull)
    # not a selected extension: never mentioned
    os.mkfifo(data / "run1_pipe.txt")
    # a stem with nothing but an odd entry
    (data / "run2_gone.csv").symlink_to("missing.csv")
    # belongs to no stem
    os.mkfifo(data / "stray_pipe.csv")


def test_odd_entries_are_reported_against_their_stem(
    run_tree: Callable[..., RunSettings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = run_tree(["run1", "run2"], {})
    odd_entries(settings.data_directory)

    plan = plan_run(settings)

    (job,) = plan.jobs
    assert [name for _, name in job.members()] == ["run1_a.csv", "run1_link.csv"]
    assert plan.left_out == {
        "run1": RUN1_LEFT_OUT,
        "run2": ["run2_gone.csv: dangling link"],
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if "left out" in w] == [
        f"stem 'run1': 7 entries left out: {'; '.join(RUN1_LEFT_OUT)}",
        "stem 'run2': 1 entries left out: run2_gone.csv: dangling link",
    ]
    (stray,) = [w for w in warnings if "match no stem" in w]
    assert stray.startswith("1 entries in ") and "'stray_pipe.csv: FIFO'" in stray
    assert "run1_pipe.txt" not in caplog.text


def test_odd_entries_reach_the_results_and_never_the_archive(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["run1", "run2"], {})
    odd_entries(settings.data_directory)

    results = zip_by_stem(settings, SequentialStemExecutor())

    run1, run2 = (result.to_dict() for result in results)
    assert (run1["status"], run1["left_out"]) == ("zipped", RUN1_LEFT_OUT)
    assert (run2["status"], run2["left_out"]) == (
        "no_files",
        ["run2_gone.csv: dangling link"],
    )
    target = crc_of(settings.data_directory / "run1_a.csv")
    assert archive_contents(settings.output_directory / "run1.zip") == {
        "run1_a.csv": target,
        "run1_link.csv": target,
    }
    with zipfile.ZipFile(settings.output_directory / "run1.zip") as archive:
        assert archive.read("run1_link.csv") == b"a\n", "the target's bytes"


def test_dry_run_names_what_each_stem_leaves_out(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["run1", "run2"], {}, dry_run=True)
    odd_entries(settings.data_directory)

    lines = describe_plan(plan_run(settings)).splitlines()

    assert lines[lines.index("run2: no files -> -") + 1] == (
        "    left out: run2_gone.csv: dangling link"
    )
    assert [line for line in lines if line.startswith("    left out: run1")] == [
        f"    left out: {entry}" for entry in RUN1_LEFT_OUT
    ]


def test_recursive_search_enters_a_folder_named_like_a_member(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["run1"], {}, recursive=True)
    odd_entries(settings.data_directory)
    (settings.data_directory / "run1_dir.csv" / "run1_b.csv").write_text("b")

    plan = plan_run(settings)

    assert plan.jobs[0].arcnames == (
        "run1_a.csv",
        "run1_dir.csv/run1_b.csv",
        "run1_link.csv",
    )
    assert "run1_dir.csv: folder" not in plan.left_out["run1"]
    assert "run1_dirlink.csv: link to a folder" in plan.left_out["run1"]


def test_links_can_be_left_out(run_tree: Callable[..., RunSettings]) -> None:
    settings = run_tree(["run1"], {}, follow_links=False)
    odd_entries(settings.data_directory)

    (result,) = zip_by_stem(settings, SequentialStemExecutor())

    assert result.files == (str(settings.data_directory / "run1_a.csv"),)
    assert list(archive_contents(settings.output_directory / "run1.zip")) == [
        "run1_a.csv"
    ]
    assert sorted(result.left_out) == list(result.left_out)
    assert "run1_link.csv: link (not followed)" in result.left_out
    assert "run1_gone.csv: dangling link" in result.left_out


@pytest.mark.parametrize(
    ("value", "follow"),
    [
        pytest.param(None, True, id="default"),
        pytest.param("follow", True, id="follow"),
        pytest.param("skip", False, id="skip"),
    ],
)
def test_symlinks_setting(tmp_path: Path, value: str | None, follow: bool) -> None:
    analysis = {} if value is None else {"symlinks": value}
    cfg = {"file_management": {"input_directory": "."}, "analysis": analysis}

    assert load_settings(cfg, tmp_path).follow_links is follow


def test_new_keys_are_in_the_schema(tmp_path: Path) -> None:
    overrides = ["analysis.symlinks=skip", "analysis.include_hidden=true"]
    with initialize_config_module(config_module="stemzip.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"file_management.input_directory={tmp_path}", *overrides],
        )

    settings = load_settings(cfg, tmp_path)

    assert (settings.follow_links, settings.include_hidden) == (False, True)


@pytest.mark.parametrize("value", ["sometimes", True, ["skip"]], ids=str)
def test_symlinks_setting_refuses_other_values(tmp_path: Path, value: object) -> None:
    cfg = {
        "file_management": {"input_directory": "."},
        "analysis": {"symlinks": value},
    }

    with pytest.raises(
        ConfigError,
        match=re.escape(f"analysis.symlinks {value!r} is not one of follow, skip; "),
    ):
        load_settings(cfg, tmp_path)


@pytest.mark.parametrize(
    ("name", "hidden"),
    [
        pytest.param(".run1_a.csv", True, id="dot"),
        pytest.param("._run1_a.csv", True, id="apple-double"),
        pytest.param(".run1_a.csv.swp", True, id="vim-swap"),
        pytest.param(".~lock.run1_a.csv#", True, id="libreoffice-lock"),
        pytest.param("~$run1_a.xlsx", True, id="office-lock"),
        pytest.param("run1_a.csv~", True, id="tilde-backup"),
        pytest.param("run1_a.csv.bak", True, id="bak"),
        pytest.param("run1_a.csv.BAK", True, id="bak-any-case"),
        pytest.param("run1_a.swo", True, id="swo"),
        pytest.param("run1_a.csv", False, id="plain"),
        pytest.param("run1~a.csv", False, id="tilde-inside"),
        pytest.param("run1_$a.csv", False, id="dollar-inside"),
        pytest.param("run1_a.backup", False, id="not-bak"),
    ],
)
def test_is_hidden(name: str, hidden: bool) -> None:
    assert is_hidden(name) is hidden


HIDDEN_STEMS = ["._run1", ".run1", "run1", "~$run1"]
HIDDEN_DATA = {
    "run1_a.csv": "a",
    "run1_a.csv.bak": "backup",
    "run1_b.csv.BAK": "backup",
    "run1_a.csv.swp": "vim",
    "run1_a.csv.swo": "vim",
    "run1_a.csv~": "emacs",
    ".run1_a.csv.swp": "vim",
    "._run1_a.csv": "resource fork",
    "~$run1_a.csv": "office",
    ".run1.zip.0123abcd.part": "a temporary archive",
}


def hidden_tree(run_tree: Callable[..., RunSettings], **changes: object) -> RunSettings:
    settings = run_tree(
        HIDDEN_STEMS,
        HIDDEN_DATA,
        data_extensions=("csv", "bak", "swp", "swo", "csv~", "part"),
        recursive=True,
        **changes,
    )
    for folder in (".hidden", "visible"):
        (settings.data_directory / folder).mkdir()
        (settings.data_directory / folder / "run1_c.csv").write_text(folder)
    return settings


def test_hidden_names_are_neither_stems_nor_members(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = hidden_tree(run_tree)

    plan = plan_run(settings)

    assert plan.stems == ["run1"]
    (job,) = plan.jobs
    assert job.arcnames == ("run1_a.csv", "visible/run1_c.csv")
    assert plan.unmatched == []
    assert plan.left_out == {}


def test_hidden_names_are_taken_when_asked_for(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = hidden_tree(run_tree, include_hidden=True)

    plan = plan_run(settings)

    assert plan.stems == HIDDEN_STEMS
    assert {job.stem: job.arcnames for job in plan.jobs} == {
        "._run1": ("._run1_a.csv",),
        ".run1": (".run1_a.csv.swp",),
        "run1": tuple(
            sorted(
                [
                    ".hidden/run1_c.csv",
                    "run1_a.csv",
                    "run1_a.csv.bak",
                    "run1_a.csv.swo",
                    "run1_a.csv.swp",
                    "run1_a.csv~",
                    "run1_b.csv.BAK",
                    "visible/run1_c.csv",
                ]
            )
        ),
        "~$run1": ("~$run1_a.csv",),
    }


def test_hidden_stem_files_are_found_only_when_asked_for(tmp_path: Path) -> None:
    for name in ["run1.yml", ".run1.yml", "._run1.yml", "~$run1.yml"]:
        (tmp_path / name).write_text("x")

    assert find_stems(tmp_path, ["yml"]) == (["run1"], ["run1"])
    assert find_stems(tmp_path, ["yml"], include_hidden=True)[1] == HIDDEN_STEMS


def test_own_temporary_archives_are_never_members(
    run_tree: Callable[..., RunSettings],
) -> None:
    # with hidden names asked for, the temporary file of run1.zip would
    # otherwise fit stem ".run1"
    settings = run_tree(
        [".run1", "run1"],
        {"run1_a.csv": "a", ".run1_b.csv": "b", ".run1.zip.0123abcd.part": "partial"},
        data_extensions=("csv", "part"),
        include_hidden=True,
    )
    settings = dataclasses.replace(settings, output_directory=settings.data_directory)

    plan = plan_run(settings)

    assert {job.stem: [n for _, n in job.members()] for job in plan.jobs} == {
        ".run1": [".run1_b.csv"],
        "run1": ["run1_a.csv"],
    }
    assert plan.left_out == {}


def _stale_archive(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("run1_a.csv", "from an older run")


@pytest.mark.parametrize(
    ("archive_name", "recursive", "stale"),
    [
        pytest.param("{stem}.zip", False, "run1_old.zip", id="flat"),
        pytest.param("zips/{stem}.zip", True, "zips/run1_old.zip", id="recursive"),
    ],
)
def test_rerun_beside_the_data_archives_the_same_members(
    run_tree: Callable[..., RunSettings],
    archive_name: str,
    recursive: bool,
    stale: str,
) -> None:
    settings = run_tree(
        ["run1", "run10"],
        {"run1_a.csv": "a", "run1_b.csv": "b", "run10_a.csv": "10"},
        data_extensions=("csv", "zip"),
        archive_name=archive_name,
        recursive=recursive,
    )
    data = settings.data_directory
    settings = dataclasses.replace(settings, output_directory=data)
    _stale_archive(data / stale)
    archives = [data / archive_name.format(stem=s) for s in ("run1", "run10")]

    first = zip_by_stem(settings, SequentialStemExecutor())
    members = [archive_contents(path) for path in archives]
    second = zip_by_stem(settings, SequentialStemExecutor())

    assert [archive_contents(path) for path in archives] == members
    assert members == [
        {
            "run1_a.csv": crc_of(data / "run1_a.csv"),
            "run1_b.csv": crc_of(data / "run1_b.csv"),
        },
        {"run10_a.csv": crc_of(data / "run10_a.csv")},
    ]
    assert [r.to_dict() for r in second] == [r.to_dict() for r in first]
    assert [r.left_out for r in first] == [
        (f"{stale}: archive in the output folder",),
        (),
    ]


@pytest.mark.parametrize(
    ("archive_name", "extensions", "data_file"),
    [
        pytest.param(
            "{stem}_summary.xlsx", ("csv", "xlsx"), "run1_summary.xlsx", id="workbook"
        ),
        pytest.param(
            "{stem}_report.zip", ("csv", "zip"), "run1_report.zip", id="zip-data"
        ),
    ],
)
def test_a_data_file_where_an_archive_would_go_is_kept_and_archived(
    run_tree: Callable[..., RunSettings],
    archive_name: str,
    extensions: tuple[str, ...],
    data_file: str,
) -> None:
    # a workbook or a zip the solver wrote is a ZIP file too, at the very
    # path the template gives the stem's archive
    settings = run_tree(
        ["run1", "run2"],
        {"run1_forces.csv": "1,2\n", "run2_forces.csv": "3,4\n"},
        data_extensions=extensions,
        archive_name=archive_name,
    )
    data = settings.data_directory
    settings = dataclasses.replace(settings, output_directory=data)
    with zipfile.ZipFile(data / data_file, "w") as book:
        book.writestr("xl/workbook.xml", "RESULTS")
    before = (data / data_file).read_bytes()

    results = {r.stem: r for r in zip_by_stem(settings, SequentialStemExecutor())}

    assert (data / data_file).read_bytes() == before
    assert results["run1"].status.value == "failed"
    assert "exists and is a ZIP file that stemzip did not write" in str(
        results["run1"].error
    )
    assert data_file in str(results["run1"].error)
    # run2's archive is stemzip's own: a rerun replaces it, and never takes
    # it in as a member
    second = {r.stem: r for r in zip_by_stem(settings, SequentialStemExecutor())}
    assert second["run2"].status.value == "zipped"
    run2 = data / archive_name.format(stem="run2")
    assert archive_contents(run2) == {
        "run2_forces.csv": crc_of(data / "run2_forces.csv")
    }
    assert (data / data_file).read_bytes() == before


def test_dry_run_beside_the_data_says_a_stale_archive_is_left_out(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(
        ["run1"], {"run1_a.csv": "a"}, data_extensions=("csv", "zip"), dry_run=True
    )
    settings = dataclasses.replace(settings, output_directory=settings.data_directory)
    _stale_archive(settings.data_directory / "run1_old.zip")

    text = describe_plan(plan_run(settings))

    assert text.splitlines()[:3] == [
        f"run1: zip -> {settings.data_directory / 'run1.zip'}",
        "    run1_a.csv",
        "    left out: run1_old.zip: archive in the output folder",
    ]


def test_zip_files_elsewhere_are_members(run_tree: Callable[..., RunSettings]) -> None:
    # only archives in the output folder are kept out; zips among the data
    # are data like any other
    settings = run_tree(
        ["run1"],
        {"run1_a.csv": "a"},
        data_extensions=("csv", "zip"),
    )
    _stale_archive(settings.data_directory / "run1_old.zip")

    (job,) = plan_run(settings).jobs

    assert [name for _, name in job.members()] == ["run1_a.csv", "run1_old.zip"]


def _command_results(cwd: Path, job: str, *overrides: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [
            str(STEMZIP),
            "file_management.input_directory=stems",
            "analysis.input_directory=data",
            "analysis.filename.extension=[csv,zip]",
            f"hydra.run.dir={job}",
            *overrides,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    saved = yaml.safe_load((cwd / job / "results.yaml").read_text())
    entries: list[dict[str, object]] = saved[saved["basename"]]
    return entries


def test_command_reports_odd_entries_and_reruns_alike(tmp_path: Path) -> None:
    write_run_tree(tmp_path, ["run1", "run2", "run3"], {"run3_a.csv": "3"})
    data = tmp_path / "data"
    odd_entries(data)
    _stale_archive(data / "run1_old.zip")

    first = _command_results(tmp_path, "job1")
    members = archive_contents(data / "run1.zip")
    second = _command_results(tmp_path, "job2", "parallel_processing=sequential")

    assert second == first
    assert archive_contents(data / "run1.zip") == members
    assert list(members) == ["run1_a.csv", "run1_link.csv"]
    assert [(e["stem"], e["status"], e["left_out"]) for e in first] == [
        (
            "run1",
            "zipped",
            sorted([*RUN1_LEFT_OUT, "run1_old.zip: archive in the output folder"]),
        ),
        ("run2", "no_files", ["run2_gone.csv: dangling link"]),
        ("run3", "zipped", []),
    ]
    log = (tmp_path / "job2" / "stemzip.log").read_text()
    warnings = [line for line in log.splitlines() if "[WARNING]" in line]
    assert sum("entries left out" in line for line in warnings) == 2
    assert sum("match no stem" in line for line in warnings) == 1
