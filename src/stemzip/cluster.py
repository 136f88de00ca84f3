"""Running stems on a Dask cluster (``parallel_processing=dask``).

Needs the ``dask`` extra (``pip install 'stemzip[dask]'``). With an
``address`` the stems go to an existing scheduler, such as one started with
``dask scheduler`` or by dask-jobqueue on SLURM or PBS; every worker must see
the data and output folders at the same paths. Without one, a local cluster
of worker processes is started for the run and stopped after it.
"""

from __future__ import annotations

import logging
import secrets
import signal
from collections.abc import Iterator
from concurrent.futures import Executor, Future, wait
from contextlib import contextmanager
from typing import Any

from stemzip.archive import StemJob, stop_run
from stemzip.errors import ConfigError, SchedulerUnreachableError
from stemzip.executors import _PooledStemExecutor, _zip_batch, log_levels
from stemzip.results import StemResult

log = logging.getLogger(__name__)

# seconds to wait for a scheduler to answer before giving up
_CONNECT_TIMEOUT = 30
# seconds an interrupted run waits for its running tasks to give up
_STOP_TIMEOUT = 10


@contextmanager
def _quiet_cluster() -> Iterator[None]:
    # a local cluster's scheduler runs in this process and logs every start
    # and stop of its parts at INFO; its warnings (a worker lost) still show.
    # distributed sets its loggers' levels when imported, after Hydra has
    # configured logging, so hydra.job_logging cannot do this
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


class DaskStemExecutor(_PooledStemExecutor):
    """Runs batches of stems as tasks on a ``dask.distributed`` cluster.

    Tasks run in worker threads, so ``timeout_per_file`` is checked between
    chunks. Lines the workers log under ``stemzip`` are forwarded to this
    process's log. A batch whose workers died too often is sent again stem by
    stem, and a stem that then loses its worker too fails; stems the cluster
    could not finish for other reasons run in this process.
    """

    name = "dask"

    def __init__(self, address: str | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "parallel_processing=dask needs dask.distributed; install it with "
                "pip install 'stemzip[dask]' (from a checkout: pip install '.[dask]')"
            ) from exc
        self.address = address
        # while a run is under way: its client, and the token its batches
        # carry, by which an interrupt stops them on the workers
        self._client: Any = None
        self._token: str | None = None

    def _pool_name(self, workers: int) -> str:
        if self.address:
            return f"scheduler {self.address}"
        return f"local cluster of {workers} worker processes"

    @contextmanager
    def _open_pool(self, workers: int) -> Iterator[Executor]:
        self._token = secrets.token_hex(8)
        try:
            with self._connect(workers) as client:
                self._client = client
                yield self._executor(client)
        finally:
            self._client = None

    @contextmanager
    def _connect(self, workers: int) -> Iterator[Any]:
        from distributed import Client

        if self.address:
            log.info(
                "connecting to the Dask scheduler at %s (giving up after %d s)",
                self.address,
                _CONNECT_TIMEOUT,
            )
            try:
                client = Client(self.address, timeout=_CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                # a mistyped address must not quietly run a campaign on the
                # machine that submitted it
                raise SchedulerUnreachableError(
                    f"parallel_processing.address {self.address!r} cannot be "
                    f"reached ({exc}); check the scheduler is running there"
                ) from exc
            with client:
                yield client
            return
        with (
            _quiet_cluster(),
            self._local_cluster(workers) as cluster,
            Client(cluster) as client,
        ):
            yield client

    @staticmethod
    def _local_cluster(workers: int) -> Any:
        from distributed import LocalCluster

        # Ctrl-C reaches the whole process group: worker processes that
        # inherit an ignored SIGINT go on until this process, which the
        # interrupt stops in order, tells them to give up, instead of dying
        # mid-archive with a traceback each. A Ctrl-C while the cluster
        # starts is lost; SIGTERM still stops the run then
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                host="127.0.0.1",
                # the cluster's own start and stop lines are not the run's news
                silence_logs=logging.WARNING,
            )
        finally:
            signal.signal(signal.SIGINT, previous)

    def _worker_lost(self, error: BaseException) -> bool:
        from distributed import KilledWorker

        # the scheduler gives up on a task whose workers kept dying under it
        # (distributed.scheduler.allowed-failures) with KilledWorker
        return isinstance(error, KilledWorker)

    def _submit(self, pool: Executor, batch: list[StemJob]) -> Future[list[StemResult]]:
        return pool.submit(_zip_batch, batch, self.timeout, log_levels(), self._token)

    def _stop(
        self, pool: Executor, pending: dict[Future[list[StemResult]], list[StemJob]]
    ) -> None:
        # a task cannot be interrupted on its worker: each worker is told to
        # make this run's archives give up after their current chunk, and
        # the batches not yet started to return at once
        assert self._token is not None
        self._client.run(stop_run, self._token, on_error="ignore")
        _, late = wait(pending, timeout=_STOP_TIMEOUT)
        if late:
            log.warning(
                "%d batches did not give up within %d s of the interrupt",
                len(late),
                _STOP_TIMEOUT,
            )
        for future in late:
            future.cancel()
        pool.shutdown(wait=False)

    @staticmethod
    def _executor(client: Any) -> Executor:
        client.forward_logging("stemzip")
        # pure=False: the same batch submitted twice is two pieces of work
        executor: Executor = client.get_executor(pure=False)
        return executor
