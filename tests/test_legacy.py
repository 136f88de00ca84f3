from __future__ import annotations

import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from stemzip.errors import ConfigError, StemzipError, UnsafeArchiveError
from stemzip.legacy import ZipUtilities

from .conftest import archive_contents, crc_of


def _campaign(root: Path) -> dict[str, Any]:
    runs = root / "runs"
    (runs / "output").mkdir(parents=True)
    for stem in ["run1", "run10"]:
        (runs / f"{stem}.yml").write_text("x")
    (runs / "run2.yaml").write_text("x")
    for name in ["run1_a.csv", "run1_b.csv", "run10_a.csv", "run2_a.csv"]:
        (runs / "output" / name).write_text(name)
    return {
        "basename": "zip_utilities",
        "analysis_settings": {"flag": True, "by": "stem"},
        "Analysis": {"analysis_root_folder": str(root), "result_folder": "results"},
        "file_management": {
            "input_directory": "runs",
            "filename": {"extension": ["yml", "yaml"]},
        },
        "analysis": {
            "input_directory": "runs/output",
            "filename": {"extension": ["csv"]},
        },
        "parallel_processing": {"enabled": True, "max_workers": 2},
    }


def test_router_zips_every_stem_extension_into_the_result_folder(
    tmp_path: Path,
) -> None:
    cfg = _campaign(tmp_path)

    returned = ZipUtilities().router(cfg)

    assert returned is cfg
    entries = cfg["zip_utilities"]
    assert [(e["stem"], e["status"]) for e in entries] == [
        ("run1", "zipped"),
        ("run10", "zipped"),
        ("run2", "zipped"),
    ]
    results = tmp_path / "results"
    assert entries[0]["zip_file_path"] == str(results / "run1.zip")
    assert list(archive_contents(results / "run1.zip")) == ["run1_a.csv", "run1_b.csv"]
    assert list(archive_contents(results / "run2.zip")) == ["run2_a.csv"]


def test_stems_from_input_files(tmp_path: Path) -> None:
    cfg = _campaign(tmp_path)
    cfg["file_management"] = {
        "filename": {"extension": ["yml"]},
        "input_files": {"yml": [tmp_path / "runs" / "run10.yml"]},
    }

    ZipUtilities().zip_files_by_stem(cfg)

    assert [e["stem"] for e in cfg["zip_utilities"]] == ["run10"]
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["run10.zip"]


def test_zip_files(tmp_path: Path) -> None:
    cfg = _campaign(tmp_path)
    files = ["runs/output/run1_a.csv", "runs/output/run2_a.csv"]

    path = ZipUtilities().zip_files(cfg, files, "picked")

    assert path == str(tmp_path / "results" / "picked.zip")
    assert archive_contents(Path(path)) == {
        Path(f).name: crc_of(tmp_path / f) for f in files
    }


def test_zip_files_refuses_two_files_of_one_name(tmp_path: Path) -> None:
    cfg = _campaign(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "run1_a.csv").write_text("another")
    files = ["runs/output/run1_a.csv", "elsewhere/run1_a.csv"]

    with pytest.raises(StemzipError, match=r"would both be stored as 'run1_a\.csv'"):
        ZipUtilities().zip_files(cfg, files, "picked")

    assert not (tmp_path / "results" / "picked.zip").exists()


def test_router_refuses_other_steps(tmp_path: Path) -> None:
    cfg = _campaign(tmp_path) | {"analysis_settings": {"flag": True, "by": "date"}}

    with pytest.raises(ConfigError, match="by: stem"):
        ZipUtilities().router(cfg)


