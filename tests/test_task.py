from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from stemzip.config import RunSettings
from stemzip.errors import ConfigError
from stemzip.executors import (
    ProcessPoolStemExecutor,
    SequentialStemExecutor,
)
from stemzip.results import Status, StemResult
from stemzip.task import build_executor, run, write_error_reports, zip_by_stem

from .conftest import archive_contents, assert_plain_data, crc_of, write_run_tree

DATA = {
    "run1-c.csv": "1\n",
    "run1_b.csv": "2\n",
    "run1_a.csv": "1a\n",
    "run10_a.csv": "10\n",
    "run1_a_x.csv": "1a\n",
    "summary.csv": "s\n",
    "run1_notes.txt": "not selected\n",
}
STEMS = ["run1", "run10", "run1_a", "run2"]


def test_zip_by_stem_end_to_end(
    run_tree: Callable[..., RunSettings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = run_tree(STEMS, DATA)

    results = zip_by_stem(settings, SequentialStemExecutor())

    by_stem = {r.stem: r for r in results}
    assert [r.stem for r in results] == sorted(STEMS)
    assert {s: r.status.value for s, r in by_stem.items()} == {
        "run1": "zipped",
        "run10": "zipped",
        "run1_a": "zipped",
        "run2": "no_files",
    }
    out = settings.output_directory
    data = settings.data_directory
    assert archive_contents(out / "run1.zip") == {
        "run1-c.csv": crc_of(data / "run1-c.csv"),
        "run1_b.csv": crc_of(data / "run1_b.csv"),
    }
    assert list(archive_contents(out / "run1_a.zip")) == ["run1_a.csv", "run1_a_x.csv"]
    assert list(archive_contents(out / "run10.zip")) == ["run10_a.csv"]
    assert not (out / "run2.zip").exists()
    assert "stem 'run2' has no data files" in caplog.text
    assert "1 data files match no stem and are left alone" in caplog.text


def test_sources_are_never_changed(run_tree: Callable[..., RunSettings]) -> None:
    settings = run_tree(STEMS, DATA)
    folder = settings.data_directory
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}

    zip_by_stem(settings, ProcessPoolStemExecutor(max_workers=2))

    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert after == before


def test_overwrite_off_keeps_existing_archive(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(STEMS, DATA, if_exists="skip")
    settings.output_directory.mkdir()
    (settings.output_directory / "run1.zip").write_bytes(b"old")

    results = {r.stem: r for r in zip_by_stem(settings, SequentialStemExecutor())}

    assert results["run1"].status.value == "skipped"
    assert results["run1"].zip_file_path == str(settings.output_directory / "run1.zip")
    assert (settings.output_directory / "run1.zip").read_bytes() == b"old"
    assert results["run10"].status.value == "zipped"


def test_output_folder_is_created(run_tree: Callable[..., RunSettings]) -> None:
    settings = run_tree(["run1"], DATA)
    settings = RunSettings(
        **{**settings.__dict__, "output_directory": settings.output_directory / "a/b"}
    )

    zip_by_stem(settings, SequentialStemExecutor())

    assert (settings.output_directory / "run1.zip").is_file()


def _config(tmp_path: Path, *overrides: str) -> Any:
    write_run_tree(tmp_path, STEMS, DATA)
    with initialize_config_module(config_module="stemzip.conf", version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[
                f"file_management.input_directory={tmp_path / 'stems'}",
                f"analysis.input_directory={tmp_path / 'data'}",
                f"file_management.output_directory={tmp_path / 'out'}",
                *overrides,
            ],
        )


def test_task_writes_results_under_basename(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "basename=zips", "parallel_processing=sequential")
    (tmp_path / "data" / "run10_b.csv").symlink_to(tmp_path / "data" / "gone.csv")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run10.zip").mkdir()  # a folder where the archive goes

    returned = run(cfg)

    assert returned is cfg
    entries = OmegaConf.to_container(cfg.zips)
    assert [e["stem"] for e in entries] == sorted(STEMS)
    assert [e["status"] for e in entries] == ["zipped", "failed", "zipped", "no_files"]
    first = entries[0]
    assert first["zip_file_path"] == str(tmp_path / "out" / "run1.zip")
    assert first["files"] == [
        str(tmp_path / "data" / "run1-c.csv"),
        str(tmp_path / "data" / "run1_b.csv"),
    ]
    assert first["error"] is None
    assert entries[1]["zip_file_path"] is None
    assert entries[1]["error"] == (
        f"IsADirectoryError: {tmp_path / 'out' / 'run10.zip'} is a folder, where "
        "this stem's archive would go; move it away or choose another archive.name"
    )
    assert entries[1]["left_out"] == ["run10_b.csv: dangling link"]
    assert entries[3] == {
        "stem": "run2",
        "status": "no_files",
        "zip_file_path": None,
        "files": [],
        "error": None,
        "bytes_in": 0,
        "bytes_out": 0,
        "left_out": [],
    }


def test_task_on_a_plain_dict_resolves_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run_tree(tmp_path, STEMS, DATA)
    monkeypatch.chdir(tmp_path)
    cfg: dict[str, Any] = {
        "basename": "zip_utilities",
        "file_management": {"input_directory": "stems", "output_directory": "out"},
        "analysis": {"input_directory": "data", "filename": {"extension": ["csv"]}},
        "parallel_processing": {"enabled": True, "max_workers": 2},
    }

    run(cfg)

    assert_plain_data(cfg["zip_utilities"])
    assert [e["status"] for e in cfg["zip_utilities"]] == [
        "zipped",
        "zipped",
        "zipped",
        "no_files",
    ]
    assert (tmp_path / "out" / "run1.zip").is_file()


def test_error_reports(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        "parallel_processing.save_error_reports=true",
        "parallel_processing.timeout_per_file=0.2",
    )
    with (tmp_path / "data" / "run1_big.csv").open("wb") as sparse:
        sparse.truncate(1 << 30)  # seconds to read, no disk

    run(cfg)

    report = json.loads((tmp_path / "out" / "errors" / "run1.error.json").read_text())
    assert report["stem"] == "run1"
    assert report["status"] == "failed"
    assert str(tmp_path / "data" / "run1_big.csv") in report["files"]
    assert "timeout_per_file=0.2" in report["error"]
    assert "StemTimeoutError" in report["traceback"]
    assert sorted(p.name for p in (tmp_path / "out" / "errors").iterdir()) == [
        "run1.error.json"
    ]


def test_write_error_reports_skips_successes(tmp_path: Path) -> None:
    results = [
        StemResult("run1", Status.ZIPPED, str(tmp_path / "run1.zip")),
        StemResult("run2", Status.FAILED, error="OSError: gone"),
        StemResult("run3", Status.SKIPPED),
        StemResult("run4", Status.NO_FILES),
    ]

    written = write_error_reports(results, tmp_path / "errors")

    assert written == [tmp_path / "errors" / "run2.error.json"]
    assert sorted(p.name for p in (tmp_path / "errors").iterdir()) == [
        "run2.error.json"
    ]


@pytest.mark.parametrize(
    ("node", "kind"),
    [
        pytest.param(None, ProcessPoolStemExecutor, id="missing"),
        pytest.param({"max_workers": 3}, ProcessPoolStemExecutor, id="legacy-dict"),
        pytest.param(
            {"_target_": "stemzip.executors.SequentialStemExecutor"},
            SequentialStemExecutor,
            id="sequential",
        ),
    ],
)
def test_build_executor(node: Any, kind: type) -> None:
    assert type(build_executor(node)) is kind


def test_build_executor_refuses_other_targets() -> None:
    with pytest.raises(ConfigError, match="is not a stemzip executor"):
        build_executor({"_target_": "builtins.dict"})
    with pytest.raises(ConfigError, match="must be a group of settings"):
        build_executor("fast")


def test_error_report_for_a_stem_near_the_name_limit(tmp_path: Path) -> None:
    failed = StemResult(stem="q" * 250, status=Status.FAILED, error="boom")

    (path,) = write_error_reports([failed], tmp_path)

    assert json.loads(path.read_text())["stem"] == "q" * 250


def test_error_report_that_cannot_be_written_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "errors").write_text("a file where the folder goes")
    failed = StemResult(stem="run1", status=Status.FAILED, error="boom")

    assert write_error_reports([failed], tmp_path / "errors") == []
    assert "no error report for 'run1'" in caplog.text


def test_archives_beside_the_data_never_take_each_other_in(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["run1", "run10"], DATA)
    settings = dataclasses.replace(
        settings,
        output_directory=settings.data_directory,
        data_extensions=("csv", "zip"),
    )
    first = zip_by_stem(settings, SequentialStemExecutor())

    second = zip_by_stem(settings, SequentialStemExecutor())

    assert [r.files for r in second] == [r.files for r in first]
    assert list(archive_contents(settings.data_directory / "run1.zip")) == [
        "run1-c.csv",
        "run1_a.csv",
        "run1_a_x.csv",
        "run1_b.csv",
    ]


def test_overwrite_off_does_not_count_a_folder_as_an_archive(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["run1", "run10"], DATA, if_exists="skip")
    (settings.output_directory / "run1.zip").mkdir(parents=True)
    (settings.output_directory / "run10.zip").write_bytes(b"kept")

    results = {r.stem: r for r in zip_by_stem(settings, SequentialStemExecutor())}

    assert results["run1"].status is Status.FAILED
    assert results["run10"].status is Status.SKIPPED
    assert results["run10"].files == (str(settings.data_directory / "run10_a.csv"),)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"archive": "stored"}, "archive must be a group", id="section"),
        pytest.param(
            {"file_management": {"input_directory": ["a"]}},
            "must be a folder path",
            id="folder-list",
        ),
        pytest.param({"basename": "archive"}, "names no setting", id="basename"),
        pytest.param({"archive": {"fsync": "false"}}, "fsync must be true", id="flag"),
    ],
)
def test_plain_dict_values_are_checked(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    write_run_tree(tmp_path, STEMS, DATA)
    cfg: dict[str, Any] = {"file_management": {"input_directory": str(tmp_path)}}
    cfg |= changes

    with pytest.raises(ConfigError, match=message):
        run(cfg)


def test_names_that_look_like_interpolations_read_back_literally(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path)
    # a backslash before it too, which OmegaConf would take as escaping
    # the escape
    names = ["run2_${oops}.csv", "run2_\\${x}.csv"]
    for name in names:
        (tmp_path / "data" / name).write_text("x")

    run(cfg)

    (entry,) = [e for e in cfg.zip_utilities if e.stem == "run2"]
    paths = [str(tmp_path / "data" / name) for name in names]
    assert sorted(entry.files[:2]) == sorted(paths)
    resolved = OmegaConf.to_container(cfg.zip_utilities, resolve=True)
    assert_plain_data(resolved)
    assert set(paths) <= set(resolved[3]["files"])
    members = list(archive_contents(Path(entry.zip_file_path)))
    assert set(names) <= set(members)
