"""The ``stemzip`` command: a Hydra app around :func:`stemzip.task.run`.

Exit status: 0 when every stem was zipped, skipped or had no data files;
1 when any stem failed; 2 when the configuration was refused.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from stemzip.config import register_configs
from stemzip.errors import StemzipError
from stemzip.task import run

log = logging.getLogger(__name__)

EXIT_FAILED_STEMS = 1
EXIT_BAD_CONFIG = 2
PROJECT_CONFIG = Path("conf") / "config.yaml"

# exit status owed by the jobs of this process; a multirun runs several
_outcome = {"status": 0}


def _record(status: int) -> None:
    _outcome["status"] = max(_outcome["status"], status)


def _print_plan(text: str) -> None:
    print(text, end="", flush=True)


def zip_job(cfg: DictConfig) -> dict[str, Any]:
    """One Hydra job: zip, save ``results.yaml``, note the exit status.

    Returns the job's figures (seconds, archives, failures, bytes), which the
    sweep summary callback records.
    """
    started = time.perf_counter()
    try:
        run(cfg, show_plan=_print_plan)
    except StemzipError as exc:
        log.error("%s", exc)
        _record(EXIT_BAD_CONFIG)
        return {"error": str(exc), "seconds": time.perf_counter() - started}

    results_path = Path(HydraConfig.get().runtime.output_dir) / "results.yaml"
    results_path.write_text(OmegaConf.to_yaml(cfg))
    log.info("results saved to %s", results_path)
    entries = cfg[cfg.basename]
    failed = sum(entry.status == "failed" for entry in entries)
    if failed:
        _record(EXIT_FAILED_STEMS)
    return {
        "seconds": time.perf_counter() - started,
        "stems": len(entries),
        "archives": sum(entry.status == "zipped" for entry in entries),
        "failed": failed,
        "bytes_in": sum(entry.bytes_in for entry in entries),
        "bytes_out": sum(entry.bytes_out for entry in entries),
    }


def _config_path() -> str:
    # a project's own conf/config.yaml, in the folder stemzip starts in, takes
    # the place of the defaults that ship inside the package
    project = Path.cwd() / PROJECT_CONFIG
    if project.is_file():
        return str(project.parent)
    return "conf"


def main() -> None:
    """Console entry point of ``stemzip``."""
    register_configs()
    _outcome["status"] = 0
    hydra.main(version_base="1.3", config_path=_config_path(), config_name="config")(
        zip_job
    )()
    sys.exit(_outcome["status"])