def _archive(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def test_unzip_files(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a.zip", {"x.csv": b"1", "sub/y.csv": b"2"})

    written = ZipUtilities().unzip_files(archive, tmp_path / "out")

    assert sorted(written) == [
        str(tmp_path / "out" / n) for n in ("sub/y.csv", "x.csv")
    ]
    assert (tmp_path / "out" / "sub" / "y.csv").read_bytes() == b"2"


@pytest.mark.parametrize(
    ("members", "link", "limits", "message"),
    [
        pytest.param({"../evil.csv": b"x"}, None, {}, "leaves the folder", id="dotdot"),
        pytest.param(
            {"/tmp/evil.csv": b"x"}, None, {}, "leaves the folder", id="absolute"
        ),
        pytest.param(
            {"a\\..\\..\\evil": b"x"}, None, {}, "leaves the folder", id="backslash"
        ),
        pytest.param({"ok.csv": b"x"}, "link.csv", {}, "is a link", id="link"),
        pytest.param({"./": b""}, None, {}, "empty name", id="dot"),
        pytest.param(
            {"d": b"1", "d/e": b"2"}, None, {}, "both a file and a folder", id="clash"
        ),
        pytest.param(
            {"a": b"1", "b": b"2", "c": b"3"},
            None,
            {"max_unzip_members": 2},
            "4 members is over the limit of 2",
            id="members",
        ),
        pytest.param(
            {"big": b"x" * 1000},
            None,
            {"max_unzip_bytes": 999},
            "1002 bytes declared is over the limit of 999",
            id="bytes",
        ),
    ],
)
def test_unzip_files_refuses_unsafe_archives(
    tmp_path: Path,
    members: dict[str, bytes],
    link: str | None,
    limits: dict[str, int],
    message: str,
) -> None:
    archive = _archive(tmp_path / "a.zip", {"first.csv": b"ok", **members}, link)

    with pytest.raises(UnsafeArchiveError, match=message):
        ZipUtilities(**limits).unzip_files(archive, tmp_path / "out")

    assert not (tmp_path / "out").exists(), "nothing is written"
    assert not (tmp_path / "evil.csv").exists()


def test_unzip_files_will_not_follow_a_link_out(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "elsewhere")
    archive = _archive(tmp_path / "a.zip", {"sub/x.csv": b"1"})

    with pytest.raises(UnsafeArchiveError, match="outside"):
        ZipUtilities().unzip_files(archive, tmp_path / "out")

    assert not list((tmp_path / "elsewhere").iterdir())


OLD_STYLE = """\
meta:
  basename: zip_utilities
analysis_settings:
  flag: true
  by: stem
file_management:
  flag: true
  input_directory: runs
  filename:
    extension: [yml]
    filters: {contains: [], not_contains: []}
analysis:
  input_directory: runs/output
  filename:
    extension: [csv]
parallel_processing:
  enabled: true
  max_workers: auto
default:
  config:
    overwrite:
      output: true
"""


def test_old_style_file_runs_unchanged(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    _campaign(project)
    (project / "zip.yml").write_text(OLD_STYLE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    done = subprocess.run(
        [str(Path(sys.executable).with_name("stemzip-legacy")), "../project/zip.yml"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    entries = yaml.safe_load(done.stdout)["zip_utilities"]
    assert [(e["stem"], e["status"]) for e in entries] == [
        ("run1", "zipped"),
        ("run10", "zipped"),
    ]
    output = project / "runs" / "output"
    assert list(archive_contents(output / "run1.zip")) == ["run1_a.csv", "run1_b.csv"]
    assert not list(elsewhere.iterdir())


def test_old_style_file_with_a_missing_folder_exits_two(tmp_path: Path) -> None:
    (tmp_path / "zip.yml").write_text(OLD_STYLE)

    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("stemzip-legacy")),
            str(tmp_path / "zip.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 2
    assert "file_management.input_directory 'runs' does not exist" in done.stderr


def _legacy(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("stemzip-legacy")), *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_old_style_file_that_is_not_yaml_exits_two(tmp_path: Path) -> None:
    (tmp_path / "zip.yml").write_text("meta: [\n")

    done = _legacy(tmp_path, "zip.yml")

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "while parsing" in done.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("Analysis: abc\n", "Analysis must be a mapping", id="analysis"),
        pytest.param("meta: [1]\n", "meta must be a mapping", id="meta"),
        pytest.param("basename: null\n", "basename must be a non-empty", id="basename"),
        pytest.param("x: ${nope}\n", "a value cannot be resolved", id="interpolation"),
        pytest.param(
            "file_management: {filename: [1]}\n",
            "file_management.filename must be a mapping",
            id="filename",
        ),
        pytest.param(
            "file_management: {input_directory: runs, input_files: {yml: a.yml}}\n",
            "file_management.input_files.yml must be a list of files, got 'a.yml'",
            id="input-files",
        ),
        pytest.param(
            "file_management: {input_directory: runs, input_files: {yml: [1]}}\n",
            "file_management.input_files.yml must be a list of files, got [1]",
            id="input-files-numbers",
        ),
        pytest.param(
            "file_management: {filename: {extension: []}}\n",
            "must be a list of at least one extension, got []",
            id="no-extension",
        ),
        pytest.param(
            "Analysis: {analysis_root_folder: [x]}\n",
            "Analysis.analysis_root_folder must be a folder path, got ['x']",
            id="root-folder",
        ),
        pytest.param(
            "Analysis: {result_folder: [x]}\n",
            "Analysis.result_folder must be a folder path, got ['x']",
            id="result-folder",
        ),
    ],
)
def test_old_style_file_with_bad_values_exits_two(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "zip.yml").write_text(text)

    done = _legacy(tmp_path, "zip.yml")

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert message in done.stderr
    assert list((tmp_path / "runs").iterdir()) == []


def _terminated(folder: Path, output: Path, part: str) -> tuple[int, str, str]:
    """Run ``zip.yml`` in ``folder`` and send SIGTERM once ``part`` appears."""
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("stemzip-legacy")), "zip.yml"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(output.glob(part)) and time.monotonic() < deadline:
        time.sleep(0.02)

    process.terminate()
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


def test_every_extension_is_checked_before_any_is_zipped(tmp_path: Path) -> None:
    config = OLD_STYLE.replace("[yml]", "[yml, dat]").replace(
        "  input_directory: runs\n",
        "  input_directory: runs\n  input_files: {dat: runs/run3.dat}\n",
    )
    (tmp_path / "zip.yml").write_text(config)
    output = tmp_path / "runs" / "output"
    output.mkdir(parents=True)
    (tmp_path / "runs" / "run1.yml").write_text("x: 1\n")
    (output / "run1_a.csv").write_text("1\n")

    done = _legacy(tmp_path, "zip.yml")

    assert done.returncode == 2, done.stderr
    assert "input_files.dat must be a list of files" in done.stderr
    assert not list(output.glob("*.zip")), "the yml stems were not zipped first"


def test_interrupted_second_extension_prints_the_stems_of_both(
    tmp_path: Path,
) -> None:
    config = OLD_STYLE.replace("basename: zip_utilities", "basename: my_zips")
    (tmp_path / "zip.yml").write_text(config.replace("[yml]", "[yml, yaml]"))
    output = tmp_path / "runs" / "output"
    output.mkdir(parents=True)
    (tmp_path / "runs" / "quick.yml").write_text("x: 1\n")
    (output / "quick_a.csv").write_text("1\n")
    for stem in ("slow1", "slow2", "slow3"):
        (tmp_path / "runs" / f"{stem}.yaml").write_text("x: 1\n")
        with (output / f"{stem}_big.csv").open("wb") as sparse:
            sparse.truncate(1 << 30)
    returncode, stdout, stderr = _terminated(tmp_path, output, ".slow*.part")

    assert returncode == 130, stderr
    done = {entry["stem"]: entry for entry in yaml.safe_load(stdout)["my_zips"]}
    assert done["quick"]["status"] == "zipped", "the first extension's stems"
    assert len(done) < 4


def test_old_style_run_stops_in_order_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "zip.yml").write_text(OLD_STYLE)
    output = tmp_path / "runs" / "output"
    output.mkdir(parents=True)
    stems = [f"run{i}" for i in range(6)]
    for stem in stems:
        (tmp_path / "runs" / f"{stem}.yml").write_text("x: 1\n")
        with (output / f"{stem}_big.csv").open("wb") as sparse:
            sparse.truncate(1 << 30)  # seconds of work each, no disk
    returncode, stdout, stderr = _terminated(tmp_path, output, ".*.part")

    assert returncode == 130, stderr
    assert "interrupted" in stderr
    done = yaml.safe_load(stdout) or {}
    assert all(entry["status"] == "zipped" for entry in done.get("zip_utilities", []))
    time.sleep(1)  # a worker left running would go on writing
    assert not list(output.glob(".*.part"))
    assert sorted(p.name for p in output.glob("*.zip")) == sorted(
        f"{entry['stem']}.zip" for entry in done.get("zip_utilities", [])
    )


def test_unzip_files_refuses_repeated_names(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        writer.writestr("x.csv", b"first")
        with pytest.warns(UserWarning, match="Duplicate name"):
            writer.writestr("x.csv", b"second")

    with pytest.raises(UnsafeArchiveError, match="same name"):
        ZipUtilities().unzip_files(archive, tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_member_failing_its_crc_leaves_no_partial_file(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a.zip", {"good.csv": b"1", "bad.csv": b"x" * 4000})
    damaged = bytearray(archive.read_bytes())
    start = damaged.index(b"bad.csv") + len(b"bad.csv")
    damaged[start + 100] ^= 0xFF  # stored data: the CRC no longer matches
    archive.write_bytes(bytes(damaged))

    with pytest.raises(zipfile.BadZipFile):
        ZipUtilities().unzip_files(archive, tmp_path / "out")

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.csv"]


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        ZipUtilities(max_unzip_bytes=-1)
