"""The installed ``stemzip`` command, run end to end in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from stemzip import __version__
from stemzip.app import save_results

from .conftest import (
    archive_contents,
    assert_plain_data,
    crc_of,
    earlier_archive,
    write_run_tree,
)

REPOSITORY = Path(__file__).resolve().parent.parent
STEMZIP = Path(sys.executable).with_name("stemzip")
EXAMPLE_STEMS = [
    "FST2F_FST1F_HWL_000deg",
    "FST2F_FST1F_HWL_090deg",
    "FST2F_FST1F_LWL_000deg",
    "FST2F_FST1F_LWL_000deg_storm",
    "FST2F_FST1F_LWL_045deg",
]


def stemzip(
    cwd: Path, *args: str, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(command or [str(STEMZIP)]), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _results(run_dir: Path) -> list[dict[str, object]]:
    saved = yaml.safe_load((run_dir / "results.yaml").read_text())
    return saved[saved["basename"]]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the repository's example project, to run in."""
    shutil.copytree(REPOSITORY / "conf", tmp_path / "conf")
    shutil.copytree(REPOSITORY / "examples" / "runs", tmp_path / "examples" / "runs")
    return tmp_path


def test_example_with_no_arguments(example: Path) -> None:
    done = stemzip(example, "hydra.run.dir=job")

    assert done.returncode == 0, done.stderr
    results = _results(example / "job")
    assert [r["stem"] for r in results] == EXAMPLE_STEMS
    assert [r["status"] for r in results] == [
        "zipped",
        "no_files",
        "zipped",
        "zipped",
        "zipped",
    ]
    zipped = example / "examples" / "zipped"
    data = example / "examples" / "runs" / "output"
    for entry in results:
        if entry["status"] != "zipped":
            continue
        members = archive_contents(Path(str(entry["zip_file_path"])))
        assert members == {
            Path(str(f)).name: crc_of(Path(str(f))) for f in entry["files"]
        }
        assert all(name.startswith(entry["stem"] + "_") for name in members)
    storm = archive_contents(zipped / "FST2F_FST1F_LWL_000deg_storm.zip")
    calm = archive_contents(zipped / "FST2F_FST1F_LWL_000deg.zip")
    assert not set(storm) & set(calm)
    assert len(calm) == 4
    assert sorted(p.name for p in zipped.iterdir()) == [
        f"{stem}.zip" for stem in EXAMPLE_STEMS if stem != "FST2F_FST1F_HWL_090deg"
    ]
    assert (data / "campaign_summary.csv").is_file()
    if shutil.which("unzip"):
        for archive in zipped.iterdir():
            subprocess.run(["unzip", "-tq", str(archive)], check=True)
    log = (example / "job" / "stemzip.log").read_text()
    assert "zipping 5 stems (4 to write)" in log
    assert log.count("wrote ") == 4, "worker lines belong in the job log"
    assert "4 zipped, 0 skipped, 1 no_files, 0 failed" in log


def test_local_dask_cluster_logs_only_the_run(example: Path) -> None:
    done = stemzip(example, "parallel_processing=dask", "hydra.run.dir=job")

    assert done.returncode == 0, done.stderr
    log = (example / "job" / "stemzip.log").read_text()
    assert log.count("wrote ") == 4, "lines logged on the workers come back"
    assert "[distributed." not in log, "the cluster's start and stop are no news"


