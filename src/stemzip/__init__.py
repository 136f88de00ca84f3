"""stemzip: group simulation outputs by run stem and write one ZIP per stem."""

from __future__ import annotations

from stemzip.archive import ArchiveOptions, StemJob, zip_stem
from stemzip.config import RunSettings, load_settings, register_configs
from stemzip.errors import StemzipError
from stemzip.executors import ProcessPoolStemExecutor, SequentialStemExecutor
from stemzip.grouping import find_stems, group_by_stem
from stemzip.results import Status, StemResult
from stemzip.task import run, zip_by_stem

__version__ = "0.1.0"

__all__ = [
    "ArchiveOptions",
    "ProcessPoolStemExecutor",
    "RunSettings",
    "SequentialStemExecutor",
    "Status",
    "StemJob",
    "StemResult",
    "StemzipError",
    "find_stems",
    "group_by_stem",
    "load_settings",
    "register_configs",
    "run",
    "zip_by_stem",
    "zip_stem",
]
