"""Folders and archives this user may not read: refused, reported, never fatal."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from .conftest import unprivileged, write_run_tree
from .test_app import STEMZIP


def _stemzip(folder: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *unprivileged(),
            str(STEMZIP),
            "file_management.input_directory=stems",
            "file_management.output_directory=out",
            "hydra.run.dir=job",
            *overrides,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _statuses(folder: Path) -> dict[str, dict[str, object]]:
    saved = yaml.safe_load((folder / "job" / "results.yaml").read_text())
    return {entry["stem"]: entry for entry in saved["zip_utilities"]}


def test_unreadable_data_folder_is_refused_naming_the_key(tmp_path: Path) -> None:
    write_run_tree(tmp_path, ["run1"], {"run1_a.csv": "1"})
    (tmp_path / "data").chmod(0)
    try:
        done = _stemzip(tmp_path, "analysis.input_directory=data")
    finally:
        (tmp_path / "data").chmod(0o755)

    assert done.returncode == 2, done.stderr
    assert (
        "analysis.input_directory 'data' cannot be read (resolved to "
        f"{tmp_path / 'data'}: Permission denied)"
    ) in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_unreadable_subfolder_is_passed_over_with_a_warning(tmp_path: Path) -> None:
    write_run_tree(tmp_path, ["run1", "run2"], {"run1_a.csv": "1", "run2_a.csv": "2"})
    locked = tmp_path / "data" / "locked"
    locked.mkdir()
    (locked / "run2_b.csv").write_text("3")
    locked.chmod(0)
    try:
        done = _stemzip(
            tmp_path, "analysis.input_directory=data", "analysis.recursive=true"
        )
    finally:
        locked.chmod(0o755)

    assert done.returncode == 0, done.stderr
    assert f"cannot list {locked} (Permission denied)" in done.stderr
    assert {s: e["status"] for s, e in _statuses(tmp_path).items()} == {
        "run1": "zipped",
        "run2": "zipped",
    }


def test_unreadable_archive_fails_only_its_stem_on_update(tmp_path: Path) -> None:
    write_run_tree(tmp_path, ["run1", "run2"], {"run1_a.csv": "1", "run2_a.csv": "2"})
    first = _stemzip(tmp_path, "analysis.input_directory=data")
    assert first.returncode == 0, first.stderr
    shutil.rmtree(tmp_path / "job")
    (tmp_path / "out" / "run1.zip").chmod(0)

    done = _stemzip(
        tmp_path, "analysis.input_directory=data", "archive.if_exists=update"
    )

    assert done.returncode == 1, done.stderr
    results = _statuses(tmp_path)
    assert results["run1"]["status"] == "failed"
    assert "cannot read existing archive" in str(results["run1"]["error"])
    assert "Permission denied" in str(results["run1"]["error"])
    assert results["run2"]["status"] == "skipped"


def test_unreadable_data_file_fails_only_its_stem(tmp_path: Path) -> None:
    write_run_tree(
        tmp_path,
        ["run1", "run2"],
        {"run1_a.csv": "1", "run1_b.csv": "2", "run2_a.csv": "3"},
    )
    locked = tmp_path / "data" / "run1_b.csv"
    locked.chmod(0)
    try:
        done = _stemzip(tmp_path, "analysis.input_directory=data")
    finally:
        locked.chmod(0o644)

    assert done.returncode == 1, done.stderr
    results = _statuses(tmp_path)
    assert results["run1"]["status"] == "failed"
    assert "PermissionError: [Errno 13] Permission denied" in str(
        results["run1"]["error"]
    )
    assert "run1_b.csv" in str(results["run1"]["error"])
    assert results["run2"]["status"] == "zipped"
    # no archive and no temporary file for the stem that failed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run2.zip"]
    assert "stem 'run1' failed: PermissionError" in done.stderr