def test_python_dash_m_and_overrides_on_another_tree(tmp_path: Path) -> None:
    write_run_tree(
        tmp_path, ["a", "b"], {"a_1.dat": "1", "b_1.dat": "2", "a_2.csv": "x"}
    )
    (tmp_path / "work").mkdir()

    done = stemzip(
        tmp_path / "work",
        "file_management.input_directory=../stems",
        "analysis.input_directory=../data",
        "analysis.filename.extension=[dat]",
        "file_management.output_directory=../zips",
        "parallel_processing=sequential",
        "hydra.run.dir=job",
        "hydra.job.chdir=true",
        command=[sys.executable, "-m", "stemzip"],
    )

    assert done.returncode == 0, done.stderr
    assert archive_contents(tmp_path / "zips" / "a.zip").keys() == {"a_1.dat"}
    assert archive_contents(tmp_path / "zips" / "b.zip").keys() == {"b_1.dat"}
    assert [r["status"] for r in _results(tmp_path / "work" / "job")] == [
        "zipped",
        "zipped",
    ]


def test_failed_stem_exits_one_and_is_in_the_results(example: Path) -> None:
    zipped = example / "examples" / "zipped"
    (zipped / "FST2F_FST1F_LWL_045deg.zip").mkdir(parents=True)

    done = stemzip(
        example,
        "hydra.run.dir=job",
        "parallel_processing.max_workers=2",
        "parallel_processing.save_error_reports=true",
    )

    assert done.returncode == 1
    by_stem = {r["stem"]: r for r in _results(example / "job")}
    failed = by_stem["FST2F_FST1F_LWL_045deg"]
    assert failed["status"] == "failed"
    assert "IsADirectoryError" in str(failed["error"])
    assert by_stem["FST2F_FST1F_LWL_000deg"]["status"] == "zipped"
    assert "1 failed" in (example / "job" / "stemzip.log").read_text()
    # the report goes to the job folder, beside the log, not among the archives
    (report_path,) = (example / "job" / "errors").iterdir()
    assert report_path.name == "FST2F_FST1F_LWL_045deg.error.json"
    report = json.loads(report_path.read_text())
    assert report["stem"] == "FST2F_FST1F_LWL_045deg"
    assert report["files"] == failed["files"]
    assert report["error"] == failed["error"]
    assert "traceback" in report
    assert not (zipped / "errors").exists()


def test_missing_folder_exits_two_naming_the_key(tmp_path: Path) -> None:
    done = stemzip(
        tmp_path, "file_management.input_directory=nowhere", "hydra.run.dir=job"
    )

    assert done.returncode == 2
    assert "file_management.input_directory 'nowhere' does not exist" in done.stderr
    assert not (tmp_path / "job" / "results.yaml").exists()


def test_package_defaults_need_the_stem_folder(tmp_path: Path) -> None:
    done = stemzip(tmp_path, "hydra.run.dir=job")

    assert done.returncode == 2
    assert "file_management.input_directory is not set" in done.stderr


def test_multirun_gives_one_results_file_per_job(example: Path) -> None:
    done = stemzip(
        example,
        "-m",
        "parallel_processing=sequential,parallel",
        "hydra.sweep.dir=sweep",
    )

    assert done.returncode == 0, done.stderr
    first, second = (_results(example / "sweep" / str(n)) for n in (0, 1))
    assert [r["status"] for r in first] == [r["status"] for r in second]
    saved = yaml.safe_load((example / "sweep" / "1" / "results.yaml").read_text())
    assert saved["parallel_processing"]["_target_"].endswith("ProcessPoolStemExecutor")


def test_sweep_summary_tabulates_every_job(example: Path) -> None:
    done = stemzip(
        example,
        "-m",
        "parallel_processing=sequential,threads",
        "parallel_processing.max_workers=1,2",
        "hydra.sweep.dir=sweep",
    )

    assert done.returncode == 0, done.stderr
    rows = (example / "sweep" / "summary.md").read_text().splitlines()[2:]
    assert [row.split(" | ")[1] for row in rows] == [
        "parallel_processing=sequential parallel_processing.max_workers=1",
        "parallel_processing=sequential parallel_processing.max_workers=2",
        "parallel_processing=threads parallel_processing.max_workers=1",
        "parallel_processing=threads parallel_processing.max_workers=2",
    ]
    data = example / "examples" / "runs" / "output"
    archived = sum(p.stat().st_size for p in data.glob("FST2F_*.csv"))
    for job in range(4):
        stats = json.loads((example / "sweep" / str(job) / "stats.json").read_text())
        assert stats["archives"] == 4
        assert stats["failed"] == 0
        assert stats["bytes_in"] == archived
        assert stats["seconds"] > 0


