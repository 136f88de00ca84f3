"""One contract suite, run for every executor, plus each executor's own cases."""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from stemzip.archive import StemJob
from stemzip.cluster import DaskStemExecutor
from stemzip.config import RunSettings
from stemzip.errors import RunInterrupted, SchedulerUnreachableError
from stemzip.executors import (
    ProcessPoolStemExecutor,
    SequentialStemExecutor,
    StemExecutor,
    ThreadPoolStemExecutor,
    _batches,
)
from stemzip.plan import plan_run
from stemzip.results import Status, StemResult
from stemzip.supervision import _RUNNING, _ZIPPED, LedgerEntry, Supervisor

from .conftest import archive_contents, crc_of

EXECUTORS = [
    "sequential",
    "parallel-fork",
    "parallel-spawn",
    "parallel-forkserver",
    "parallel-off",
    "threads",
    "dask-scheduler",
]
MakeExecutor = Callable[..., StemExecutor]


@pytest.fixture(params=EXECUTORS)
def make(request: pytest.FixtureRequest) -> MakeExecutor:
    """A factory of one kind of executor, taking the shared settings."""
    kind: str = request.param
    if kind == "sequential":
        return SequentialStemExecutor
    if kind == "parallel-off":
        return partial(ProcessPoolStemExecutor, enabled=False)
    if kind.startswith("parallel-"):
        method = kind.removeprefix("parallel-")
        return partial(ProcessPoolStemExecutor, max_workers=2, start_method=method)
    if kind == "threads":
        return partial(ThreadPoolStemExecutor, max_workers=2)
    address = request.getfixturevalue("dask_address")
    return partial(DaskStemExecutor, address=address)


def _jobs(folder: Path, stems: list[str], per_stem: int = 3) -> list[StemJob]:
    data = folder / "data"
    data.mkdir(exist_ok=True)
    jobs = []
    for number, stem in enumerate(stems):
        files = []
        for index in range(per_stem):
            path = data / f"{stem}_ch{index}.csv"
            path.write_text(f"t,x\n{number},{index}\n" * (50 + 40 * number))
            files.append(str(path))
        jobs.append(
            StemJob(
                stem=stem, files=tuple(files), archive_path=str(folder / f"{stem}.zip")
            )
        )
    return jobs


class TestExecutorContract:
    def test_one_sorted_result_per_job_with_correct_archives(
        self, tmp_path: Path, make: MakeExecutor
    ) -> None:
        jobs = _jobs(tmp_path, ["run3", "run1", "run2", "run10"])

        results = make().run(jobs)

        assert [r.stem for r in results] == ["run1", "run10", "run2", "run3"]
        assert {r.status for r in results} == {Status.ZIPPED}
        for job in jobs:
            expected = {Path(f).name: crc_of(Path(f)) for f in job.files}
            assert archive_contents(Path(job.archive_path)) == expected

    def test_one_failure_is_recorded_and_the_rest_go_on(
        self, tmp_path: Path, make: MakeExecutor
    ) -> None:
        jobs = _jobs(tmp_path, ["run1", "run2", "run3"])
        Path(jobs[1].files[0]).unlink()

        results = make().run(jobs)

        assert [r.status for r in results] == [
            Status.ZIPPED,
            Status.FAILED,
            Status.ZIPPED,
        ]
        assert results[1].error is not None and "run2_ch0.csv" in results[1].error
        assert not Path(jobs[1].archive_path).exists()

    def test_no_jobs(self, make: MakeExecutor) -> None:
        assert make().run([]) == []

    def test_worker_lines_reach_the_parent_log(
        self, tmp_path: Path, make: MakeExecutor, caplog: pytest.LogCaptureFixture
    ) -> None:
        # "added" lines are logged where each member is written, in the
        # workers; "wrote" lines by this process as it collects the results
        caplog.set_level(logging.DEBUG, logger="stemzip.archive")
        jobs = _jobs(tmp_path, ["run1", "run2", "run3"])

        make().run(jobs)

        lines = [r.getMessage() for r in caplog.records if r.name == "stemzip.archive"]
        wrote = [line.split(":")[0] for line in lines if line.startswith("wrote ")]
        assert sorted(wrote) == sorted(f"wrote {job.archive_path}" for job in jobs)
        added = [line for line in lines if line.startswith("added ")]
        assert sorted(added) == sorted(
            f"added {Path(f).name!r} ({Path(f).stat().st_size} bytes)"
            for job in jobs
            for f in job.files
        )

    def test_time_limit_fails_only_the_slow_stem(
        self, tmp_path: Path, make: MakeExecutor
    ) -> None:
        jobs = _jobs(tmp_path, ["run1", "run2"])
        big = tmp_path / "data" / "run1_big.csv"
        with big.open("wb") as sparse:
            # 4 GiB of holes: costs no disk, takes seconds to read and compress
            sparse.truncate(4 << 30)
        slow = StemJob(
            stem="run1",
            files=(*jobs[0].files, str(big)),
            archive_path=jobs[0].archive_path,
        )

        results = make(timeout_per_file=0.5).run([slow, jobs[1]])

        assert [r.status for r in results] == [Status.FAILED, Status.ZIPPED]
        assert results[0].error is not None
        assert "took longer than timeout_per_file=0.5 s" in results[0].error
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run2.zip"]


