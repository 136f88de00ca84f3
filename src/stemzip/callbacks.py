"""Hydra callbacks: a per-job record and one summary table per sweep.

With ``SweepSummary`` configured (stemzip's configs do), each job writes
``stats.json`` into its output folder, and a multirun ends by writing
``summary.md`` into the sweep folder, so a sweep over executors and worker
counts doubles as a benchmark.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

STATS_FILE = "stats.json"
SUMMARY_FILE = "summary.md"
_COLUMNS = (
    "job",
    "overrides",
    "outcome",
    "seconds",
    "archives",
    "failed",
    "MB in",
    "MB out",
)


def _outcome(stats: dict[str, Any]) -> str:
    if "error" in stats:
        return "refused"
    return "failed stems" if stats.get("failed") else "ok"


def _row(job: str, stats: dict[str, Any], common: set[str]) -> tuple[str, ...]:
    varied = [o for o in stats.get("overrides", []) if o not in common]
    return (
        job,
        " ".join(varied) or "(none)",
        _outcome(stats),
        f"{stats.get('seconds', 0):.2f}",
        str(stats.get("archives", 0)),
        str(stats.get("failed", 0)),
        f"{stats.get('bytes_in', 0) / 1e6:.1f}",
        f"{stats.get('bytes_out', 0) / 1e6:.1f}",
    )


def summary_table(sweep_dir: Path) -> str:
    """A Markdown table of the ``stats.json`` files of a sweep's jobs.

    Overrides that every job shares are listed once above the table; each
    row shows the ones that set its job apart.
    """
    files = sorted(
        sweep_dir.glob(f"*/{STATS_FILE}"), key=lambda p: (len(p.parent.name), p)
    )
    jobs = [(path.parent.name, json.loads(path.read_text())) for path in files]
    overrides = [set(stats.get("overrides", [])) for _, stats in jobs]
    common = set.intersection(*overrides) if len(overrides) > 1 else set()
    lines = [f"every job: {' '.join(sorted(common))}", ""] if common else []
    lines += [
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
        *("| " + " | ".join(_row(job, stats, common)) + " |" for job, stats in jobs),
    ]
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Records each job's wall time, bytes and archives; tabulates a sweep."""

    def on_job_end(
        self, config: DictConfig, job_return: JobReturn, **kwargs: Any
    ) -> None:
        stats = job_return.return_value
        if not isinstance(stats, dict):
            return
        output_dir = Path(config.hydra.runtime.output_dir)
        stats = {"overrides": list(job_return.overrides or []), **stats}
        (output_dir / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        table = summary_table(sweep_dir)
        (sweep_dir / SUMMARY_FILE).write_text(table)
        log.info("sweep summary, also in %s:\n%s", sweep_dir / SUMMARY_FILE, table)