def test_help_names_the_groups(tmp_path: Path) -> None:
    done = stemzip(tmp_path, "--help")

    assert done.returncode == 0
    assert "parallel_processing: dask, parallel, sequential, threads" in done.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param(
            "parallel_processing.timeout_per_file=-1",
            "timeout_per_file must be a number of seconds from 0 to",
            id="negative-timeout",
        ),
        pytest.param(
            "parallel_processing.start_method=thread",
            "start_method 'thread' is not one of",
            id="start-method",
        ),
        pytest.param("archive.compresslevel=abc", "compresslevel", id="type"),
        pytest.param("nosuchkey=1", "nosuchkey", id="unknown-key"),
        pytest.param(
            "parallel_processing=gpu",
            "Could not find 'parallel_processing/gpu'\n\n"
            "Available options in 'parallel_processing':\n"
            "\tdask\n\tparallel\n\tsequential\n\tthreads",
            id="option",
        ),
        pytest.param(
            "file_management.input_directory=${nope}",
            "file_management.input_directory cannot be resolved: Interpolation "
            "key 'nope' not found; fix the interpolation or set "
            "file_management.input_directory=<a value>",
            id="interpolation",
        ),
        pytest.param(
            "file_management.output_directory=''",
            "file_management.output_directory is empty ('')",
            id="empty-folder",
        ),
        pytest.param(
            "file_management.filename.extension=yml",
            "file_management.filename.extension must be a list of strings, got "
            "'yml'; write it as a list, e.g. file_management.filename.extension=[yml]",
            id="string-for-list",
        ),
        pytest.param(
            "analysis.filename.filters.include=run*",
            "analysis.filename.filters.include must be a list of strings, got 'run*'",
            id="string-for-filter-list",
        ),
    ],
)
def test_every_refused_config_exits_two(
    example: Path, override: str, message: str
) -> None:
    done = stemzip(example, override, "hydra.run.dir=job")

    assert done.returncode == 2
    assert message in done.stderr
    assert not (example / "examples" / "zipped").exists()


def test_version() -> None:
    done = stemzip(REPOSITORY, "--version")

    assert done.returncode == 0
    assert done.stdout.startswith(f"stemzip {__version__} (Hydra ")


def _into_a_closed_pipe(cwd: Path, *args: str) -> tuple[int, bytes]:
    process = subprocess.Popen(
        [str(STEMZIP), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    process.stdout.close()  # the reader is gone before anything is printed
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.mark.parametrize("option", ["--help", "--version"])
def test_help_into_a_closed_pipe_exits_quietly(tmp_path: Path, option: str) -> None:
    returncode, stderr = _into_a_closed_pipe(tmp_path, option)

    assert returncode == 141, stderr
    assert b"Traceback" not in stderr
    assert b"BrokenPipeError" not in stderr


def test_dry_run_into_a_closed_pipe_ends_as_it_would(example: Path) -> None:
    returncode, stderr = _into_a_closed_pipe(
        example, "dry_run=true", "hydra.run.dir=job"
    )

    assert returncode == 0, stderr
    assert b"Traceback" not in stderr
    assert len(_results(example / "job")) == len(EXAMPLE_STEMS)


def test_another_apps_project_config_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("defaults:\n  - db: mysql\n")
    write_run_tree(tmp_path, ["a"], {"a_1.csv": "1"})

    done = stemzip(
        tmp_path,
        "file_management.input_directory=stems",
        "analysis.input_directory=data",
        "hydra.run.dir=job",
    )

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "a.zip").is_file()


def test_readme_project_config(tmp_path: Path) -> None:
    readme = (REPOSITORY / "README.md").read_text()
    snippet = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(snippet)
    write_run_tree(tmp_path, [], {})
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r1.yml").write_text("x")
    (tmp_path / "runs" / "r1_a.csv").write_text("1")

    done = stemzip(tmp_path)

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "r1.zip").is_file()
    (job,) = (tmp_path / "outputs").glob("*/*")
    assert sorted(p.name for p in job.iterdir()) == [
        ".hydra",
        "results.yaml",
        "stats.json",
        "stemzip.log",
    ]
    assert "wrote " in done.stderr
    assert done.stdout == ""


