"""Executors: the ways of running a run's stem jobs.

Every executor takes the same settings and offers one method, :meth:`run`,
which returns one result per job, sorted by stem. A stem's failure is
recorded in its result and the others go on. The ``parallel_processing``
config group chooses the class, and ``hydra.utils.instantiate`` builds it.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import shutil
import signal
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ThreadPoolExecutor,
    wait,
)
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from pebble import ProcessPool

from stemzip.archive import (
    StemJob,
    archiving_for,
    log_result,
    remove_partial_files,
    stopping_writers,
    told_to_stop,
    zip_stem,
)
from stemzip.errors import ConfigError, RunInterrupted, StemzipError
from stemzip.results import Status, StemResult
from stemzip.supervision import LedgerEntry, Supervisor, attach_ledger

log = logging.getLogger(__name__)

Report = Callable[[StemResult], None]
# stems per batch sent to a worker at most; batches cut round trips for many
# small stems, and the cap keeps the load spread when stems are few
_MAX_BATCH = 64
_BATCHES_PER_WORKER = 8


def cpu_count() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# longest time limit taken, in seconds: a year. Longer ones are typos, and
# infinite or huge ones overflow the alarm timer
_MAX_TIMEOUT = 365 * 24 * 3600


def _check_timeout(value: Any) -> float | None:
    if value is None or value == 0:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value <= _MAX_TIMEOUT
    ):
        raise ConfigError(
            f"parallel_processing.timeout_per_file must be a number of seconds "
            f"from 0 to {_MAX_TIMEOUT} (0 or null for no limit), got {value!r}"
        )
    return float(value)


def _check_flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(
            f"parallel_processing.{key} must be true or false, got {value!r}"
        )
    return value


def _terminal_size() -> os.terminal_size:
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    if size.columns > 0 and size.lines > 0:
        return size
    return shutil.get_terminal_size()


class StemExecutor(ABC):
    """Runs stem jobs; subclasses decide where and how many at a time."""

    name = "executor"

    def __init__(
        self,
        enabled: Any = True,
        max_workers: Any = "auto",
        timeout_per_file: float | None = None,
        save_error_reports: bool = False,
        progress_reporting: bool = False,
    ) -> None:
        self.timeout = _check_timeout(timeout_per_file)
        self.save_error_reports = _check_flag("save_error_reports", save_error_reports)
        self.progress_reporting = _check_flag("progress_reporting", progress_reporting)

    def describe(self, jobs: int) -> str:
        """A few words for the log saying how ``jobs`` stems will run."""
        return self.name

    @abstractmethod
    def _execute(self, jobs: Sequence[StemJob], report: Report) -> None:
        """Run every job and pass each result to ``report`` once."""

    def run(self, jobs: Sequence[StemJob]) -> list[StemResult]:
        """Run ``jobs`` and return their results sorted by stem.

        Raises :class:`~stemzip.errors.RunInterrupted`, holding the results
        gathered so far, on Ctrl-C or SIGTERM.
        """
        results: list[StemResult] = []
        try:
            with self._progress(len(jobs)) as advance:

                def report(result: StemResult) -> None:
                    log_result(result)
                    results.append(result)
                    advance(result)

                self._execute(jobs, report)
        except KeyboardInterrupt as exc:
            raise RunInterrupted(sorted(results, key=_by_stem)) from exc
        return sorted(results, key=_by_stem)

    @contextmanager
    def _progress(self, total: int) -> Iterator[Report]:
        if not (self.progress_reporting and sys.stderr.isatty()):
            yield _ignore
            return
        # imported here: tqdm costs every start of the command otherwise
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        size = _terminal_size()
        # while the bar is drawn, console log lines are written above it;
        # a terminal that reports no size (0 by 0) still gets a bar
        with (
            logging_redirect_tqdm(),
            tqdm(
                total=total,
                unit="stem",
                file=sys.stderr,
                ncols=size.columns,
                nrows=size.lines,
            ) as bar,
        ):
            done_bytes = 0

            def advance(result: StemResult) -> None:
                nonlocal done_bytes
                done_bytes += result.bytes_in
                rate = done_bytes / max(bar.format_dict["elapsed"], 1e-6)
                bar.set_postfix_str(f"{rate / 1e6:.1f} MB/s", refresh=False)
                bar.update(1)

            yield advance


def _by_stem(result: StemResult) -> str:
    return result.stem


def _ignore(result: StemResult) -> None:
    """A progress report that shows nothing."""


def run_in_process(
    jobs: Sequence[StemJob], report: Report, timeout: float | None
) -> None:
    """Run ``jobs`` one after another in this process."""
    for job in jobs:
        report(zip_stem(job, timeout))


class SequentialStemExecutor(StemExecutor):
    """Runs the stems one after another in this process."""

    name = "sequential"

    def _execute(self, jobs: Sequence[StemJob], report: Report) -> None:
        run_in_process(jobs, report, self.timeout)


def _check_enabled(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    log.warning(
        "parallel_processing.enabled must be true or false, got %r; using true", value
    )
    return True


def _check_max_workers(value: Any) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    log.warning(
        "parallel_processing.max_workers must be 'auto' or a positive whole "
        "number, got %r; using auto",
        value,
    )
    return None


def _check_start_method(value: str | None) -> str | None:
    allowed = multiprocessing.get_all_start_methods()
    if value is not None and value not in allowed:
        raise ConfigError(
            f"parallel_processing.start_method {value!r} is not one of "
            f"{', '.join(allowed)}; set it to one of them or null"
        )
    return value


def _batches(jobs: Sequence[StemJob], workers: int) -> list[list[StemJob]]:
    # largest stems first, so the last worker does not finish alone on one
    ordered = sorted(jobs, key=lambda job: job.size or 0, reverse=True)
    size = max(1, min(_MAX_BATCH, len(ordered) // (workers * _BATCHES_PER_WORKER)))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def log_levels() -> dict[str, int]:
    """The root logger's level and each stemzip logger's own, for a worker.

    A forked worker inherits them; one started by spawn or forkserver, or on
    another machine, would drop the records that ``hydra.verbose`` asked for.
    """
    levels = {"": logging.getLogger().getEffectiveLevel()}
    for name, logger in logging.Logger.manager.loggerDict.items():
        if (
            name.startswith("stemzip")
            and isinstance(logger, logging.Logger)
            and logger.level != logging.NOTSET
        ):
            levels[name] = logger.level
    return levels


def _set_log_levels(levels: dict[str, int]) -> None:
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def _start_worker(queue: Any, levels: dict[str, int], ledger: Any = None) -> None:
    # the pool stops a worker with SIGTERM, which must end it at once, not
    # run the command's handler (inherited by fork) or an orderly exit that
    # could wait on a log queue
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    attach_ledger(ledger)
    # send this process's log records to the parent, which hands them to its
    # own handlers (Hydra's log file among them) whatever the start method
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(queue))
    _set_log_levels(levels)


def _zip_batch(
    batch: list[StemJob],
    timeout: float | None,
    levels: dict[str, int] | None = None,
    token: str | None = None,
) -> list[StemResult]:
    if levels is not None:
        # a worker that nobody configured drops INFO lines before any
        # handler, or any forwarding, can see them; its root logger is left
        # to whoever runs the worker
        own = {name: level for name, level in levels.items() if name}
        _set_log_levels({"stemzip": levels[""]} | own)
    results = []
    with archiving_for(token):
        for job in batch:
            if told_to_stop():
                break
            try:
                results.append(zip_stem(job, timeout))
            except KeyboardInterrupt:
                # told to give up (stopping_writers, stop_run): the stems
                # done are kept
                break
    return results


class _Redispatch(logging.Handler):
    """Hands a record from a worker to the parent's logger of the same name."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


