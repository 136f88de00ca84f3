"""The grouping-and-zipping step, as a plain function and as a pipeline task."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from stemzip.archive import NAME_MAX, remove_partial_files
from stemzip.config import ParallelConfig, RunSettings, load_settings
from stemzip.errors import (
    ConfigError,
    OutputDirectoryError,
    RunInterrupted,
    StemzipError,
)
from stemzip.executors import StemExecutor
from stemzip.names import readable
from stemzip.plan import describe_plan, plan_run
from stemzip.results import Status, StemResult, summarise

log = logging.getLogger(__name__)


def base_directory() -> Path:
    """The folder relative paths are resolved against: where the run started.

    Under Hydra this is the folder the command was started in, even when the
    job has changed its working directory.
    """
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def build_executor(node: Any = None) -> StemExecutor:
    """Build the executor that a ``parallel_processing`` node describes.

    A missing node, or one without ``_target_``, gets the parallel executor
    with the node's values over its defaults.
    """
    options = OmegaConf.structured(ParallelConfig)
    if node is not None:
        if not isinstance(node, (Mapping, DictConfig)):
            raise ConfigError(
                f"parallel_processing must be a group of settings, got {node!r}; "
                "choose one with parallel_processing=parallel or =sequential"
            )
        options = OmegaConf.merge(
            OmegaConf.create({"_target_": options._target_}), node
        )
    try:
        executor = instantiate(options, _convert_="all")
    except InstantiationException as exc:
        # instantiate wraps what the constructor raised; our own errors
        # already say which key to fix
        if isinstance(exc.__cause__, StemzipError):
            raise exc.__cause__ from None
        raise ConfigError(f"parallel_processing could not be built: {exc}") from exc
    if not isinstance(executor, StemExecutor):
        raise ConfigError(
            f"parallel_processing._target_ {options._target_!r} is not a stemzip "
            "executor; use parallel_processing=parallel or =sequential"
        )
    return executor


def _check_writable(folder: Path) -> None:
    # a folder that takes no file (permissions, a read-only mount, a full
    # disk) would fail every stem one by one; say so once, before any work
    probe = folder / f".stemzip-probe.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(probe, flags, 0o600)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            probe.unlink()
        # the folder is listed too, for temporary files killed runs left
        with os.scandir(folder):
            pass
    except OSError as exc:
        raise OutputDirectoryError(
            f"file_management.output_directory: cannot write in {folder} "
            f"({exc.strerror or exc}); make it writable or set "
            "file_management.output_directory=<a writable folder>"
        ) from exc


def _exists(folder: Path) -> bool:
    """Whether the output folder exists; raises if that cannot be told."""
    try:
        os.stat(folder)
    except FileNotFoundError:
        return False
    except OSError as exc:  # a folder on the way this user may not search
        raise OutputDirectoryError(
            f"file_management.output_directory: cannot look for {folder} "
            f"({exc.strerror or exc}); make the folders on the way searchable "
            "or set file_management.output_directory=<a writable folder>"
        ) from exc
    return True


def _check_access(folder: Path) -> None:
    # as _check_writable, for a dry run, which writes nothing
    if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
        raise OutputDirectoryError(
            f"file_management.output_directory: cannot write in {folder} "
            "(Permission denied); make it writable or set "
            "file_management.output_directory=<a writable folder>"
        )


def _prepare_output(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirectoryError(
            f"file_management.output_directory {str(folder)!r} cannot be created "
            f"({exc.strerror}); set file_management.output_directory="
            "<a writable folder>"
        ) from exc
    _check_writable(folder)


def _log_plan(text: str) -> None:
    log.info("dry run, nothing written; the plan:\n%s", text)


def zip_by_stem(
    settings: RunSettings,
    executor: StemExecutor,
    stems: Sequence[str] | None = None,
    show_plan: Callable[[str], None] | None = None,
) -> list[StemResult]:
    """Group the data files by stem and write one archive per stem.

    Stems come from the stem folder unless ``stems`` names them. Returns one
    result per stem, sorted by stem; failed stems are included. In a dry run
    nothing is written: the plan goes to ``show_plan`` (the log by default)
    and the stems to be zipped are reported as planned. Raises
    :class:`~stemzip.errors.OutputDirectoryError` when an output folder
    cannot be created or written to, before any archive is written.
    """
    # before planning, which looks at each archive's path in it
    checked: set[Path] = set()
    if _exists(settings.output_directory):
        if settings.dry_run:
            _check_access(settings.output_directory)
        else:
            _check_writable(settings.output_directory)
            checked.add(settings.output_directory)
    plan = plan_run(settings, stems)
    if settings.dry_run:
        log.info(
            "dry run over %d stems (%d would be written) from %s into %s, %s",
            len(plan.stems),
            len(plan.jobs),
            settings.data_directory,
            settings.output_directory,
            settings.archive.describe(),
        )
        (show_plan or _log_plan)(describe_plan(plan))
        planned = [
            StemResult(job.stem, Status.PLANNED, job.archive_path, job.files)
            for job in plan.jobs
        ]
        return plan.noting_left_out(planned + plan.settled)
    if plan.jobs:
        # archive names may hold subfolders ({date}/{stem}.zip)
        for folder in {Path(job.archive_path).parent for job in plan.jobs} - checked:
            _prepare_output(folder)
        remove_partial_files(plan.jobs)
    log.info(
        "zipping %d stems (%d to write) from %s into %s, %s, %s",
        len(plan.stems),
        len(plan.jobs),
        settings.data_directory,
        settings.output_directory,
        executor.describe(len(plan.jobs)),
        settings.archive.describe(),
    )

    try:
        results = executor.run(plan.jobs) + plan.settled
    except RunInterrupted as exc:
        raise RunInterrupted(plan.noting_left_out(exc.results + plan.settled)) from exc
    return plan.noting_left_out(results)


def _report_name(stem: str) -> str:
    name = f"{stem}.error.json"
    if len(os.fsencode(name)) <= NAME_MAX:
        return name
    # a stem near the file name limit still gets a report, under a short name
    digest = hashlib.sha1(os.fsencode(stem)).hexdigest()[:12]
    return f"{stem[:64]}-{digest}.error.json"


def write_error_reports(results: Sequence[StemResult], folder: Path) -> list[Path]:
    """Write one JSON report per failed stem into ``folder``; return their paths.

    A report that cannot be written is logged and skipped, never raised.
    """
    written = []
    for result in results:
        if result.status is not Status.FAILED:
            continue
        path = folder / _report_name(result.stem)
        trace = result.traceback and readable(result.traceback)
        report = result.to_dict() | {"traceback": trace}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            log.error("no error report for %r: %s", result.stem, exc)
            continue
        written.append(path)
    return written


def _report_folder(settings: RunSettings) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir) / "errors"
    return settings.output_directory / "errors"


# an interpolation's opening and the backslashes right before it
_OPENING = re.compile(r"(\\*)\$\{")


def _escape_opening(match: re.Match[str]) -> str:
    # OmegaConf reads 2k backslashes before "${" as k, and one more as the
    # escape of the "${" itself
    return match[1] * 2 + "\\${"


def literal(value: Any) -> Any:
    """``value`` with every ``${`` escaped, so OmegaConf reads it as written.

    In an OmegaConf node or file ``${...}`` is an interpolation; a file named
    so must read back as its name, backslashes before it included.
    """
    if isinstance(value, str):
        return _OPENING.sub(_escape_opening, value) if "${" in value else value
    if isinstance(value, list):
        return [literal(item) for item in value]
    if isinstance(value, dict):
        return {name: literal(item) for name, item in value.items()}
    return value


def _store_results(
    cfg: DictConfig | MutableMapping[str, Any], key: str, entries: list[dict[str, Any]]
) -> None:
    if isinstance(cfg, DictConfig):
        with open_dict(cfg):
            cfg[key] = literal(entries)
    else:
        cfg[key] = entries


def execute(
    cfg: DictConfig | Mapping[str, Any],
    show_plan: Callable[[str], None] | None = None,
) -> tuple[RunSettings, list[StemResult]]:
    """Zip by stem as ``cfg`` says; return the settings used and the results.

    Configuration errors are raised before any file is touched; a stem's
    failure is recorded in its result, not raised. A dry run's plan goes to
    ``show_plan``, or to the log.
    """
    started = time.perf_counter()
    settings = load_settings(cfg, base_directory())
    executor = build_executor(cfg.get("parallel_processing"))

    try:
        results = zip_by_stem(settings, executor, show_plan=show_plan)
    except RunInterrupted as exc:
        log.warning(
            "interrupted after %.2f s: %s",
            time.perf_counter() - started,
            summarise(exc.results).describe(),
        )
        raise RunInterrupted(exc.results, settings.basename) from exc
    if executor.save_error_reports:
        for path in write_error_reports(results, _report_folder(settings)):
            log.info("error report written to %s", path)

    summary = summarise(results)
    log.info("done in %.2f s: %s", time.perf_counter() - started, summary.describe())
    return settings, results


def run(
    cfg: DictConfig | MutableMapping[str, Any],
    show_plan: Callable[[str], None] | None = None,
) -> DictConfig | MutableMapping[str, Any]:
    """Task entry point: zip by stem as ``cfg`` says and record the results.

    Writes one entry per stem, sorted by stem, under ``cfg[cfg.basename]``
    (see :meth:`StemResult.to_dict`) and returns ``cfg``. Raises as
    :func:`execute` does.
    """
    try:
        settings, results = execute(cfg, show_plan)
    except RunInterrupted as exc:
        # the stems done so far are recorded before the interrupt goes on
        assert exc.basename is not None
        entries = [result.to_dict() for result in exc.results]
        _store_results(cfg, exc.basename, entries)
        raise
    _store_results(cfg, settings.basename, [result.to_dict() for result in results])
    return cfg