def test_results_file_is_plain_data_with_names_as_they_are(tmp_path: Path) -> None:
    write_run_tree(tmp_path, ["run1"], {"run1_${oops}.csv": "1", "run1_a.csv": "2"})

    done = stemzip(
        tmp_path,
        "file_management.input_directory=stems",
        "analysis.input_directory=data",
        "hydra.run.dir=job",
    )

    assert done.returncode == 0, done.stderr
    # read as the config it is: the job's settings, then the results
    saved = OmegaConf.load(tmp_path / "job" / "results.yaml")
    entries = OmegaConf.to_container(saved.zip_utilities, resolve=True)
    assert_plain_data(entries)
    assert isinstance(entries, list)
    (entry,) = entries
    assert entry["status"] == "zipped"
    assert entry["files"] == [
        str(tmp_path / "data" / "run1_${oops}.csv"),
        str(tmp_path / "data" / "run1_a.csv"),
    ]


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(
        # what StemResult.to_dict hands over: any text but lone surrogates
        st.text(st.characters(exclude_categories=["Cs"]), min_size=1),
        max_size=4,
    )
)
def test_results_file_reads_back_every_name(names: list[str]) -> None:
    entries = [{"stem": name, "files": [f"/data/{name}_a.csv"]} for name in names]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "results.yaml"
        save_results(path, OmegaConf.create({"basename": "zips"}), "zips", entries)

        loaded = OmegaConf.load(path)

    assert OmegaConf.to_container(loaded.zips, resolve=True) == entries


def test_dry_run_prints_the_plan_and_writes_nothing(example: Path) -> None:
    data = example / "examples" / "runs"
    before = sorted(p for p in data.rglob("*"))

    done = stemzip(example, "dry_run=true", "hydra.run.dir=job")

    assert done.returncode == 0, done.stderr
    assert "FST2F_FST1F_LWL_000deg: zip -> " in done.stdout
    assert "    campaign_summary.csv" in done.stdout
    assert "FST2F_FST1F_LWL_000deg_storm, FST2F_FST1F_LWL_000deg" in done.stdout
    assert sorted(p for p in data.rglob("*")) == before
    assert not (example / "examples" / "zipped").exists()
    statuses = [r["status"] for r in _results(example / "job")]
    assert statuses == ["planned", "no_files", "planned", "planned", "planned"]