def test_sequential_and_parallel_archives_are_identical(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, ["run1", "run2", "run3", "run4"])
    SequentialStemExecutor().run(jobs)
    first = {Path(j.archive_path).name: Path(j.archive_path).read_bytes() for j in jobs}
    for job in jobs:
        Path(job.archive_path).unlink()

    ProcessPoolStemExecutor(max_workers=2).run(jobs)
    second = {
        Path(j.archive_path).name: Path(j.archive_path).read_bytes() for j in jobs
    }

    assert first == second


def _slow_stem(folder: Path, job: StemJob) -> StemJob:
    """``job`` with a 4 GiB sparse file added: seconds of work, no disk."""
    big = folder / "data" / f"{job.stem}_big.csv"
    with big.open("wb") as sparse:
        sparse.truncate(4 << 30)
    return StemJob(
        stem=job.stem, files=(*job.files, str(big)), archive_path=job.archive_path
    )


def _writer_of(folder: Path, archive: str, limit: float = 60) -> int:
    """Wait until a process writes ``archive``'s temporary file; its pid."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for part in folder.glob(f".{archive}.*.part"):
            for fd in Path("/proc").glob("[0-9]*/fd/*"):
                try:
                    if fd.readlink() == part:
                        return int(fd.parts[2])
                except OSError:
                    continue
        time.sleep(0.02)
    raise AssertionError(f"nobody started writing {archive}")


def _signal_writer(folder: Path, archive: str, signum: int) -> threading.Thread:
    def send() -> None:
        os.kill(_writer_of(folder, archive), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _only_second_failed(results: list[StemResult], jobs: list[StemJob]) -> str:
    """Check the second stem alone failed and the others' archives; its error."""
    assert [r.status for r in results] == [
        Status.ZIPPED,
        Status.FAILED,
        Status.ZIPPED,
        Status.ZIPPED,
    ]
    for job in (jobs[0], jobs[2], jobs[3]):
        expected = {Path(f).name: crc_of(Path(f)) for f in job.files}
        assert archive_contents(Path(job.archive_path)) == expected
    assert not Path(jobs[1].archive_path).exists()
    return str(results[1].error)


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="finds the worker through /proc"
)


