"""stemzip: group simulation outputs by run stem and write one ZIP per stem.

The names below are imported on first use, so that importing one module of
the package (as Hydra's plugin discovery does) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ArchiveOptions": "stemzip.archive",
    "StemJob": "stemzip.archive",
    "zip_stem": "stemzip.archive",
    "RunSettings": "stemzip.config",
    "load_settings": "stemzip.config",
    "register_configs": "stemzip.config",
    "StemzipError": "stemzip.errors",
    "ProcessPoolStemExecutor": "stemzip.executors",
    "SequentialStemExecutor": "stemzip.executors",
    "ThreadPoolStemExecutor": "stemzip.executors",
    "find_stems": "stemzip.grouping",
    "group_by_stem": "stemzip.grouping",
    "plan_run": "stemzip.plan",
    "Status": "stemzip.results",
    "StemResult": "stemzip.results",
    "run": "stemzip.task",
    "zip_by_stem": "stemzip.task",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stemzip' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