@pytest.mark.parametrize(
    ("sig", "executor"),
    [
        pytest.param(signal.SIGTERM, "parallel", id="term"),
        pytest.param(signal.SIGINT, "parallel", id="int"),
        pytest.param(signal.SIGINT, "threads", id="int-threads"),
        pytest.param(signal.SIGTERM, "sequential", id="term-sequential"),
        pytest.param(signal.SIGTERM, "dask", id="term-dask-local"),
        pytest.param(signal.SIGINT, "dask-scheduler", id="int-dask-scheduler"),
        # Ctrl-C at a terminal: the whole process group, workers included
        pytest.param(signal.SIGINT, "dask-group", id="ctrl-c-dask-local"),
        pytest.param(signal.SIGINT, "parallel-group", id="ctrl-c-parallel"),
    ],
)
def test_signal_stops_the_run_in_order(
    tmp_path: Path, request: pytest.FixtureRequest, sig: signal.Signals, executor: str
) -> None:
    stems = [f"run{i}" for i in range(8)]
    write_run_tree(tmp_path, stems, {})
    for stem in stems:
        with (tmp_path / "data" / f"{stem}_big.csv").open("wb") as sparse:
            sparse.truncate(1 << 30)  # seconds of work each, no disk
    args = [
        f"file_management.input_directory={tmp_path / 'stems'}",
        f"analysis.input_directory={tmp_path / 'data'}",
        f"file_management.output_directory={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'job'}",
        f"parallel_processing={executor.partition('-')[0]}",
    ]
    if executor == "dask-scheduler":
        # the workers of a running cluster outlive the command: they must
        # give up this run's stems, and leave no archive or file behind
        address = request.getfixturevalue("dask_address")
        args.append(f"parallel_processing.address={address}")
    out = tmp_path / "out"
    out.mkdir()
    for stem in stems:  # archives of an earlier run, to be replaced
        earlier_archive(out / f"{stem}.zip", {"old.txt": "earlier run"})
    process = subprocess.Popen(
        [str(STEMZIP), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    first = _first_replaced(out, stems, process)
    workers = psutil.Process(process.pid).children(recursive=True)

    if executor.endswith("-group"):
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)  # to the command alone, as a batch scheduler may
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=120)

    assert time.monotonic() - sent < 5, "the run stops promptly"
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr.decode()
    assert "Traceback" not in stderr.decode()
    done = {r["stem"]: r for r in _results(tmp_path / "job")}
    assert first in done, "the results of stems done are saved"
    assert len(done) < len(stems), "queued stems were dropped"
    if executor == "dask-scheduler":
        time.sleep(3)  # what a worker still wrote would show by now
    for stem in stems:
        members = set(archive_contents(out / f"{stem}.zip"))
        if stem in done:
            assert done[stem]["status"] == "zipped"
            # old.txt's source is gone: the new archive took it over
            assert members == {f"{stem}_big.csv", "old.txt"}
        else:
            assert members == {"old.txt"}, "an earlier archive is left intact"
    assert not list(out.glob(".*.part"))
    alive = [w.pid for w in workers if w.is_running() and w.status() != "zombie"]
    assert not alive, "no worker outlives the run"


def _first_replaced(
    out: Path, stems: list[str], process: subprocess.Popen[bytes]
) -> str:
    """Wait until the run has replaced one earlier archive; that stem."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        for stem in stems:
            if f"{stem}_big.csv" in archive_contents(out / f"{stem}.zip"):
                return stem
        time.sleep(0.02)
    raise AssertionError("no archive was written")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_methods_resolve_paths_and_log_alike(tmp_path: Path, method: str) -> None:
    stems = ["run1", "run2", "run3"]
    write_run_tree(
        tmp_path, stems, {f"{s}_{c}.csv": f"{s},{c}\n" for s in stems for c in "ab"}
    )

    done = stemzip(
        tmp_path,
        "file_management.input_directory=${hydra:runtime.cwd}/stems",
        "analysis.input_directory=${hydra:runtime.cwd}/data",
        "file_management.output_directory=${hydra:runtime.cwd}/zips",
        f"parallel_processing.start_method={method}",
        "parallel_processing.max_workers=2",
        "hydra.run.dir=job",
        "hydra.job.chdir=true",
        # the workers' own DEBUG lines, one per member, must reach the log
        "hydra.verbose=stemzip.archive",
    )

    assert done.returncode == 0, done.stderr
    for stem in stems:
        assert archive_contents(tmp_path / "zips" / f"{stem}.zip").keys() == {
            f"{stem}_a.csv",
            f"{stem}_b.csv",
        }
    log_text = (tmp_path / "job" / "stemzip.log").read_text()
    assert f"2 worker processes, {method}" in log_text
    for stem in stems:
        assert f"added '{stem}_a.csv'" in log_text