class _PooledStemExecutor(StemExecutor):
    """Runs batches of stems on a pool of workers that a subclass opens.

    A single stem, or ``enabled: false``, runs in this process. If the pool
    cannot start or breaks, the stems not yet done run in this process.
    """

    def __init__(
        self,
        enabled: Any = True,
        max_workers: Any = "auto",
        timeout_per_file: float | None = None,
        save_error_reports: bool = False,
        progress_reporting: bool = False,
    ) -> None:
        super().__init__(
            enabled,
            max_workers,
            timeout_per_file,
            save_error_reports,
            progress_reporting,
        )
        self.enabled = _check_enabled(enabled)
        self.max_workers = _check_max_workers(max_workers)

    def workers_for(self, jobs: int) -> int:
        """Workers used for ``jobs`` stems."""
        limit = cpu_count() if self.max_workers is None else self.max_workers
        return max(1, min(limit, jobs))

    def _pool_name(self, workers: int) -> str:
        return f"{workers} workers"

    def describe(self, jobs: int) -> str:
        if not jobs:
            return f"{self.name} (no archive to write)"
        if not self.enabled or jobs == 1:
            return f"{self.name} (in this process)"
        return f"{self.name} ({self._pool_name(self.workers_for(jobs))})"

    @abstractmethod
    def _open_pool(self, workers: int) -> AbstractContextManager[Executor]:
        """A context that yields a started pool of ``workers`` and stops it."""

    def _submit(self, pool: Executor, batch: list[StemJob]) -> Future[list[StemResult]]:
        return pool.submit(_zip_batch, batch, self.timeout)

    def _execute(self, jobs: Sequence[StemJob], report: Report) -> None:
        if not self.enabled or len(jobs) <= 1:
            run_in_process(jobs, report, self.timeout)
            return
        leftover = self._run_pool(jobs, report)
        if leftover:
            log.warning("running %d remaining stems in this process", len(leftover))
            # a worker that died mid-archive leaves its temporary file behind
            remove_partial_files(leftover)
            run_in_process(leftover, report, self.timeout)

    def _worker_lost(self, error: BaseException) -> bool:
        """Whether ``error`` says the worker running a batch died."""
        return False

    def _stop(
        self, pool: Executor, pending: dict[Future[list[StemResult]], list[StemJob]]
    ) -> None:
        """On an interrupt: drop the batches not started, stop the running ones.

        Returns once the running batches have given up, each after its
        current chunk, so no worker goes on writing archives.
        """
        with stopping_writers():
            pool.shutdown(wait=True, cancel_futures=True)

    def _isolate(
        self,
        pool: Executor,
        batch: list[StemJob],
        error: BaseException,
        pending: dict[Future[list[StemResult]], list[StemJob]],
    ) -> list[StemResult]:
        """Results for a batch whose worker died; its stems go out one by one.

        Which stem of a batch killed its worker is not known, so each is sent
        again on its own; a stem whose own worker dies fails.
        """
        if len(batch) > 1:
            for job in batch:
                pending[self._submit(pool, [job])] = [job]
            return []
        job = batch[0]
        why = f"the worker archiving this stem died ({type(error).__name__}: {error})"
        return [StemResult(job.stem, Status.FAILED, files=job.files, error=why)]

    def _run_pool(self, jobs: Sequence[StemJob], report: Report) -> list[StemJob]:
        """Run ``jobs`` on a pool; return those it could not finish."""
        workers = self.workers_for(len(jobs))
        finished: set[str] = set()
        failure: BaseException | None = None
        try:
            with self._open_pool(workers) as pool:
                pending = {
                    self._submit(pool, batch): batch
                    for batch in _batches(jobs, workers)
                }
                try:
                    while pending:
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            batch = pending.pop(future)
                            error = future.exception()
                            if error is None:
                                results = future.result()
                            elif self._worker_lost(error):
                                results = self._isolate(pool, batch, error, pending)
                            else:
                                # a broken pool fails every unfinished future at
                                # once; the caller gives their stems a result
                                failure = error
                                continue
                            for result in results:
                                finished.add(result.stem)
                                report(result)
                except KeyboardInterrupt:
                    # the pool's own shutdown on leaving would run every
                    # batch still queued
                    try:
                        self._stop(pool, pending)
                    except Exception as exc:
                        # the interrupt stands: it must not pass for a broken
                        # pool, whose stems would then run here
                        log.warning(
                            "%s workers could not all be told to stop (%s: %s)",
                            self.name,
                            type(exc).__name__,
                            exc,
                        )
                    # a batch that ended before it could give up is done
                    for future in pending:
                        if (
                            future.done()
                            and not future.cancelled()
                            and future.exception() is None
                        ):
                            for result in future.result():
                                report(result)
                    raise
        except StemzipError:
            raise  # a setting that cannot work: the run stops, it does not fall back
        except KeyboardInterrupt:
            # workers stopped with their pool (a local cluster's processes)
            # may leave their temporary files; those still locked are not
            remove_partial_files(jobs)
            raise
        except Exception as exc:
            failure = exc
        if failure is not None:
            log.warning(
                "%s pool failed (%s: %s)", self.name, type(failure).__name__, failure
            )
        return [job for job in jobs if job.stem not in finished]


