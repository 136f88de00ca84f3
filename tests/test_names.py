"""Names that look alike or are not valid UTF-8: grouping, archives, results."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from stemzip.archive import ArchiveOptions, StemJob, log_result, zip_stem
from stemzip.config import RunSettings
from stemzip.executors import SequentialStemExecutor
from stemzip.grouping import group_by_stem, list_files
from stemzip.names import caseless, composed, readable
from stemzip.plan import describe_plan, plan_run
from stemzip.results import Status, StemResult
from stemzip.task import run, write_error_reports, zip_by_stem

from .conftest import archive_contents, assert_plain_data, crc_of, write_run_tree
from .test_app import stemzip

NFC = "caf\u00e9"  # é as one character, as typed on Linux
NFD = "cafe\u0301"  # e plus a combining accent, as macOS writes it


def _touch(folder: Path, name: bytes, content: bytes = b"x") -> None:
    """Create a file whose name is exactly ``name``, whatever its bytes."""
    fd = os.open(os.path.join(os.fsencode(folder), name), os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)


def _crc(folder: Path, name: bytes) -> int:
    return crc_of(folder / os.fsdecode(name))


def _all_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _all_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _all_strings(item)]
    return []


def _assert_plain(value: Any) -> None:
    """``value`` is plain data, and its strings can be written as UTF-8."""
    assert_plain_data(value)
    for text in _all_strings(value):
        text.encode("utf-8")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("run1_a.csv", "run1_a.csv", id="ascii"),
        pytest.param(f"{NFC}_x.csv", f"{NFC}_x.csv", id="valid-utf8"),
        pytest.param(os.fsdecode(b"caf\xe9_x.csv"), "caf%E9_x.csv", id="latin1-byte"),
        pytest.param(os.fsdecode(b"\xff\xfe_%41.csv"), "%FF%FE_%41.csv", id="bytes"),
        pytest.param(os.fsdecode(b"a\xc3(.csv"), "a%C3(.csv", id="cut-sequence"),
        pytest.param("\ud800x", "%ED%A0%80x", id="other-surrogate"),
    ],
)
def test_readable_writes_bytes_that_are_not_utf8_as_percent_hex(
    name: str, expected: str
) -> None:
    assert readable(name) == expected


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param("Run7.zip", "run7.zip", id="case"),
        pytest.param(f"out/{NFC}.zip", f"out/{NFD}.zip", id="normalisation"),
        pytest.param(f"{NFC.upper()}.zip", f"{NFD}.ZIP", id="both"),
        pytest.param("STRASSE.zip", "stra\u00dfe.zip", id="full-folding"),
    ],
)
def test_caseless_folds_case_and_normalisation(one: str, other: str) -> None:
    assert one != other
    assert caseless(one) == caseless(other)


def test_composed_is_nfc() -> None:
    assert composed(NFD) == NFC
    assert composed("\u212b") == "\u00c5"  # the angstrom sign becomes Å


def test_files_join_their_stem_whichever_way_each_is_normalised(
    tmp_path: Path,
) -> None:
    for name in [f"{NFD}_a.csv", f"{NFC}_b.csv", f"{NFC}_x_c.csv", "cafe_d.csv"]:
        _touch(tmp_path, name.encode())
    files = list_files(tmp_path, ["csv"])

    for stems in ([NFC], [NFD]):
        grouping = group_by_stem(stems, files)
        # members keep the names they have on disk
        assert grouping.members == {
            stems[0]: [f"{NFD}_a.csv", f"{NFC}_b.csv", f"{NFC}_x_c.csv"]
        }
        assert grouping.unmatched == ["cafe_d.csv"]
    # the longest stem still wins, across forms
    grouping = group_by_stem([NFC, f"{NFD}_x"], files)
    assert grouping.members[f"{NFD}_x"] == [f"{NFC}_x_c.csv"]


def test_bytes_that_are_not_utf8_never_end_a_stem(tmp_path: Path) -> None:
    _touch(tmp_path, b"caf\xe9_x.csv")

    grouping = group_by_stem(["caf"], list_files(tmp_path, ["csv"]))

    assert grouping.members == {"caf": []}


def test_stem_names_that_differ_only_in_normalisation_both_fail(
    run_tree: Callable[..., RunSettings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = run_tree(
        [NFC, NFD, "run1"],
        {f"{NFC}_a.csv": "1", f"{NFD}_b.csv": "2", "run1_a.csv": "3"},
    )

    plan = plan_run(settings)
    caplog.clear()
    results = {r.stem: r for r in zip_by_stem(settings, SequentialStemExecutor())}

    assert plan.notes[NFC] == plan.notes[NFD] == "fail (stem name twins)"
    assert {stem: r.status for stem, r in results.items()} == {
        NFC: Status.FAILED,
        NFD: Status.FAILED,
        "run1": Status.ZIPPED,
    }
    assert "'cafe\\u0301'" in str(results[NFC].error)
    assert "'caf\\xe9'" in str(results[NFD].error)
    assert "differ only in Unicode normalisation" in str(results[NFC].error)
    # nothing merged: each file is listed once, and no archive holds it
    listed = [*results[NFC].files, *results[NFD].files]
    assert sorted(Path(f).name for f in listed) == [f"{NFD}_b.csv", f"{NFC}_a.csv"]
    assert sorted(p.name for p in settings.output_directory.iterdir()) == ["run1.zip"]
    assert caplog.text.count("differ only in Unicode normalisation") == 2


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param("Run7", "run7", id="case"),
        pytest.param(f"C{NFC[1:]}", NFD, id="case-and-normalisation"),
    ],
)
def test_archives_alike_on_a_case_insensitive_volume_both_fail(
    run_tree: Callable[..., RunSettings], one: str, other: str
) -> None:
    settings = run_tree(
        [one, other, "run8"],
        {f"{one}_a.csv": "1", f"{other}_b.csv": "2", "run8_a.csv": "3"},
    )

    results = {r.stem: r for r in zip_by_stem(settings, SequentialStemExecutor())}

    assert results["run8"].status is Status.ZIPPED
    out = settings.output_directory
    for stem, twin in [(one, other), (other, one)]:
        result = results[stem]
        assert result.status is Status.FAILED
        assert result.zip_file_path is None
        assert f"stem {twin!a} ({out / twin}.zip)" in str(result.error)
        assert f"archive {out / stem}.zip would be the same file" in str(result.error)
        assert "ignores case and Unicode normalisation" in str(result.error)
    assert sorted(p.name for p in out.iterdir()) == ["run8.zip"]


def test_a_case_twin_without_data_files_clashes_with_nothing(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["Run7", "run7"], {"run7_a.csv": "1"})

    results = {r.stem: r for r in zip_by_stem(settings, SequentialStemExecutor())}

    assert results["Run7"].status is Status.NO_FILES
    assert results["run7"].status is Status.ZIPPED


def test_names_that_are_not_utf8_are_archived_under_their_substitute(
    run_tree: Callable[..., RunSettings], tmp_path: Path
) -> None:
    settings = run_tree(["run1"], {"run1_ok.csv": "ok"})
    data = settings.data_directory
    _touch(data, b"run1_caf\xe9.csv", b"latin-1")
    _touch(settings.stem_directory, b"caf\xe9.yml")
    _touch(data, b"caf\xe9_x.csv", b"stem in latin-1")
    moved = tmp_path / "moved"
    settings = dataclasses.replace(
        settings,
        archive=ArchiveOptions(verify=True, after="move", move_to=str(moved)),
    )

    results = zip_by_stem(settings, SequentialStemExecutor())

    assert [(r.stem, r.status) for r in results] == [
        (os.fsdecode(b"caf\xe9"), Status.ZIPPED),
        ("run1", Status.ZIPPED),
    ]
    out = settings.output_directory
    assert archive_contents(out / "run1.zip") == {
        "run1_caf%E9.csv": _crc(moved, b"run1_caf\xe9.csv"),
        "run1_ok.csv": _crc(moved, b"run1_ok.csv"),
    }
    assert archive_contents(out / "caf%E9.zip") == {
        "caf%E9_x.csv": _crc(moved, b"caf\xe9_x.csv"),
    }
    # the sources keep their own names where they are moved to
    assert sorted(os.listdir(os.fsencode(moved))) == [
        b"caf\xe9_x.csv",
        b"run1_caf\xe9.csv",
        b"run1_ok.csv",
    ]
    entry = results[0].to_dict()
    assert entry["stem"] == "caf%E9"
    assert entry["zip_file_path"] == str(out / "caf%E9.zip")
    assert entry["files"] == [str(data / "caf%E9_x.csv")]


def test_members_alike_under_the_substitute_fail_their_stem(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["run1", "run2"], {"run1_caf%E9.csv": "1", "run2_a.csv": "2"})
    _touch(settings.data_directory, b"run1_caf\xe9.csv")

    plan = plan_run(settings)
    results = {r.stem: r for r in zip_by_stem(settings, SequentialStemExecutor())}

    assert plan.notes["run1"] == "fail (member names alike)"
    assert results["run2"].status is Status.ZIPPED
    failed = results["run1"]
    assert failed.status is Status.FAILED
    assert failed.error == (
        "data files 'run1_caf%E9.csv' and 'run1_caf\\udce9.csv' would both be "
        "stored as 'run1_caf%E9.csv', since bytes that are not valid UTF-8 are "
        "written as %XX; rename one of them"
    )
    # no archive, not even a partial one
    assert sorted(os.listdir(settings.output_directory)) == ["run2.zip"]


def test_two_stems_alike_under_the_substitute_both_fail(
    run_tree: Callable[..., RunSettings],
) -> None:
    settings = run_tree(["caf%E9"], {"caf%E9_a.csv": "1"})
    _touch(settings.stem_directory, b"caf\xe9.yml")
    _touch(settings.data_directory, b"caf\xe9_b.csv")

    results = zip_by_stem(settings, SequentialStemExecutor())

    assert [r.status for r in results] == [Status.FAILED, Status.FAILED]
    assert "would also be that of stem 'caf\\udce9'" in str(results[0].error)
    assert "would also be that of stem 'caf%E9'" in str(results[1].error)
    assert not settings.output_directory.exists()


def test_dry_run_plan_prints_substitutes(run_tree: Callable[..., RunSettings]) -> None:
    settings = run_tree(["run1", "Run7", "run7"], {"Run7_a.csv": "", "run7_a.csv": ""})
    _touch(settings.data_directory, b"run1_caf\xe9.csv")
    _touch(settings.data_directory, b"zz\xff.csv")

    text = describe_plan(plan_run(dataclasses.replace(settings, dry_run=True)))

    text.encode("utf-8")
    assert "    run1_caf%E9.csv" in text
    assert "    zz%FF.csv" in text
    assert "Run7: fail (archive names alike) -> -" in text


def test_results_and_config_hold_plain_strings(tmp_path: Path) -> None:
    write_run_tree(tmp_path, ["run1"], {"run1_a.csv": "a"})
    _touch(tmp_path / "data", b"run1_caf\xe9.csv")
    with initialize_config_module(config_module="stemzip.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                f"file_management.input_directory={tmp_path / 'stems'}",
                f"analysis.input_directory={tmp_path / 'data'}",
                f"file_management.output_directory={tmp_path / 'out'}",
                "parallel_processing=sequential",
            ],
        )

    run(cfg)

    entries = OmegaConf.to_container(cfg.zip_utilities, resolve=True)
    _assert_plain(entries)
    assert entries[0]["files"] == [
        str(tmp_path / "data" / "run1_a.csv"),
        str(tmp_path / "data" / "run1_caf%E9.csv"),
    ]
    assert yaml.safe_load(OmegaConf.to_yaml(cfg))["zip_utilities"] == entries


def test_error_report_of_a_stem_that_is_not_utf8_is_written(tmp_path: Path) -> None:
    stem = os.fsdecode(b"caf\xe9")
    failed = StemResult(stem, Status.FAILED, error=f"{stem} broke", traceback=stem)

    (path,) = write_error_reports([failed], tmp_path)

    report = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert (report["stem"], report["error"]) == ("caf%E9", "caf%E9 broke")
    assert report["traceback"] == "caf%E9"


@pytest.fixture
def odd_campaign(tmp_path: Path) -> Path:
    """A campaign inside a folder whose own name is not valid UTF-8."""
    root = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"w\xe9")))
    write_run_tree(root, ["run1"], {"run1_a.csv": "a,b\n1,2\n"})
    _touch(root / "stems", b"caf\xe9.yml")
    _touch(root / "data", b"caf\xe9_x.csv", b"latin-1 stem\n")
    _touch(root / "data", b"run1_\xff\xfe.csv", b"odd bytes\n")
    _touch(root / "data", f"run1_{NFD}.csv".encode(), b"decomposed\n")
    return root


def _run_in(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = stemzip(
        root,
        "file_management.input_directory=stems",
        "analysis.input_directory=data",
        "file_management.output_directory=out",
        "hydra.run.dir=job",
        *args,
    )
    assert "Logging error" not in done.stderr
    log = (root / "job" / "stemzip.log").read_text(encoding="utf-8")
    assert "Logging error" not in log
    return done


def test_command_archives_odd_names_and_logs_them(odd_campaign: Path) -> None:
    done = _run_in(odd_campaign)

    assert done.returncode == 0, done.stderr
    out = odd_campaign / "out"
    assert sorted(p.name for p in out.iterdir()) == ["caf%E9.zip", "run1.zip"]
    data = odd_campaign / "data"
    assert archive_contents(out / "run1.zip") == {
        "run1_%FF%FE.csv": _crc(data, b"run1_\xff\xfe.csv"),
        "run1_a.csv": _crc(data, b"run1_a.csv"),
        f"run1_{NFD}.csv": _crc(data, f"run1_{NFD}.csv".encode()),
    }
    assert archive_contents(out / "caf%E9.zip") == {
        "caf%E9_x.csv": _crc(data, b"caf\xe9_x.csv")
    }
    if shutil.which("unzip"):
        for archive in out.iterdir():
            subprocess.run(["unzip", "-tq", str(archive)], check=True)
    saved = yaml.safe_load((odd_campaign / "job" / "results.yaml").read_text())
    _assert_plain(saved)
    entries = saved[saved["basename"]]
    assert [(e["stem"], e["status"]) for e in entries] == [
        ("caf%E9", "zipped"),
        ("run1", "zipped"),
    ]
    assert entries[0]["zip_file_path"] == readable(str(out / "caf%E9.zip"))
    assert entries[1]["files"][-1].endswith("/w%E9/data/run1_%FF%FE.csv")
    log = (odd_campaign / "job" / "stemzip.log").read_text(encoding="utf-8")
    # lines stemzip words itself use the substitute; others reach the file
    # with the byte escaped, never as a logging error
    assert f"wrote {readable(str(out))}/run1.zip: 3 members" in log
    assert f"from {data} into".replace("\udce9", "\\udce9") in log


def test_command_fails_both_stems_of_a_case_clash_and_goes_on(
    odd_campaign: Path,
) -> None:
    _touch(odd_campaign / "stems", b"Run1.yml")
    _touch(odd_campaign / "data", b"Run1_b.csv")

    done = _run_in(odd_campaign, "parallel_processing=sequential")

    assert done.returncode == 1
    saved = yaml.safe_load((odd_campaign / "job" / "results.yaml").read_text())
    by_stem = {e["stem"]: e for e in saved[saved["basename"]]}
    assert by_stem["caf%E9"]["status"] == "zipped"
    for stem, other in [("Run1", "run1"), ("run1", "Run1")]:
        assert by_stem[stem]["status"] == "failed"
        assert f"stem '{other}' (" in by_stem[stem]["error"]
        assert f"/{other}.zip)" in by_stem[stem]["error"]
    assert sorted(p.name for p in (odd_campaign / "out").iterdir()) == ["caf%E9.zip"]
    log = (odd_campaign / "job" / "stemzip.log").read_text(encoding="utf-8")
    assert "stem 'Run1' failed: archive" in log
    assert "1 zipped, 0 skipped, 0 no_files, 2 failed" in log


def test_a_stem_that_is_not_utf8_fails_under_its_substitute_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # its data file vanished after planning: the failure names the file
    gone = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9_x.csv")
    job = StemJob("caf\udce9", (gone,), str(tmp_path / "caf%E9.zip"))
    caplog.set_level(logging.ERROR, logger="stemzip.archive")

    result = zip_stem(job)
    log_result(result)

    assert result.status is Status.FAILED
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("stem 'caf%E9' failed: FileNotFoundError: ")
    assert "caf%E9_x.csv" in line
    assert "\udce9" not in line
    assert result.to_dict()["error"] == line.partition(" failed: ")[2]
