"""Supervising worker processes that may die or hang while archiving a stem.

The parallel executor runs batches of stems on a pebble ``ProcessPool``. Pebble
starts a new worker when one dies (SIGKILL, the OOM killer, a segfault) or is
stopped, and fails only the task that worker held. A ledger in shared memory,
which each worker writes as it starts and ends a stem, tells the parent which
stem of such a task was running, which were finished and which were not
reached, so that one dead worker costs one stem.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from typing import Any

from pebble import ProcessExpired, ProcessPool

from stemzip.archive import StemJob, zip_stem
from stemzip.results import Status, StemResult

log = logging.getLogger(__name__)

Report = Callable[[StemResult], None]
# stems of one task, each with its place in the ledger
Batch = list[tuple[int, StemJob]]

# what the ledger says of a stem
_PENDING, _RUNNING, _ZIPPED, _FAILED = 0, 1, 2, 3
# seconds between two looks for stems past their time limit
_POLL = 0.25
# times a stem is sent out again after workers died before finishing it
_MAX_ATTEMPTS = 3


class LedgerEntry(ctypes.Structure):
    """One stem's progress, written by the worker that holds it."""

    _fields_ = [
        ("state", ctypes.c_int),
        # time.monotonic() when the stem started; one clock for all processes
        ("started", ctypes.c_double),
        ("bytes_in", ctypes.c_int64),
        ("bytes_out", ctypes.c_int64),
        ("seconds", ctypes.c_double),
    ]


# this worker's view of the ledger, set when the worker starts
_ledger: Any = None


def attach_ledger(ledger: Any) -> None:
    """Make ``ledger`` the one :func:`zip_tracked` writes in this process."""
    global _ledger
    _ledger = ledger


def zip_tracked(batch: Batch, timeout: float | None) -> list[StemResult]:
    """Archive a batch of stems in a worker, noting each one in the ledger."""
    results = []
    for index, job in batch:
        entry = _ledger[index]
        entry.started = time.monotonic()
        entry.state = _RUNNING
        result = zip_stem(job, timeout)
        entry.bytes_in = result.bytes_in
        entry.bytes_out = result.bytes_out
        entry.seconds = result.seconds
        entry.state = _ZIPPED if result.status is Status.ZIPPED else _FAILED
        results.append(result)
    return results


def _grace(timeout: float) -> float:
    # the worker's own alarm fails the stem at the limit; only a worker that
    # cannot act on it (stopped, or blocked in the kernel) is stopped from here
    return min(max(2.0, timeout / 10), 60.0)


def _death(exc: ProcessExpired) -> str:
    code = exc.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"killed by {name}"
        if -code == signal.SIGKILL:
            how += " (as the out-of-memory killer does)"
    else:
        how = f"exited with status {code}"
    return f"the worker process (pid {exc.pid}) died while archiving this stem: {how}"


class Supervisor:
    """Sends batches to a pool and accounts for every stem, whatever befalls it.

    Each stem is reported exactly once: with its worker's result, as zipped
    from the ledger when its worker died after finishing it, or as failed
    when its worker died or was stopped while it ran. Stems a lost worker had
    not finished run again on another one.
    """

    def __init__(
        self,
        pool: ProcessPool,
        ledger: Any,
        timeout: float | None,
        report: Report,
    ) -> None:
        self.pool = pool
        self.ledger = ledger
        self.timeout = timeout
        self.report = report
        self.running: dict[Future[list[StemResult]], Batch] = {}
        # tasks stopped for a stem past its limit, and that stem's index
        self.overdue: dict[Future[list[StemResult]], int] = {}
        self.attempts: dict[int, int] = {}
        # stems whose worker was lost mid-archive; it may leave a .part file
        self.lost: list[StemJob] = []

    def run(self, batches: Sequence[Batch]) -> None:
        """Run every batch; return once each stem has been reported."""
        for batch in batches:
            self._send(batch)
        while self.running:
            done, _ = wait(self.running, timeout=_POLL, return_when=FIRST_COMPLETED)
            for future in done:
                self._collect(future, self.running.pop(future))
            if self.timeout is not None:
                self._stop_overdue(self.timeout)

    def report_finished(self) -> None:
        """Report the stems that lost workers had finished, after an interrupt.

        Call once the workers are gone: a worker stopped with the pool may
        have put a stem's archive in place, and its result with it.
        """
        for batch in self.running.values():
            for index, job in batch:
                entry = self.ledger[index]
                if entry.state == _ZIPPED:
                    self.report(self._zipped(job, entry))
        self.running.clear()

    def _send(self, batch: Batch) -> None:
        for index, _ in batch:
            self.ledger[index].state = _PENDING
        future = self.pool.schedule(zip_tracked, args=(batch, self.timeout))
        self.running[future] = batch

    def _collect(self, future: Future[list[StemResult]], batch: Batch) -> None:
        try:
            results = future.result()
        except ProcessExpired as exc:
            results = self._salvage(batch, _death(exc), None)
        except CancelledError:
            index = self.overdue.pop(future, None)
            why = (
                "its worker was stopped"
                if index is None
                else self._overrun(batch, index)
            )
            results = self._salvage(batch, why, index)
        for result in results:
            self.report(result)

    def _overrun(self, batch: Batch, index: int) -> str:
        stem = dict(batch)[index].stem
        return (
            f"stem {stem!r} took longer than timeout_per_file={self.timeout:g} s "
            "and its worker did not give it up; the worker was stopped and replaced"
        )

    def _salvage(self, batch: Batch, why: str, culprit: int | None) -> list[StemResult]:
        """Results of a batch whose worker was lost; sends out what is left."""
        results = []
        again: Batch = []
        for index, job in batch:
            entry = self.ledger[index]
            if entry.state == _ZIPPED:
                results.append(self._zipped(job, entry))
                continue
            if entry.state == _RUNNING:
                self.lost.append(job)
                if culprit in (None, index):
                    results.append(self._failed(job, why, entry))
                    continue
            # not reached, cut short by the stop, or failed for a reason that
            # went with the worker: run it again
            self.attempts[index] = self.attempts.get(index, 0) + 1
            if self.attempts[index] >= _MAX_ATTEMPTS:
                reason = f"{_MAX_ATTEMPTS} worker processes were lost before it ended"
                results.append(self._failed(job, reason, entry))
            else:
                again.append((index, job))
        if again:
            self._send(again)
        return results

    @staticmethod
    def _zipped(job: StemJob, entry: Any) -> StemResult:
        return StemResult(
            stem=job.stem,
            status=Status.ZIPPED,
            zip_file_path=job.archive_path,
            files=job.files,
            bytes_in=entry.bytes_in,
            bytes_out=entry.bytes_out,
            seconds=entry.seconds,
        )

    @staticmethod
    def _failed(job: StemJob, why: str, entry: Any) -> StemResult:
        seconds = time.monotonic() - entry.started if entry.state == _RUNNING else 0
        return StemResult(
            stem=job.stem,
            status=Status.FAILED,
            files=job.files,
            error=why,
            seconds=seconds,
        )

    def _stop_overdue(self, timeout: float) -> None:
        limit = time.monotonic() - timeout - _grace(timeout)
        for future, batch in self.running.items():
            if future in self.overdue:
                continue
            for index, job in batch:
                entry = self.ledger[index]
                if entry.state == _RUNNING and entry.started < limit:
                    log.warning(
                        "stopping the worker on %r: past its time limit and not "
                        "giving it up",
                        job.stem,
                    )
                    # pebble stops a running task's worker when it is cancelled
                    self.overdue[future] = index
                    future.cancel()
                    break