class ProcessPoolStemExecutor(_PooledStemExecutor):
    """Runs stems in worker processes of a pebble ``ProcessPool``.

    A worker that dies costs only the stem it was archiving, which fails with
    the cause; a fresh worker takes its place and the stems it had not reached.
    With ``timeout_per_file``, a worker that does not give up a stem past its
    limit (stopped, or blocked in the kernel) is killed and replaced too.
    """

    name = "parallel"

    def __init__(self, start_method: str | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.start_method = _check_start_method(start_method)

    def _pool_name(self, workers: int) -> str:
        method = self.start_method or multiprocessing.get_start_method()
        return f"{workers} worker processes, {method}"

    def _open_pool(self, workers: int) -> AbstractContextManager[Executor]:
        raise NotImplementedError("the process pool is run by _run_pool")

    def _run_pool(self, jobs: Sequence[StemJob], report: Report) -> list[StemJob]:
        workers = self.workers_for(len(jobs))
        context = multiprocessing.get_context(self.start_method)
        ledger = context.RawArray(LedgerEntry, len(jobs))
        place = {job.stem: index for index, job in enumerate(jobs)}
        batches = [
            [(place[job.stem], job) for job in batch]
            for batch in _batches(jobs, workers)
        ]
        finished: set[str] = set()

        def record(result: StemResult) -> None:
            finished.add(result.stem)
            report(result)

        queue = context.Queue()
        listener = logging.handlers.QueueListener(queue, _Redispatch())
        listener.start()
        supervisor: Supervisor | None = None
        try:
            pool = ProcessPool(
                workers,
                initializer=_start_worker,
                initargs=(queue, log_levels(), ledger),
                context=context,
            )
            try:
                supervisor = Supervisor(pool, ledger, self.timeout, record)
                supervisor.run(batches)
            finally:
                # every stem is accounted for, or the run is interrupted or
                # the pool broke: either way no worker may go on writing
                # archives, nor outlive the run
                pool.stop()  # type: ignore[no-untyped-call]  # pebble has no hints
                pool.join()
        except KeyboardInterrupt:
            if supervisor is not None:
                supervisor.report_finished()
            remove_partial_files(jobs)
            raise
        except StemzipError:
            remove_partial_files(jobs)
            raise
        except Exception as exc:
            log.warning("%s pool failed (%s: %s)", self.name, type(exc).__name__, exc)
        finally:
            listener.stop()
            queue.close()
        if supervisor is not None and supervisor.lost:
            # lost workers are gone now, and their temporary files unlocked
            remove_partial_files(supervisor.lost)
        return [job for job in jobs if job.stem not in finished]


class ThreadPoolStemExecutor(_PooledStemExecutor):
    """Runs stems in the threads of a ``ThreadPoolExecutor`` in this process.

    Worth it where compression releases the GIL (zlib, bzip2, lzma) and
    process start-up would dominate; ``timeout_per_file`` is checked between
    chunks only, since a thread cannot be interrupted.
    """

    name = "threads"

    def _pool_name(self, workers: int) -> str:
        return f"{workers} threads"

    def _open_pool(self, workers: int) -> AbstractContextManager[Executor]:
        return ThreadPoolExecutor(workers, thread_name_prefix="stemzip")