@needs_proc
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV])
def test_dead_worker_fails_its_stem_and_the_rest_go_on(
    tmp_path: Path, signum: int, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = _jobs(tmp_path, ["run1", "run2", "run3", "run4"])
    jobs[1] = _slow_stem(tmp_path, jobs[1])

    # a worker forked from pytest inherits its fault handler, which would
    # print the crash we cause as if the test run had crashed
    handling = faulthandler.is_enabled()
    faulthandler.disable()
    try:
        killer = _signal_writer(tmp_path, "run2.zip", signum)
        results = ProcessPoolStemExecutor(max_workers=2).run(jobs)
        killer.join(timeout=5)
    finally:
        if handling:
            faulthandler.enable(sys.__stderr__)

    error = _only_second_failed(results, jobs)
    assert "worker process (pid" in error
    assert (
        f"died while archiving this stem: killed by {signal.Signals(signum).name}"
        in error
    )
    assert not list(tmp_path.glob(".*.part")), "the dead worker's file is removed"
    assert not multiprocessing.active_children(), "no worker outlives the run"
    assert "remaining stems in this process" not in caplog.text, (
        "the pool itself went on"
    )


@needs_proc
def test_stems_of_a_dead_workers_batch_are_kept_or_run_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # one worker and 24 stems go out in batches of three; the worker dies on
    # the middle stem of the second batch, after the first stem of that batch
    # was archived and before the third was reached
    stems = [f"case{number:02d}" for number in range(24)]
    jobs = _jobs(tmp_path, stems, per_stem=1)
    jobs[4] = _slow_stem(tmp_path, jobs[4])

    archived: dict[str, tuple[int, int]] = {}

    def kill_on_case04() -> None:
        writer = _writer_of(tmp_path, "case04.zip")
        # case03 was archived in this batch before the worker died
        done = Path(jobs[3].archive_path).stat()
        archived["case03"] = (done.st_ino, done.st_mtime_ns)
        os.kill(writer, signal.SIGKILL)

    killer = threading.Thread(target=kill_on_case04, daemon=True)
    killer.start()
    results = ProcessPoolStemExecutor(max_workers=1).run(jobs)
    killer.join(timeout=5)

    assert [r.stem for r in results] == stems
    failed = [r.stem for r in results if r.status is Status.FAILED]
    assert failed == ["case04"]
    assert "remaining stems in this process" not in caplog.text, (
        "a new worker took the rest"
    )
    kept = results[3]
    assert kept.status is Status.ZIPPED
    after = Path(jobs[3].archive_path).stat()
    assert (after.st_ino, after.st_mtime_ns) == archived["case03"], (
        "a stem finished before its worker died is not archived again"
    )
    assert kept.bytes_in == Path(jobs[3].files[0]).stat().st_size
    assert kept.bytes_out == Path(jobs[3].archive_path).stat().st_size
    for job in jobs[:4] + jobs[5:]:
        expected = {Path(f).name: crc_of(Path(f)) for f in job.files}
        assert archive_contents(Path(job.archive_path)) == expected


def test_stems_a_stopped_worker_finished_are_reported_after_an_interrupt(
    tmp_path: Path,
) -> None:
    # the interrupt stops the pool while a batch is out: its first stem was
    # archived, the second was running, the third not reached
    jobs = _jobs(tmp_path, ["run1", "run2", "run3"])
    ledger = multiprocessing.RawArray(LedgerEntry, len(jobs))
    reported: list[StemResult] = []
    supervisor = Supervisor(None, ledger, None, reported.append)  # type: ignore[arg-type]
    supervisor.running[Future()] = list(enumerate(jobs))
    ledger[0].state, ledger[0].bytes_in, ledger[0].bytes_out = _ZIPPED, 10, 7
    ledger[1].state = _RUNNING

    supervisor.report_finished()

    assert [(r.stem, r.status, r.bytes_in, r.bytes_out) for r in reported] == [
        ("run1", Status.ZIPPED, 10, 7)
    ]
    assert not supervisor.running


def test_an_interrupt_stands_when_the_workers_cannot_be_told_to_stop(
    tmp_path: Path, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    # a scheduler lost just as the run is interrupted cannot be made safely
    mocker.patch.object(
        ThreadPoolStemExecutor, "_stop", side_effect=OSError("scheduler gone")
    )
    jobs = _jobs(tmp_path, ["run1", "run2", "run3"])
    big = tmp_path / "data" / "run1_big.csv"
    with big.open("wb") as sparse:
        sparse.truncate(1 << 30)
    jobs[0] = StemJob("run1", (*jobs[0].files, str(big)), jobs[0].archive_path)
    interrupt = threading.Timer(
        0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
    )
    interrupt.start()

    with pytest.raises(RunInterrupted):
        ThreadPoolStemExecutor(max_workers=1).run(jobs)

    assert "could not all be told to stop (OSError: scheduler gone)" in caplog.text
    assert "remaining stems in this process" not in caplog.text


def _die_at_once(batch: list[tuple[int, StemJob]], timeout: float | None) -> None:
    """A batch whose worker dies before it starts any stem."""
    os._exit(3)


def test_stems_whose_workers_keep_dying_fail_after_three_tries(
    tmp_path: Path, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    # forked workers see the stand-in: every worker that takes a batch
    # dies, before the ledger says any stem started
    mocker.patch("stemzip.supervision.zip_tracked", _die_at_once)
    jobs = _jobs(tmp_path, ["run1", "run2", "run3"])

    results = ProcessPoolStemExecutor(max_workers=2, start_method="fork").run(jobs)

    assert [r.status for r in results] == [Status.FAILED] * 3
    for result in results:
        assert result.error == "3 worker processes were lost before it ended"
    assert not any(Path(job.archive_path).exists() for job in jobs)
    assert "remaining stems in this process" not in caplog.text
    assert not multiprocessing.active_children()


@needs_proc
def test_worker_stuck_past_its_time_limit_is_replaced(tmp_path: Path) -> None:
    # a stopped process cannot act on its own alarm, as one blocked in the
    # kernel on a dead file server cannot
    jobs = _jobs(tmp_path, ["run1", "run2", "run3", "run4"])
    jobs[1] = _slow_stem(tmp_path, jobs[1])

    stopper = _signal_writer(tmp_path, "run2.zip", signal.SIGSTOP)
    started = time.monotonic()
    results = ProcessPoolStemExecutor(max_workers=2, timeout_per_file=1).run(jobs)
    stopper.join(timeout=5)

    assert time.monotonic() - started < 30
    error = _only_second_failed(results, jobs)
    assert "took longer than timeout_per_file=1 s" in error
    assert "the worker was stopped and replaced" in error
    assert not list(tmp_path.glob(".*.part"))
    assert not multiprocessing.active_children(), "the stopped worker is gone"


def test_pool_that_cannot_start_falls_back(
    tmp_path: Path, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    # a pool refused by the system (no semaphores, no processes left) cannot
    # be provoked safely in a test
    mocker.patch(
        "stemzip.executors.ProcessPool",
        side_effect=OSError(38, "Function not implemented"),
    )
    jobs = _jobs(tmp_path, ["run1", "run2"])

    results = ProcessPoolStemExecutor().run(jobs)

    assert [r.status for r in results] == [Status.ZIPPED, Status.ZIPPED]
    assert "parallel pool failed (OSError" in caplog.text
    assert "running 2 remaining stems in this process" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message", "enabled", "workers"),
    [
        pytest.param(
            {"enabled": "maybe"}, "enabled must be true or false", True, 2, id="enabled"
        ),
        pytest.param(
            {"max_workers": 0}, "max_workers must be 'auto'", True, 2, id="zero"
        ),
        pytest.param(
            {"max_workers": "four"}, "got 'four'; using auto", True, 2, id="text"
        ),
        pytest.param({"max_workers": -3}, "got -3", True, 2, id="negative"),
    ],
)
def test_invalid_values_fall_back_with_a_warning(
    kwargs: dict[str, object],
    message: str,
    enabled: bool,
    workers: int,
    caplog: pytest.LogCaptureFixture,
    mocker: MockerFixture,
) -> None:
    mocker.patch("stemzip.executors.cpu_count", return_value=2)

    executor = ProcessPoolStemExecutor(**kwargs)  # type: ignore[arg-type]

    assert message in caplog.text
    assert caplog.records[0].levelno == logging.WARNING
    assert executor.enabled is enabled
    assert executor.workers_for(10) == workers


def test_workers_never_exceed_stems() -> None:
    assert ProcessPoolStemExecutor(max_workers=8).workers_for(3) == 3
    assert ProcessPoolStemExecutor(max_workers=2).workers_for(30) == 2


@pytest.mark.parametrize(
    ("stems", "workers", "expected"),
    [
        pytest.param(10, 2, [1] * 10, id="few-stems-one-each"),
        pytest.param(1000, 2, [62] * 16 + [8], id="many-stems-batched"),
        pytest.param(10000, 2, [64] * 156 + [16], id="capped"),
    ],
)
def test_batches_cover_every_job_largest_first(
    tmp_path: Path, stems: int, workers: int, expected: list[int]
) -> None:
    jobs = [
        StemJob(stem=f"s{i}", files=(), archive_path=str(tmp_path / f"s{i}.zip"))
        for i in range(stems)
    ]

    batches = _batches(jobs, workers)

    assert [len(batch) for batch in batches] == expected
    assert sorted(job.stem for batch in batches for job in batch) == sorted(
        job.stem for job in jobs
    )


def test_large_stems_are_sent_first(tmp_path: Path) -> None:
    jobs = [
        StemJob(stem=stem, files=(), archive_path=str(tmp_path / stem), size=size)
        for stem, size in [("small", 10), ("big", 100_000), ("mid", 10_000)]
    ]

    assert [b[0].stem for b in _batches(jobs, 2)] == ["big", "mid", "small"]


def test_plan_records_each_stems_bytes(run_tree: Callable[..., RunSettings]) -> None:
    settings = run_tree(
        ["a", "b"], {"a_1.csv": "x" * 10, "a_2.csv": "y" * 5, "b_1.csv": ""}
    )

    assert [(job.stem, job.size) for job in plan_run(settings).jobs] == [
        ("a", 15),
        ("b", 0),
    ]


def test_bad_start_method_is_refused() -> None:
    with pytest.raises(ValueError, match="start_method 'thread' is not one of"):
        ProcessPoolStemExecutor(start_method="thread")


@pytest.mark.parametrize("value", [0, 0.0, None])
def test_zero_or_null_timeout_sets_no_limit(tmp_path: Path, value: object) -> None:
    jobs = _jobs(tmp_path, ["run1"])
    executor = SequentialStemExecutor(timeout_per_file=value)

    results = executor.run(jobs)

    # taken as a limit, 0 s would fail the stem at its first chunk
    assert executor.timeout is None
    assert results[0].status is Status.ZIPPED


def test_negative_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout_per_file must be a number"):
        SequentialStemExecutor(timeout_per_file=-1)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, "10", True])
def test_impossible_time_limits_are_refused(value: object) -> None:
    with pytest.raises(
        ValueError, match="timeout_per_file must be a number of seconds"
    ):
        SequentialStemExecutor(timeout_per_file=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["save_error_reports", "progress_reporting"])
def test_flags_must_be_booleans(key: str) -> None:
    with pytest.raises(ValueError, match=f"{key} must be true or false, got 'no'"):
        SequentialStemExecutor(**{key: "no"})  # type: ignore[arg-type]


def test_unreachable_scheduler_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real connection timeout is 30 s; the refusal is the same in 2
    monkeypatch.setattr("stemzip.cluster._CONNECT_TIMEOUT", 2)
    jobs = _jobs(tmp_path, ["run1", "run2"])
    executor = DaskStemExecutor(address="tcp://127.0.0.1:9")

    with pytest.raises(SchedulerUnreachableError, match="cannot be reached"):
        executor.run(jobs)

    assert not any(Path(job.archive_path).exists() for job in jobs)


@needs_proc
def test_dask_stem_whose_worker_dies_fails_and_the_rest_go_on(
    tmp_path: Path,
) -> None:
    dask = pytest.importorskip("dask")
    # distributed adds its defaults to dask's config when first imported;
    # imported inside dask.config.set below, they would vanish on leaving it
    pytest.importorskip("distributed")
    jobs = _jobs(tmp_path, ["run1", "run2", "run3", "run4"])
    jobs[1] = _slow_stem(tmp_path, jobs[1])

    def kill_every_writer(times: int) -> None:
        killed: set[int] = set()
        while len(killed) < times:
            pid = _writer_of(tmp_path, "run2.zip")
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)

    # the scheduler runs a task again after its worker died, up to
    # allowed-failures times (3 by default, 1 here to be quicker), then gives
    # up on it; a saturation of 1 hands each worker only the task it runs, so
    # no stem merely queued behind run2 is blamed for the deaths
    settings = {
        "distributed.scheduler.allowed-failures": 1,
        "distributed.scheduler.worker-saturation": 1.0,
    }
    with dask.config.set(settings):
        killer = threading.Thread(target=kill_every_writer, args=(2,), daemon=True)
        killer.start()
        results = DaskStemExecutor(max_workers=2).run(jobs)
        killer.join(timeout=5)

    error = _only_second_failed(results, jobs)
    assert "the worker archiving this stem died (KilledWorker" in error


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _parent(pid: int) -> int:
    # the fourth field of /proc/<pid>/stat, after the parenthesised name
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


