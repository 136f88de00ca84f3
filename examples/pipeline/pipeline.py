"""A two-step Hydra pipeline: a stand-in simulation, then stemzip.

The host app names stemzip only in its config: the settings come from
stemzip's Hydra plugin (``stemzip_base`` and the ``parallel_processing``
group), and the task from the ``stemzip.tasks`` entry point.

    python pipeline.py                 # simulate, then zip
    python pipeline.py 'simulate.headings=[0,30]' \
        parallel_processing@zip_step.parallel_processing=threads
"""

from __future__ import annotations

import logging
import math
from importlib.metadata import entry_points
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("pipeline")


def simulate(folder: Path, headings: list[int], channels: list[str]) -> None:
    """Write one stem file and a few time series per load case."""
    (folder / "output").mkdir(parents=True, exist_ok=True)
    for heading in headings:
        stem = f"LC_{heading:03d}deg"
        (folder / f"{stem}.yml").write_text(f"wave_heading_deg: {heading}\n")
        for number, channel in enumerate(channels):
            rows = [
                f"{t * 0.5:.1f},{1000 + 50 * math.sin(0.1 * t + number + heading):.3f}"
                for t in range(200)
            ]
            path = folder / "output" / f"{stem}_{channel}.csv"
            path.write_text("time_s,tension_kN\n" + "\n".join(rows) + "\n")
    log.info("simulated %d load cases in %s", len(headings), folder)


@hydra.main(version_base="1.3", config_path="conf", config_name="pipeline")
def main(cfg: DictConfig) -> None:
    settings = cfg.simulate
    # like stemzip, resolve against the folder the app started in, even when
    # hydra.job.chdir moves the job into its output folder
    folder = Path(hydra.utils.to_absolute_path(settings.folder))
    simulate(folder, list(settings.headings), list(settings.channels))

    (task,) = entry_points(group="stemzip.tasks", name=cfg.zip_step.basename)
    step = task.load()(cfg.zip_step)
    failed = [r.stem for r in step[step.basename] if r.status == "failed"]
    log.info("zip step: %s", OmegaConf.to_yaml(step[step.basename]))
    if failed:
        raise SystemExit(f"zip step failed for {failed}")


if __name__ == "__main__":
    main()