@needs_proc
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_are_started_the_way_asked(tmp_path: Path, method: str) -> None:
    jobs = _jobs(tmp_path, ["run1", "run2"])
    jobs[1] = _slow_stem(tmp_path, jobs[1])
    seen: dict[str, str] = {}

    def look() -> None:
        pid = _writer_of(tmp_path, "run2.zip")
        seen["worker"] = _cmdline(pid)
        seen["parent"] = _cmdline(_parent(pid))

    watcher = threading.Thread(target=look, daemon=True)
    watcher.start()
    executor = ProcessPoolStemExecutor(
        max_workers=2, start_method=method, timeout_per_file=1
    )
    results = executor.run(jobs)
    watcher.join(timeout=5)

    assert [r.status for r in results] == [Status.ZIPPED, Status.FAILED]
    ours = _cmdline(os.getpid())
    if method == "fork":
        # a copy of this process, whose command line it keeps
        assert (seen["worker"], seen["parent"]) == (ours, ours)
    elif method == "spawn":
        assert "from multiprocessing.spawn import spawn_main" in seen["worker"]
        assert seen["parent"] == ours
    else:
        # forked by the fork server, which this process started
        assert "from multiprocessing.forkserver import main" in seen["parent"]
        assert seen["worker"] == seen["parent"]
